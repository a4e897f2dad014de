#!/usr/bin/env python3
"""Write (or ``--check``) ``kernels/_index.json``: every built-in kernel file, parsed.

Loading a built-in then needs no YAML parser, which saves every command that uses one
about 20 ms of start-up. Each entry carries the file's CRC-32 and size, and convcli uses
an entry only while they match the file, so a stale index is slow, never wrong; the
tests check that it is current. Run after editing anything in ``kernels/``::

    python tools/kernel_index.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from convcli import kernels  # noqa: E402


def build() -> str:
    entries = {}
    for name, entry in kernels._builtin_files().items():
        data = entry.read_bytes()
        document = kernels.parse_builtin_file(entry.name, data, f"built-in {name}")
        entries[name] = {"file": entry.name, "fingerprint": kernels.file_fingerprint(data), "document": document}
    return json.dumps({"format": 1, "kernels": entries}, indent=1, sort_keys=True, allow_nan=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the index is not current")
    args = parser.parse_args(argv)
    path = ROOT / "kernels" / kernels.INDEX_NAME
    text = build()
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path.relative_to(ROOT)} is out of date: run python tools/kernel_index.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
