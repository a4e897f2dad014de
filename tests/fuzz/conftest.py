"""Fuzz tests: the per-reader case counts, printed at the end of the run.

``HYPOTHESIS_PROFILE=long`` runs many more cases (see README, "Fuzzing"); the counts
say how many inputs each reader was given and how each ended.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzzlib import PROFILE  # noqa: E402

#: reader → outcome ("ok", "error", a known issue-18 category) → cases
TALLY: dict[str, Counter] = defaultdict(Counter)


def pytest_terminal_summary(terminalreporter):
    if not TALLY:
        return
    terminalreporter.section(f"fuzz cases per reader (profile {PROFILE})")
    for reader in sorted(TALLY):
        counts = TALLY[reader]
        detail = ", ".join(f"{outcome} {n}" for outcome, n in sorted(counts.items()))
        terminalreporter.write_line(f"{reader}: {sum(counts.values())} inputs ({detail})")
    from checks import NOISE

    for what, count in sorted(NOISE.items()):
        terminalreporter.write_line(f"not failed on: {what}: {count}")
