"""Hostile machines (issue 16): full disks, read-only and vanishing folders, kill -9, two runs at once.

What every test here checks, after the failure: each input is reported in one line with the
OS's reason, every file under a final name is complete (byte for byte what a clean run
writes), no temporary file is left, and the batch went on — or, on a full disk, stopped
early with exit 1 and a line saying so.

Write failures are injected at each point of :func:`convcli.io.write_atomic` (creating the
temporary file, writing it, renaming it) for every output kind, then reproduced for real on
a small tmpfs and a read-only bind mount where the machine allows mounting (root), and
skipped with the reason otherwise.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from convcli.apply import Job, OutputSpec
from convcli.batch import InputItem, run_batch
from convcli.cli import cli
from convcli.io import atomic
from convcli.stack import Stack

SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)

# --- helpers ---------------------------------------------------------------------------------------


def make_inputs(folder: Path, count: int, height: int = 24, width: int = 31, seed: int = 1) -> list[Path]:
    """Random (incompressible) RGB PNGs im00.png, im01.png, …"""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"im{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) by relative path."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list[str]:
    return [name for name in files(folder) if Path(name).name.endswith(".tmp")]


def convcli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convcli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kwargs)


SITES = {  # output kind → extra apply options
    "png": ["--format", "png"],
    "png16": ["--format", "png16"],
    "tiff": ["--format", "tiff"],
    "npy": ["--format", "npy"],
    "montage": ["--format", "npy", "--montage", "{out}/{{stem}}-montage.png"],
}


def site_args(site: str, out: Path) -> list[str]:
    return [a.format(out=out) for a in SITES[site]]


# --- injected OSErrors at each write site --------------------------------------------------------


class Fault:
    """Make write_atomic fail from its ``after``-th call on, at ``point``, with ``code``.

    ``create``: mkstemp fails (EACCES, EROFS: nothing is created); ``write``: half the bytes
    reach the temporary file, then the write fails (ENOSPC mid-file); ``rename``: the
    temporary file is complete but os.replace fails.
    """

    def __init__(self, monkeypatch, point: str, code: int, after: int = 2) -> None:
        self.point, self.code, self.after, self.calls = point, code, after, 0
        self.real_mkstemp, self.real_fdopen, self.real_replace = tempfile.mkstemp, os.fdopen, os.replace
        monkeypatch.setattr(atomic.tempfile, "mkstemp", self.mkstemp)
        monkeypatch.setattr(atomic.os, "fdopen", self.fdopen)
        monkeypatch.setattr(atomic.os, "replace", self.replace)

    def error(self) -> OSError:
        return OSError(self.code, os.strerror(self.code))

    def mkstemp(self, *args, **kwargs):
        self.calls += 1
        if self.point == "create" and self.calls >= self.after:
            raise self.error()
        return self.real_mkstemp(*args, **kwargs)

    def fdopen(self, descriptor, mode="r", *args, **kwargs):
        handle = self.real_fdopen(descriptor, mode, *args, **kwargs)
        if self.point != "write" or self.calls < self.after:
            return handle
        fault = self

        class HalfWriter:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def write(self, data):
                handle.write(bytes(data)[: len(data) // 2])
                handle.flush()
                raise fault.error()

            def __getattr__(self, name):
                return getattr(handle, name)

        return HalfWriter()

    def replace(self, source, target):
        if self.point == "rename" and self.calls >= self.after:
            raise self.error()
        return self.real_replace(source, target)


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory):
    """Each site's outputs from a clean run over the same four inputs: the bytes to match."""
    root = tmp_path_factory.mktemp("clean")
    make_inputs(root / "in", 4)
    outputs = {}
    for site in SITES:
        out = root / site
        result = CliRunner().invoke(cli, ["apply", str(root / "in"), "-k", "sobel-x", "-o", str(out), "-j", "1", "-q",
                                          *site_args(site, out)], catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        outputs[site] = files(out)
    return root / "in", outputs


@pytest.mark.parametrize("site", sorted(SITES))
@pytest.mark.parametrize("point", ["create", "write", "rename"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES], ids=errno.errorcode.get)
def test_injected_write_failure_reports_the_input_and_leaves_only_complete_files(
        tmp_path, monkeypatch, clean_runs, site, point, code):
    inputs, clean = clean_runs
    out = tmp_path / site
    fault = Fault(monkeypatch, point, code, after=2)
    result = CliRunner().invoke(cli, ["apply", str(inputs), "-k", "sobel-x", "-o", str(out), "-j", "1",
                                      *site_args(site, out)], catch_exceptions=False)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    reason = os.strerror(code)
    failures = [line for line in lines if reason in line]
    assert failures and all(line.count(reason) == 1 and "cannot write" in line for line in failures), lines
    assert all(str(out) in line for line in failures), "the line names the file that could not be written"
    left = files(out)
    assert not temporaries(out), left.keys()
    for name, blob in left.items():
        assert clean[site][name] == blob, f"{name} differs from the clean run"
    # Writes from the second on fail. One map per input; with --montage an input writes its
    # .npy then its montage, so the very first input fails (its complete .npy stays).
    first_failed = 0 if site == "montage" else 1
    assert len(left) == 1
    if code == errno.ENOSPC:
        # Disk full: the batch stops at the first failure and says so.
        assert len(failures) == 1
        not_started = 4 - first_failed - 1
        assert lines[-2] == ("convcli: stopping: no space left on device — no more outputs can be written there; "
                             f"{not_started} inputs not processed"), lines
        assert lines[-1].startswith(f"convcli: {first_failed} done, 1 failed, {not_started} not processed in ")
    else:
        # Read-only or forbidden: each input fails on its own line, the batch goes on to the end.
        assert len(failures) == 4 - first_failed == len(lines) - 1, lines
        assert lines[-1].startswith(f"convcli: {first_failed} done, {4 - first_failed} failed in ")
    assert fault.calls >= 2


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_standard_output_write_failure_is_one_output_error(tmp_path, code):
    image = make_inputs(tmp_path / "in", 1)[0]

    class Failing:
        def write(self, data):
            raise OSError(code, os.strerror(code))

        def flush(self):
            pass

    from convcli.kernels import load_kernels
    from convcli.layer import ConvSpec

    job = Job(stack=Stack.single(load_kernels(SOBEL_X), ConvSpec()), output=OutputSpec(directory="-", format="npy"))
    from convcli.errors import OutputError

    with pytest.raises(OutputError, match=f"standard output: cannot write: {os.strerror(code)}") as err:
        run_batch([InputItem(str(image))], job, jobs=1, quiet=True, stdout=Failing(), stderr=open(os.devnull, "w"))
    assert err.value.errno == code and err.value.disk_full == (code == errno.ENOSPC)


def test_folder_removed_mid_batch_fails_that_input_and_the_batch_goes_on(tmp_path, monkeypatch, clean_runs):
    inputs, clean = clean_runs
    out = tmp_path / "png"
    real_mkstemp = tempfile.mkstemp
    calls = []

    def vanishing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # between make_folder and the temporary file: someone removed -o's folder
            shutil.rmtree(out)
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", vanishing)
    result = CliRunner().invoke(cli, ["apply", str(inputs), "-k", "sobel-x", "-o", str(out), "-j", "1"],
                                catch_exceptions=False)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == (f"convcli: {inputs / 'im01.png'}: {out / 'im01_sobel-x.png'}: cannot write: "
                        "No such file or directory")
    assert lines[-1].startswith("convcli: 3 done, 1 failed")
    # The next inputs re-created the folder; the first input's file went with the folder.
    assert files(out) == {k: v for k, v in clean["png"].items() if k in ("im02_sobel-x.png", "im03_sobel-x.png")}


# --- real file systems (root only) ---------------------------------------------------------------


def _mount(*args) -> str | None:
    """None if the mount worked, else why not (so the test can skip with the reason)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    return None if done.returncode == 0 else f"mount {' '.join(args)} failed: {done.stderr.strip()}"


@pytest.fixture()
def small_tmpfs(tmp_path):
    point = tmp_path / "small"
    point.mkdir()
    problem = _mount("-t", "tmpfs", "-o", "size=96k", "tmpfs", str(point))
    if problem:
        pytest.skip(problem)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture()
def read_only_folder(tmp_path):
    point = tmp_path / "ro"
    point.mkdir()
    problem = _mount("--bind", str(point), str(point))
    if problem:
        pytest.skip(problem)
    try:
        problem = _mount("-o", "remount,ro,bind", str(point))
        if problem:
            pytest.skip(problem)
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.parametrize("jobs", [1, 2])
def test_full_tmpfs_stops_the_batch_with_exit_1_and_only_complete_files(tmp_path, small_tmpfs, jobs):
    inputs = make_inputs(tmp_path / "in", 12, 96, 128)  # maps of noise: ~12 KB each, 96 KiB holds 7 or 8
    clean = convcli("apply", tmp_path / "in", "-k", "sobel-x", "-o", tmp_path / "clean", "-j", "1")
    assert clean.returncode == 0
    out = small_tmpfs / "out"
    done = convcli("apply", tmp_path / "in", "-k", "sobel-x", "-k", "sobel-y", "-o", out, "-j", jobs)
    lines = done.stderr.splitlines()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    full = [line for line in lines if "No space left on device" in line and "cannot write" in line]
    assert full, lines
    stop = [line for line in lines if line.startswith("convcli: stopping: no space left on device")]
    assert len(stop) == 1 and stop[0].endswith("not processed"), lines
    unprocessed = int(stop[0].rsplit(";", 1)[1].split()[0])
    assert unprocessed > 0, "the batch went on after the disk was full"
    assert not temporaries(out)
    reference = files(tmp_path / "clean")
    written = files(out)
    assert written, "nothing fitted at all: the tmpfs is too small for this test"
    for name, blob in written.items():
        if name.endswith("_sobel-x.png"):
            assert blob == reference[name], name
        Image.open(out / name).load()  # every file under a final name is a whole PNG
    assert len(inputs) == 12


def test_full_tmpfs_stops_a_zarr_batch_and_leaves_only_whole_arrays(tmp_path, small_tmpfs):
    # --format zarr on a real full disk: each array is a folder written under a temporary name,
    # chunk by chunk on a writer thread, then renamed; ENOSPC from a chunk stops the batch.
    make_inputs(tmp_path / "in", 12, 64, 64)  # 64×64×2 float32 maps: 32 KiB of chunks each
    import zarr

    clean = convcli("apply", tmp_path / "in", "-k", "sobel-x", "-k", "sobel-y", "-o", tmp_path / "clean",
                    "--format", "zarr", "-j", "1")
    assert clean.returncode == 0, clean.stderr
    out = small_tmpfs / "out"
    done = convcli("apply", tmp_path / "in", "-k", "sobel-x", "-k", "sobel-y", "-o", out, "--format", "zarr",
                   "-j", "1")
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    full = [line for line in lines if "No space left on device" in line]
    assert len(full) == 1 and ".zarr: cannot write" in full[0], lines
    stop = [line for line in lines if line.startswith("convcli: stopping: no space left on device")]
    assert len(stop) == 1 and int(stop[0].rsplit(";", 1)[1].split()[0]) > 0, lines
    written = sorted(p.name for p in out.iterdir())
    assert written and all(name.endswith(".zarr") and not name.startswith(".") for name in written), written
    assert not [name for name in files(out) if _temporary_name(name)]
    reference = files(tmp_path / "clean")
    for name in written:  # every array under a final name is a clean run's, whole
        assert zarr.open_array(str(out / name), mode="r").shape == (62, 62, 2)  # valid padding
        assert {k: v for k, v in files(out).items() if k.startswith(name + "/")} == \
            {k: v for k, v in reference.items() if k.startswith(name + "/")}, name


def test_read_only_folder_fails_every_input_with_the_reason_and_goes_on(tmp_path, read_only_folder):
    make_inputs(tmp_path / "in", 3)
    done = convcli("apply", tmp_path / "in", "-k", "sobel-x", "-o", read_only_folder, "-j", "1")
    lines = done.stderr.splitlines()
    assert done.returncode == 1
    assert [line for line in lines if "Read-only file system" in line] == lines[:-1] and len(lines) == 4, lines
    assert lines[-1].startswith("convcli: 0 done, 3 failed") and "not processed" not in lines[-1]
    assert files(read_only_folder) == {}
    # A sub-folder that cannot be created: the folder is named, with the OS's reason.
    done = convcli("apply", tmp_path / "in" / "im00.png", "-k", "sobel-x", "-o", read_only_folder / "sub", "-j", "1")
    assert done.returncode == 1
    assert done.stderr == (f"convcli: {tmp_path / 'in' / 'im00.png'}: {read_only_folder / 'sub'}: cannot write: "
                           "Read-only file system\n")


# --- kill -9 at random moments ---------------------------------------------------------------------


def _temporary_name(name: str) -> bool:
    """A temporary file, or a file inside a temporary folder (a zarr array being written)."""
    return any(part.endswith(".tmp") for part in Path(name).parts)


def _check_killed(out: Path, fmt: str, reference: dict[str, bytes], arrays: dict[str, np.ndarray], kill: int) -> None:
    """Every file under a final name is a clean run's; with zarr, every array opens and holds its maps."""
    for name, blob in files(out).items():
        if not _temporary_name(name):
            assert blob == reference[name], f"{name} is not what a clean run writes ({fmt}, kill {kill})"
    if fmt == "zarr":
        import zarr

        for array in sorted(p for p in out.glob("*.zarr")):
            np.testing.assert_array_equal(zarr.open_array(str(array), mode="r")[:], arrays[array.name],
                                          err_msg=f"{array.name} (kill {kill})")


def test_kill_9_at_random_moments_leaves_only_complete_files_and_resume_finishes(tmp_path):
    """Kill batches (the whole process group, or the main process only) at random moments.

    Each batch writes PNG16 or zarr arrays (folders renamed into place) at random. After
    every kill, each file under a final name must be byte-identical to a clean run's and
    each zarr array must open and hold the clean run's maps. The last folder of each format
    is then finished with ``--skip-existing``, which must give exactly the clean run's files:
    the dead processes' temporaries swept, nothing redone wrong.
    The whole test takes about 16 s.
    """
    make_inputs(tmp_path / "in", 32, 128, 160)
    args = ["apply", tmp_path / "in", "-k", "sobel-x", "-k", "edge", "-q"]
    formats = ("png16", "zarr")
    took, reference, arrays = {}, {}, {}
    for fmt in formats:
        started = time.monotonic()
        clean = convcli(*args, "--format", fmt, "-o", tmp_path / f"clean-{fmt}", "-j", "1")
        took[fmt] = time.monotonic() - started  # start-up and work, on this machine now: kills land inside it
        assert clean.returncode == 0, clean.stderr
        reference[fmt] = files(tmp_path / f"clean-{fmt}")
    import zarr

    arrays = {p.name: zarr.open_array(str(p), mode="r")[:] for p in (tmp_path / "clean-zarr").glob("*.zarr")}
    assert len(arrays) == 32
    rng = random.Random(16)
    killed: dict[str, list[Path]] = {fmt: [] for fmt in formats}
    deadline = time.monotonic() + 13
    runs = 0
    while time.monotonic() < deadline:
        fmt = formats[runs % 2]
        out = tmp_path / f"out{runs}-{fmt}"
        runs += 1
        jobs = rng.choice(["1", "2"])
        whole_group = rng.random() < 0.7
        proc = subprocess.Popen([sys.executable, "-m", "convcli", *map(str, args), "--format", fmt, "-o", str(out),
                                 "-j", jobs], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(0.3, 1.0) * took[fmt])
        if proc.poll() is not None:
            continue  # finished first: not a kill
        os.killpg(proc.pid, signal.SIGKILL) if whole_group else os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        if not whole_group:
            time.sleep(0.5)  # orphaned workers end when their pipe closes
            os.killpg(proc.pid, signal.SIGKILL) if _group_alive(proc.pid) else None
        killed[fmt].append(out)
        _check_killed(out, fmt, reference[fmt], arrays, sum(map(len, killed.values())))
    for fmt in formats:
        assert len(killed[fmt]) >= 2, f"the {fmt} batches finished before they could be killed"
        out = killed[fmt][-1]
        finish = convcli(*args, "--format", fmt, "-o", out, "-j", "1", "--skip-existing")
        assert finish.returncode == 0, finish.stderr
        assert files(out) == reference[fmt], f"resume did not finish the {fmt} job exactly"


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


# --- two runs into one folder ----------------------------------------------------------------------


def test_two_runs_into_one_folder_never_tear_a_file(tmp_path):
    make_inputs(tmp_path / "in", 16, 64, 96)
    args = ["apply", tmp_path / "in", "-k", "sobel-x", "-k", "sobel-y", "--format", "tiff", "-q"]
    clean = convcli(*args, "-o", tmp_path / "clean", "-j", "1")
    assert clean.returncode == 0
    out = tmp_path / "out"
    runs = [subprocess.Popen([sys.executable, "-m", "convcli", *map(str, args), "-o", str(out), "-j", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
    assert files(out) == files(tmp_path / "clean")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_two_runs_with_skip_existing_split_the_work_without_redoing_it(tmp_path, jobs):
    make_inputs(tmp_path / "in", 16, 64, 96)
    args = ["apply", tmp_path / "in", "-k", "sobel-x", "-k", "edge", "-q", "--json"]
    clean = convcli(*args, "-o", tmp_path / "clean", "-j", "1")
    assert clean.returncode == 0
    out = tmp_path / "out"
    runs = [subprocess.Popen([sys.executable, "-m", "convcli", *map(str, args), "-o", str(out), "-j", jobs,
                              "--skip-existing"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    processed: list[str] = []
    skipped: list[str] = []
    for run in runs:
        stdout, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        for line in stdout.splitlines():
            record = json.loads(line)
            (skipped if record["skipped"] else processed).append(Path(record["input"]).name)
    assert sorted(processed) == sorted(set(processed)), "an input was processed by both runs"
    assert sorted(processed) == [f"im{i:02d}.png" for i in range(16)]
    assert len(skipped) == 16
    assert {k: v for k, v in files(out).items() if not k.endswith(".claim")} == files(tmp_path / "clean")


def test_a_claim_is_exclusive_and_released(tmp_path):
    target = tmp_path / "x.png"
    with atomic.claim(target) as first:
        assert first
        with atomic.claim(target) as second:
            assert not second  # another descriptor: another claimant, even in this process
    assert not atomic.claim_path(target).exists()
    with atomic.claim(target) as again:
        assert again


def test_stale_temporaries_of_dead_processes_are_swept_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".x.png.{dead.pid}-abcd1234.tmp"
    live = tmp_path / f".x.png.{os.getpid()}-abcd1234.tmp"
    other = tmp_path / f".y.png.{dead.pid}-abcd1234.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    assert atomic.sweep_stale(tmp_path, {"x.png"}) == 1
    assert not stale.exists() and live.exists() and other.exists()


def test_claim_files_left_by_a_killed_run_are_swept_and_held_ones_kept(tmp_path):
    held, stale = tmp_path / "held.png", tmp_path / "stale.png"
    atomic.claim_path(stale).write_bytes(b"")  # its holder was killed: no lock on it
    with atomic.claim(held) as mine:
        assert mine
        assert atomic.sweep_stale(tmp_path, {"held.png", "stale.png"}) == 1
        assert atomic.claim_path(held).exists() and not atomic.claim_path(stale).exists()


# --- limits that hold ------------------------------------------------------------------------------

_PEAK = """
import resource, subprocess, sys, time
started = time.monotonic()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(done.returncode, time.monotonic() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.stderr.write(done.stderr)
"""


def peak_run(*args) -> tuple[int, float, int, str]:
    """(exit status, seconds, peak resident bytes, stderr) of one convcli process, measured by a fresh parent."""
    done = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "convcli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    status, seconds, peak = done.stdout.split()
    return int(status), float(seconds), int(peak), done.stderr


def test_an_input_over_the_memory_limit_is_refused_before_any_work(tmp_path):
    # A 4K PNG (decoded whole: 23.7 MiB) under --memory-limit 1MiB: refused from its header.
    Image.new("RGB", (3840, 2160)).save(tmp_path / "uhd.png")
    np.save(tmp_path / "bank.npy", np.random.default_rng(0).standard_normal((3, 3, 3, 64)).astype(np.float32))
    status, seconds, peak, stderr = peak_run("apply", tmp_path / "uhd.png", "-k", tmp_path / "bank.npy",
                                             "--format", "npy", "-o", tmp_path / "out", "-j", "1",
                                             "--memory-limit", "1MiB")
    assert status == 1
    assert stderr.startswith(f"convcli: {tmp_path / 'uhd.png'}: its 3840×2160×3 pixels take 23.7 MiB decoded, "
                             "more than the 1 MiB memory limit"), stderr
    assert len(stderr.splitlines()) == 1
    assert seconds < 20 and peak < 300 << 20, (seconds, peak)  # refused from the header: nothing decoded
    assert not (tmp_path / "out").exists()


def test_the_fuzzers_largest_legal_input_stays_within_the_memory_budget(tmp_path):
    # The fuzzers' pixel limit (1 Mi pixels) in RGB through 64 filters, maps kept whole as .npy.
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    np.save(tmp_path / "bank.npy", rng.standard_normal((3, 3, 3, 64)).astype(np.float32))
    status, _seconds, peak, stderr = peak_run("apply", tmp_path / "big.png", "-k", tmp_path / "bank.npy",
                                              "--format", "npy", "-o", tmp_path / "out", "-j", "1")
    assert status == 0, stderr
    assert peak < 1 << 30, f"peak {peak / 2**20:.0f} MiB over the 1 GiB budget"
    assert np.load(tmp_path / "out" / "big.npy", mmap_mode="r").shape == (1022, 1022, 64)


# --- --format zarr: a folder written chunk by chunk, renamed into place ---------------------------


class ZarrFault:
    """Make ``--format zarr`` fail with ``code`` for the second input (im01) on, at ``point``.

    ``folder``: the temporary folder cannot be made; ``create``: zarr cannot write the
    array's ``zarr.json``; ``write``: a chunk write fails (on the sink's writer thread);
    ``rename``: the complete temporary folder cannot be renamed into place.
    """

    def __init__(self, monkeypatch, point: str, code: int) -> None:
        import zarr.storage._local as local

        from convcli.io import bands

        self.point, self.code, self.calls = point, code, 0
        real_put, real_mkdtemp, real_replace = local._put, bands.tempfile.mkdtemp, bands.os.replace

        def failing(name: str) -> bool:
            failing_now = "im00" not in name
            self.calls += failing_now
            return failing_now

        def put(path, value, exclusive=False):
            is_metadata = Path(path).name == "zarr.json"
            if (self.point == "create") == is_metadata and self.point in ("create", "write") and failing(str(path)):
                raise self.error()
            return real_put(path, value, exclusive=exclusive)

        def mkdtemp(*args, **kwargs):
            if self.point == "folder" and failing(kwargs.get("prefix", "")):
                raise self.error()
            return real_mkdtemp(*args, **kwargs)

        def replace(source, target):
            if self.point == "rename" and failing(str(target)):
                raise self.error()
            return real_replace(source, target)

        monkeypatch.setattr(local, "_put", put)
        monkeypatch.setattr(bands.tempfile, "mkdtemp", mkdtemp)
        monkeypatch.setattr(bands.os, "replace", replace)

    def error(self) -> OSError:
        return OSError(self.code, os.strerror(self.code))


@pytest.fixture(scope="module")
def clean_zarr(clean_runs):
    inputs, _ = clean_runs
    out = inputs.parent / "zarr"
    result = CliRunner().invoke(cli, ["apply", str(inputs), "-k", "sobel-x", "-o", str(out), "-j", "1", "-q",
                                      "--format", "zarr"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return inputs, files(out)


@pytest.mark.parametrize("point", ["folder", "create", "write", "rename"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES], ids=errno.errorcode.get)
def test_injected_zarr_write_failure_reports_the_input_and_leaves_no_folder(tmp_path, monkeypatch, clean_zarr,
                                                                           point, code):
    inputs, clean = clean_zarr
    out = tmp_path / "zarr"
    fault = ZarrFault(monkeypatch, point, code)
    result = CliRunner().invoke(cli, ["apply", str(inputs), "-k", "sobel-x", "-o", str(out), "-j", "1",
                                      "--format", "zarr"], catch_exceptions=False)
    assert fault.calls >= 1
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.splitlines()
    reason = os.strerror(code)
    failures = [line for line in lines if reason in line]
    assert failures and all(line.count(reason) == 1 and "cannot write" in line for line in failures), lines
    assert all(str(out / "im0") in line and ".zarr: cannot write" in line for line in failures), lines
    # Only the first input's array, complete (what a clean run writes); no temporary folder.
    assert sorted(p.name for p in out.iterdir()) == ["im00.zarr"], sorted(p.name for p in out.iterdir())
    assert files(out) == {k: v for k, v in clean.items() if k.startswith("im00.zarr/")}
    import zarr

    assert zarr.open_array(str(out / "im00.zarr"), mode="r").shape == (22, 29, 1)
    if code == errno.ENOSPC:
        assert len(failures) == 1 and failures[0] == lines[0], lines
        assert lines[-2] == ("convcli: stopping: no space left on device — no more outputs can be written there; "
                             "2 inputs not processed"), lines
        assert lines[-1].startswith("convcli: 1 done, 1 failed, 2 not processed in "), lines
    else:
        assert len(failures) == 3 == len(lines) - 1, lines
        assert lines[-1].startswith("convcli: 1 done, 3 failed in "), lines


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are read from /proc (Linux)")
def test_a_killed_process_not_yet_reaped_counts_as_dead_for_the_sweep():
    # A -j worker killed after its parent is reparented; where the container's first process
    # does not reap, it stays a zombie that signal 0 still finds, and its temporary was never
    # swept (the kill -9 test's resume failed on it once in a while).
    from convcli.io.atomic import process_alive

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # ended, not reaped: a zombie of this process
            state = Path(f"/proc/{ended.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            if state == b"Z":
                break
            time.sleep(0.05)
        assert state == b"Z"
        assert process_alive(alive.pid) and not process_alive(ended.pid)
    finally:
        alive.kill()
        alive.wait()
        ended.wait()
    assert not process_alive(ended.pid) and not process_alive(alive.pid)
