"""The error contract, checked from outside: a real ``python -m convcli`` process per case.

SPEC §1/§3 and the README promise: an error a user can cause is one line naming the
culprit, exit status 2 for a usage error and 1 for a failed input, never a traceback,
never a hang, nothing from a library on standard error, and no output file left under a
final name. This module drives every kind of error through a subprocess:

- every value-taking option of every command, with a hostile value of its type
  (:func:`option_cases` walks Click's parameters, so a new option without a case fails
  :func:`test_every_option_is_walked`);
- every :class:`~convcli.errors.ConvcliError` subclass, through each reader that raises it
  (:data:`CASES`; :func:`test_every_error_class_is_driven` checks the coverage);
- the seven defects of the error-contract issue, each in a test named after it.

The subprocesses run four at a time in one module fixture, so the whole module stays
within a few seconds of CPU per core.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import pytest
from PIL import Image

import convcli.errors as errors
from convcli.cli import cli

HUGE = "9" * 5000  # more digits than Python converts to int (4,300)
TIMEOUT = 60  # seconds; a case that blocks (a FIFO read) fails instead of hanging the suite

# Text that only a library, never convcli, writes on standard error.
LIBRARY_NOISE = re.compile(r"Traceback|Warning:|warnings\.warn|RuntimeWarning|UserWarning|DeprecationWarning"
                           r"|tifffile|TiffTag|\.py:\d+|libpng|libjpeg|libtiff|TIFFRead", re.I)


@dataclass(frozen=True)
class Case:
    """One command and what the contract says about its result.

    ``args`` may hold ``{d}`` (the corpus folder) and ``{out}`` (this case's own output
    folder, which must hold only ``outputs`` afterwards). ``failed``: inputs that fail
    (one line each); ``summary``: the batch ends with its summary line; ``warnings``: lines
    ``convcli: FILE: warning: …`` expected; ``error``: the ConvcliError subclass the case
    drives; ``match``: a regex the error line must match.
    """

    id: str
    args: tuple[str, ...]
    status: int
    error: type | None = None
    match: str = ""
    failed: int = 1
    summary: bool = False
    warnings: int = 0
    outputs: tuple[str, ...] = ()
    stdin: bytes | None = None


# --- the corpus ---------------------------------------------------------------------------------

def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG header declaring width×height, with almost no pixel data (a 'bomb')."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _npy_header(shape: tuple[int, ...], dtype: str = "<f4", *, data: bytes = b"") -> bytes:
    """A .npy file with the given header and ``data`` after it (none: a header-only file)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def _tiff_with_bad_tags(path: Path) -> None:
    """A gray TIFF whose two private tags point far past the end of the file (tifffile logs each)."""
    import tifffile

    tifffile.imwrite(path, (np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32),
                     extratags=[(65000, "I", 40, tuple(range(40)), False), (65001, "I", 40, tuple(range(40)), False)])
    data = bytearray(path.read_bytes())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] in (65000, 65001):
            data[entry + 8:entry + 12] = struct.pack("<I", 10**9)
    path.write_bytes(bytes(data))


def build_corpus(d: Path) -> None:
    rng = np.random.default_rng(18)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(d / "ok.png")
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(d / "ok2.png")
    good = (d / "ok.png").read_bytes()
    (d / "cut.png").write_bytes(good[: len(good) // 2])
    (d / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (d / "empty.png").write_bytes(b"")
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(d / "photo.jpg", quality=90)
    jpeg = (d / "photo.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    _tiff_with_bad_tags(d / "tags.tif")
    _png_header_only(d / "bomb.png", 20_000, 20_000)
    _png_header_only(d / "uhd.png", 3840, 2160)  # 4K header: the memory estimate refuses before decoding
    np.save(d / "five.npy", rng.random((8, 8, 5)).astype(np.float32))
    np.save(d / "nan.npy", np.pad(np.array([[1, np.nan], [3, 4]], np.float32), 2))
    np.save(d / "big-values.npy", np.full((8, 8), 1e38, np.float32))
    np.save(d / "six-d.npy", np.zeros((1, 2, 2, 2, 2, 2), np.float32))
    (d / "ragged.csv").write_text("1,2,3\n4,5\n")
    (d / "words.txt").write_text("one two\nthree four\n")
    (d / "bad-header.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',}")  # tokenizer error
    (d / "short.npy").write_bytes(_npy_header((400, 400)))  # declares 640 kB, holds none
    # kernels
    (d / "k-syntax.yaml").write_text("weights: [[1, 2\n")
    (d / "k-syntax.json").write_text('{"weights": [[1, 2]')
    (d / "k-key.yaml").write_text("weights: [[1]]\ncolour: red\n")
    (d / "k-ragged.yaml").write_text("weights: [[1, 2], [3]]\n")
    (d / "k-nan.json").write_text('{"weights": [[1, NaN]]}')
    (d / "k-empty.yaml").write_text("")
    (d / "k-bad.mat").write_text("3 x\n1 2 3\n")
    (d / "k.txt").write_text("1 2 3\n")
    (d / "k-dir.yaml").mkdir()
    (d / "k-huge.yaml").write_text(f"weights: [[1{HUGE}]]\n")
    (d / "k-huge.json").write_text(f'{{"weights": [[1, 2], [3, 1{HUGE}]]}}')
    (d / "k-big.yaml").write_text("weights: [" + "0," * 600_000 + "0]\n")  # 1.1 MiB
    (d / "k-bank.npy").write_bytes(_npy_header((3, 3, 3, 10_000)))  # header only: 10,000 filters
    (d / "k-huge.npy").write_bytes(_npy_header((8000, 8000, 1, 1)))  # 64 M weights declared, none stored
    np.save(d / "k-64.npy", rng.standard_normal((3, 3, 3, 64)).astype(np.float32))
    (d / "k-bad-header.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4',}")
    np.save(d / "k-5d.npy", np.zeros((2, 2, 2, 2, 2), np.float32))
    (d / "k-big-kernel.yaml").write_text("weights: " + json.dumps(np.ones((20, 20)).tolist()) + "\n")
    # pipelines
    (d / "p-key.yaml").write_text("layers:\n  - conv: {kernels: [edge], strides: 2}\n")
    (d / "p-huge.yaml").write_text(f"layers:\n  - conv: {{kernels: [edge], stride: 1{HUGE}}}\n")
    (d / "p-long-kernel.yaml").write_text(f"layers:\n  - conv: {{kernels: [{'k' * 300}.yaml]}}\n")
    (d / "p-long-name.yaml").write_text(f"layers:\n  - conv: {{kernels: [edge], name: {'n' * 300}}}\n")
    (d / "p-shape-only.yaml").write_text("layers:\n  - conv: {filters: 4, kernel_size: 3}\n")
    (d / "p-fifo-kernel.yaml").write_text("layers:\n  - conv: {kernels: [fifo.yaml]}\n")
    # special files: never opened for reading
    if hasattr(os, "mkfifo"):
        os.mkfifo(d / "fifo.yaml")
        os.mkfifo(d / "fifo.png")
        os.mkfifo(d / "fifo-pipeline.yaml")
    (d / "not-a-folder").write_text("a file where -o wants a folder\n")
    if hasattr(socket, "AF_UNIX"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        here = os.getcwd()
        try:
            os.chdir(d)  # a relative name: socket paths are limited to about 100 bytes
            sock.bind("sock.png")
        finally:
            os.chdir(here)
            sock.close()


# --- the cases ----------------------------------------------------------------------------------

def _apply(*extra: str) -> tuple[str, ...]:
    return ("apply", *extra)


OK = "{d}/ok.png"
CASES: list[Case] = [
    # OptionError: combinations and options only the command as a whole can judge
    Case("no-kernel", _apply(OK, "-o", "{out}"), 2, errors.OptionError, "no kernel: give at least one -k"),
    Case("pipeline-and-k", _apply(OK, "--pipeline", "{d}/p-key.yaml", "-k", "edge"), 2, errors.OptionError,
         "--pipeline: the layers come from the file; drop -k"),
    Case("stdout-two-inputs", _apply(OK, "{d}/ok2.png", "-k", "edge", "-o", "-"), 2, errors.OptionError,
         "-o -: writes a single output"),
    Case("json-and-print", _apply(OK, "-k", "edge", "--json", "--print"), 2, errors.OptionError, "--json:"),
    Case("output-is-a-file", _apply(OK, "-k", "edge", "-o", "{d}/not-a-folder"), 2, errors.OptionError,
         "not a directory"),
    Case("name-unknown-field", _apply(OK, "-k", "edge", "--name", "{nope}.png", "-o", "{out}"), 2,
         errors.OptionError, "unknown field 'nope'"),
    Case("overwrite-the-input", _apply(OK, "-k", "edge", "--name", "ok.png", "-o", "{d}"), 2, errors.OptionError,
         "would overwrite the input"),
    Case("input-twice", _apply(OK, OK, "-k", "edge", "-o", "{out}"), 2, errors.OptionError, "is given twice"),
    Case("save-all-without-pipeline", _apply(OK, "-k", "edge", "--save-all", "-o", "{out}"), 2, errors.OptionError,
         "--save-all: needs --pipeline"),
    Case("pipeline-unknown-key", _apply(OK, "--pipeline", "{d}/p-key.yaml", "-o", "{out}"), 2, errors.OptionError,
         r"p-key.yaml: layers\[0\].conv: unknown key 'strides'"),
    Case("shape-no-input", ("shape", "-k", "edge"), 2, errors.OptionError, "no input shape"),
    Case("kernels-unknown", ("kernels", "no-such-kernel"), 2, errors.KernelError, "no such file or built-in"),
    # KernelError: each kernel reader
    *[Case(f"kernel-{name}", _apply(OK, "-k", f"{{d}}/{name}", "-o", "{out}"), 2, errors.KernelError, match)
      for name, match in [
          ("k-syntax.yaml", "invalid YAML"), ("k-syntax.json", "invalid JSON"),
          ("k-key.yaml", "unknown key 'colour'"), ("k-ragged.yaml", "ragged rows"),
          ("k-nan.json", "NaN and Inf are not allowed"), ("k-empty.yaml", "the file is empty"),
          ("k-bad.mat", "must be 'W H"), ("k.txt", "unsupported kernel file type"),
          ("k-dir.yaml", "is a directory, not a kernel file"), ("k-5d.npy", "got 5-D shape"),
      ]],
    Case("kernel-inline", _apply(OK, "-k", "3x3: 1,2,3", "-o", "{out}"), 2, errors.KernelError,
         "expected 9 values for 3x3, got 3"),
    Case("kernel-unknown-name", _apply(OK, "-k", "no-such-kernel", "-o", "{out}"), 2, errors.KernelError,
         "no such file or built-in kernel"),
    Case("kernel-sizes-differ", _apply(OK, "-k", "edge", "-k", "gaussian-blur", "-o", "{out}"), 2,
         errors.KernelError, "must have the same size"),
    # GeometryError: a usage error for `shape`, an input's failure for `apply`
    Case("shape-kernel-too-large", ("shape", "--input", "8x8", "-k", "{d}/k-big-kernel.yaml"), 2,
         errors.GeometryError, "8"),
    Case("shape-only-layer-applied", _apply(OK, "--pipeline", "{d}/p-shape-only.yaml", "-o", "{out}"), 2,
         errors.GeometryError, "has no weights"),
    Case("apply-kernel-too-large", _apply(OK, "-k", "{d}/k-big-kernel.yaml", "-o", "{out}"), 1,
         errors.GeometryError, "ok.png"),
    # InputError: each input reader
    *[Case(f"input-{name}", _apply(f"{{d}}/{name}", "-k", "edge", "-o", "{out}"), 1, errors.InputError, match)
      for name, match in [
          ("missing.png", "no such file"), ("cut.png", "truncated"), ("garbage.png", "corrupt PNG"),
          ("empty.png", "empty file"), ("ragged.csv", "ragged|row"), ("words.txt", "not a number|numeric|number"),
          ("nan.npy", "NaN"), ("six-d.npy", "6-D array"), ("bad-header.npy", "cannot read .npy header"),
          ("short.npy", "truncated"), ("bomb.png", "400,000,000 pixels is more than the limit"),
      ]],
    Case("input-stdin-garbage", _apply("-", "-k", "edge", "-o", "{out}"), 1, errors.InputError, "<stdin>",
         stdin=b"\x00\x01\x02 not an image"),
    # Over the memory limit an image streams in bands (tests/test_streaming.py); what needs it whole is refused.
    Case("input-too-large-for-memory", _apply("{d}/uhd.png", "-k", "{d}/k-64.npy", "--print", "-o", "{out}"),
         1, errors.InputError, r"uhd.png: --print needs the whole image in memory, about \S+ GiB, more than the 1 GiB"
                               r" memory limit; raise --memory-limit or drop --print"),
    # OutputError: maps that cannot be written as asked
    Case("output-inf-as-png", _apply("{d}/big-values.npy", "-k", "edge", "-o", "{out}"), 1, errors.OutputError,
         "NaN/Inf values cannot be shown as pixels"),
    # a batch: one line per failed input, then the summary; the good input's maps are written
    Case("batch", _apply(OK, "{d}/cut.png", "{d}/missing.png", "{d}/nan.npy", "-k", "edge", "-o", "{out}", "-j", "2"),
         1, errors.InputError, "", failed=3, summary=True, outputs=("ok_edge.png",)),
    # warnings that matter: one line each, exit 0; the rest: nothing
    Case("warning-truncated-jpeg", _apply("{d}/cut.jpg", "-k", "edge", "-o", "{out}"), 0, None,
         "truncated JPEG data: the decoder filled in", failed=0, warnings=1, outputs=("cut_edge.png",)),
    Case("warning-overflow", _apply("{d}/big-values.npy", "-k", "edge", "--format", "npy", "-o", "{out}"), 0, None,
         "float32 overflow", failed=0, warnings=1, outputs=("big-values.npy",)),
    Case("silent-tiff-tags", _apply("{d}/tags.tif", "-k", "edge", "-o", "{out}"), 0, None, "", failed=0,
         outputs=("tags_edge.png",)),
]


# The seven defects of the error-contract issue (also driven through the contract checks).
DEFECT_CASES: list[Case] = [
    # 1. usage errors printed twice
    Case("usage-once-separable", _apply(OK, "-k", "3x3: 1,2,3 4,5,6 7,8,10", "--algorithm", "separable", "-o",
                                        "{out}"), 2, errors.OptionError,
         r"--algorithm separable: kernel 'inline' has rank 3"),
    Case("usage-once-stdout-depthwise", _apply("{d}/five.npy", "-k", "box-blur", "--depthwise", "-o", "-"), 1,
         errors.InputError, "five.npy: -o -: standard output takes a single output"),
    Case("usage-once-name-depthwise", _apply("{d}/five.npy", "-k", "box-blur", "--depthwise", "--name", "x.png",
                                             "-o", "{out}"), 1, errors.InputError,
         "five.npy: --name 'x.png' gives the same file name"),
    # 2. integers with thousands of digits
    Case("huge-int-yaml", _apply(OK, "-k", "{d}/k-huge.yaml", "-o", "{out}"), 2, errors.KernelError,
         r"k-huge.yaml: line 1: weights\[0\]\[0\]: the number '19+…' \(5001 characters\) is too large"),
    Case("huge-int-json", _apply(OK, "-k", "{d}/k-huge.json", "-o", "{out}"), 2, errors.KernelError,
         r"k-huge.json: weights\[1\]\[1\]: the number '19+…' \(5001 characters\) is too large"),
    Case("huge-int-inline", _apply(OK, "-k", f"1x1: 1{HUGE}", "-o", "{out}"), 2, errors.KernelError,
         r"value 1 '19+…' \(5001 characters\) does not fit in float32"),
    Case("huge-int-inline-json", _apply(OK, "-k", f"[[1{HUGE}]]", "-o", "{out}"), 2, errors.KernelError,
         r"inline kernel '\[\[19+…': \[0\]\[0\]: the number '19+…' \(5001 characters\) is too large"),
    Case("huge-int-pipeline", _apply(OK, "--pipeline", "{d}/p-huge.yaml", "-o", "{out}"), 2, errors.OptionError,
         r"p-huge.yaml: line 2: layers\[0\].conv.stride: the number '19+…' \(5001 characters\) is too large"),
    Case("huge-int-shape-input", ("shape", "--input", f"1x{HUGE}", "--filters", "1"), 2, errors.OptionError,
         r"--input: the size '9999999999999999999999999999999999999999…' \(5000 characters\) is more than"),
    Case("huge-int-option", ("shape", "--input", "8x8", "--filters", "1", "--stride", "1" + "0" * 4000), 2,
         errors.OptionError, r"'--stride': '10+…' \(4001 characters\) is more than 2147483647"),
    # 3. non-regular files
    Case("fifo-kernel", _apply(OK, "-k", "{d}/fifo.yaml", "-o", "{out}"), 2, errors.KernelError,
         r"fifo.yaml: is a FIFO \(named pipe\), not a regular file \(only '-' reads standard input\)"),
    Case("fifo-pipeline", _apply(OK, "--pipeline", "{d}/fifo-pipeline.yaml", "-o", "{out}"), 2, errors.OptionError,
         r"fifo-pipeline.yaml: is a FIFO"),
    Case("fifo-named-in-pipeline", _apply(OK, "--pipeline", "{d}/p-fifo-kernel.yaml", "-o", "{out}"), 2,
         errors.KernelError, r"layers\[0\].kernels: .*fifo.yaml: is a FIFO"),
    Case("fifo-input", _apply("{d}/fifo.png", "-k", "edge", "-o", "{out}"), 1, errors.InputError,
         r"fifo.png: is a FIFO"),
    Case("char-device-input", _apply("/dev/zero", "-k", "edge", "-o", "{out}"), 1, errors.InputError,
         r"/dev/zero: is a character device, not a regular file"),
    Case("socket-input", _apply("{d}/sock.png", "-k", "edge", "-o", "{out}"), 1, errors.InputError,
         r"sock.png: is a socket"),
    Case("fifo-shape-image", ("shape", "{d}/fifo.png", "-k", "edge"), 1, errors.InputError, "fifo.png: is a FIFO"),
    # 4. limits checked before the work
    Case("limit-yaml-kernel-file", _apply(OK, "-k", "{d}/k-big.yaml", "-o", "{out}"), 2, errors.KernelError,
         r"k-big.yaml: 1.1 MiB, larger than the 1 MiB allowed for a YAML kernel file"),
    Case("limit-npy-kernel-weights", _apply(OK, "-k", "{d}/k-huge.npy", "-o", "{out}"), 2, errors.KernelError,
         r"k-huge.npy: shape 8000x8000x1x1 holds 64000000 weights, more than the 16777216 allowed"),
    Case("limit-bank-10000-filters", _apply("{d}/uhd.png", "-k", "{d}/k-bank.npy", "-o", "{out}"), 2,
         errors.KernelError, r"k-bank.npy: shape 3x3x3x10000 holds 10000 filters, more than the 4096 allowed"),
    # 5. malformed .npy headers
    Case("npy-header-kernel", _apply(OK, "-k", "{d}/k-bad-header.npy", "-o", "{out}"), 2, errors.KernelError,
         r"k-bad-header.npy: not a valid .npy file: its header cannot be read"),
    Case("npy-header-input", _apply("{d}/bad-header.npy", "-k", "edge", "-o", "{out}"), 1, errors.InputError,
         r"bad-header.npy: cannot read .npy header: TokenError"),
    # 6. over-long names in pipeline layers
    Case("long-name-pipeline-kernel", _apply(OK, "--pipeline", "{d}/p-long-kernel.yaml", "-o", "{out}"), 2,
         errors.KernelError, r"layers\[0\].kernels: 'kkkk.*\(305 characters\): no such kernel file: the name is too"
                             r" long for the file system"),
    Case("long-name-pipeline-layer", _apply(OK, "--pipeline", "{d}/p-long-name.yaml", "-o", "{out}"), 2,
         errors.OptionError, r"layers\[0\].name: 'nnnn.*\(300 characters\) is not a layer name"),
    Case("long-name-input", _apply("{d}/" + "i" * 300 + ".png", "-k", "edge", "-o", "{out}"), 1, errors.InputError,
         "the name is too long for the file system"),
    # 7. library noise: see warning-* and silent-tiff-tags above
]


# --- the option walk ----------------------------------------------------------------------------

#: Hostile values for options whose type says little (strings), with what the line must name;
#: the others get one by type and the line must name the option.
STRING_VALUES = {
    ("apply", "kernels"): ("no-such-kernel", "kernel 'no-such-kernel': no such file or built-in"),
    ("apply", "pipeline"): ("{d}/missing-pipeline.yaml", "missing-pipeline.yaml: cannot read"),
    ("apply", "output_dir"): ("{d}/not-a-folder", "-o .*not-a-folder: not a directory"),
    ("apply", "name_template"): ("{stem[0]}.png", "--name: '{stem\\[0\\]}': attribute or index access"),
    ("apply", "montage"): ("{filter}.png", "--montage: '{filter}': unknown field"),
    ("apply", "memory_limit"): ("9" * 5000 + "GiB", r"--memory-limit.*'9{40}…' \(5003 characters\) is too large"),
    ("apply", "scheduler"): ("nosuch://x:1", r"--scheduler nosuch://x:1: cannot connect: "),
    ("shape", "kernels"): ("9x9: 1", "expected 81 values for 9x9, got 1"),
    ("shape", "pipeline"): ("{d}/fifo-pipeline.yaml", "fifo-pipeline.yaml: is a FIFO"),
    ("shape", "input_shape"): ("0x8x3", "--input: every size must be at least 1"),
}

#: A valid command each option's bad value is added to (the option itself left out).
BASES = {
    "apply": (OK, "-k", "edge", "-o", "{out}"),
    "shape": ("--input", "8x8x3", "--filters", "2"),
}


def _bad_value(command: str, param: click.Parameter) -> str | None:
    if (command, param.name) in STRING_VALUES:
        return STRING_VALUES[(command, param.name)][0]
    kind = param.type
    if isinstance(kind, click.Choice):
        return "nope"
    if isinstance(kind, (click.types.IntParamType, click.types.FloatParamType)):
        return HUGE if isinstance(kind, click.types.IntParamType) else "nan"
    if getattr(kind, "name", "") in ("N|NH,NW", "valid|same|full|causal|P|PH,PW|T,B,L,R", "K|KH,KW"):
        return "1" + HUGE
    if getattr(kind, "name", "") == "FLOAT":
        return "inf"
    return None


def _value_options(command: str) -> list[click.Option]:
    return [p for p in cli.commands[command].params
            if isinstance(p, click.Option) and not p.is_flag and not p.count and p.name not in ("help",)]


def option_cases() -> list[Case]:
    cases = []
    for command, base in BASES.items():
        for param in _value_options(command):
            value = _bad_value(command, param)
            if value is None:
                continue
            flag = max(param.opts, key=len)
            args = list(base)
            if param.name == "kernels" or param.name == "pipeline":
                args = [a for a in args if a not in ("-k", "edge", "--filters", "2")]
            if param.name == "input_shape":
                args = ["--filters", "2"]
            match = STRING_VALUES.get((command, param.name), (None, re.escape(flag)))[1]
            cases.append(Case(f"option-{command}-{flag.lstrip('-')}", (command, *args, flag, value), 2,
                              errors.OptionError if (command, param.name) not in STRING_VALUES else None, match))
    return cases


OPTION_CASES = option_cases()
ALL_CASES = CASES + DEFECT_CASES + OPTION_CASES


# --- running ------------------------------------------------------------------------------------

@dataclass
class Run:
    status: int
    stdout: bytes
    stderr: str
    seconds: float
    maxrss_kb: int
    files: list[str] = field(default_factory=list)  # everything under the case's output folder


def _run(case: Case, corpus: Path) -> Run:
    """``python -m convcli ARGS`` in ``corpus``; its exit status, output, time and own peak memory.

    The child is reaped with ``os.wait4``, which gives its resource usage (``ru_maxrss``);
    a child still running after :data:`TIMEOUT` seconds is killed (a hang fails the case).
    """
    out = corpus / "out" / case.id
    args = [a.replace("{d}", str(corpus)).replace("{out}", str(out)) for a in case.args]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "convcli", *args], cwd=corpus, stdout=stdout, stderr=stderr,
                                stdin=subprocess.PIPE if case.stdin is not None else subprocess.DEVNULL)
        if case.stdin is not None:
            proc.stdin.write(case.stdin)
            proc.stdin.close()
        timer = threading.Timer(TIMEOUT, proc.kill)
        timer.start()
        try:
            _, wait_status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(wait_status)  # reaped here, not by Popen
        seconds = time.perf_counter() - started
        stdout.seek(0)
        stderr.seek(0)
        output, text = stdout.read(), stderr.read().decode("utf-8", "replace")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    return Run(proc.returncode, output, text, seconds, usage.ru_maxrss, files)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    build_corpus(folder)
    return folder


@pytest.fixture(scope="module")
def runs(corpus) -> dict[str, Run]:
    """Every case, four subprocesses at a time (those needing FIFOs or sockets only where they exist)."""
    cases = [c for c in ALL_CASES if (hasattr(os, "mkfifo") or "fifo" not in c.id)
             and (hasattr(socket, "AF_UNIX") or "socket" not in c.id)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip((c.id for c in cases), pool.map(lambda c: _run(c, corpus), cases)))


def check_contract(case: Case, run: Run) -> None:
    """Exit status, one line per failed input (+ summary), no library text, no stray output file."""
    lines = run.stderr.splitlines()
    where = f"{case.id}: {run.stderr!r}"
    assert run.status == case.status, where
    assert "Traceback" not in run.stderr and not LIBRARY_NOISE.search(run.stderr.replace(": warning: ", ": ")), where
    warnings = [line for line in lines if re.match(r"convcli: .*: warning: ", line)]
    errors_ = [line for line in lines if line not in warnings]
    assert len(warnings) == case.warnings, where
    if case.status == 2:
        assert len(errors_) == 1 and errors_[0].startswith("convcli: error: "), where
    else:
        assert len(errors_) == case.failed + (1 if case.summary else 0), where
        assert all(line.startswith("convcli: ") for line in errors_), where
        if case.summary:
            assert re.fullmatch(rf"convcli: \d+ done, {case.failed} failed .*", errors_[-1]), where
    if case.match:
        assert re.search(case.match, run.stderr), where
    assert all(len(line) < 1000 for line in lines), where  # echoed values are shortened
    # No output under a final name but the expected ones, and no temporary file left.
    assert run.files == sorted(case.outputs), where


@pytest.mark.parametrize("case", CASES + OPTION_CASES, ids=lambda c: c.id)
def test_error_contract(case, runs):
    if case.id not in runs:
        pytest.skip("no FIFOs on this system")
    check_contract(case, runs[case.id])


def test_every_option_is_walked():
    """A value-taking option without a hostile value here fails: add it to STRING_VALUES."""
    walked = {case.id for case in OPTION_CASES}
    for command in BASES:
        for param in _value_options(command):
            flag = max(param.opts, key=len).lstrip("-")
            assert f"option-{command}-{flag}" in walked, f"{command} {flag}: no hostile value"
    assert set(BASES) | {"kernels"} == set(cli.commands)  # kernels takes NAME only (kernels-unknown)


def test_every_error_class_is_driven():
    driven = {case.error for case in ALL_CASES if case.error is not None}
    classes = set(errors.ConvcliError.__subclasses__())
    assert classes <= driven, classes - driven
    for case in ALL_CASES:  # each class's cases end with its exit status (GeometryError: 1 in apply)
        if case.error is not None and case.error is not errors.GeometryError and case.failed <= 1:
            assert case.status == case.error.exit_status, case.id


# --- the seven defects, one test each -------------------------------------------------------------

def _defect(runs, *ids):
    for case_id in ids:
        if case_id not in runs:
            pytest.skip("no FIFOs on this system")
        check_contract(next(c for c in DEFECT_CASES if c.id == case_id), runs[case_id])


def test_usage_error_printed_once_separable_full_rank_before_any_input(runs):
    _defect(runs, "usage-once-separable")
    assert "ok.png" not in runs["usage-once-separable"].stderr  # found before any input was read


def test_usage_error_printed_once_as_the_input_failure_when_it_depends_on_the_input(runs):
    _defect(runs, "usage-once-stdout-depthwise", "usage-once-name-depthwise")
    assert runs["usage-once-stdout-depthwise"].stdout == b""


def test_huge_integer_in_yaml_json_inline_pipeline_and_shape_input_is_one_line(runs):
    _defect(runs, "huge-int-yaml", "huge-int-json", "huge-int-inline", "huge-int-inline-json", "huge-int-pipeline",
            "huge-int-shape-input", "huge-int-option")


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(socket, "AF_UNIX"), reason="no FIFOs or sockets here")
def test_non_regular_files_refused_before_open_fifo_device_socket(runs):
    _defect(runs, "fifo-kernel", "fifo-pipeline", "fifo-named-in-pipeline", "fifo-input", "char-device-input",
            "socket-input", "fifo-shape-image")
    assert max(runs[i].seconds for i in ("fifo-kernel", "fifo-input", "char-device-input")) < TIMEOUT / 2


def test_limits_checked_before_the_work_kernel_file_npy_header_and_bank(runs, corpus):
    _defect(runs, "limit-yaml-kernel-file", "limit-npy-kernel-weights", "limit-bank-10000-filters")
    check_contract(next(c for c in CASES if c.id == "input-too-large-for-memory"), runs["input-too-large-for-memory"])
    # In-process, the checks themselves: from the file's length and the header, in well under a second.
    from convcli import kernels
    from convcli.errors import KernelError

    for name in ("k-big.yaml", "k-huge.npy", "k-bank.npy"):
        started = time.perf_counter()
        with pytest.raises(KernelError, match="allowed"):
            kernels.load_kernels(str(corpus / name))
        assert time.perf_counter() - started < 0.5, name


def test_malformed_npy_header_kernel_and_input_is_one_line(runs):
    _defect(runs, "npy-header-kernel", "npy-header-input")


def test_over_long_names_in_pipeline_layers_are_one_line(runs):
    _defect(runs, "long-name-pipeline-kernel", "long-name-pipeline-layer", "long-name-input")


def test_library_warnings_silenced_and_the_ones_that_matter_are_one_line(runs):
    for case_id in ("warning-truncated-jpeg", "warning-overflow", "silent-tiff-tags"):
        check_contract(next(c for c in CASES if c.id == case_id), runs[case_id])
    assert runs["silent-tiff-tags"].stderr == ""
    assert runs["warning-truncated-jpeg"].stderr.startswith("convcli: ")
    assert "cut.jpg: warning: truncated JPEG data" in runs["warning-truncated-jpeg"].stderr


# --- the new checks, in-process, each with its message ----------------------------------------------

def _kernel_file(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def _npy_file(tmp_path: Path, name: str, content: bytes) -> str:
    (tmp_path / name).write_bytes(content)
    return str(tmp_path / name)


RAISES = [
    ("bank-list-too-long", lambda t: _kernel_file(t, "b.json", json.dumps({"filters": [{"weights": [1]}] * 4097})),
     errors.KernelError, r"'filters' holds 4097 filters, more than the 4096 allowed in one layer"),
    ("4d-weights-too-many-filters",
     lambda t: _kernel_file(t, "w.json", json.dumps({"weights": [[[[0.5] * 4097]]]})),
     errors.KernelError, r"'weights' of shape 1x1x1x4097 hold 4097 filters, more than the 4096 allowed"),
    ("npy-empty", lambda t: _npy_file(t, "e.npy", _npy_header((0, 3))), errors.KernelError,
     r"e.npy: the array is empty \(shape 0x3\)"),
    ("npy-complex", lambda t: _npy_file(t, "c.npy", _npy_header((1,), "<c8", data=b"\0" * 8)), errors.KernelError,
     r"c.npy: expected a numeric array, got dtype complex64"),
    ("npy-truncated", lambda t: _npy_file(t, "t.npy", _npy_header((3, 3), data=b"\0" * 8)), errors.KernelError,
     r"t.npy: not a valid .npy file: truncated: the header declares 3x3 float32 \(36 bytes of data\), the file"
     r" holds 8"),
    ("npy-version", lambda t: _npy_file(t, "v.npy", b"\x93NUMPY\x09\x00" + b"\0" * 20), errors.KernelError,
     r"v.npy: not a valid .npy file: its header cannot be read"),
]


@pytest.mark.parametrize("case", RAISES, ids=[case[0] for case in RAISES])
def test_kernel_limits_and_headers_have_their_messages(case, tmp_path):
    from convcli.kernels import load_kernels

    _, make, error, match = case
    with pytest.raises(error, match=match):
        load_kernels(make(tmp_path))


def test_too_many_filters_over_several_sources():
    from convcli.kernels import MAX_FILTERS, load_kernels

    bank = np.zeros((1, 1, 1, MAX_FILTERS), np.float32)
    with pytest.raises(errors.KernelError, match=r"^4097 filters in one layer, more than the 4096 allowed$"):
        load_kernels(bank, np.zeros((1, 1), np.float32))


def test_sizes_and_counts_above_2_31_are_refused():
    from convcli.geometry import parse_input
    from convcli.layer import parse_pair
    from convcli.pipeline import parse_pipeline

    with pytest.raises(errors.OptionError, match=r"^--input: the size 3000000000 is more than 2147483647$"):
        parse_input("3000000000x8")
    with pytest.raises(errors.OptionError, match=r"^--input: expected HxWxC, H,W,C, HxW or L, got '1x2x3x4'$"):
        parse_input("1x2x3x4")
    with pytest.raises(errors.OptionError, match=r"^--stride: expected whole numbers, got \[1, 2.5\]$"):
        parse_pair([1, 2.5], "--stride")
    with pytest.raises(errors.OptionError, match=r"layers\[0\].filters: a 4001-digit number is more than 2147483647"):
        parse_pipeline({"layers": [{"conv": {"filters": 10**4000, "kernel_size": 3}}]})
    with pytest.raises(errors.OptionError, match=r"layers\[0\].negative_slope: expected a number, got a 4001-digit"):
        parse_pipeline({"layers": [{"conv": {"kernels": ["edge"], "negative_slope": 10**4000}}]})


def test_paths_that_are_not_regular_files_have_their_messages(tmp_path):
    from convcli._paths import check_regular_file, regular_file_problem

    assert regular_file_problem(tmp_path / "missing") is None  # left to open(), which says why
    with pytest.raises(errors.InputError, match=r"not a valid path \(it holds a NUL byte\)"):
        check_regular_file("a\0b.png", errors.InputError)
    with pytest.raises(errors.KernelError, match=r"is a directory, not an image or array file"):
        check_regular_file(tmp_path, errors.KernelError, what="image or array file")
    with pytest.raises(errors.InputError, match=r"^'xxxx.*' \(5000 characters\): the name is too long"):
        check_regular_file("x" * 5000, errors.InputError)


def test_shorten_says_how_long_a_value_was():
    from convcli._text import shorten, shorten_quoted

    assert shorten("1x" + "9" * 5001, limit=6) == "'1x9999…' (5003 characters)"
    assert shorten("short") == "'short'"
    assert shorten(10**5000) == "a 5001-digit number" and shorten(-(10**30), 40) == repr(-(10**30))
    assert shorten([1] * 100, 10) == "[1, 1, 1, … (300 characters)"
    message = "Invalid value for '--x': '" + "7" * 300 + "' and " + "8" * 200 + " end"
    assert shorten_quoted(message) == ("Invalid value for '--x': '" + "7" * 40 + "…' (300 characters) and '"
                                       + "8" * 40 + "…' (200 characters) end")
    assert shorten_quoted(f"keep {shorten('9' * 99)}") == f"keep {shorten('9' * 99)}"  # not shortened twice


def test_memory_estimate_counts_what_process_holds():
    from convcli._budget import check_fits, format_bytes, working_set
    from convcli.kernels import load_kernels
    from convcli.stack import Stack
    from convcli.layer import ConvSpec, PoolSpec

    bank = load_kernels(np.zeros((3, 3, 3, 64), np.float32))
    stack = Stack.single(bank, ConvSpec())
    whole = working_set(stack, (2160, 3840, 3))
    maps = 2158 * 3838 * 64 * 4
    assert whole.total == 2160 * 3840 * 3 * 4 + maps and whole.largest == maps
    assert working_set(stack, (2160, 3840, 3), grouped=True).total == 2160 * 3840 * 3 * 4 + maps // 4
    # What the PNG encodes in flight hold besides (two groups' 8-bit planes, three of 16 bits)
    group = maps // 4
    for fmt, extra in (("png", 2 * group // 4), ("png16", 3 * group // 2), ("tiff", 0)):
        assert (working_set(stack, (2160, 3840, 3), grouped=True, group_format=fmt).total
                == 2160 * 3840 * 3 * 4 + group + extra), fmt
    assert working_set(stack, (2160, 3840, 3), encodes_whole=True).total == 2160 * 3840 * 3 * 4 + 2 * maps
    pooled = Stack.single(bank, ConvSpec(), PoolSpec.from_options(mode="max", size=2, stride=None, padding="valid"))
    assert working_set(pooled, (2160, 3840, 3)).largest == 1079 * 1919 * 64 * 4
    assert format_bytes(3 << 30) == "3 GiB" and format_bytes(1536) == "1.5 KiB" and format_bytes(10) == "10 bytes"
    with pytest.raises(errors.InputError, match=r"^x.png: needs about 2.1 GiB of memory \(64 2158×3838 float32 maps"
                                                 r" of conv2d: 2.0 GiB\), more than the 1 GiB memory limit"):
        check_fits("x.png", stack, (2160, 3840, 3), limit=1 << 30)


# --- C libraries that print to descriptor 2 themselves (libtiff inside Pillow) -----------------------

def _corrupt_deflate_tiff(path: Path) -> None:
    """A deflate-compressed TIFF whose data libtiff cannot inflate: it prints 'ZIPDecode: …' itself."""
    pixels = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    with tempfile.SpooledTemporaryFile() as buffer:
        Image.fromarray(pixels).save(buffer, format="TIFF", compression="tiff_adobe_deflate")
        buffer.seek(0)
        blob = bytearray(buffer.read())
    for i in range(20, 60):
        blob[i] ^= 0x55
    path.write_bytes(bytes(blob))


def test_libtiff_printing_to_the_stderr_descriptor_is_kept_off_it(tmp_path):
    bad, good = tmp_path / "bad.tif", tmp_path / "good.png"
    _corrupt_deflate_tiff(bad)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(good)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "convcli", "apply", str(bad), str(good), "-k", "edge",
                           "-o", str(out), "-j", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert "ZIPDecode" not in proc.stderr, proc.stderr
    assert len(lines) == 2 and lines[0].startswith(f"convcli: {bad}: cannot decode image"), lines
    assert re.fullmatch(r"convcli: 1 done, 1 failed in .*", lines[1]), lines
    assert sorted(p.name for p in out.iterdir()) == ["good_edge.png"]


def test_c_library_stderr_turns_descriptor_output_into_one_input_warning():
    from convcli._noise import c_library_stderr, translated

    with translated() as notes:
        with c_library_stderr("TIFF"):
            os.write(2, b"ZIPDecode: Decoding error at scanline 0\nsecond line\n\x1b[2Ka redrawn bar\n")
    assert notes == ["the TIFF decoder reported: ZIPDecode: Decoding error at scanline 0 (and 1 more lines)"]
    with translated() as notes:
        with c_library_stderr("TIFF"):
            pass
    assert notes == []
