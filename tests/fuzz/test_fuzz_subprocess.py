"""Crashes, hangs and memory: a batch of mutated files run in real processes (issue 16).

In-process fuzzing (test_fuzz_readers.py) cannot see a segfault in a decoder, a hang in C
code or memory beyond a limit. Here one ``driver.py`` process reads a deterministic batch of
mutants of every seed under a time limit and an address-space limit (``RLIMIT_AS``), and
one ``convcli apply`` batch runs over the image mutants: the process must finish, exit 0
or 1, and print only convcli's own lines.
"""

from __future__ import annotations

import os
import random
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from checks import NOISE
from conftest import TALLY
from fuzzlib import MAX_PIXELS, PROFILE, classify, mutate, seeds

HERE = Path(__file__).resolve().parent
#: Mutants per seed file: ~60 seeds × this many cases for the batch.
PER_SEED = 40 if PROFILE == "long" else 4
#: Address space a case may use: a 1 Mi-pixel RGBA float64 decode needs ~40 MB; numpy,
#: Pillow and tifffile loaded take ~1 GB of (mostly unused) address space already.
ADDRESS_SPACE = 3 << 30
#: Wall-clock limit of the whole batch (a hang shows as a timeout).
BATCH_SECONDS = 300 if PROFILE == "long" else 90


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"  # thread pools reserve address space per thread
    return env


def _mutants(folder: Path, seed: int) -> list[tuple[str, Path]]:
    rng = random.Random(seed)
    cases = []
    for kind, group in (("image", "images"), ("image", "arrays"), ("kernel", "kernels"), ("pipeline", "pipelines")):
        for source in seeds(group):
            if source.suffix == ".magick":
                continue  # inline strings, not files
            for copy in range(PER_SEED):
                path = folder / group / f"{source.stem}-{source.suffix[1:]}-{copy}{source.suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(mutate(rng, source))
                cases.append((kind, path))
    return cases


def test_driver_batch_never_crashes_hangs_or_exceeds_memory(tmp_path):
    seed = int(os.environ.get("FUZZ_SEED", "16")) if PROFILE == "ci" else random.SystemRandom().randrange(1 << 30)
    cases = _mutants(tmp_path / "cases", seed)
    listing = tmp_path / "cases.txt"
    listing.write_text("".join(f"{kind} {path}\n" for kind, path in cases))
    done = subprocess.run([sys.executable, str(HERE / "driver.py"), str(listing)], capture_output=True, text=True,
                          timeout=BATCH_SECONDS, preexec_fn=_limits, env=_environment())
    ends = dict(re.findall(r"^END (\d+) (.*)$", done.stdout, re.M))
    starts = re.findall(r"^START (\d+)$", done.stdout, re.M)
    if done.returncode != 0 or len(ends) != len(cases):
        last = cases[int(starts[-1])] if starts else None
        pytest.fail(f"driver died (exit {done.returncode}, seed {seed}) on {last}: {done.stderr[-2000:]}")
    bugs = {cases[int(n)][1].name: outcome for n, outcome in ends.items() if outcome.startswith("BUG")}
    assert not bugs, f"seed {seed}: {bugs}"
    for n, outcome in ends.items():
        TALLY[f"subprocess/{cases[int(n)][0]}"][outcome.split(" (")[0]] += 1


def test_apply_batch_over_mutated_images_exits_0_or_1_with_one_line_per_failure(tmp_path):
    seed = int(os.environ.get("FUZZ_SEED", "16")) if PROFILE == "ci" else random.SystemRandom().randrange(1 << 30)
    cases = [path for kind, path in _mutants(tmp_path / "cases", seed) if kind == "image"]
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "convcli", "apply", str(tmp_path / "cases" / "images"),
                           str(tmp_path / "cases" / "arrays"), "-k", "1x1: 1",
                           "--depthwise", "--format", "npy", "-o", str(out), "-j", "1", "--max-pixels", str(MAX_PIXELS)],
                          capture_output=True, text=True, timeout=BATCH_SECONDS, preexec_fn=_limits,
                          env=_environment())
    assert done.returncode in (0, 1), done.stderr[-3000:]
    lines = done.stderr.splitlines()
    ours = [line for line in lines if line.startswith("convcli: ")]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for line in ours:
        if "internal error" in line:
            label = classify(RuntimeError(line))
            assert label, line  # an unknown internal error is a bug
            TALLY["subprocess/apply"][label] += 1
    summary = ours[-1]
    assert re.fullmatch(r"convcli: \d+ done, \d+ failed in .*", summary), summary
    failed = int(re.search(r"(\d+) failed", summary).group(1))
    # An input read with a repair (a truncated JPEG completed by the decoder) has a warning line.
    warned = [line for line in ours[:-1] if ": warning: " in line]
    assert len(ours) - 1 - len(warned) == failed, "one line per failed input"
    names = [str(p) for p in cases]
    for line in ours[:-1]:
        assert any(name in line for name in names), line
    NOISE["convcli warning lines (inputs read with a repair)"] += len(warned)
    # Lines that are not ours come from C libraries printing to the stderr descriptor (libtiff):
    # issue 18 §7 (branch errors). Counted here, not failed on.
    for line in lines:
        if line not in ours:
            NOISE[f"library line on stderr: {line[:100]}"] += 1
    known = sum(1 for line in ours if "internal error" in line)
    TALLY["subprocess/apply"]["ok"] += len(cases) - failed
    TALLY["subprocess/apply"]["error"] += failed - known
