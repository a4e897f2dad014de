"""Many inputs: expand folders, run each input, report progress and failures.

Standard output carries data only (``--print`` rows, ``--json`` lines, ``-o -``
bytes); progress, per-input errors and the summary go to standard error.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .apply import Job, process
from .errors import ConvcliError, ExitStatus

#: File extensions a directory contributes (lower case).
INPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".npy", ".csv", ".txt")


@dataclass(frozen=True)
class InputItem:
    source: str  # a path, or "-" for standard input
    rel_dir: str = ""  # folder relative to the directory given on the command line


@dataclass(frozen=True)
class BatchSummary:
    done: int
    failed: int
    skipped: int
    seconds: float

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.INPUT_FAILED if self.failed else ExitStatus.OK


def expand_inputs(args: list[str], *, recursive: bool = False) -> list[InputItem]:
    """Turn command-line INPUTs into a list of inputs, folders expanded in sorted order."""
    items: list[InputItem] = []
    for arg in args:
        path = Path(arg)
        if arg != "-" and path.is_dir():
            pattern = "**/*" if recursive else "*"
            for child in sorted(path.glob(pattern)):
                if child.is_file() and child.suffix.lower() in INPUT_EXTENSIONS and not child.name.startswith("."):
                    items.append(InputItem(str(child), str(child.parent.relative_to(path)).replace(".", "", 1)
                                           if child.parent != path else ""))
        else:
            items.append(InputItem(arg))
    return items


def run_batch(items: list[InputItem], job: Job, *, jobs: int | None = 1, quiet: bool = False,
              json_lines: bool = False, stdout: IO[bytes] | None = None,
              stderr: IO[str] | None = None) -> BatchSummary:
    """Process every input; a failing input is reported and the others go on."""
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr
    started = time.perf_counter()
    inputs = frozenset(str(Path(i.source).resolve()) for i in items if i.source != "-")
    done = failed = skipped = 0
    for item in items:
        try:
            result = process(item.source, job, rel_dir=item.rel_dir, inputs=inputs, many=len(items) > 1)
        except ConvcliError as error:
            failed += 1
            print(f"convcli: {item.source}: {error}" if item.source not in str(error) else f"convcli: {error}",
                  file=err)
            if json_lines:
                out.write((json.dumps({"input": item.source, "error": str(error)}) + "\n").encode())
                out.flush()
            continue
        done += 1
        if result.printed:
            out.write(result.printed.encode())
        if result.stdout_bytes:
            out.write(result.stdout_bytes)
        if json_lines:
            out.write((json.dumps(result.as_json()) + "\n").encode())
        out.flush()
    seconds = time.perf_counter() - started
    if not quiet and len(items) > 1:
        print(f"convcli: {done} done, {failed} failed, {skipped} skipped in {seconds:.2f} s", file=err)
    return BatchSummary(done, failed, skipped, seconds)


def default_jobs() -> int:
    return os.cpu_count() or 1
