"""What running a batch on dask.distributed costs: ``--scheduler`` next to the local ``-j`` pool.

The workload of ``batch_bench.py``: 200 RGB images of 512×512 (generated,
deterministic) through a bank of 4 filters (edge, sobel-x, sobel-y, box-blur; 3×3,
valid) to 4 gray PNG maps each. Three ways, all with two worker processes of one
thread each, in alternating rounds (the machine is shared: medians of the rounds,
and ratios within a round):

- ``convcli apply … -j 2``: the local process pool;
- ``convcli apply … --scheduler local -j 2``: a LocalCluster started for the run
  (its start-up included, as a user sees it);
- ``convcli apply … --scheduler tcp://127.0.0.1:PORT``: a ``dask scheduler`` with two
  ``dask worker --nthreads 1`` processes started once beforehand (the per-task
  overhead alone, as on a cluster that is already up).

Every run's outputs are checked to be the same bytes as the local pool's. Times are
wall-clock for the whole command. Every process started here binds to 127.0.0.1 and
is stopped at the end.

Run: ``python benchmarks/cluster_bench.py`` (writes ``benchmarks/CLUSTER.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from batch_bench import KERNELS, make_images  # noqa: E402

#: The cluster extra's ``dask`` command (``dask scheduler``, ``dask worker``), next to this Python.
DASK = [str(Path(sys.executable).with_name("dask"))] if Path(sys.executable).with_name("dask").is_file() \
    else [sys.executable, "-m", "dask"]


def digest(folder: Path) -> str:
    """One hash over every file's name and bytes."""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def run_convcli(images: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds (user + system) of convcli and the processes it waited for."""
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, "-m", "convcli", "apply", str(images), "-o", str(out), "-q", *extra]
    for name in KERNELS:
        args += ["-k", name]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(args, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def start_scheduler(tmp: Path) -> tuple[str, list[subprocess.Popen]]:
    info = tmp / "scheduler.json"
    procs = [subprocess.Popen([*DASK, "scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file", str(info)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    deadline = time.monotonic() + 60
    while not info.is_file() or not info.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError("dask scheduler did not start")
        time.sleep(0.05)
    time.sleep(0.05)
    address = json.loads(info.read_text())["address"]
    for _ in range(2):
        procs.append(subprocess.Popen([*DASK, "worker", address, "--nthreads",
                                       "1", "--host", "127.0.0.1", "--no-dashboard"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    import distributed

    with distributed.Client(address, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
    return address, procs


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", default=str(HERE / "CLUSTER.md"), help="Markdown file for the results.")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        images = tmp / "images"
        images.mkdir()
        make_images(images, args.count, args.size)
        address, procs = start_scheduler(tmp)
        try:
            ways = {"local pool `-j 2`": ["-j", "2"],
                    "`--scheduler local -j 2` (LocalCluster started by the run)": ["--scheduler", "local", "-j", "2"],
                    "`--scheduler tcp://…` (scheduler + 2 workers already up)": ["--scheduler", address]}
            times: dict[str, list[float]] = {way: [] for way in ways}
            cpu: dict[str, list[float]] = {way: [] for way in ways}
            reference = None
            for round_ in range(args.rounds):
                for way, extra in ways.items():
                    seconds, cpu_seconds = run_convcli(images, tmp / "out", extra)
                    cpu[way].append(cpu_seconds)
                    found = digest(tmp / "out")
                    reference = reference or found
                    if found != reference or len(list((tmp / "out").iterdir())) != 4 * args.count:
                        raise SystemExit(f"{way}: outputs differ from the local pool's")
                    times[way].append(seconds)
                    print(f"round {round_ + 1} {way}: {seconds:.2f} s, {args.count / seconds:.1f} images/s,"
                          f" CPU {cpu_seconds:.2f} s", flush=True)
        finally:
            stop(procs)
    base = list(ways)[0]
    lines = [
        "# Batches on dask.distributed: the overhead",
        "",
        f"`python benchmarks/cluster_bench.py`: {args.count} RGB images of {args.size}×{args.size} (PNG), 4 filters",
        "(edge, sobel-x, sobel-y, box-blur; 3×3, valid) → 4 gray PNG maps per image; two worker processes of",
        "one thread each every way; wall-clock time of the whole command, start-up included;",
        f"{args.rounds} alternating rounds, medians, and the median of the per-round ratios to the local pool.",
        "Every run's outputs were the same bytes as the local pool's.",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, load average"
        f" {load:.1f} at the start (shared with other jobs: expect ±20 %).",
        "",
        "| how | median seconds | images/s | time ÷ local pool's | CPU seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for way in ways:
        median = statistics.median(times[way])
        ratio = statistics.median(t / b for t, b in zip(times[way], times[base]))
        # The CPU of processes convcli started and waited for: the tcp:// workers are not its own.
        used = f"{statistics.median(cpu[way]):.2f}" if "tcp" not in way else "– (workers not ours)"
        lines.append(f"| {way} | {median:.2f} | {args.count / median:.1f} | {ratio:.2f} | {used} |")
    lines += [
        "",
        "CPU seconds: user + system time of convcli and the processes it started and waited for",
        "(the pool's workers; the LocalCluster's scheduler, nannies and workers), median of the rounds.",
        "On two cores the cluster's own processes compete with the work itself: on a real cluster the",
        "scheduler runs elsewhere and the per-task cost is a small part of a task's time.",
        "",
    ]
    Path(args.write).write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
