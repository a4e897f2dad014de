"""``apply --scheduler``: batches as dask.distributed tasks (issue 13).

One real LocalCluster of two worker processes serves the module (started once: a
few seconds); the "real scheduler" tests start ``dask scheduler`` and ``dask
worker`` processes on 127.0.0.1 and kill them afterwards. Every cluster run is
compared byte for byte with the local ``-j 2`` pool, whose own numbers are
checked against references in test_batch.py; one map here is checked against
scipy directly too.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.signal import correlate2d

from convcli.cli import cli
from convcli.cluster import local_version, version_problem

distributed = pytest.importorskip("distributed", reason="the cluster extra is part of the test extra")

# A scheduler's HTTP server falls back to another port when 8787 is taken (other clusters on
# the machine), and says so.
pytestmark = pytest.mark.filterwarnings("ignore:Port 8787 is already in use:UserWarning")

KERNELS = ["-k", "edge", "-k", "sobel-x", "-k", "sobel-y", "-k", "box-blur"]
LOCALHOST = "127.0.0.1"


def run(*args, status=0, input=None):
    """Invoke the CLI in-process; fail loudly on an unexpected exit status."""
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    assert result.exit_code == status, (result.exit_code, result.stdout, result.stderr)
    return result


def convcli_process(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convcli", *[str(a) for a in args]], capture_output=True,
                          timeout=120, **kwargs)


def write_images(folder: Path, count: int, *, size=(31, 24), seed=0, vary=True) -> None:
    """``count`` RGB PNGs, each its own content; of odd and even sizes when ``vary``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        height, width = (size[0] + i % 3, size[1] + i % 2) if vary else size
        pixels = np.random.default_rng(seed + i).integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"im{i:02d}.png")


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def records(stdout: str) -> dict[str, dict]:
    """--json lines by input, without the timings (which differ from run to run)."""
    found = {}
    for line in stdout.splitlines():
        record = json.loads(line)
        record.pop("seconds")
        found[record["input"]] = record
    return found


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two single-threaded worker processes, shared by the module's tests."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host=LOCALHOST,
                                  dashboard_address=None, silence_logs=50) as local, \
            distributed.Client(local, set_as_default=False) as client:
        yield local.scheduler_address, client


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """40 small PNGs and the local -j 2 pool's outputs for them (the reference run)."""
    root = tmp_path_factory.mktemp("photos")
    write_images(root / "in", 40)
    run("apply", root / "in", *KERNELS, "-o", root / "local", "-j", 2, "--json")
    return root


def test_cluster_outputs_are_the_bytes_of_the_local_pool(cluster, photos, tmp_path):
    address, _ = cluster
    local = run("apply", photos / "in", *KERNELS, "-o", photos / "local2", "-j", 2, "--json")
    result = run("apply", photos / "in", *KERNELS, "-o", tmp_path / "out", "--scheduler", address, "--json")
    expected = files_under(photos / "local")
    assert len(expected) == 160
    assert files_under(tmp_path / "out") == expected
    # The JSON lines are the local run's, paths included, apart from the folder named by -o.
    theirs = {k: {**r, "outputs": [o.replace(str(photos / "local2"), "OUT") for o in r["outputs"]]}
              for k, r in records(local.stdout).items()}
    ours = {k: {**r, "outputs": [o.replace(str(tmp_path / "out"), "OUT") for o in r["outputs"]]}
            for k, r in records(result.stdout).items()}
    assert ours == theirs and len(ours) == 40
    assert result.stderr.startswith("convcli: 40 done, 0 failed in ")
    # One map against scipy: the numbers themselves, not only their agreement.
    pixels = np.asarray(Image.open(photos / "in" / "im01.png")).astype(np.float64)
    edge = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float64)
    expected_map = sum(correlate2d(pixels[:, :, c], edge, mode="valid") for c in range(3))
    lo, hi = expected_map.min(), expected_map.max()
    written = np.asarray(Image.open(tmp_path / "out" / "im01_edge.png")).astype(np.float64)
    np.testing.assert_allclose(written, np.round((expected_map - lo) / (hi - lo) * 255), atol=1)


def test_relative_paths_and_montages_are_reported_as_given(cluster, photos, tmp_path, monkeypatch):
    """Workers get absolute paths; --json names inputs, outputs and montages as a local run does."""
    address, _ = cluster
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    for name in ("im00.png", "im07.png"):
        (tmp_path / "in" / name).write_bytes((photos / "in" / name).read_bytes())
    args = ["apply", "in", "-k", "edge", "--montage", "grid/{stem}.png", "--json"]
    local = run(*args, "-o", ".", "-j", 2)
    os.mkdir("again")
    monkeypatch.chdir(tmp_path / "again")
    ours = run("apply", "../in", "-k", "edge", "--montage", "grid/{stem}.png", "--json", "-o", ".",
               "--scheduler", address)
    assert records(ours.stdout) == {
        f"../{k}": {**r, "input": f"../{k}"} for k, r in records(local.stdout).items()}
    assert sorted(records(ours.stdout)["../in/im07.png"]["outputs"]) == ["grid/im07.png", "im07_edge.png"]
    assert files_under(tmp_path / "again") == {k: v for k, v in files_under(tmp_path).items()
                                                if not k.startswith(("in/", "again/"))}


def _executing(dask_worker=None) -> int:
    """How many tasks a worker is running (sent with client.run)."""
    return len(dask_worker.state.executing)


def test_a_worker_killed_mid_batch_changes_nothing(cluster, tmp_path):
    """SIGKILL one worker while tasks run: its task runs again elsewhere; exit 0, the same bytes."""
    address, client = cluster
    write_images(tmp_path / "in", 40, size=(192, 160), seed=100)
    run("apply", tmp_path / "in", *KERNELS, "-o", tmp_path / "local", "-j", 2)
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_while_busy() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (out.is_dir() and len([n for n in os.listdir(out) if not n.startswith(".")]) >= 8
                    and client.run(_executing, workers=[victim])[victim]):
                killed.append(len(os.listdir(out)))
                os.kill(pids[victim], signal.SIGKILL)
                return
            time.sleep(0.001)

    killer = threading.Thread(target=kill_while_busy)
    killer.start()
    result = run("apply", tmp_path / "in", *KERNELS, "-o", out, "--scheduler", address)
    killer.join()
    assert killed and killed[0] < 160  # the worker died while the batch was running
    assert files_under(out) == files_under(tmp_path / "local")  # no temporary file left either
    assert result.stderr.startswith("convcli: 40 done, 0 failed")
    client.wait_for_workers(2, timeout=30)  # the nanny restarts it for the next tests
    assert pids[victim] not in client.run(os.getpid).values()


def test_an_input_whose_workers_keep_dying_fails_alone(cluster, tmp_path):
    """With no retry allowed, the input running on a SIGKILLed worker is reported failed; the rest finish."""
    address, client = cluster
    write_images(tmp_path / "in", 30, size=(192, 160), seed=200)
    out = tmp_path / "out"

    def set_allowed_failures(n, dask_scheduler=None):
        previous = dask_scheduler.allowed_failures
        dask_scheduler.allowed_failures = n
        return previous

    previous = client.run_on_scheduler(set_allowed_failures, 0)
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    killed: list[bool] = []

    def kill_while_busy() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.is_dir() and len(os.listdir(out)) >= 8 and client.run(_executing, workers=[victim])[victim]:
                os.kill(pids[victim], signal.SIGKILL)
                killed.append(True)
                return
            time.sleep(0.001)

    killer = threading.Thread(target=kill_while_busy)
    try:
        killer.start()
        result = run("apply", tmp_path / "in", *KERNELS, "-o", out, "--scheduler", address, status=1)
    finally:
        killer.join()
        client.run_on_scheduler(set_allowed_failures, previous)
        client.wait_for_workers(2, timeout=30)
    assert killed
    failed = result.stderr.splitlines()[:-1]
    assert failed and all(re.fullmatch(
        rf"convcli: {re.escape(str(tmp_path / 'in'))}/im\d\d\.png: the workers running it died \(killed, out of"
        r" memory, or a crash in native code\) each time it was tried", line) for line in failed), failed
    assert f"{30 - len(failed)} done, {len(failed)} failed" in result.stderr.splitlines()[-1]
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # the killed write's temporary is gone


# --- a large input: its bands as tasks ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """Tiled TIFFs of odd sizes: gray 1203×917 (tiles 128) and RGB 401×333 (tiles 64)."""
    import tifffile

    root = tmp_path_factory.mktemp("tiled")
    rng = np.random.default_rng(13)
    tifffile.imwrite(root / "gray.tif", rng.integers(0, 256, (1203, 917), dtype=np.uint8), tile=(128, 128))
    tifffile.imwrite(root / "rgb.tif", rng.integers(0, 256, (401, 333, 3), dtype=np.uint8), tile=(64, 64))
    return root


def _band_tasks(client, run_it) -> dict[str, int]:
    """Run ``run_it()``; how many tasks of each band kind the cluster ran meanwhile."""
    with distributed.get_task_stream(client=client) as stream:
        run_it()
    counts: dict[str, int] = {}
    for task in stream.data:
        kind = task["key"].split("-")[0] if isinstance(task["key"], str) else ""
        counts[kind] = counts.get(kind, 0) + 1
    return counts


# Small enough a limit that the gray image streams (zarr in 5 bands, tiff 10, png 28), large enough
# for one band with its sinks.
LARGE_LAYER = ["-k", "sobel-x", "-k", "edge", "--padding", "same", "--dilation", "2", "--memory-limit", "12MiB"]


def test_a_large_tiled_tiff_to_zarr_runs_as_band_tasks_and_equals_the_local_result(cluster, tiled, tmp_path):
    """Each band task writes its own chunks; the array equals a local run's exactly, metadata included."""
    import zarr

    address, client = cluster
    local = run("apply", tiled / "gray.tif", *LARGE_LAYER, "--format", "zarr", "-o", tmp_path / "local", "--json")
    ours: list = []
    counts = _band_tasks(client, lambda: ours.append(run(
        "apply", tiled / "gray.tif", *LARGE_LAYER, "--format", "zarr", "-o", tmp_path / "out", "--json",
        "--scheduler", address)))
    assert counts.get("zarr_band_task", 0) >= 2, counts  # the rows were cut into bands, each a task
    expected, found = zarr.open_array(tmp_path / "local" / "gray.zarr", mode="r"), \
        zarr.open_array(tmp_path / "out" / "gray.zarr", mode="r")
    assert found.shape == expected.shape == (1203, 917, 2) and found.dtype == np.float32
    assert np.array_equal(found[:], expected[:])
    assert (json.loads((tmp_path / "out" / "gray.zarr" / "zarr.json").read_text())
            == json.loads((tmp_path / "local" / "gray.zarr" / "zarr.json").read_text()))
    assert sorted(os.listdir(tmp_path / "out")) == ["gray.zarr"]  # no temporary left
    (record,) = records(ours[0].stdout).values()
    assert record == {**records(local.stdout)[str(tiled / "gray.tif")],
                      "outputs": [str(tmp_path / "out" / "gray.zarr")]}


def test_a_large_input_whose_band_fails_is_named_once_and_leaves_nothing(cluster, tiled, tmp_path):
    address, _ = cluster
    whole = (tiled / "gray.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(whole[: len(whole) * 2 // 3])  # the last tiles are missing
    args = [tmp_path / "cut.tif", tiled / "gray.tif", *LARGE_LAYER, "--format", "zarr"]
    local = run("apply", *args, "-o", tmp_path / "local", status=1)
    ours = run("apply", *args, "-o", tmp_path / "out", "--scheduler", address, status=1)
    assert ours.stderr.splitlines()[0] == local.stderr.splitlines()[0]
    assert ours.stderr.count("cut.tif") == 1 and ours.stderr.startswith(f"convcli: {tmp_path / 'cut.tif'}: ")
    assert "1 done, 1 failed" in ours.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["gray.zarr"]  # the failed array's temporary is gone


def test_band_tasks_writing_zarr_onto_a_full_disk_name_the_input_and_leave_nothing(cluster, tiled, tmp_path):
    """The workers' band tasks write chunks through ZarrSink.write_at; on a real full disk (a 2 MiB
    tmpfs, each array 8.8 MB) a task's ENOSPC fails its input in one line with the OS's reason,
    the batch stops, and no array or temporary folder is left (issue 16, on the cluster)."""
    import shutil

    from test_durability import _mount

    point = tmp_path / "small"
    point.mkdir()
    problem = _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point))
    if problem:
        pytest.skip(problem)
    try:
        (tmp_path / "in").mkdir()
        for name in ("a", "b", "c"):
            shutil.copy(tiled / "gray.tif", tmp_path / "in" / f"{name}.tif")
        address, client = cluster
        found: list = []
        counts = _band_tasks(client, lambda: found.append(run(
            "apply", tmp_path / "in", *LARGE_LAYER, "--format", "zarr", "-o", point / "out", "--scheduler",
            address, status=1)))
        assert counts.get("zarr_band_task", 0) >= 1, counts
        lines = found[0].stderr.splitlines()
        assert "Traceback" not in found[0].stderr
        full = [line for line in lines if "No space left on device" in line]
        # The first input's ENOSPC stops the batch, as locally: nothing more can be written there.
        assert len(full) == 1 and full[0].startswith(f"convcli: {tmp_path / 'in'}/") and \
            full[0].endswith(".zarr: cannot write: No space left on device"), lines
        assert lines[1:] == ["convcli: stopping: no space left on device — no more outputs can be written there;"
                             " 2 inputs not processed", "convcli: 0 done, 1 failed, 2 not processed in " + lines[2].split(" in ")[-1]]
        assert not list((point / "out").iterdir())  # no array, no temporary folder
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_large_input_whose_maps_overflow_cannot_be_a_png(cluster, tmp_path):
    """Finite pixels, infinite maps (8 × 3e38): the range pass says so, as the local stream does."""
    address, client = cluster
    values = np.full((1203, 917), 3e38, dtype=np.float32)
    values[::7, ::5] = -3e38
    np.save(tmp_path / "huge.npy", values)
    args = [tmp_path / "huge.npy", "-k", "edge", "--memory-limit", "8MiB", "--format", "png"]
    local = run("apply", *args, "-o", tmp_path / "local", status=1)
    found: list = []
    counts = _band_tasks(client, lambda: found.append(run("apply", *args, "-o", tmp_path / "out", "--scheduler",
                                                          address, status=1)))
    assert counts.get("extrema_task", 0) >= 2 and not counts.get("band_task"), counts
    ours = found[0]
    assert ours.stderr == local.stderr.replace(local.stderr.split(" in ")[-1], ours.stderr.split(" in ")[-1])
    assert ours.stderr.startswith(f"convcli: {tmp_path / 'huge.npy'}: edge: NaN/Inf values cannot be shown as"
                                  " pixels; use --format tiff or npy\n")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_the_sweep_removes_this_batchs_zarr_temporaries(tmp_path):
    """A band task still writing when convcli stopped leaves a temporary array folder: swept with its chunks."""
    from convcli import batch
    from convcli.apply import Job, OutputSpec
    from convcli.kernels import load_kernels
    from convcli.layer import ConvSpec
    from convcli.stack import Stack

    job = Job(stack=Stack.single(load_kernels("edge"), ConvSpec.from_options(), None),
              output=OutputSpec(directory=tmp_path / "out", format="zarr"))
    plan = batch.plan_batch([batch.InputItem(str(tmp_path / "x.tif"))], job)
    ours = tmp_path / "out" / ".x.zarr.k2j4_x9q.tmp"
    theirs = tmp_path / "out" / ".y.zarr.abcdefgh.tmp"
    for folder in (ours, theirs):
        (folder / "c" / "0").mkdir(parents=True)
        (folder / "c" / "0" / "0").write_bytes(b"chunk")
    batch._sweep_temporaries(plan)
    assert not ours.exists() and (theirs / "c" / "0" / "0").read_bytes() == b"chunk"


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_a_large_input_assembled_in_order_is_the_local_bytes(cluster, tiled, tmp_path, fmt):
    """PNG (minmax needs a first pass for the ranges) and TIFF: bands come back and are written in order."""
    address, client = cluster
    inputs = [tiled / "gray.tif", tiled / "rgb.tif"]
    run("apply", *inputs, *LARGE_LAYER, "--format", fmt, "-o", tmp_path / "local")
    counts = _band_tasks(client, lambda: run("apply", *inputs, *LARGE_LAYER, "--format", fmt,
                                             "-o", tmp_path / "out", "--scheduler", address))
    assert counts.get("band_task", 0) >= 2, counts
    assert (counts.get("extrema_task", 0) >= 2) == (fmt == "png"), counts
    assert files_under(tmp_path / "out") == files_under(tmp_path / "local")
    assert len(files_under(tmp_path / "out")) == 4


def test_a_corrupt_file_fails_alone(cluster, photos, tmp_path):
    address, _ = cluster
    folder = tmp_path / "in"
    write_images(folder, 6)
    whole = (folder / "im02.png").read_bytes()
    (folder / "im03.png").write_bytes(whole[: len(whole) // 2])  # truncated
    result = run("apply", folder, *KERNELS, "-o", tmp_path / "out", "--scheduler", address, status=1)
    assert result.stderr.count("im03.png") == 1, result.stderr
    assert f"convcli: {folder / 'im03.png'}: " in result.stderr
    assert "5 done, 1 failed" in result.stderr
    local = run("apply", folder, *KERNELS, "-o", tmp_path / "local", "-j", 2, status=1)
    assert local.stderr.splitlines()[0] == result.stderr.splitlines()[0]  # the same message
    assert files_under(tmp_path / "out") == files_under(tmp_path / "local")
    assert len(files_under(tmp_path / "out")) == 20


def test_skip_existing_and_json_on_the_cluster(cluster, tmp_path):
    address, _ = cluster
    write_images(tmp_path / "in", 3)
    args = ["apply", tmp_path / "in", "-k", "edge", "-k", "sobel-x", "-o", tmp_path / "out", "--json",
            "--scheduler", address]
    run(*args)
    (tmp_path / "out" / "im00_edge.png").write_bytes(b"kept")  # present: im00 counts as done
    (tmp_path / "out" / "im01_sobel-x.png").unlink()  # im01 was interrupted half-way
    result = run(*args, "--skip-existing")
    found = {Path(r["input"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert {n: r["skipped"] for n, r in found.items()} == {"im00.png": True, "im01.png": False, "im02.png": True}
    assert found["im01.png"]["outputs"] == [str(tmp_path / "out" / f"im01_{f}.png") for f in ("edge", "sobel-x")]
    assert (tmp_path / "out" / "im00_edge.png").read_bytes() == b"kept"
    assert (tmp_path / "out" / "im01_sobel-x.png").is_file()
    assert "1 done, 0 failed, 2 skipped" in result.stderr


def test_an_existing_client_from_python(cluster, photos, tmp_path):
    """run_batch on a connected Client (a Dask Gateway cluster's, say): used as it is and left open."""
    from convcli.apply import Job, OutputSpec
    from convcli.batch import expand_inputs, run_batch
    from convcli.cluster import ClusterSpec
    from convcli.kernels import load_kernels
    from convcli.layer import ConvSpec
    from convcli.stack import Stack

    _, client = cluster
    job = Job(stack=Stack.single(load_kernels("edge", "sobel-x", "sobel-y", "box-blur"), ConvSpec.from_options(),
                                 None), output=OutputSpec(directory=tmp_path / "out"))
    items = expand_inputs([str(photos / "in" / f"im{i:02d}.png") for i in range(6)])
    err = io.StringIO()
    summary = run_batch(items, job, quiet=True, stdout=io.BytesIO(), stderr=err,
                        cluster=ClusterSpec.from_client(client))
    assert (summary.done, summary.failed) == (6, 0) and err.getvalue() == ""
    assert files_under(tmp_path / "out") == {k: v for k, v in files_under(photos / "local").items()
                                             if int(k[2:4]) < 6}
    assert client.status == "running"  # not ours to close


def test_collisions_are_refused_before_the_scheduler_is_asked(tmp_path):
    """The local batch's checks come first: no scheduler needed to hear about them."""
    write_images(tmp_path / "a", 1)
    write_images(tmp_path / "b", 1)
    result = run("apply", tmp_path / "a" / "im00.png", tmp_path / "b" / "im00.png", "-k", "edge", "-o",
                 tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9", status=2)
    assert "would both write" in result.stderr and "scheduler" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_print_keeps_input_order_on_the_cluster(cluster, photos):
    address, _ = cluster
    inputs = [photos / "in" / f"im{i:02d}.png" for i in (5, 1, 9, 0)]
    local = run("apply", *inputs, "-k", "edge", "--print", "-j", 2)
    ours = run("apply", *inputs, "-k", "edge", "--print", "--scheduler", address)
    assert ours.stdout == local.stdout and ours.stdout.index("im05") < ours.stdout.index("im00")


def test_standard_input_is_read_here(tmp_path):
    """'-' alone needs no cluster: nothing is sent, so no scheduler is asked."""
    write_images(tmp_path, 1)
    result = run("apply", "-", "-k", "edge", "-o", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9",
                 input=(tmp_path / "im00.png").read_bytes())
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["stdin_edge.png"], result.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def test_an_unreachable_scheduler_is_a_usage_error_within_the_timeout(tmp_path):
    write_images(tmp_path / "in", 2)
    address = f"tcp://{LOCALHOST}:{_closed_port()}"
    started = time.monotonic()
    proc = convcli_process("apply", tmp_path / "in", "-k", "edge", "-o", tmp_path / "out", "--scheduler", address,
                           "--scheduler-timeout", "1.5")
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.decode().splitlines() == [
        f"convcli: error: --scheduler {address}: no scheduler answered within 1.5 s (--scheduler-timeout);"
        " is 'dask scheduler' running there?"]
    assert elapsed < 10
    assert not (tmp_path / "out").exists()


def test_a_malformed_address_is_one_line(tmp_path):
    write_images(tmp_path / "in", 1)
    result = run("apply", tmp_path / "in", "-k", "edge", "-o", tmp_path / "out", "--scheduler", "nosuch://x:1",
                 "--scheduler-timeout", "1", status=2)
    assert result.stderr.startswith("convcli: error: --scheduler nosuch://x:1: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_scheduler_without_workers_is_a_usage_error(tmp_path):
    write_images(tmp_path / "in", 1)
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp", host=LOCALHOST, dashboard_address=None,
                                  silence_logs=50) as empty:
        address = empty.scheduler_address
        result = run("apply", tmp_path / "in", "-k", "edge", "-o", tmp_path / "out", "--scheduler", address,
                     "--scheduler-timeout", "0.5", status=2)
    assert result.stderr == (f"convcli: error: --scheduler {address}: the scheduler has no worker after 0.5 s;"
                             f" start some with: dask worker {address}\n")


def test_without_distributed_the_extra_is_named(tmp_path, monkeypatch):
    write_images(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    result = run("apply", tmp_path / "in", "-k", "edge", "-o", tmp_path / "out", "--scheduler", "local", status=2)
    assert result.stderr == ("convcli: error: --scheduler: needs dask.distributed; install it with"
                             " pip install 'convcli[cluster]'\n")


def test_a_local_cluster_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Nanny failed to start.\nmore detail")

    write_images(tmp_path / "in", 1)
    monkeypatch.setattr(distributed, "LocalCluster", refuse)
    result = run("apply", tmp_path / "in", "-k", "edge", "-o", tmp_path / "out", "--scheduler", "local", status=2)
    assert result.stderr == "convcli: error: --scheduler local: the LocalCluster did not start: Nanny failed to start.\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--scheduler", "tcp://127.0.0.1:8786", "-j", "2"], "-j: the workers of tcp://127.0.0.1:8786 are set where"),
    (["--scheduler-timeout", "3"], "--scheduler-timeout: only with --scheduler ADDRESS"),
    (["--scheduler", " "], "--scheduler: give tcp://host:port of a running 'dask scheduler', or local"),
    (["--scheduler", "local", "--scheduler-timeout", "inf"], "--scheduler-timeout: must be a finite number of"
                                                             " seconds, got inf"),
    (["--scheduler", "local", "--scheduler-timeout", "nan"], "--scheduler-timeout: must be a finite number of"
                                                             " seconds, got nan"),
])
def test_scheduler_option_misuse(tmp_path, args, message):
    write_images(tmp_path / "in", 1)
    result = run("apply", tmp_path / "in", "-k", "edge", "-o", tmp_path / "out", *args, status=2)
    assert message in result.stderr


def test_a_worker_without_convcli_or_with_another_version_is_named():
    assert version_problem("tcp://s:1", {"tcp://w:1": "0.1.0", "tcp://w:2": "0.1.0"}, "0.1.0") is None
    missing = {"tcp://w:1": "0.1.0", "tcp://w:2": ModuleNotFoundError("No module named 'convcli'")}
    assert version_problem("tcp://s:1", missing, "0.1.0") == (
        "--scheduler tcp://s:1: worker tcp://w:2 has no convcli; install the same version there:"
        " pip install 'convcli[cluster]==0.1.0'")
    other = {"tcp://w:1": "0.0.9", "tcp://w:2": "0.0.9", "tcp://w:3": "0.1.0"}
    assert version_problem("tcp://s:1", other, "0.1.0") == (
        "--scheduler tcp://s:1: worker tcp://w:1 runs convcli 0.0.9, this is 0.1.0 (2 of 3 workers);"
        " install the same version on every worker")


def test_without_scheduler_dask_is_never_imported(tmp_path):
    write_images(tmp_path, 1)
    code = ("import sys; from convcli.cli import cli\n"
            "for argv in (['--help'], ['shape', '--input', '8x8x1', '--filters', '1'],"
            f" ['apply', {str(tmp_path / 'im00.png')!r}, '-k', 'edge', '-o', {str(tmp_path / 'out')!r}, '-q']):\n"
            "    cli.main(argv, standalone_mode=False)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "im00_edge.png").is_file()


# --- --scheduler local, in a process of its own --------------------------------------------------

def test_scheduler_local_and_ctrl_c(tmp_path):
    """``local`` starts its own LocalCluster; Ctrl-C on the group: exit 130, only complete files."""
    write_images(tmp_path / "in", 40, size=(256, 256), seed=7, vary=False)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "convcli", "apply", tmp_path / "in", *KERNELS, "-o", out,
                             "--scheduler", "local", "-j", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (out.is_dir() and len([n for n in os.listdir(out) if not n.startswith(".")]) >= 4):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group gets it
        stopped = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert time.monotonic() - stopped < 20
    assert stderr.decode().splitlines() == ["convcli: interrupted"]  # no worker's traceback, no dask log
    names = sorted(os.listdir(out))
    time.sleep(1.0)
    assert sorted(os.listdir(out)) == names  # no worker is still writing
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]
    assert 0 < len(names) < 160
    for name in names:
        with Image.open(out / name) as image:
            image.load()
            assert image.size == (254, 254)


def test_scheduler_local_survives_a_killed_worker_quietly(tmp_path):
    """SIGKILL a LocalCluster worker of a real convcli process: exit 0, the local bytes, and not one
    line of dask's on stderr (its nanny, in convcli's process, would log the death and restart)."""
    import psutil

    write_images(tmp_path / "in", 40, size=(192, 160), seed=400)
    run("apply", tmp_path / "in", *KERNELS, "-o", tmp_path / "local", "-j", 2)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "convcli", "apply", tmp_path / "in", *KERNELS, "-o", out,
                             "--scheduler", "local", "-j", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not (out.is_dir() and len([n for n in os.listdir(out) if not n.startswith(".")]) >= 8):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.002)
        workers = [child for child in psutil.Process(proc.pid).children()
                   if any("spawn_main" in part for part in child.cmdline())]
        assert len(workers) == 2
        workers[0].send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    lines = stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convcli: 40 done, 0 failed in "), lines
    assert files_under(out) == files_under(tmp_path / "local")


# --- a real `dask scheduler` and two `dask worker` processes --------------------------------------

def _start(args: list[str], **kwargs) -> subprocess.Popen:
    """``dask scheduler …`` / ``dask worker …`` as the README runs them (the extra's ``dask`` command)."""
    dask = Path(sys.executable).with_name("dask")
    command = [str(dask)] if dask.is_file() else [sys.executable, "-m", "dask"]
    return subprocess.Popen([*command, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, **kwargs)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def real_scheduler(tmp_path_factory):
    """``dask scheduler`` on 127.0.0.1 (a free port) with two ``dask worker`` processes."""
    root = tmp_path_factory.mktemp("scheduler")
    info = root / "scheduler.json"
    procs = [_start(["scheduler", "--host", LOCALHOST, "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(info)])]
    try:
        deadline = time.monotonic() + 60
        while not info.is_file() or not info.read_text().strip():
            assert procs[0].poll() is None and time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.05)
        time.sleep(0.05)
        address = json.loads(info.read_text())["address"]
        for _ in range(2):
            procs.append(_start(["worker", address, "--nthreads", "1", "--host", LOCALHOST,
                                 "--no-dashboard"]))
        with distributed.Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield address, procs
    finally:
        _stop(procs)


def test_real_scheduler_and_workers_write_the_local_bytes(real_scheduler, photos, tmp_path):
    address, _ = real_scheduler
    proc = convcli_process("apply", photos / "in", *KERNELS, "--scheduler", address, "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convcli: 40 done, 0 failed in "), lines
    assert files_under(tmp_path / "out") == files_under(photos / "local")


def test_a_worker_with_another_convcli_is_refused_before_any_work(real_scheduler, photos, tmp_path):
    """A third worker whose convcli metadata says 9.9: one line naming it, exit 2, nothing written."""
    address, procs = real_scheduler
    fake = tmp_path / "site" / "convcli-9.9.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: convcli\nVersion: 9.9\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    odd = _start(["worker", address, "--nthreads", "1", "--host", LOCALHOST, "--no-dashboard",
                  "--name", "odd-one"], env=env, cwd=tmp_path)  # not beside a source tree's egg-info
    try:
        with distributed.Client(address, timeout=30, set_as_default=False) as client:
            client.wait_for_workers(3, timeout=60)
            odd_address = next(w for w, info in client.scheduler_info()["workers"].items()
                               if info.get("name") == "odd-one")
        proc = convcli_process("apply", photos / "in", "-k", "edge", "--scheduler", address, "-o", tmp_path / "out")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.decode().splitlines() == [
            f"convcli: error: --scheduler {address}: worker {odd_address} runs convcli 9.9, this is {local_version()};"
            " install the same version on every worker"]
        assert not (tmp_path / "out").exists()
    finally:
        _stop([odd])


def test_losing_the_scheduler_mid_batch_stops_with_one_line(real_scheduler, tmp_path):
    """Last in the module: it kills the module's scheduler."""
    address, procs = real_scheduler
    write_images(tmp_path / "in", 40, size=(192, 160), seed=300)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "convcli", "apply", tmp_path / "in", *KERNELS, "-o", out,
                             "--scheduler", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out.is_dir() and len([n for n in os.listdir(out) if not n.startswith(".")]) >= 4):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.005)
        os.killpg(procs[0].pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr
    lines = stderr.decode().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        rf"convcli: error: --scheduler {re.escape(address)}: lost the connection to the scheduler; \d+ inputs"
        r" not done \(run again with --skip-existing to finish\)", lines[0]), lines
