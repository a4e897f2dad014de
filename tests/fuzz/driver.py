"""Run many fuzz cases in one process, for the subprocess harness (crashes, hangs, memory).

Usage: ``python driver.py LIST`` where LIST has one ``KIND PATH`` per line (KIND: image,
kernel, pipeline). Before each case it prints ``START n`` and flushes, after it ``END n
OUTCOME``: if the interpreter dies (a segfault in a decoder, the memory limit), the last
START names the culprit. OUTCOME is ``ok``, ``error`` (a ConvcliError) or ``BUG`` with the
exception — the harness fails on BUG, a missing END, or a non-zero exit.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(listing: str) -> int:
    warnings.simplefilter("ignore")  # issue 18 §7's business
    logging.disable(logging.CRITICAL)
    from convcli.errors import ConvcliError
    from convcli.io import read_header, read_input
    from convcli.kernels import load_kernels
    from convcli.pipeline import load_pipeline
    from fuzzlib import MAX_PIXELS, classify

    calls = {
        "image": lambda p: (read_header(p), read_input(p, max_pixels=MAX_PIXELS)),
        "kernel": lambda p: load_kernels(p),
        "pipeline": lambda p: load_pipeline(p),
    }
    for number, line in enumerate(Path(listing).read_text().splitlines()):
        kind, path = line.split(" ", 1)
        print(f"START {number}", flush=True)
        try:
            calls[kind](path)
            outcome = "ok"
        except ConvcliError as err:
            text = str(err)
            outcome = "error" if "\n" not in text.strip() else f"BUG multi-line message {text!r}"
        except Exception as err:  # noqa: BLE001 - the harness reports it
            label = classify(err)
            outcome = f"known {label}" if label else f"BUG {type(err).__name__}: {err}"
        print(f"END {number} {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
