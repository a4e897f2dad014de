"""Batches: folders, workers, progress, faults, interruptions and untrusted files (issue 3).

Driven through click's CliRunner on ``convcli.cli.cli`` and, where a real process
matters (pipes, signals), through ``python -m convcli`` subprocesses.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.signal import correlate2d

from convcli import batch
from convcli.apply import Job, OutputSpec, planned_outputs, process
from convcli.batch import InputItem, expand_inputs, make_progress, plan_batch, run_batch
from convcli.cli import cli
from convcli.errors import InputError, OptionError
from convcli.stack import Stack

EDGE = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float32)
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)


def run(*args, status=0, input=None):
    """Invoke the CLI in-process; fail loudly on an unexpected exit status."""
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    assert result.exit_code == status, (result.exit_code, result.stdout, result.stderr)
    return result


def convcli_process(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convcli", *[str(a) for a in args]], capture_output=True,
                          timeout=120, **kwargs)


def write_rgb(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def write_kernel(path: Path, weights: np.ndarray, name: str | None = None) -> Path:
    head = f"name: {json.dumps(name)}\n" if name is not None else ""
    path.write_text(head + "weights: " + json.dumps(weights.tolist()) + "\n")
    return path


def reference(pixels: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Valid cross-correlation summed over channels (a 2-D kernel on every channel)."""
    x = pixels.astype(np.float64)
    return sum(correlate2d(x[:, :, c], kernel.astype(np.float64), mode="valid") for c in range(x.shape[2]))


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- inputs ----------------------------------------------------------------------------------------

def test_expand_inputs_mirrors_sub_folders_and_filters_extensions(tmp_path):
    root = tmp_path / "photos"
    for rel in ["a.png", "B.JPG", "notes.md", ".hidden.png", "sub/c.npy", "sub/deeper/d.csv", ".git/e.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    flat = expand_inputs([str(root)])
    assert [(Path(i.source).relative_to(root).as_posix(), i.rel_dir) for i in flat] == [("B.JPG", ""), ("a.png", "")]
    deep = expand_inputs([str(root), "-", str(root / "a.png")], recursive=True)
    assert [(Path(i.source).relative_to(root).as_posix() if i.source != "-" else "-", i.rel_dir) for i in deep] == [
        ("B.JPG", ""), ("a.png", ""), ("sub/c.npy", "sub"), ("sub/deeper/d.csv", "sub/deeper"), ("-", ""),
        ("a.png", "")]


def test_expand_inputs_does_not_loop_on_a_folder_symlink(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"x")
    os.symlink(tmp_path / "in", tmp_path / "in" / "loop")
    assert [i.rel_dir for i in expand_inputs([str(tmp_path / "in")], recursive=True)] == [""]


def test_standard_input_given_twice_is_refused():
    with pytest.raises(OptionError, match=r"'-' \(standard input\) is given 2 times"):
        expand_inputs(["-", "-"])


def test_folder_with_good_corrupt_and_non_image_files(tmp_path):
    folder = tmp_path / "in"
    good = {"good-even": write_rgb(folder / "good-even.png", 16, 20, 1),
            "good-odd": write_rgb(folder / "good-odd.png", 15, 13, 2)}
    whole = (folder / "good-even.png").read_bytes()
    (folder / "corrupt.png").write_bytes(whole[: len(whole) // 2])  # truncated
    (folder / "fake.jpg").write_bytes(os.urandom(300))  # not an image
    (folder / "notes.txt").write_text("shopping: eggs, milk\n")  # not a numeric table
    (folder / "readme.md").write_text("ignored: not an input extension\n")
    kernel = write_kernel(tmp_path / "edge.yaml", EDGE)
    result = run("apply", folder, "-k", kernel, "-o", tmp_path / "out", "--format", "npy", "-j", 2, status=1)
    for bad in ("corrupt.png", "fake.jpg", "notes.txt"):
        assert any(bad in line for line in result.stderr.splitlines()), result.stderr
    assert "readme.md" not in result.stderr
    assert "2 done, 3 failed" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good-even.npy", "good-odd.npy"]
    for stem, pixels in good.items():
        maps = np.load(tmp_path / "out" / f"{stem}.npy")
        np.testing.assert_allclose(maps[:, :, 0], reference(pixels, EDGE), rtol=1e-5, atol=1e-3)
    # The same folder to PNG: every file written opens and decodes in full.
    run("apply", folder, "-k", kernel, "-o", tmp_path / "png", "-j", 2, status=1)
    for path in (tmp_path / "png").iterdir():
        with Image.open(path) as image:
            image.load()
            assert image.size in ((18, 14), (11, 13))


def test_same_stem_from_two_file_arguments_is_refused_before_any_work(tmp_path):
    write_rgb(tmp_path / "a" / "x.png", 8, 8, 1)
    write_rgb(tmp_path / "b" / "x.png", 8, 8, 2)
    result = run("apply", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "-k", "edge", "-o",
                 tmp_path / "out", status=2)
    assert f"{tmp_path / 'a' / 'x.png'} and {tmp_path / 'b' / 'x.png'} would both write" in result.stderr
    assert "--recursive" in result.stderr
    assert not (tmp_path / "out").exists()


def test_same_stem_in_one_folder_is_refused(tmp_path):
    write_rgb(tmp_path / "in" / "x.png", 8, 8, 1)
    np.save(tmp_path / "in" / "x.npy", np.ones((8, 8), np.float32))
    result = run("apply", tmp_path / "in", "-k", "edge", "-o", tmp_path / "out", status=2)
    assert "x.npy and" in result.stderr and "x.png would both write" in result.stderr


def test_recursive_outputs_mirror_sub_folders(tmp_path):
    a = write_rgb(tmp_path / "in" / "a" / "x.png", 9, 10, 1)
    b = write_rgb(tmp_path / "in" / "b" / "x.png", 12, 7, 2)
    kernel = write_kernel(tmp_path / "k.yaml", EDGE, name="edge")
    run("apply", tmp_path / "in", "-r", "-k", kernel, "-o", tmp_path / "out", "--format", "npy", "-j", 2)
    assert sorted(files_under(tmp_path / "out")) == ["a/x.npy", "b/x.npy"]
    for sub, pixels in (("a", a), ("b", b)):
        np.testing.assert_allclose(np.load(tmp_path / "out" / sub / "x.npy")[:, :, 0], reference(pixels, EDGE),
                                   rtol=1e-5, atol=1e-3)


# --- workers ---------------------------------------------------------------------------------------

def test_jobs_2_equals_jobs_1_byte_for_byte(tmp_path):
    for i, (h, w) in enumerate([(31, 40), (32, 33), (17, 64), (40, 21), (25, 25)]):
        write_rgb(tmp_path / "in" / f"im{i}.png", h, w, i)
    Image.fromarray(np.random.default_rng(9).integers(0, 256, (30, 27), dtype=np.uint8)).save(
        tmp_path / "in" / "gray.png")
    common = ["-k", "edge", "-k", "sobel-x", "-k", "box-blur", "--padding", "same", "--activation", "relu"]
    for fmt in ("png", "npy"):
        run("apply", tmp_path / "in", *common, "--format", fmt, "-o", tmp_path / f"{fmt}1", "-j", 1)
        run("apply", tmp_path / "in", *common, "--format", fmt, "-o", tmp_path / f"{fmt}2", "-j", 2)
        one, two = files_under(tmp_path / f"{fmt}1"), files_under(tmp_path / f"{fmt}2")
        assert len(one) == (18 if fmt == "png" else 6)
        assert one == two


def test_the_job_pickles_for_spawned_workers(tmp_path):
    from convcli.kernels import load_kernels
    from convcli.layer import ConvSpec, Padding

    bank = load_kernels(str(write_kernel(tmp_path / "k.yaml", SOBEL_X, name="sx")), "edge")
    job = Job(stack=Stack.single(bank, ConvSpec(padding=Padding.parse("same", "--padding"))),
              output=OutputSpec(directory=None), print_maps=True)
    copy = pickle.loads(pickle.dumps(job))
    source = tmp_path / "a.csv"
    source.write_text("\n".join(",".join(str(10 * i + j) for j in range(7)) for i in range(6)))
    assert process(str(source), copy).printed == process(str(source), job).printed


class _Broken(Stack):
    """A stack with a bug for 7-pixel-wide inputs (importable by spawned workers)."""

    def run(self, x, **kwargs):
        if x.shape[1] == 7:
            raise ZeroDivisionError("simulated bug")
        return super().run(x, **kwargs)


class _Fatal(Stack):
    """A stack whose worker process dies on 7-pixel-wide inputs (a crash in native code)."""

    def run(self, x, **kwargs):
        if x.shape[1] == 7:
            os._exit(3)
        return super().run(x, **kwargs)


class _ThreadReport(Stack):
    """Reports the thread settings of the process that runs it, as an input error."""

    def run(self, x, **kwargs):
        from convcli import engine

        raise InputError(f"threads blas={os.environ.get('OPENBLAS_NUM_THREADS')} "
                         f"omp={os.environ.get('OMP_NUM_THREADS')} engine={engine.get_threads()}")


def _job(tmp_path, cls=Stack, **output) -> Job:
    from convcli.kernels import load_kernels
    from convcli.layer import ConvSpec

    bank = load_kernels(str(write_kernel(tmp_path / "k.yaml", EDGE, name="edge")))
    return Job(stack=cls(Stack.single(bank, ConvSpec()).steps),
               output=OutputSpec(directory=tmp_path / "out", **output))


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_bug_for_one_input_is_reported_with_its_type_and_the_batch_goes_on(tmp_path, jobs):
    items = [InputItem(str(tmp_path / f"{n}.png")) for n in ("a", "b", "c")]
    for item, width in zip(items, (9, 7, 8)):
        write_rgb(Path(item.source), 6, width, width)
    err = io.StringIO()
    summary = run_batch(items, _job(tmp_path, _Broken), jobs=jobs, stdout=io.BytesIO(), stderr=err)
    assert (summary.done, summary.failed, int(summary.exit_status)) == (2, 1, 1)
    assert f"{items[1].source}: internal error: ZeroDivisionError: simulated bug" in err.getvalue()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_edge.png", "c_edge.png"]


def test_a_worker_that_dies_fails_only_its_input(tmp_path):
    items = [InputItem(str(tmp_path / f"{n}.png")) for n in ("a", "b", "c", "d")]
    for item, width in zip(items, (9, 7, 8, 10)):
        write_rgb(Path(item.source), 6, width, width)
    err = io.StringIO()
    started = time.monotonic()
    summary = run_batch(items, _job(tmp_path, _Fatal), jobs=2, stdout=io.BytesIO(), stderr=err)
    assert time.monotonic() - started < 60
    assert (summary.done, summary.failed) == (3, 1)
    assert f"{items[1].source}: the worker process died" in err.getvalue()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_edge.png", "c_edge.png", "d_edge.png"]


@pytest.mark.skipif(batch.default_jobs() < 2, reason="needs two CPUs")
def test_workers_run_one_blas_and_engine_thread_each(tmp_path):
    items = [InputItem(str(tmp_path / f"{n}.png")) for n in "ab"]
    for i, item in enumerate(items):
        write_rgb(Path(item.source), 6, 6, i)
    err = io.StringIO()
    run_batch(items, _job(tmp_path, _ThreadReport), jobs=batch.default_jobs(), stdout=io.BytesIO(), stderr=err)
    assert err.getvalue().count("threads blas=1 omp=1 engine=1") == 2, err.getvalue()


def test_in_flight_tasks_are_bounded(tmp_path, monkeypatch):
    items = [InputItem(str(tmp_path / f"{i:02d}.csv")) for i in range(24)]
    for item in items:
        Path(item.source).write_text("1,2,3,4\n5,6,7,8\n9,10,11,12\n")
    job = _job(tmp_path)
    in_flight, peak = [0], [0]
    submit, finish = batch._Pool.submit, batch._Reporter.finish

    def counting_submit(self, *args):
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        return submit(self, *args)

    def counting_finish(self, outcome):
        in_flight[0] -= 1
        return finish(self, outcome)

    monkeypatch.setattr(batch._Pool, "submit", counting_submit)
    monkeypatch.setattr(batch._Reporter, "finish", counting_finish)
    summary = run_batch(items, job, jobs=2, stdout=io.BytesIO(), stderr=io.StringIO())
    assert summary.done == 24
    assert peak[0] == batch.TASKS_PER_WORKER * 2


def test_print_stays_in_input_order_with_workers(tmp_path):
    sizes = [40, 5, 30, 4, 20, 6, 12, 3]  # big and small mixed, so workers finish out of order
    for i, size in enumerate(sizes):
        (tmp_path / f"s{i}.csv").write_text("\n".join(",".join(str((r * 7 + c) % 10) for c in range(size))
                                                     for r in range(size)))
    result = run("apply", *[tmp_path / f"s{i}.csv" for i in range(len(sizes))], "-k", "edge", "--print", "-j", 2)
    labels = [line for line in result.stdout.splitlines() if line.startswith("#")]
    assert labels == [f"# s{i} edge" for i in range(len(sizes))]


# --- progress and reporting ------------------------------------------------------------------------

class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_not_quiet(tmp_path):
    items = [InputItem(str(tmp_path / f"{n}.png")) for n in "abc"]
    for i, item in enumerate(items):
        write_rgb(Path(item.source), 8, 8, i)
    job = _job(tmp_path)
    terminal = _FakeTerminal()
    run_batch(items, job, jobs=1, stdout=io.BytesIO(), stderr=terminal)
    assert "0/3" in terminal.getvalue() and "3 done, 0 failed" in terminal.getvalue()
    quiet = _FakeTerminal()
    run_batch(items, job, jobs=1, quiet=True, stdout=io.BytesIO(), stderr=quiet)
    assert quiet.getvalue() == ""
    assert isinstance(make_progress(3, stream=io.StringIO()), batch.NullProgress)
    assert isinstance(make_progress(3, stream=_FakeTerminal()), batch.BarProgress)
    assert not isinstance(make_progress(3, stream=_FakeTerminal(), quiet=True), batch.BarProgress)
    # Data going to the same terminal would tear the bar: no bar then.
    assert not isinstance(make_progress(3, stream=_FakeTerminal(), stdout=_FakeTerminal()), batch.BarProgress)


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    for i in range(3):
        write_rgb(tmp_path / "in" / f"{i}.png", 8, 8, i)
    result = run("apply", tmp_path / "in", "-k", "edge", "-o", tmp_path / "out", "-j", 1)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("convcli: 3 done, 0 failed in "), result.stderr
    assert run("apply", tmp_path / "in", "-k", "edge", "-o", tmp_path / "out", "-q").stderr == ""


def test_json_lines_one_per_input_and_nothing_else_on_stdout(tmp_path):
    write_rgb(tmp_path / "in" / "a.png", 10, 12, 1)
    write_rgb(tmp_path / "in" / "b.png", 11, 9, 2)
    (tmp_path / "in" / "c.png").write_bytes(b"not a png")
    result = run("apply", tmp_path / "in", "-k", "edge", "-k", "sobel-x", "-o", tmp_path / "out", "--json",
                 "-j", 2, status=1)
    records = {Path(r["input"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert sorted(records) == ["a.png", "b.png", "c.png"]
    for record in records.values():
        assert {"input", "input_shape", "output_shape", "filters", "outputs", "seconds", "error"} <= set(record)
    assert records["a.png"]["input_shape"] == [10, 12, 3] and records["a.png"]["output_shape"] == [8, 10, 2]
    assert records["b.png"]["filters"] == ["edge", "sobel-x"] and records["b.png"]["error"] is None
    assert all(Path(p).is_file() for p in records["b.png"]["outputs"]) and len(records["b.png"]["outputs"]) == 2
    assert "c.png" in records["c.png"]["error"] and records["c.png"]["outputs"] == []
    assert "2 done, 1 failed" in result.stderr


def test_json_and_print_cannot_share_stdout(tmp_path):
    (tmp_path / "a.csv").write_text("1,2,3\n4,5,6\n7,8,9\n")
    result = run("apply", tmp_path / "a.csv", "-k", "edge", "--print", "--json", status=2)
    assert "--json: standard output already carries the --print rows" in result.stderr


# --- faults and interruptions ----------------------------------------------------------------------

def test_an_output_that_would_overwrite_an_input_is_refused(tmp_path):
    write_rgb(tmp_path / "in" / "a.png", 8, 8, 1)
    write_rgb(tmp_path / "in" / "b.png", 8, 8, 2)
    before = files_under(tmp_path / "in")
    result = run("apply", tmp_path / "in", "-k", "edge", "--name", "{stem}.png", "-o", tmp_path / "in", status=2)
    assert f"would overwrite the input {tmp_path / 'in' / 'a.png'}" in result.stderr
    assert files_under(tmp_path / "in") == before


def test_an_output_hard_linked_to_an_input_is_refused(tmp_path):
    write_rgb(tmp_path / "in" / "a.png", 8, 8, 1)
    write_rgb(tmp_path / "in" / "b.png", 8, 8, 2)
    (tmp_path / "out").mkdir()
    os.link(tmp_path / "in" / "b.png", tmp_path / "out" / "a_edge.png")  # a's output *is* input b
    before = files_under(tmp_path / "in")
    result = run("apply", tmp_path / "in", "-k", "edge", "-o", tmp_path / "out", status=1)
    assert f"{tmp_path / 'out' / 'a_edge.png'}: refusing to overwrite an input file" in result.stderr
    assert files_under(tmp_path / "in") == before
    assert (tmp_path / "out" / "b_edge.png").is_file()


def test_skip_existing_resumes_a_batch(tmp_path):
    for n in "abc":
        write_rgb(tmp_path / "in" / f"{n}.png", 8, 9, ord(n))
    args = ["apply", tmp_path / "in", "-k", "edge", "-k", "sobel-x", "-o", tmp_path / "out", "--json"]
    run(*args)
    (tmp_path / "out" / "a_edge.png").write_bytes(b"kept")  # present: a counts as done
    (tmp_path / "out" / "b_sobel-x.png").unlink()  # b was interrupted half-way
    result = run(*args, "--skip-existing")
    records = {Path(r["input"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert {n: r["skipped"] for n, r in records.items()} == {"a.png": True, "b.png": False, "c.png": True}
    assert (tmp_path / "out" / "a_edge.png").read_bytes() == b"kept"
    assert (tmp_path / "out" / "b_sobel-x.png").is_file()
    assert "1 done, 0 failed, 2 skipped" in result.stderr
    run(*args)  # without the flag everything runs again
    assert (tmp_path / "out" / "a_edge.png").read_bytes() != b"kept"


def test_sweep_removes_only_this_batchs_temporaries(tmp_path):
    write_rgb(tmp_path / "x.png", 8, 8, 1)
    job = _job(tmp_path)
    plan = plan_batch([InputItem(str(tmp_path / "x.png"))], job)
    (tmp_path / "out").mkdir()
    ours = tmp_path / "out" / ".x_edge.png.k2j4_x9q.tmp"
    theirs = tmp_path / "out" / ".other.png.abcdefgh.tmp"
    ours.write_bytes(b"partial")
    theirs.write_bytes(b"someone else's")
    batch._sweep_temporaries(plan)
    assert not ours.exists() and theirs.exists()


@pytest.mark.parametrize("target", ["group", "parent"])
def test_ctrl_c_stops_the_workers_and_leaves_only_complete_files(tmp_path, target):
    for i in range(40):
        write_rgb(tmp_path / "in" / f"im{i:02d}.png", 256, 256, i)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "convcli", "apply", tmp_path / "in", "-k", "edge", "-k", "sobel-x",
                             "-k", "sobel-y", "-k", "box-blur", "-o", out, "-j", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (out.is_dir() and len([n for n in os.listdir(out) if not n.startswith(".")]) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    if target == "group":  # what a terminal's Ctrl-C does: every process of the group gets SIGINT
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - stopped < 10
    assert stderr.strip().splitlines()[-1] == b"convcli: interrupted" and b"Traceback" not in stderr
    assert not stderr.startswith(b"\n")  # no stray blank line before the message
    names = sorted(os.listdir(out))
    time.sleep(1.0)
    assert sorted(os.listdir(out)) == names  # no worker is still writing
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]
    assert 0 < len(names) < 160
    for name in names:
        with Image.open(out / name) as image:
            image.load()
            assert image.size == (254, 254)


# --- pipelines -------------------------------------------------------------------------------------

def test_a_real_shell_pipe(tmp_path):
    pixels = write_rgb(tmp_path / "a.png", 23, 18, 5)
    command = (f"cat a.png | {sys.executable} -m convcli apply - -k box-blur --depthwise --padding same -o - "
               f"> b.png")
    subprocess.run(command, shell=True, cwd=tmp_path, check=True, timeout=120)
    with Image.open(tmp_path / "b.png") as image:
        assert image.mode == "RGB" and image.size == (18, 23)
    # The same bytes as writing the file directly.
    run("apply", tmp_path / "a.png", "-k", "box-blur", "--depthwise", "--padding", "same", "-o", tmp_path / "dir")
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "dir" / "a_box-blur.png").read_bytes()
    # And the numbers: a 3×3 mean over each channel, zero padding.
    clip = convcli_process("apply", "-", "-k", "box-blur", "--depthwise", "--padding", "same", "-o", "-",
                           "--normalize", "clip", input=(tmp_path / "a.png").read_bytes())
    assert clip.returncode == 0, clip.stderr
    from scipy.ndimage import uniform_filter

    expected = np.stack([uniform_filter(pixels[:, :, c].astype(np.float64), 3, mode="constant")
                         for c in range(3)], axis=2)
    got = np.asarray(Image.open(io.BytesIO(clip.stdout))).astype(np.float64)
    assert np.abs(got - np.clip(np.rint(expected), 0, 255)).max() <= 1


def test_stdout_with_several_outputs_is_refused_before_reading(tmp_path):
    result = run("apply", tmp_path / "missing.png", "-k", "edge", "-k", "sobel-x", "-k", "box-blur", "-o", "-",
                 status=2)
    assert "-o -: standard output takes a single output, but this layer gives 3 outputs" in result.stderr
    assert "missing.png" not in result.stderr  # refused before the input was opened


def test_stdout_with_a_depthwise_layer_on_many_channels_fails_that_input_once(tmp_path):
    # It depends on the input's channels: that input's one failure line (exit 1), not a usage error too.
    np.save(tmp_path / "deep.npy", np.ones((6, 6, 5), np.float32))
    result = run("apply", tmp_path / "deep.npy", "-k", "box-blur", "--depthwise", "-o", "-", status=1)
    assert result.stderr.count("\n") == 1
    assert "deep.npy: -o -: standard output takes a single output, but a depthwise layer on this 5-channel" \
           " input gives one map per channel and filter: 5 outputs" in result.stderr


# --- untrusted files -------------------------------------------------------------------------------

def test_kernel_names_cannot_place_files_outside_the_output_folder(tmp_path):
    write_rgb(tmp_path / "work" / "in" / "x.png", 8, 8, 1)
    names = ["../../escape", "/tmp/absolute-escape", "a/../../b", "..", "sub/dir"]
    filters = [{"name": name, "weights": EDGE.tolist()} for name in names]
    bank = tmp_path / "bank.yaml"
    bank.write_text(json.dumps({"filters": filters}))
    before = {p for p in tmp_path.rglob("*")}
    result = CliRunner().invoke(cli, ["apply", str(tmp_path / "work" / "in"), "-k", str(bank), "-o",
                                      str(tmp_path / "work" / "out")], catch_exceptions=False)
    created = {p for p in tmp_path.rglob("*")} - before
    out = tmp_path / "work" / "out"
    assert created, result.stderr
    assert all(p == out or out in p.parents for p in created), sorted(map(str, created))
    assert all(p.parent == out for p in created if p.is_file())  # no sub-folders made from names either
    assert not Path("/tmp/absolute-escape_x.png").exists()


@pytest.mark.parametrize("template", ["../{stem}_{filter}.png", "/tmp/{stem}_{filter}.png",
                                      "{stem}/../../{filter}.png", "{stem}_{filter}/../../../x{index}.png"])
def test_name_templates_cannot_leave_the_output_folder(tmp_path, template):
    write_rgb(tmp_path / "in" / "x.png", 8, 8, 1)
    result = run("apply", tmp_path / "in", "-k", "edge", "--name", template, "-o", tmp_path / "out", status=2)
    assert "--name" in result.stderr and "outside the output folder" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_yaml_bomb_is_refused_quickly(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        prev = chr(ord("a") + level - 1)
        this = chr(ord("a") + level)
        lines.append(f"{this}: &{this} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("weights: *j")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    write_rgb(tmp_path / "x.png", 8, 8, 1)
    started = time.monotonic()
    result = run("apply", tmp_path / "x.png", "-k", bomb, "-o", tmp_path / "out", status=2)
    assert time.monotonic() - started < 10
    assert "bomb.yaml" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and IHDR declaring width×height RGB, with a tiny IDAT."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_by_the_pixel_limit(tmp_path):
    _png_header_only(tmp_path / "bomb.png", 20_000, 20_000)  # 400 megapixels declared, 100 bytes on disk
    assert (tmp_path / "bomb.png").stat().st_size < 200
    write_rgb(tmp_path / "small.png", 16, 16, 1)
    started = time.monotonic()
    result = run("apply", tmp_path / "bomb.png", tmp_path / "small.png", "-k", "edge", "-o", tmp_path / "out",
                 status=1)
    assert time.monotonic() - started < 10
    line = next(line for line in result.stderr.splitlines() if "bomb.png" in line)
    assert "400,000,000" in line and "89,478,485" in line and "--max-pixels" in line
    assert (tmp_path / "out" / "small_edge.png").is_file()
    # The limit is configurable: 256 pixels pass, 255 do not.
    run("apply", tmp_path / "small.png", "-k", "edge", "-o", tmp_path / "o2", "--max-pixels", 256)
    result = run("apply", tmp_path / "small.png", "-k", "edge", "-o", tmp_path / "o3", "--max-pixels", 255,
                 status=1)
    assert "256" in result.stderr and "255" in result.stderr


def test_planned_outputs_match_what_process_writes(tmp_path):
    pixels = write_rgb(tmp_path / "p.png", 9, 8, 3)
    job = _job(tmp_path, montage=str(tmp_path / "m" / "{stem}.png"))
    result = process(str(tmp_path / "p.png"), job)
    assert [str(p) for p in planned_outputs(job, "p", pixels.shape[2])] == result.outputs


def _batch_peak_rss_mib(folder: Path, out: Path) -> float:
    """Run a whole batch in a fresh process (-j 1) and return that process's peak RSS."""
    code = (
        "import resource, sys\n"
        "from convcli.cli import cli\n"
        f"status = cli.main(args=['apply', {str(folder)!r}, '-k', 'sobel-x', '-k', 'sobel-y', '--padding', 'same',"
        f" '-o', {str(out)!r}, '-j', '1', '-q'], standalone_mode=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
        "sys.exit(status)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip().splitlines()[-1])


def test_memory_stays_flat_over_a_batch(tmp_path):
    """Ten times more images must not need more memory: one image and its maps at a time."""
    from PIL import Image

    rng = np.random.default_rng(5)
    few, many = tmp_path / "few", tmp_path / "many"
    few.mkdir()
    many.mkdir()
    for index in range(40):
        pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # 3.5 MiB as float32, maps 2.3 MiB
        Image.fromarray(pixels).save((few if index < 4 else many) / f"img{index:02d}.png", compress_level=0)
        if index < 4:
            Image.fromarray(pixels).save(many / f"img{index:02d}.png", compress_level=0)
    peak_few = _batch_peak_rss_mib(few, tmp_path / "out-few")
    peak_many = _batch_peak_rss_mib(many, tmp_path / "out-many")
    assert len(list((tmp_path / "out-many").glob("*.png"))) == 80
    # Keeping every image's maps adds ~45 MiB here (checked by leaking them); allow allocator noise.
    assert peak_many - peak_few < 25, (peak_few, peak_many)


_SIGTERM_IN_A_CALLBACK = """
import os, signal, sys, weakref
from convcli import batch

batch._worker_signals()
batch._worker["busy"] = True


class Held:
    pass


def callback(ref):
    os.kill(os.getpid(), signal.SIGTERM)  # the parent's SIGTERM arrives inside a weakref callback
    for _ in range(10000):  # the handler runs here and raises
        pass


held = Held()
ref = weakref.ref(held, callback)
try:
    del held
    for _ in range(10 ** 7):
        pass
    print("the task went on")
except batch._Terminated as stop:
    print("terminated", stop.code)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_worker_whose_sigterm_lands_in_a_weakref_callback_still_stops_without_a_traceback():
    # Python prints and drops an exception raised inside a weakref callback or __del__; a
    # batch once printed such a traceback (a full disk's stop, -j 2) and its worker went on.
    run = subprocess.run([sys.executable, "-c", _SIGTERM_IN_A_CALLBACK], capture_output=True, text=True,
                         timeout=60)
    assert run.stdout.split() == ["terminated", str(128 + signal.SIGTERM)], run.stdout + run.stderr
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr
