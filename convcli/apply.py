"""One input through a layer stack: read, run, write the feature maps.

:func:`process` is what ``convcli apply`` does for each input, in the main process
or in a batch worker. It returns an :class:`InputResult` (what the ``--json`` line
reports) and raises a :class:`~convcli.errors.ConvcliError` when the input fails.
"""

from __future__ import annotations

import io
import os
import re
import string
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from ._text import shorten
from .errors import ConvcliError, InputError, OptionError, OutputError
from .stack import Stack

FORMATS = ("png", "png16", "tiff", "npy", "zarr")
NORMALIZE_MODES = ("minmax", "clip", "abs", "offset")
DEFAULT_NAME = "{stem}_{filter}.{ext}"
STDOUT = "-"
_EXT = {"png": "png", "png16": "png", "tiff": "tiff", "npy": "npy", "zarr": "zarr"}
#: Formats written as one H×W×F array per input (``{stem}.{ext}``), not one file per map.
ARRAY_FORMATS = ("npy", "zarr")


@dataclass(frozen=True)
class ReadSpec:
    """How inputs are read (``--mode``, ``--scale``, ``--max-pixels``)."""

    mode: str = "keep"
    scale: str = "raw"
    max_pixels: int | None = None


@dataclass(frozen=True)
class OutputSpec:
    """Where and how feature maps are written.

    ``directory`` is ``None`` when nothing is written (``--print`` alone), ``"-"``
    for standard output, else a folder.
    """

    directory: Path | str | None = Path(".")
    name: str = DEFAULT_NAME
    format: str = "png"
    normalize: str = "minmax"
    compress_level: int | None = None
    montage: str | None = None
    save_all: bool = False
    skip_existing: bool = False
    tiff_compression: str = "none"

    @property
    def to_stdout(self) -> bool:
        return self.directory == STDOUT


@dataclass(frozen=True)
class ReadFile:
    """A file the command reads besides its inputs (a kernel or pipeline file).

    Like the inputs, it is never overwritten by an output. ``via`` says how the command
    line names it: ``-k``, ``--pipeline``, ``named in net.yaml``.
    """

    path: str
    what: str = "kernel file"
    via: str = "-k"

    def __str__(self) -> str:
        return f"the {self.what} {self.path} ({self.via})"


@dataclass(frozen=True)
class Job:
    """Everything ``apply`` needs for any input; built once, shared by workers.

    ``reads`` are the kernel and pipeline files the stack was read from (see
    :func:`files_read`): no output may overwrite them.
    """

    stack: Stack
    read: ReadSpec = field(default_factory=ReadSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    algorithm: str = "auto"
    print_maps: bool = False
    reads: tuple[ReadFile, ...] = ()
    #: ``--memory-limit`` in bytes for one process (a batch divides it among its workers);
    #: None: no limit, every input is run whole.
    memory_limit: int | None = None


def files_read(stack: Stack, kernel_sources=(), pipeline: str | os.PathLike | None = None) -> tuple[ReadFile, ...]:
    """The files a job reads besides its inputs: ``-k`` kernel files, the pipeline and its kernel files.

    ``kernel_sources`` are the ``-k`` values (built-in names and inline matrices name no
    file); ``pipeline`` is the ``--pipeline`` file the stack was loaded from, whose
    layers' kernel files (:attr:`~convcli.pipeline.Pipeline.kernel_files`) are added.
    """
    from .kernels import source_file

    reads: list[ReadFile] = []
    for value in kernel_sources:
        path = source_file(value)
        if path is not None:
            reads.append(ReadFile(str(path), "kernel file", "-k"))
    if pipeline is not None:
        reads.append(ReadFile(os.fspath(pipeline), "pipeline file", "--pipeline"))
        reads += [ReadFile(path, "kernel file", f"named in {os.fspath(pipeline)}")
                  for path in getattr(stack, "kernel_files", ())]
    return tuple(reads)


@lru_cache(maxsize=4)
def _read_identities(reads: tuple[ReadFile, ...],
                     cwd: str) -> tuple[dict[str, ReadFile], dict[tuple[int, int], ReadFile]]:
    """Each read file by resolved path and by (device, inode), computed once per job and process.

    ``cwd`` is part of the cache key: the paths may be relative to it.
    """
    by_path: dict[str, ReadFile] = {}
    by_identity: dict[tuple[int, int], ReadFile] = {}
    for read in reads:
        by_path.setdefault(str(Path(read.path).resolve()), read)
        try:
            st = os.stat(read.path)
        except OSError:
            continue
        by_identity.setdefault((st.st_dev, st.st_ino), read)
    return by_path, by_identity


def overwritten_read(path: Path | str, reads: tuple[ReadFile, ...], *, resolved: str | None = None) -> ReadFile | None:
    """The read file that writing ``path`` would replace, or None.

    The rule of :func:`convcli.io.atomic.same_file` — the same resolved path (symbolic links
    followed) or, for an existing ``path``, the same device and inode (hard links) — with
    each read file looked at once. ``resolved``: ``path`` already resolved, if known.
    """
    if not reads:
        return None
    by_path, by_identity = _read_identities(reads, os.getcwd())
    found = by_path.get(resolved if resolved is not None else str(Path(path).resolve()))
    if found is not None:
        return found
    try:
        st = os.stat(path)
    except OSError:
        return None
    return by_identity.get((st.st_dev, st.st_ino))


def _refuse_overwrite(path: Path, job: Job, inputs: frozenset[str], *, option: str | None = None) -> None:
    """Raise OutputError if ``path`` is an input or a file the job reads (any name for it)."""
    suffix = f" ({option})" if option else ""
    if _is_input(path, inputs):
        raise OutputError(f"{path}: refusing to overwrite an input file{suffix}")
    read = overwritten_read(path, job.reads)
    if read is not None:
        raise OutputError(f"{path}: refusing to overwrite {read}{suffix}")


@dataclass
class InputResult:
    """What happened to one input (one ``--json`` line)."""

    input: str
    input_shape: list[int] | None = None
    output_shape: list[int] | None = None
    filters: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    algorithm: list[str] = field(default_factory=list)
    skipped: bool = False
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # library warnings that matter (convcli._noise)
    printed: str = ""  # --print text, written to stdout by the caller in input order
    stdout_bytes: bytes = b""  # the single output for `-o -`

    def as_json(self) -> dict:
        return {
            "input": self.input,
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "filters": self.filters,
            "outputs": self.outputs,
            "seconds": round(self.seconds, 6),
            "algorithm": self.algorithm,
            "skipped": self.skipped,
            "error": self.error,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class MapGroup:
    """One output file's worth of channels: a gray map, or a C-channel depthwise image."""

    name: str
    index: int
    channels: tuple[int, ...]


def map_groups(names: list[str], *, depthwise: bool, in_channels: int) -> list[MapGroup]:
    """Split an H×W×F' output into the files it is written as.

    A plain layer gives one gray map per filter. A depthwise layer on a 1-, 2-, 3- or
    4-channel input gives one image per filter holding that filter's channels
    (``c·F + f`` for every input channel c), so a blur of an RGB photo is an RGB photo;
    on deeper inputs each channel is its own map named ``{filter}.c{c}``.
    """
    if not depthwise:
        return [MapGroup(name, i, (i,)) for i, name in enumerate(names)]
    filters = len(names)
    if in_channels <= 4:
        return [MapGroup(name, f, tuple(c * filters + f for c in range(in_channels)))
                for f, name in enumerate(names)]
    labels = channel_labels(names, depthwise=True, in_channels=in_channels)
    return [MapGroup(label, k, (k,)) for k, label in enumerate(labels)]


def channel_labels(names: list[str], *, depthwise: bool, in_channels: int) -> list[str]:
    """A label for every channel of the layer's output: the filter's name, and for a
    depthwise layer on several channels also the input channel (``c·F + f`` is ``{filter}.c{c}``)."""
    if not depthwise or in_channels == 1:
        return list(names)
    return [f"{name}.c{c}" for c in range(in_channels) for name in names]


def input_stem(source: str) -> str:
    """The ``{stem}`` of an input's outputs: ``photo`` for ``dir/photo.png``, ``stdin`` for ``-``.

    The same rule as :func:`convcli.io.read.read_input`, so the batch can plan the
    output names (collisions, ``--skip-existing``) before reading anything.
    """
    return "stdin" if source == STDOUT else Path(source).stem


@lru_cache(maxsize=4)
def _input_identities(inputs: frozenset[str]) -> frozenset[tuple[int, int]]:
    """(device, inode) of every existing input, computed once per batch and process.

    Catches an output that is an input under another name (a hard link, a symlink, a
    case-insensitive file system) with one ``stat`` per output instead of a
    comparison with every input.
    """
    identities = set()
    for name in inputs:
        try:
            st = os.stat(name)
        except OSError:
            continue
        identities.add((st.st_dev, st.st_ino))
    return frozenset(identities)


def _is_input(path: Path, inputs: frozenset[str]) -> bool:
    if str(path.resolve()) in inputs:
        return True
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in _input_identities(inputs)


def _field(value: str) -> str:
    from .kernels import safe_name

    return safe_name(value)


#: The fields of ``--name``; ``--montage`` has ``{stem}`` only.
NAME_FIELDS = ("stem", "filter", "index", "ext")
_SAMPLE = {"stem": "stem", "filter": "filter", "index": 0, "ext": "png"}
_SEPARATORS = tuple(sep for sep in {"/", os.sep, os.altsep} if sep)


@lru_cache(maxsize=16)
def check_template(template: str, option: str = "--name", fields: tuple[str, ...] = NAME_FIELDS) -> None:
    """Refuse a file name template that is more than text and plain ``{field}`` s.

    A field is one of ``fields`` with an optional format spec (``{index:03d}``). Refused,
    naming ``option`` and the offending part: an empty template, a template ending with a
    path separator (it names a folder, not a file), unbalanced braces, positional
    (``{}``), unknown, attribute or index fields (``{stem.__class__}``, ``{stem[0]}``),
    conversions (``{filter!r}``), nested fields in a format spec and format specs that do
    not fit the field (``{stem:d}``). Folders inside the template (``{stem}/{filter}.{ext}``)
    are fine; :func:`output_path` keeps the result inside the output folder.

    Raises
    ------
    OptionError
        ``"--name: '{stem[0]}': attribute or index access is not allowed; fields are …"``.
    """
    known = " ".join(f"{{{name}}}" for name in fields)
    hint = f"fields are {known}, with an optional format spec such as {{index:03d}}" if "index" in fields \
        else f"the field is {known}"
    if not template.strip():
        raise OptionError(f"{option}: empty template; give a file name such as "
                          + ("{stem}_{filter}.{ext}" if option == "--name" else "{stem}_montage.png"))
    last = re.split("|".join(re.escape(sep) for sep in _SEPARATORS), template)[-1]
    if last in ("", "."):
        raise OptionError(f"{option}: {shorten(template)} ends with {template[len(template) - len(last) - 1:]!r}, so it"
                          " names a folder, not a file; end it with a file name"
                          + (" such as {filter}.{ext}" if option == "--name" else ""))
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise OptionError(f"{option}: {shorten(template)} is not a valid template ({err}); {hint}") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        part = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if name == "" or name.isdigit():
            raise OptionError(f"{option}: {shorten(part)}: positional fields are not allowed; {hint}")
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if name != base and base in fields:
            raise OptionError(f"{option}: {shorten(part)}: attribute or index access is not allowed; {hint}")
        if name not in fields:
            raise OptionError(f"{option}: {shorten(part)}: unknown field {shorten(name)}; {hint}")
        if conversion is not None:
            raise OptionError(f"{option}: {shorten(part)}: conversions (!r, !s, !a) are not allowed; {hint}")
        if "{" in spec or "}" in spec:
            raise OptionError(f"{option}: {shorten(part)}: nested fields in a format spec are not allowed; {hint}")
        try:
            format(_SAMPLE[name], spec)
        except ValueError as err:
            raise OptionError(f"{option}: {shorten(part)}: {err}; {hint}") from None


def output_path(directory: Path, template: str, *, stem: str, filter: str, index: int, ext: str) -> Path:
    """Format the ``--name`` template and check the result stays inside ``directory``.

    The template is checked first (:func:`check_template`). Field values are made
    file-name safe, so a kernel named ``../../x`` cannot place a file elsewhere; a
    template that itself points outside is refused.
    """
    check_template(template)
    name = template.format(stem=_field(stem), filter=_field(filter), index=index, ext=ext)
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or name.strip() == "":
        raise OptionError(f"--name: {shorten(template)} gives {shorten(name)}, which is outside the output folder")
    return Path(directory) / relative


@dataclass(frozen=True)
class PlannedFile:
    """One file :func:`process` will write: a map (``filter`` names it) or the montage."""

    path: Path
    filter: str = ""  # the map's filter (``all`` for an npy array); "" for the montage
    montage: bool = False


def planned_files(job: Job, stem: str, in_channels: int | None, rel_dir: str = "") -> list[PlannedFile]:
    """The files :func:`process` will write for an input, before it is read.

    Used for ``--skip-existing`` and to find, before any work, two maps or inputs that
    would write the same file or an output that would overwrite an input or a read
    file. ``in_channels`` only matters for a depthwise layer on more than 4 channels
    (one file per channel); ``None`` plans for an image of at most 4 channels. Includes
    the ``--montage`` file and, with ``--save-all``, every layer's maps. Empty for
    ``-o -`` and ``--print`` without ``-o``.
    """
    out = job.output
    files: list[PlannedFile] = []
    if out.directory is not None and not out.to_stdout:
        directory = Path(out.directory) / rel_dir
        if out.save_all:
            files += _planned_save_all(job, stem, directory, in_channels)
        else:
            files += _planned_maps(job, job.stack.output_names(), stem, directory, in_channels,
                                   depthwise=job.stack.last_conv.spec.depthwise)
    if out.montage:
        files.append(PlannedFile(montage_path(out.montage, stem), montage=True))
    return files


def planned_outputs(job: Job, stem: str, in_channels: int | None, rel_dir: str = "") -> list[Path]:
    """The paths of :func:`planned_files`."""
    return [planned.path for planned in planned_files(job, stem, in_channels, rel_dir)]


def _planned_maps(job: Job, names: list[str], stem: str, directory: Path, in_channels: int | None, *,
                  depthwise: bool) -> list[PlannedFile]:
    files = _map_files(job, names, stem, directory, depthwise=depthwise,
                       in_channels=in_channels if in_channels is not None else 1)
    return [PlannedFile(path, group.name) for path, group in files]


def _map_files(job: Job, names: list[str], stem: str, directory: Path, *, depthwise: bool, in_channels: int,
               channels: int = 0, first_index: int = 0) -> list[tuple[Path, MapGroup]]:
    """Each output file of a layer and the channels it holds (``channels``: the layer's F')."""
    out = job.output
    ext = _EXT[out.format]
    if out.format in ARRAY_FORMATS:  # one H×W×F array per input
        path = output_path(directory, "{stem}.{ext}" if out.name == DEFAULT_NAME else out.name,
                           stem=stem, filter="all", index=0, ext=ext)
        return [(path, MapGroup("all", 0, tuple(range(channels))))]
    return [(output_path(directory, out.name, stem=stem, filter=g.name, index=first_index + g.index, ext=ext), g)
            for g in map_groups(names, depthwise=depthwise, in_channels=in_channels)]


def _planned_save_all(job: Job, stem: str, directory: Path, in_channels: int | None) -> list[PlannedFile]:
    # A 1-D signal's layers that are 1-D take Keras' 1-D default names (01-conv1d/), known only once
    # the input is read: its folders are planned with the 2-D names. --skip-existing then runs it
    # again; the write itself still refuses to overwrite an input.
    from .stack import ConvStep

    paths: list[PlannedFile] = []
    names: list[str] = []
    depthwise = False
    for index, step in enumerate(job.stack.steps):
        if isinstance(step, ConvStep):
            names, depthwise = step.output_names, step.spec.depthwise
        folder = directory / stem / f"{index + 1:02d}-{step.name}"
        paths += _planned_maps(job, names, stem, folder, in_channels, depthwise=depthwise)
    return paths


def montage_path(template: str, stem: str) -> Path:
    """The ``--montage`` file for an input: the template with ``{stem}`` filled in (see :func:`check_template`)."""
    check_template(template, "--montage", ("stem",))
    return Path(template.format(stem=_field(stem)))


def encode_group(array, *, fmt: str, normalize: str, compress_level: int | None, workers: int = 1,
                 tiff_compression: str = "none") -> bytes:
    """Encode one output group (H×W or H×W×C float32) in the chosen format (PNG on ``workers`` threads)."""
    from .io import encode_npy, encode_png, encode_tiff, to_display

    if fmt == "npy":
        return encode_npy(array)
    if fmt == "tiff":
        return encode_tiff(array, compression=tiff_compression)
    bits = 16 if fmt == "png16" else 8
    return encode_png(to_display(array, normalize=normalize, bits=bits), bits=bits,
                      compress_level=compress_level, workers=workers)


#: Gray maps normalised per block: 16 float32 channels are one 64-byte cache line per pixel.
_PLANE_CHUNK = 16


def _encode_and_write(paths: list[Path], output, groups: list[MapGroup], *, fmt: str, normalize: str,
                      compress_level: int | None, pool=None, pending: list | None = None,
                      tiff_compression: str = "none") -> None:
    """Encode each group of ``output`` and write it atomically to its path, in threads.

    numpy, zlib and file writes release the GIL, so the maps of a many-filter layer
    encode on every core the engine may use. Gray maps are strided views of the H×W×F
    output; for PNG they are normalised 16 channels at a time into contiguous planes
    (:func:`convcli.io.display.to_display_planes`), so the output is read once, not once per map.

    With a shared ``pool``, the last block's encodes are left running and their futures
    appended to ``pending``: the caller computes the next filters meanwhile and waits later.
    """
    from concurrent.futures import ThreadPoolExecutor

    from . import engine
    from .io import channel_extrema, encode_npy, encode_png, make_folder, to_display_planes, write_atomic

    def write(path: Path, blob: bytes) -> None:
        make_folder(path.parent)
        write_atomic(path, blob)

    # Fewer maps than threads: each map's PNG is deflated in parts on the spare threads.
    workers = max(1, engine.get_threads() // max(1, len(groups)))

    def one(item) -> None:
        path, array = item
        write(path, encode_group(array, fmt=fmt, normalize=normalize, compress_level=compress_level,
                                 workers=workers, tiff_compression=tiff_compression))

    bits = 16 if fmt == "png16" else 8

    def one_plane(item) -> None:
        path, plane = item
        write(path, encode_png(plane, bits=bits, compress_level=compress_level, workers=workers))

    if fmt == "npy":
        write(paths[0], encode_npy(output))
        return
    if fmt == "zarr":
        from .io.zarr_array import ZarrSink

        paths[0].parent.mkdir(parents=True, exist_ok=True)
        sink = ZarrSink(paths[0], output.shape)
        try:
            sink.write(output)
            sink.commit()
        except BaseException:
            sink.discard()
            raise
        return
    own_pool = pool is None
    if own_pool:
        pool = ThreadPoolExecutor(max_workers=max(1, min(len(groups), engine.get_threads())))
    try:
        if fmt in ("png", "png16") and all(len(g.channels) == 1 for g in groups):
            # Every channel's min and max in one pass over the contiguous output.
            low, high = channel_extrema(output)
            running: list = []  # the previous block's encodes run while the next block is normalised
            for start in range(0, len(groups), _PLANE_CHUNK):
                part = groups[start:start + _PLANE_CHUNK]
                channels = [g.channels[0] for g in part]
                first = channels[0]
                block = (output[:, :, first:first + len(part)]
                         if channels == list(range(first, first + len(part))) else output[:, :, channels])
                planes = to_display_planes(block, normalize=normalize, bits=bits,
                                           names=[g.name for g in part], low=low[channels],
                                           high=high[channels])
                for future in running:
                    future.result()  # re-raises a failed write
                running = [pool.submit(one_plane, item) for item in zip(paths[start:start + _PLANE_CHUNK], planes)]
        else:
            running = [pool.submit(one, item) for item in zip(paths, _group_arrays(output, groups))]
        if pending is not None:
            pending.extend(running)
        else:
            for future in running:
                future.result()
    finally:
        if own_pool:
            pool.shutdown(wait=True)


def _group_arrays(output, groups: list[MapGroup]) -> list:
    """Each group's channels of ``output``: a view when they are consecutive, else a copy."""
    arrays = []
    for g in groups:
        first, count = g.channels[0], len(g.channels)
        if count == 1:
            arrays.append(output[:, :, first])
        elif g.channels == tuple(range(first, first + count)):
            arrays.append(output[:, :, first:first + count])
        else:
            arrays.append(output[:, :, list(g.channels)])
    return arrays


def _write_maps(output, names: list[str], *, job: Job, stem: str, directory: Path, in_channels: int,
                depthwise: bool, inputs: frozenset[str], first_index: int = 0, pool=None,
                pending: list | None = None) -> list[str]:
    out = job.output
    files = _map_files(job, names, stem, directory, depthwise=depthwise, in_channels=in_channels,
                       channels=output.shape[2], first_index=first_index)
    paths = [path for path, _ in files]
    groups = [group for _, group in files]
    if len(set(paths)) != len(paths):
        # plan_batch finds every collision of an input of up to 4 channels before any work; a
        # depthwise layer writes one map per channel beyond that: this input's failure.
        raise InputError(f"--name {shorten(out.name)} gives the same file name to several of the"
                         f" {len(paths)} maps of this {in_channels}-channel input; add {{filter}} or {{index}}")
    for path in paths:
        _refuse_overwrite(path, job, inputs)
    _encode_and_write(paths, output, groups, fmt=out.format, normalize=out.normalize,
                      compress_level=out.compress_level, pool=pool, pending=pending,
                      tiff_compression=out.tiff_compression)
    return [str(p) for p in paths]


def _print_maps(output, labels: list[str], stem: str, many: bool) -> str:
    from .io import format_map_rows

    buf = io.StringIO()
    for f in range(output.shape[2]):
        if many or output.shape[2] > 1:
            buf.write(f"# {stem} {labels[f]}\n")
        for line in format_map_rows(output[:, :, f]):
            buf.write(line + "\n")
    return buf.getvalue()


def process(source: str, job: Job, *, rel_dir: str = "", inputs: frozenset[str] = frozenset(),
            many: bool = False) -> InputResult:
    """Read ``source``, run the stack, write/print the maps; return what happened.

    ``rel_dir`` is the input's folder relative to the folder given on the command
    line (outputs mirror it under ``-o``); ``inputs`` holds the resolved paths of all
    inputs, which are never overwritten; ``many`` says the batch has several inputs.
    """
    from . import engine
    from .io import DEFAULT_MAX_PIXELS, encode_npy, read_input

    started = time.perf_counter()
    result = InputResult(input=source)
    if _streams(source, job):
        from .streaming import stream_input

        directory = Path(job.output.directory) / rel_dir  # type: ignore[arg-type]
        streamed = stream_input(source, job, directory=directory, stem=input_stem(source), inputs=inputs,
                                budget=_memory_limit(job))
        result.input_shape, result.output_shape = streamed.input_shape, streamed.output_shape
        result.algorithm, result.outputs = streamed.algorithm, streamed.outputs
        result.filters = job.stack.output_names()
        result.seconds = time.perf_counter() - started
        return result
    _check_memory_from_header(job, source)
    max_pixels = job.read.max_pixels if job.read.max_pixels is not None else DEFAULT_MAX_PIXELS
    # uint8/uint16 pixels stay integers when the first layer sums the channels: the engine
    # does so exactly, as integers, before its one float32 conversion.
    loaded = read_input(source, mode=job.read.mode, scale=job.read.scale, max_pixels=max_pixels,
                        keep_integers=job.stack.sums_channels_first)
    if loaded.kind == "signal":  # Keras Conv1D meaning; a one-row image stays 2-D
        job = replace(job, stack=job.stack.for_signal())
    _check_memory(job, source, tuple(loaded.array.shape))  # standard input and tables: known only now
    stem = input_stem(source)  # the stem the batch planned with
    x = loaded.array
    result.input_shape = list(x.shape)
    names = job.stack.output_names()
    result.filters = names
    if _writes_by_filter_group(job):
        directory = Path(job.output.directory) / rel_dir  # type: ignore[arg-type]
        result.output_shape, result.algorithm, result.outputs = _write_by_filter_group(
            x, job, names, stem=stem, directory=directory, inputs=inputs)
        result.seconds = time.perf_counter() - started
        return result
    output, algorithms, intermediates = job.stack.run(x, algorithm=job.algorithm, keep_all=job.output.save_all)
    result.output_shape = list(output.shape)
    result.algorithm = algorithms
    conv = job.stack.last_conv
    in_depth = _last_conv_input_channels(job.stack, tuple(x.shape))
    out = job.output
    if out.to_stdout:
        groups = map_groups(names, depthwise=conv.spec.depthwise, in_channels=in_depth)
        count = 1 if out.format == "npy" else len(groups)
        if count != 1:
            # Only a depthwise layer on more than 4 channels gets here (check_job refuses every
            # other case before any work): this input's failure, not a usage error.
            raise InputError(f"{source}: " + _stdout_count_message(count, [g.name for g in groups],
                                                                   channels=in_depth))
        result.stdout_bytes = (encode_npy(output) if out.format == "npy" else
                               encode_group(_group_arrays(output, groups)[0], fmt=out.format,
                                            normalize=out.normalize, compress_level=out.compress_level,
                                            workers=engine.get_threads(), tiff_compression=out.tiff_compression))
        result.outputs = [STDOUT]
    elif out.directory is not None:
        directory = Path(out.directory) / rel_dir
        if out.save_all:
            result.outputs += _save_all(intermediates, job, stem=stem, directory=directory,
                                        x_shape=tuple(x.shape), inputs=inputs)
        else:
            result.outputs = _write_maps(output, names, job=job, stem=stem, directory=directory,
                                         in_channels=in_depth, depthwise=conv.spec.depthwise, inputs=inputs)
    if out.montage:
        result.outputs.append(_write_montage(output, names, job, stem, conv.spec.depthwise, in_depth, inputs))
    if job.print_maps:
        labels = channel_labels(names, depthwise=conv.spec.depthwise, in_channels=in_depth)
        result.printed = _print_maps(output, labels, stem, many)
    result.seconds = time.perf_counter() - started
    return result


def _memory_limit(job: Job) -> int:
    from ._budget import memory_limit

    return memory_limit(job)


def _streams(source: str, job: Job) -> bool:
    """Whether ``source`` runs band by band (:mod:`convcli.streaming`) rather than whole.

    It does when a whole-image run would hold more than the memory limit (the estimate of
    :func:`_check_memory`, from the file's header alone), and when a region-readable file
    has more pixels than ``--max-pixels`` (for those the memory limit governs, not the
    decompression-bomb guard). An input that needs the whole image for what is asked
    (``--print``, ``--montage``, ``--save-all``, ``-o -``) is refused then, with the sizes.
    Standard input and tables are never streamed (:func:`_check_memory` judges them).
    """
    if source == STDOUT or Path(source).suffix.lower() in (".csv", ".txt"):
        return False
    return not _whole_fits(source, job, needs=_whole_only_feature(job))


def _whole_only_feature(job: Job) -> str | None:
    out = job.output
    if out.to_stdout:
        return "-o -"
    if job.print_maps:
        return "--print"
    if out.montage:
        return "--montage"
    if out.save_all:
        return "--save-all"
    return None


def _whole_fits(source: str, job: Job, *, needs: str | None) -> bool:
    """True when ``source`` runs whole: it fits the memory limit, or this cannot be judged here.

    Raises InputError when it does not fit and ``needs`` names an option that needs it whole.
    """
    from ._budget import format_bytes, working_set
    from .io import DEFAULT_MAX_PIXELS
    from .io.bands import region_reader_kind
    from .io.read import read_header

    try:
        (h, w, c), kind = read_header(source)
        stack = job.stack.for_signal() if kind == "signal" else job.stack
        shape = (h, w, _MODE_CHANNELS.get(job.read.mode, c))
        out = job.output
        grouped = _writes_by_filter_group(job)
        need = working_set(stack, shape, grouped=grouped, keep_all=out.save_all,
                           encodes_whole=out.format in ("npy", "tiff") and not grouped, group=FILTER_GROUP,
                           group_format=out.format if grouped else None).total
    except ConvcliError:
        return True  # the whole-image path reports what is wrong, as it always has
    limit = _memory_limit(job)
    max_pixels = job.read.max_pixels if job.read.max_pixels is not None else DEFAULT_MAX_PIXELS
    regions = region_reader_kind(source) is not None
    bomb = kind == "image" and h * w > max_pixels
    if need <= limit:
        # A region-readable image over --max-pixels streams (the limit governs it), unless
        # what is asked needs it whole: then the guard speaks, with its remedy.
        return not (regions and bomb) or needs is not None
    if bomb and not regions:
        return True  # decoded whole: the decompression-bomb guard speaks first, with its remedy
    if needs is not None:
        raise InputError(f"{source}: {needs} needs the whole image in memory, about {format_bytes(need)}, more than "
                         f"the {format_bytes(limit)} memory limit; raise --memory-limit or drop {needs}")
    return False


#: A single layer with more filters than this writes its PNG/TIFF maps a group of filters at a
#: time, so only one group's maps are in memory: 16 maps of a 1080p image are 133 MB, where a
#: 64-filter bank's whole output would be 531 MB (2.1 GB for 4K).
FILTER_GROUP = 16


_MODE_CHANNELS = {"gray": 1, "rgb": 3, "rgba": 4}


def _check_memory(job: Job, name: str, shape: tuple[int, int, int]) -> None:
    """Refuse an input whose working set (:mod:`convcli._budget`) exceeds the memory limit, before any work."""
    from ._budget import check_fits, memory_limit

    out = job.output
    grouped = _writes_by_filter_group(job)
    check_fits(name, job.stack, shape, limit=memory_limit(job), grouped=grouped, keep_all=out.save_all,
               encodes_whole=out.format in ("npy", "tiff") and not grouped, group=FILTER_GROUP,
               group_format=out.format if grouped else None)


def _check_memory_from_header(job: Job, source: str) -> None:
    """:func:`_check_memory` from the file's header, before its pixels are decoded.

    Images and ``.npy`` only (tables are small and read whole to know their shape;
    standard input is checked once read). A header that cannot be read is left to
    :func:`~convcli.io.read_input`, which says what is wrong with the file.
    """
    if source == STDOUT or Path(source).suffix.lower() in (".csv", ".txt"):
        return
    from .io import read_header

    try:
        (h, w, c), kind = read_header(source)
    except ConvcliError:
        return
    from .io import DEFAULT_MAX_PIXELS

    max_pixels = job.read.max_pixels if job.read.max_pixels is not None else DEFAULT_MAX_PIXELS
    if kind == "image" and h * w > max_pixels:
        return  # the decompression-bomb guard says it first, with its own remedy (--max-pixels)
    c = _MODE_CHANNELS.get(job.read.mode, c)
    _check_memory(replace(job, stack=job.stack.for_signal()) if kind == "signal" else job, source, (h, w, c))


def _writes_by_filter_group(job: Job) -> bool:
    """Whether :func:`process` can run the layer filter group by filter group.

    Only for one plain conv layer (optionally pooled) whose maps are written one file per
    filter: each map depends on its own filter alone, and each file on its own map.
    """
    from .stack import ConvStep

    stack, out = job.stack, job.output
    if type(stack) is not Stack or not stack.steps or not isinstance(stack.steps[0], ConvStep):
        return False
    conv = stack.steps[0]
    return (not any(isinstance(step, ConvStep) for step in stack.steps[1:])
            and conv.bank is not None and conv.bank.filters > FILTER_GROUP and not conv.spec.depthwise
            and out.format in ("png", "png16", "tiff") and out.directory is not None and not out.to_stdout
            and not out.save_all and not out.montage and not job.print_maps)


def _write_by_filter_group(x, job: Job, names: list[str], *, stem: str, directory: Path,
                           inputs: frozenset[str]) -> tuple[list[int], list[str], list[str]]:
    """Run and write the layer :data:`FILTER_GROUP` filters at a time; same files as one run."""
    from concurrent.futures import ThreadPoolExecutor

    from . import engine
    from .kernels import FilterBank

    conv = job.stack.steps[0]
    bank = conv.bank
    written: list[str] = []
    algorithms: list[str] = []
    shape: list[int] = []
    previous: list = []
    spare = None
    # One pool for all groups: a group's maps encode while the next group is computed.
    with ThreadPoolExecutor(max_workers=engine.get_threads()) as pool:
        for first in range(0, bank.filters, FILTER_GROUP):
            part = FilterBank(bank.kernels[first:first + FILTER_GROUP])
            stack = replace(job.stack, steps=(replace(conv, bank=part),) + job.stack.steps[1:])
            # A PNG group's output is free once its maps are normalised (TIFF encodes read it
            # later): the next group is written into it (a fresh 133 MB per 1080p group costs
            # its page faults again).
            output, used, _ = stack.run(x, algorithm=job.algorithm, reuse=spare)
            algorithms = algorithms or used
            shape = [output.shape[0], output.shape[1], bank.filters]
            current: list = []
            written += _write_maps(output, names[first:first + FILTER_GROUP], job=job, stem=stem,
                                   directory=directory, in_channels=x.shape[2], depthwise=False, inputs=inputs,
                                   first_index=first, pool=pool, pending=current)
            if job.output.format in ("png", "png16"):  # their maps were normalised into new planes
                spare = output
            output = None
            for future in previous:  # at most two groups' encodes in flight
                future.result()
            previous = current
        for future in previous:
            future.result()
    return shape, algorithms, written


def _last_conv_input_channels(stack: Stack, shape: tuple[int, int, int]) -> int:
    from .stack import ConvStep

    geometry = stack.geometry(shape)
    channels = shape[2]
    for step, g in zip(stack.steps, geometry):
        if isinstance(step, ConvStep):
            channels = g.input_shape[2]
    return channels


def _save_all(intermediates: list, job: Job, *, stem: str, directory: Path, x_shape,
              inputs: frozenset[str]) -> list[str]:
    """``--save-all``: every layer's maps in ``{stem}/NN-{layer}/``."""
    from .stack import ConvStep

    written: list[str] = []
    names: list[str] = []
    depthwise, in_depth = False, x_shape[2]
    for index, (step, array) in enumerate(zip(job.stack.steps, intermediates)):
        if isinstance(step, ConvStep):
            names, depthwise = step.output_names, step.spec.depthwise
            in_depth = (array.shape[2] // len(names)) if depthwise else in_depth
        folder = directory / stem / f"{index + 1:02d}-{step.name}"
        written += _write_maps(array, names, job=job, stem=stem, directory=folder, in_channels=in_depth,
                               depthwise=depthwise, inputs=inputs)
        if not depthwise:
            in_depth = array.shape[2]
    return written


def _write_montage(output, names: list[str], job: Job, stem: str, depthwise: bool, in_depth: int,
                   inputs: frozenset[str]) -> str:
    from .io import make_folder, montage, to_display, write_atomic

    path = montage_path(job.output.montage or "", stem)
    _refuse_overwrite(path, job, inputs, option="--montage")
    groups = map_groups(names, depthwise=depthwise, in_channels=in_depth)
    tiles = [to_display(a, normalize=job.output.normalize, bits=8) for a in _group_arrays(output, groups)]
    blob = montage(tiles, [g.name for g in groups])
    make_folder(path.parent)
    write_atomic(path, blob)
    return str(path)


def _stdout_count_message(count: int, names: list[str], *, channels: int | None = None) -> str:
    shown = ", ".join(names[:4]) + (", …" if len(names) > 4 else "")
    what = "this layer gives" if channels is None else \
        f"a depthwise layer on this {channels}-channel input gives one map per channel and filter:"
    return (f"-o -: standard output takes a single output, but {what} {count} outputs ({shown});"
            " use -o DIR, or --format npy for one array")


def folder_problem(folder: Path | str) -> str | None:
    """Why files cannot be written under ``folder``: an existing non-folder on its path; else None.

    ``"not a directory (it is a file)"`` when ``folder`` itself is a file (or a broken symbolic link),
    ``"x is a file, not a directory"`` when one of its parents is. A missing folder is fine
    (it is created).
    """
    folder = Path(folder)
    for path in (folder, *folder.parents):
        try:
            if path.is_dir():
                return None
        except OSError as err:  # a name too long for the file system, a loop of links…
            return f"{err.strerror or err}" if path == folder else f"{path}: {err.strerror or err}"
        if os.path.lexists(path):
            what = "a broken symbolic link" if path.is_symlink() else "a file"
            return f"not a directory (it is {what})" if path == folder else f"{path} is {what}, not a directory"
    return None


def check_job(job: Job, input_count: int, *, json_lines: bool = False) -> None:
    """Option checks that need no input read (usage errors, raised before any work).

    ``-o -`` needs exactly one input and one output (one filter; a depthwise layer
    of one filter writes one image of the input's channels); ``--print``, ``--json``
    and ``-o -`` cannot share standard output. ``-o`` must not be, or be inside, a file.
    """
    out = job.output
    if out.directory is not None and not out.to_stdout:
        problem = folder_problem(out.directory)
        if problem:
            raise OptionError(f"-o {out.directory}: {problem}")
    check_template(out.name)
    if out.montage is not None:
        check_template(out.montage, "--montage", ("stem",))
    if out.format not in FORMATS:
        raise OptionError(f"--format: {out.format!r} is not one of {', '.join(FORMATS)}")
    if out.normalize not in NORMALIZE_MODES:
        raise OptionError(f"--normalize: {out.normalize!r} is not one of {', '.join(NORMALIZE_MODES)}")
    if out.to_stdout and input_count != 1:
        raise OptionError(f"-o -: writes a single output to standard output, but there are {input_count} inputs")
    if out.to_stdout and out.format != "npy" and not out.save_all:
        # A plain layer writes one file per filter, a depthwise one (on up to 4
        # channels) one image per filter: more than one filter is more than one output.
        names = job.stack.output_names()
        if len(names) > 1:
            raise OptionError(_stdout_count_message(len(names), names))
    if out.to_stdout and job.print_maps:
        raise OptionError("--print: standard output already carries the image of -o -; drop one of them")
    if json_lines and (out.to_stdout or job.print_maps):
        other = "the image of -o -" if out.to_stdout else "the --print rows"
        raise OptionError(f"--json: standard output already carries {other}; drop one of them")
    if out.montage and input_count > 1 and "{stem}" not in out.montage:
        raise OptionError(f"--montage: {shorten(out.montage)} must contain {{stem}} when there are {input_count} inputs")
    if out.save_all and out.to_stdout:
        raise OptionError("--save-all: cannot write every layer to standard output; use -o DIR")
    if out.to_stdout and out.format == "zarr":
        raise OptionError("--format zarr: a zarr array is a folder and cannot go to standard output; use -o DIR "
                          "or --format npy")


__all__ = ["ReadSpec", "OutputSpec", "Job", "ReadFile", "InputResult", "PlannedFile", "process", "planned_files",
           "planned_outputs", "files_read", "overwritten_read", "check_job", "check_template", "folder_problem",
           "output_path", "montage_path", "input_stem", "map_groups", "NAME_FIELDS", "ConvcliError"]
