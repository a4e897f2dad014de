"""The ``convcli`` command line: options → library calls → reports.

Only this module imports Click. Library errors (:class:`ConvcliError`) become one
line on standard error and the exit status they carry (2 usage, 1 an input failed).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click

from . import __version__
from ._text import shorten_quoted
from .errors import ConvcliError, ExitStatus, OptionError
from .layer import MAX_INTEGER, ConvSpec, Padding, PoolSpec, parse_pair, parse_slope

ALGORITHMS = ("auto", "direct", "separable", "fft")


# --- parameter types --------------------------------------------------------------------------

class LibraryType(click.ParamType):
    """A value parsed by a library function; its OptionError becomes click's usage error."""

    def __init__(self, name: str, parse, parsed_type: type) -> None:
        self.name = name
        self._parse = parse
        self._parsed_type = parsed_type

    def convert(self, value, param, ctx):
        if isinstance(value, self._parsed_type):
            return value
        option = f"--{param.name.replace('_', '-')}" if param is not None else "value"
        try:
            return self._parse(value, option)
        except OptionError as err:
            self.fail(str(err).split(": ", 1)[-1], param, ctx)


# One number N parses to a SinglePair: on a 1-D signal it means 1×N (Keras Conv1D), NH,NW stays 2-D.
PAIR = LibraryType("N|NH,NW", parse_pair, tuple)
PADDING = LibraryType("valid|same|full|causal|P|PH,PW|T,B,L,R", Padding.parse, Padding)
SLOPE = LibraryType("FLOAT", parse_slope, float)


def _parse_size(value, option):
    from .io.bands import parse_size

    return parse_size(value, option)


SIZE = LibraryType("SIZE", _parse_size, int)


def _choice(*values: str) -> click.Choice:
    return click.Choice(values, case_sensitive=False)


# --- error handling ---------------------------------------------------------------------------

class _Interrupted(Exception):
    """Ctrl-C, carried past click's own handler (which prints a blank line first)."""


class ConvcliGroup(click.Group):
    """A group whose errors are one line on stderr with a meaningful exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted() from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from ._noise import silence_libraries

        silence_libraries(loggers=False)  # standard error carries convcli's own lines only
        try:
            status = super().main(args=args, prog_name=prog_name or "convcli", complete_var=complete_var,
                                  standalone_mode=False, **extra)
        except click.exceptions.Exit as done:
            status = done.exit_code
        except click.exceptions.NoArgsIsHelpError as err:
            # `convcli` alone: the help, on stderr (it is not data), as a usage error.
            click.echo(err.ctx.get_help() if err.ctx is not None else err.format_message(), err=True)
            status = ExitStatus.USAGE
        except click.UsageError as err:
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx is not None else ""
            click.echo(f"convcli: error: {shorten_quoted(err.format_message())}{hint}", err=True)
            status = ExitStatus.USAGE
        except click.ClickException as err:
            click.echo(f"convcli: error: {shorten_quoted(err.format_message())}", err=True)
            status = err.exit_code
        except ConvcliError as err:
            click.echo(f"convcli: error: {err}", err=True)
            status = err.exit_status
        except (_Interrupted, KeyboardInterrupt, click.exceptions.Abort):
            click.echo("convcli: interrupted", err=True)
            status = ExitStatus.INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`convcli … | head`): not an error of ours.
            sys.stderr.close()
            status = ExitStatus.OK
        except OSError as err:
            # A write to standard output failed (a full disk behind `> file`, /dev/full, EIO):
            # one line, and no second failure when Python flushes stdout at exit.
            from .batch import silence_stdout

            silence_stdout()
            click.echo(f"convcli: error: {err.filename or 'standard output'}: cannot write: {err.strerror or err}",
                       err=True)
            status = ExitStatus.INPUT_FAILED
        status = int(status or 0)
        if standalone_mode:
            sys.exit(status)
        return status


# --- shared options ---------------------------------------------------------------------------

def layer_options(func):
    """The layer options of SPEC §1, shared by ``apply`` and ``shape``."""
    options = [
        click.option("-k", "--kernel", "kernels", multiple=True, metavar="PATH|NAME",
                     help="Kernel file (.yaml/.yml/.json/.mat/.npy), built-in name, or inline "
                          "'3x3: 0,1,0 0,1,0 0,1,0'. Repeat to stack filters."),
        click.option("--pipeline", type=click.Path(dir_okay=False), metavar="FILE",
                     help="A YAML/JSON file of conv and pool layers to run in order."),
        click.option("--stride", type=PAIR, default="1", show_default=True, help="Stride N or NH,NW."),
        click.option("--padding", type=PADDING, default="valid", show_default=True,
                     help="valid, same (TensorFlow: odd pixel bottom/right), full, causal (1-D), "
                          "or explicit P | PH,PW | T,B,L,R pixels."),
        click.option("--border", type=_choice("zeros", "reflect", "replicate", "circular"), default="zeros",
                     show_default=True, help="What the padding holds (PyTorch padding_mode names)."),
        click.option("--dilation", type=PAIR, default="1", show_default=True, help="Dilation N or NH,NW."),
        click.option("--depthwise", is_flag=True,
                     help="Apply each 2-D kernel to every channel separately (Keras DepthwiseConv2D)."),
        click.option("--flip", is_flag=True,
                     help="Rotate kernels 180° first: true convolution instead of cross-correlation."),
        click.option("--activation", type=_choice("none", "relu", "leaky-relu", "sigmoid", "tanh", "abs"),
                     default="none", show_default=True, help="Activation after the bias."),
        click.option("--negative-slope", type=SLOPE, default=0.3, show_default=True,
                     help="Slope of leaky-relu for x < 0 (Keras' default 0.3)."),
        click.option("--pool", type=_choice("max", "avg"), default=None, help="Pool after the activation."),
        click.option("--pool-size", type=PAIR, default="2", show_default=True, help="Pool window N or NH,NW."),
        click.option("--pool-stride", type=PAIR, default=None, help="Pool stride (default: the pool size)."),
        click.option("--pool-padding", type=_choice("valid", "same"), default="valid", show_default=True,
                     help="Pool padding, Keras rules (same: max ignores padding, avg counts real cells)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _conv_spec(params: dict) -> ConvSpec:
    return ConvSpec.from_options(
        stride=params["stride"], padding=params["padding"], dilation=params["dilation"],
        border=params["border"], flip=params["flip"], depthwise=params["depthwise"],
        activation=params["activation"], negative_slope=params["negative_slope"],
    )


def _pool_spec(params: dict) -> PoolSpec | None:
    if params["pool"] is None:
        return None
    return PoolSpec.from_options(mode=params["pool"], size=params["pool_size"], stride=params["pool_stride"],
                                 padding=params["pool_padding"])


_LAYER_KEYS = ("stride", "padding", "border", "dilation", "depthwise", "flip", "activation", "negative_slope",
               "pool", "pool_size", "pool_stride", "pool_padding")


def _build_stack(params: dict, *, shape_only: bool = False):
    """The layer stack from ``--pipeline`` or from ``-k`` + layer options."""
    from .stack import Stack

    ctx = click.get_current_context()
    if params["pipeline"]:
        given = [k for k in _LAYER_KEYS if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE]
        if params["kernels"] or given or params.get("filters") or params.get("kernel_size"):
            others = ["-k"] if params["kernels"] else []
            others += [f"--{k.replace('_', '-')}" for k in given]
            others += ["--filters/--kernel-size"] if params.get("filters") or params.get("kernel_size") else []
            raise OptionError(f"--pipeline: the layers come from the file; drop {', '.join(others)}")
        from .pipeline import load_pipeline

        return load_pipeline(params["pipeline"])
    conv, pool = _conv_spec(params), _pool_spec(params)
    if params["kernels"]:
        if params.get("filters") or params.get("kernel_size"):
            raise OptionError("-k: the kernels give the filters and their size; drop --filters/--kernel-size")
        from .kernels import load_kernels

        bank = load_kernels(*params["kernels"])
        return Stack.single(bank, conv, pool, use_bias=not params.get("no_bias"))
    if shape_only and (params.get("filters") or params.get("kernel_size")):
        kernel_size = params.get("kernel_size") or parse_pair(3, "--kernel-size")
        return Stack.single(None, conv, pool, filters=params.get("filters") or 1, kernel_size=kernel_size,
                            use_bias=not params.get("no_bias"))
    if shape_only:
        raise OptionError("no layer: give --filters F --kernel-size K, -k KERNEL, or --pipeline FILE")
    raise OptionError("no kernel: give at least one -k PATH|NAME (see 'convcli kernels'), or --pipeline FILE")


# --- commands ---------------------------------------------------------------------------------

def _print_version(ctx: click.Context, _param, value: bool) -> None:
    """``--version``: the version, then the engines this install runs (SPEC §6)."""
    if not value or ctx.resilient_parsing:
        return
    from .engine import engines  # only here: the engine (and cv2's probe) stay out of start-up

    click.echo(f"convcli, version {__version__}")
    click.echo(f"engines: {', '.join(engines())}")
    ctx.exit()


@click.group(name="convcli", cls=ConvcliGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and the active engines, and exit.")
def cli():
    """Apply CNN convolution layers to images, with Keras/PyTorch semantics.

    convcli reads images and convolution kernels (YAML/JSON/.npy, built-ins,
    Keras or PyTorch filter banks), runs the multi-channel, multi-filter
    cross-correlation of a CNN layer with stride, padding, dilation, activation
    and pooling, and writes the feature maps as images or arrays, prints them,
    or reports output shapes and parameter counts.

    \b
    Examples:
      convcli apply sample_images/building.png -k vertical-line -k horizontal-line --padding same -o out/
      convcli shape --input 725x1280x3 --filters 32 --kernel-size 4
      convcli kernels sobel-x
    """


@cli.command(short_help="Apply a layer (or a --pipeline of layers) to images or arrays.")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@layer_options
@click.option("--algorithm", type=_choice(*ALGORITHMS), default="auto", show_default=True,
              help="Engine path: direct (GEMM), separable (two 1-D passes), fft, or auto (cost model).")
@click.option("--mode", type=_choice("keep", "gray", "rgb", "rgba"), default="keep", show_default=True,
              help="Convert images first (gray: Pillow's luma; palette images become RGB).")
@click.option("--scale", type=_choice("raw", "unit"), default="raw", show_default=True,
              help="raw pixel values (0..255 / 0..65535) or unit (divided by the type's maximum).")
@click.option("-o", "--output-dir", default=None, metavar="DIR|-",
              help="Output folder (default '.'), or '-' for standard output (a single output only).")
@click.option("--name", "name_template", default="{stem}_{filter}.{ext}", show_default=True,
              help="Output file name template under -o; fields {stem} {filter} {index} {ext}, each with an "
                   "optional format spec ({index:03d}); may name sub-folders ({stem}/{filter}.{ext}).")
@click.option("--format", "fmt", type=_choice("png", "png16", "tiff", "npy", "zarr"), default="png",
              show_default=True, help="png (8-bit), png16 (16-bit), tiff (float32), npy or zarr (one H×W×F float32 "
                                      "array per input).")
@click.option("--tiff-compression", type=_choice("none", "deflate", "zstd"), default="none", show_default=True,
              help="Compression of --format tiff files (zstd needs the imagecodecs package).")
@click.option("--normalize", type=_choice("minmax", "clip", "abs", "offset"), default="minmax",
              show_default=True, help="How png/png16 map values to pixels.")
@click.option("--compress-level", type=click.IntRange(0, 9), default=None,
              help="PNG compression 0-9 on zlib's scale (default 1: fast; 0 stores; 1-5 ISA-L, 6-9 zlib; "
              "3-9 try every PNG filter per row: smaller, 6-15x slower).")
@click.option("--print", "print_maps", is_flag=True,
              help="Print each feature map's rows to standard output (files only with -o).")
@click.option("--json", "json_lines", is_flag=True, help="One JSON object per input on standard output.")
@click.option("--montage", metavar="FILE", help="Also write all maps of an input into one labelled PNG grid "
              "({stem} in FILE for several inputs).")
@click.option("--save-all", is_flag=True, help="With --pipeline: write every layer's maps to {stem}/NN-layer/.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: the number of CPUs; 1 runs in this process); with "
                   "--scheduler local, the LocalCluster's workers.")
@click.option("--scheduler", metavar="ADDRESS|local", default=None,
              help="Run the inputs as dask.distributed tasks: tcp://host:port of a running 'dask scheduler', "
                   "or local for a LocalCluster of -j processes (needs the cluster extra; outputs on shared "
                   "storage).")
@click.option("--scheduler-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="SECONDS", help="Give up reaching the --scheduler (exit 2) after this long.")
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders of folder inputs.")
@click.option("--skip-existing", is_flag=True, help="Skip inputs whose outputs all exist (resume a batch).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Refuse images with more pixels than this (default: Pillow's 89,478,485).")
@click.option("--memory-limit", type=SIZE, default="1GiB", show_default=True,
              help="Memory one run may use (512MiB, 2GiB, bytes); larger images stream through the layers in "
                   "bands of rows (-j workers share it).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary on standard error.")
def apply(inputs, **params):
    """Apply a convolution layer (or a --pipeline of layers) to images or arrays.

    INPUT is an image (PNG, JPEG, TIFF, BMP, WebP, GIF; 8 or 16 bit), a .npy,
    .csv or .txt array (one row or column is a 1-D signal), a folder of them,
    or '-' for standard input. Feature maps are written as
    {stem}_{filter}.png in the output folder.

    \b
    Examples:
      convcli apply photo.png -k vertical-line -k horizontal-line --padding same -o out/
      convcli apply photos/ -k edge --activation relu --pool max -o maps/ -j 2
      cat a.png | convcli apply - -k box-blur --depthwise --padding same -o - > b.png
      convcli apply sample_images/bump-1d.csv -k bump --print
    """
    from .apply import Job, OutputSpec, ReadSpec, files_read
    from .batch import expand_inputs, run_batch

    stack = _build_stack(params)
    if params["save_all"] and not params["pipeline"]:
        raise OptionError("--save-all: needs --pipeline FILE (a single layer has only one set of maps)")
    stack.check_runnable()
    stack.check_algorithm(params["algorithm"])
    out_dir = params["output_dir"]
    if out_dir is None:
        out_dir = None if params["print_maps"] else Path(".")
    elif out_dir != "-":
        out_dir = Path(out_dir)
    job = Job(
        stack=stack,
        read=ReadSpec(mode=params["mode"], scale=params["scale"], max_pixels=params["max_pixels"]),
        output=OutputSpec(directory=out_dir, name=params["name_template"], format=params["fmt"],
                          normalize=params["normalize"], compress_level=params["compress_level"],
                          montage=params["montage"], save_all=params["save_all"],
                          skip_existing=params["skip_existing"], tiff_compression=params["tiff_compression"]),
        algorithm=params["algorithm"],
        print_maps=params["print_maps"],
        reads=files_read(stack, params["kernels"], params["pipeline"]),
        memory_limit=params["memory_limit"],
    )
    items = expand_inputs(list(inputs), recursive=params["recursive"])
    if not items:
        raise OptionError(f"INPUT: no image or array files in {', '.join(inputs)}")
    summary = run_batch(items, job, jobs=params["jobs"], quiet=params["quiet"], json_lines=params["json_lines"],
                        cluster=_cluster_spec(params))
    return summary.exit_status


def _cluster_spec(params: dict):
    """``--scheduler``/``--scheduler-timeout`` as a ClusterSpec, or None (dask is then never imported)."""
    ctx = click.get_current_context()
    timeout_given = ctx.get_parameter_source("scheduler_timeout") == click.core.ParameterSource.COMMANDLINE
    address = params["scheduler"]
    if address is None:
        if timeout_given:
            raise OptionError("--scheduler-timeout: only with --scheduler ADDRESS")
        return None
    from .cluster import LOCAL, ClusterSpec

    timeout = params["scheduler_timeout"]
    if not math.isfinite(timeout):
        raise OptionError(f"--scheduler-timeout: must be a finite number of seconds, got {timeout}")
    address = address.strip()
    if not address:
        raise OptionError("--scheduler: give tcp://host:port of a running 'dask scheduler', or local")
    if address.lower() == LOCAL:
        address = LOCAL
    elif params["jobs"] is not None:
        raise OptionError(f"-j: the workers of {address} are set where they start (dask worker --nworkers N);"
                          " drop -j, or use --scheduler local")
    return ClusterSpec(address, timeout)


@cli.command(short_help="Report shapes, parameters and MACs of a layer or a stack.")
@click.argument("image", required=False, type=click.Path(dir_okay=False))
@click.option("--input", "input_shape", metavar="HxWxC",
              help="Input shape HxWxC (also H,W,C; HxW = one channel; L = a 1-D signal of length L).")
@click.option("--filters", type=click.IntRange(min=1, max=MAX_INTEGER), default=None, help="Number of filters F.")
@click.option("--kernel-size", type=PAIR, default=None, metavar="K|KH,KW",
              help="Kernel size K or KH,KW (default 3; K on a 1-D signal means 1×K, as Keras Conv1D).")
@layer_options
@click.option("--mode", type=_choice("keep", "gray", "rgb", "rgba"), default="keep", show_default=True,
              help="With IMAGE: the channels apply would see after --mode.")
@click.option("--no-bias", is_flag=True, help="Count parameters without biases (Keras use_bias=False).")
@click.option("--locally-connected", is_flag=True,
              help="Count parameters as a locally-connected layer (one filter per output position).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--explain", is_flag=True, help="Show each formula with the numbers filled in.")
def shape(image, input_shape, **params):
    """Report output shapes, weight shapes, parameters and MACs of a layer or stack.

    The input shape comes from --input or from IMAGE's header (not decoded).
    A 1-D signal (--input L, or a .npy/.csv/.txt of one row or column) gets
    Keras' Conv1D layers: one number N (--kernel-size, --stride, --padding, …)
    acts along its length; a one-row image is 2-D.

    \b
    Examples:
      convcli shape --input 725x1280x3 --filters 32 --kernel-size 4
      convcli shape photo.jpg -k sobel-x -k sobel-y --padding same --pool max
      convcli shape --input 224x224x3 --pipeline examples/vgg16.yaml --json
    """
    from . import report
    from .geometry import parse_input

    if image is None and input_shape is None:
        raise OptionError("no input shape: give --input HxWxC (or L for a 1-D signal) or an IMAGE file")
    if image is not None and input_shape is not None:
        raise OptionError(f"give the input shape either as --input ({input_shape}) or as an IMAGE file ({image}), "
                          "not both")
    if input_shape is not None:
        shape3, signal = parse_input(input_shape)
    else:
        from ._noise import quiet_library_loggers
        from .io import read_header

        quiet_library_loggers()  # tifffile logs odd tags through logging
        (h, w, c), kind = read_header(image)
        mode = params["mode"]
        shape3, signal = (h, w, {"gray": 1, "rgb": 3, "rgba": 4}.get(mode, c)), kind == "signal"
    stack = _build_stack(params, shape_only=True)
    if signal:
        stack = stack.for_signal()
    layers = stack.geometry(shape3, locally_connected=params["locally_connected"])
    if params["as_json"]:
        click.echo(report.shape_json(shape3, layers))
    else:
        report.print_shape_table(shape3, layers, explain=params["explain"])
    return ExitStatus.OK


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def kernels(name, as_json):
    """List the built-in kernels, or print one kernel's weights.

    NAME may also be a kernel file or an inline 'WxH: …' matrix.

    \b
    Examples:
      convcli kernels
      convcli kernels sobel-x
    """
    from . import report
    from .kernels import builtin_catalog, load_kernels

    if name is None:
        report.print_kernel_list(builtin_catalog(), as_json=as_json)
    else:
        report.print_kernel(load_kernels(name), as_json=as_json)
    return ExitStatus.OK


def main(argv=None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="convcli")


__all__ = ["cli", "main"]
