"""The property checks each reader's fuzzer runs on one case, in-process.

Each ``check_*`` returns ``"ok"`` (read correctly), ``"error"`` (a one-line ConvcliError
naming the file) or the label of a known issue-18 category, and raises AssertionError (or
the unexpected exception itself) otherwise — hypothesis then shrinks the case.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from convcli.cli import cli
from convcli.errors import ConvcliError

from fuzzlib import MAX_PIXELS, Hang, check_error_line, shown_forms, classify, finite_and_bounded, quiet_warnings, time_bound


def _guard(call, name: str):
    """(result, outcome): run ``call`` under the time bound, sorting its failure."""
    with quiet_warnings(), time_bound():
        try:
            return call(), "ok"
        except ConvcliError as err:
            check_error_line(str(err), name)
            return None, "error"
        except Hang:
            raise
        except Exception as err:  # noqa: BLE001 - sorted below; anything unknown re-raises
            label = classify(err)
            if label is None:
                raise
            return None, label


def cli_case(args: list[str], name: str, *, statuses=(0, 1, 2)) -> tuple[int, str]:
    """Run the CLI in-process; (exit status, stderr). Fails on a traceback or a non-one-line error."""
    with quiet_warnings(), time_bound():
        result = CliRunner().invoke(cli, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        label = classify(result.exception)
        if label is not None:
            return -1, label
        raise result.exception
    assert result.exit_code in statuses, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    # Library log lines (tifffile's logger) are issue 18 §7's (branch errors); counted, not failed on.
    errors = [line for line in lines if not LIBRARY_NOISE.match(line)]
    for line in lines:
        if line not in errors:
            NOISE[f"library line on stderr: {line[:100]}"] += 1
    if result.exit_code != 0:
        assert errors, "a failure without a message"
        # One line for the failed input; `apply` on one input prints no summary line.
        assert len(errors) == 1, f"{len(errors)} lines on stderr: {result.stderr!r}"
        message = errors[0]
        assert message.startswith("convcli: "), message
        label = _known_in_message(message)
        if label:
            return result.exit_code, label
        names = (name,) if isinstance(name, str) else name
        check_error_line(message, next((n for n in names if any(f in message for f in shown_forms(n))), names[0]))
    return result.exit_code, result.stderr


#: Lines a library prints or logs on stderr (tifffile's ``<TiffTag.fromfile> raised …``, libtiff's
#: ``ZIPDecode: …``): anything that is not convcli's own line and not a traceback.
LIBRARY_NOISE = re.compile(r"^(?!convcli: )(?!Traceback)(?!  File )")
NOISE: Counter = Counter()


def _known_in_message(message: str) -> str | None:
    class _Text(Exception):
        pass

    return classify(_Text(message))


def _dirty_memory() -> None:
    junk = [bytearray(b"\xab" * size) for size in (512, 1000, 3072, 4096, 10000, 65536, 300000)]
    junk += [np.full(size, 0xCD, np.uint8) for size in (1000, 3072, 4096, 12288, 65536)]
    del junk


def check_image(path: Path, out_dir: Path) -> str:
    """read_header and read_input agree, the pixels are finite, and `apply` with an identity
    depthwise 1×1 kernel writes exactly the pixels read (or every step fails in one line)."""
    from convcli.io import read_header, read_input

    name = str(path)
    header, _ = _guard(lambda: read_header(path), name)
    loaded, outcome = _guard(lambda: read_input(path, max_pixels=MAX_PIXELS), name)
    if loaded is not None:
        finite_and_bounded(loaded.array)
        if header is not None:
            assert tuple(header[0]) == loaded.array.shape, (header, loaded.array.shape)
        # Pixels a decoder never wrote hold whatever the memory held: fill freed memory with a
        # pattern, read again, and the two reads must agree.
        _dirty_memory()
        again, _ = _guard(lambda: read_input(path, max_pixels=MAX_PIXELS), name)
        assert again is not None and np.array_equal(again.array, loaded.array), "two reads gave different pixels"
    for stale in out_dir.glob("*"):
        stale.unlink()
    status, stderr = cli_case(["apply", name, "-k", "1x1: 1", "--depthwise", "--format", "npy", "-o", str(out_dir),
                               "-q", "-j", "1", "--max-pixels", str(MAX_PIXELS)], name, statuses=(0, 1))
    written = sorted(out_dir.glob("*.npy"))
    if status == 0:
        assert loaded is not None, f"apply read {name} but read_input refused it"
        assert len(written) == 1, written
        maps = np.load(written[0])
        np.testing.assert_array_equal(maps, loaded.array.astype(np.float32).reshape(maps.shape))
    else:
        assert not written, f"a failed input left {written}"
        assert not list(out_dir.glob(".*")), "a temporary file was left behind"
    return outcome


def check_kernel(source: str, name: str) -> str:
    """load_kernels gives finite float32-range weights, or one line naming the source;
    `kernels SOURCE` and `apply` with it agree with that."""
    from convcli.kernels import load_kernels

    bank, outcome = _guard(lambda: load_kernels(source), name)
    if bank is not None:
        for kernel in bank.kernels:
            weights = np.asarray(kernel.weights, dtype=np.float64)
            assert np.isfinite(weights).all() and np.abs(weights).max(initial=0) <= np.finfo(np.float32).max
            assert weights.size > 0
            assert np.isfinite(float(kernel.bias))
    status, _ = cli_case(["kernels", source], name, statuses=(0, 2))
    if outcome == "ok":
        assert status == 0, f"load_kernels read {name} but `convcli kernels` refused it"
    elif outcome == "error":
        assert status == 2, f"load_kernels refused {name} but `convcli kernels` exited {status}"
    return outcome


def check_pipeline(path: Path, image: Path, out_dir: Path) -> str:
    """load_pipeline, `shape --pipeline` and `apply --pipeline` on a small array: ok or one line."""
    from convcli.pipeline import load_pipeline

    name = str(path)
    _pipeline, outcome = _guard(lambda: load_pipeline(path), name)
    status, _ = cli_case(["shape", "--input", "9x11x3", "--pipeline", name], name)
    if outcome == "error":
        assert status == 2, f"load_pipeline refused {name} but `shape` exited {status}"
    for stale in out_dir.glob("*"):
        stale.unlink()
    # A layer that does not fit the array is the pipeline's fault or the input's: either is named.
    cli_case(["apply", str(image), "--pipeline", name, "--format", "npy", "-o", str(out_dir), "-q", "-j", "1"],
             (name, str(image)) if outcome == "ok" else name)
    return outcome


def check_table(path: Path) -> str:
    """A .csv/.txt table: read_input and read_header agree, values finite; else one line."""
    from convcli.io import read_header, read_input

    name = str(path)
    header, _ = _guard(lambda: read_header(path), name)
    loaded, outcome = _guard(lambda: read_input(path), name)
    if loaded is not None:
        finite_and_bounded(loaded.array)
        if header is not None:
            assert tuple(header[0]) == loaded.array.shape
    status, _ = cli_case(["shape", name, "-k", "1x1: 1"], name, statuses=(0, 1, 2))
    if outcome == "ok":
        assert status in (0, 2), status  # 2: the signal too short for the layer is a usage error
    return outcome
