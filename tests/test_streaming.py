"""Images larger than --memory-limit (issue 12): band by band, bit for bit the whole-image result.

Real files go through the command line twice, whole (the default limit) and streamed (a
limit below what the whole image needs), and the outputs are compared exactly. The
engine's tile budgets are made tiny here, so that small images are cut into many tiles
and pooled chunks and the streams have many bands: every seam is exercised. Both runs
of a comparison use the same budgets (the engine plans its tiles from them).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from convcli import engine, streaming
from convcli.cli import cli
from convcli.engine import WeightsBank, _common, fft
from convcli.engine.bands import LayerPlan
from convcli.errors import InputError, OptionError
from convcli.io.bands import open_source, parse_size
from convcli.layer import ConvSpec, PoolSpec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Tiny tile and chunk budgets: small images get many tiles, and the bands one tile each."""
    monkeypatch.setattr(_common, "TILE_MIN_BYTES", 512)
    monkeypatch.setattr(_common, "TILE_MAX_BYTES", 4096)
    monkeypatch.setattr(fft, "TILE_BYTES", 8192)
    monkeypatch.setattr(streaming, "BAND_TARGET_BYTES", 1)
    bands: list = []
    plan = streaming.plan_bands

    def spy(*args, **kwargs):
        result = plan(*args, **kwargs)
        bands.append(result)
        return result

    monkeypatch.setattr(streaming, "plan_bands", spy)
    return bands


def run(*args, status=0):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == status, result.output + result.stderr
    return result


def pattern(shape, seed=0, dtype=np.uint8):
    """Pixels that differ from row to row (10·row + column, plus noise): a seam off by one row shows."""
    h, w = shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    base = (10 * y + x) % 251
    noise = np.random.default_rng(seed).integers(0, 5, shape)
    values = (base if len(shape) == 2 else base[:, :, None]) + noise
    return (values % 256).astype(dtype)


def tiled_tiff(path: Path, pixels, tile=(16, 16)) -> Path:
    tifffile.imwrite(path, pixels, tile=tile, photometric="rgb" if pixels.ndim == 3 and pixels.shape[2] == 3
                     else "minisblack")
    return path


def whole_and_streamed(tmp_path, source: Path, *options, fmt="npy", limit=None):
    """Run the command whole and streamed; return the two output folders.

    Without ``limit`` the second run is made to stream (as if the whole image were over the
    limit) with room for bands of one tile each; with it, the limit decides.
    """
    from convcli import apply as apply_module

    whole, banded = tmp_path / "whole", tmp_path / "banded"
    run("apply", source, *options, "--format", fmt, "-o", whole, "-q")
    if limit is None:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(apply_module, "_whole_fits", lambda source, job, needs: False)
            run("apply", source, *options, "--format", fmt, "-o", banded, "-q", "--memory-limit", "64MiB")
    else:
        run("apply", source, *options, "--format", fmt, "-o", banded, "-q", "--memory-limit", limit)
    return whole, banded


LAYERS = [
    ("-k", "sobel-x", "--padding", "same"),
    ("-k", "edge", "-k", "box-blur", "--stride", "2", "--padding", "same", "--border", "reflect"),
    ("-k", "gaussian-blur", "--stride", "3", "--dilation", "2", "--padding", "full", "--border", "circular"),
    ("-k", "sharpen", "--stride", "2,1", "--padding", "2,1,0,3", "--border", "replicate", "--activation", "relu"),
    ("-k", "emboss", "--padding", "valid", "--pool", "max", "--pool-size", "3", "--pool-stride", "2"),
    ("-k", "sobel-y", "--padding", "same", "--border", "circular", "--pool", "avg", "--pool-padding", "same"),
    ("-k", "box-blur", "--depthwise", "--stride", "2", "--padding", "same", "--border", "reflect"),
    ("-k", "prewitt-x", "--depthwise", "--dilation", "3,2", "--padding", "same", "--pool", "max",
     "--pool-padding", "same", "--pool-size", "3"),
    ("-k", "edge", "--algorithm", "fft", "--padding", "same", "--border", "replicate", "--activation", "tanh"),
    ("-k", "sobel-x", "-k", "sobel-y", "--algorithm", "separable", "--stride", "3", "--padding", "same"),
    ("-k", "gaussian-blur", "--algorithm", "direct", "--flip", "--padding", "full", "--border", "reflect"),
]


@pytest.mark.parametrize("options", LAYERS, ids=[" ".join(o) for o in LAYERS])
def test_a_streamed_layer_is_the_whole_image_layer_bit_for_bit(tmp_path, small_tiles, options):
    source = tiled_tiff(tmp_path / "in.tif", pattern((123, 61, 3)))
    whole, banded = whole_and_streamed(tmp_path, source, *options)
    assert small_tiles and small_tiles[-1].bands >= 4  # the stream really had seams
    a, b = np.load(whole / "in.npy"), np.load(banded / "in.npy")
    assert a.shape == b.shape and np.array_equal(a, b)
    assert (whole / "in.npy").read_bytes() == (banded / "in.npy").read_bytes()


def test_a_two_layer_pipeline_streams_bit_for_bit(tmp_path, small_tiles):
    net = tmp_path / "net.yaml"
    net.write_text("layers:\n"
                   "  - conv: {kernels: [sobel-x, edge, sharpen], stride: 2, padding: same, activation: relu}\n"
                   "  - pool: {mode: max, size: 2}\n"
                   "  - conv: {kernels: [box-blur, emboss], padding: same, border: reflect}\n"
                   "  - pool: {mode: avg, size: 3, stride: 2, padding: same}\n")
    source = tiled_tiff(tmp_path / "in.tif", pattern((801, 93, 3), seed=3))
    whole, banded = whole_and_streamed(tmp_path, source, "--pipeline", net)
    assert small_tiles[-1].bands >= 3
    assert np.array_equal(np.load(whole / "in.npy"), np.load(banded / "in.npy"))


@pytest.mark.parametrize("fmt,normalize", [("png", "minmax"), ("png16", "offset"), ("png", "clip"), ("png", "abs")])
def test_streamed_png_files_are_the_same_bytes(tmp_path, small_tiles, fmt, normalize):
    source = tiled_tiff(tmp_path / "in.tif", pattern((75, 58, 3), seed=1))
    whole, banded = whole_and_streamed(tmp_path, source, "-k", "sobel-x", "-k", "edge", "--padding", "same",
                                       "--normalize", normalize, fmt=fmt)
    names = sorted(p.name for p in whole.iterdir())
    assert names == ["in_edge.png", "in_sobel-x.png"] == sorted(p.name for p in banded.iterdir())
    for name in names:
        assert (whole / name).read_bytes() == (banded / name).read_bytes()


def test_streamed_depthwise_colour_png_keeps_one_scale(tmp_path):
    source = tiled_tiff(tmp_path / "in.tif", pattern((64, 49, 3), seed=2))
    whole, banded = whole_and_streamed(tmp_path, source, "-k", "gaussian-blur", "--depthwise", "--padding", "same",
                                       fmt="png")
    assert (whole / "in_gaussian-blur.png").read_bytes() == (banded / "in_gaussian-blur.png").read_bytes()
    with Image.open(banded / "in_gaussian-blur.png") as im:
        assert im.mode == "RGB" and im.size == (49, 64)


def test_streamed_tiff_is_a_tiled_bigtiff_of_the_same_values(tmp_path):
    source = tiled_tiff(tmp_path / "in.tif", pattern((70, 300, 3)))
    whole, banded = whole_and_streamed(tmp_path, source, "-k", "sobel-x", "-k", "sobel-y", "--depthwise",
                                       "--padding", "same", fmt="tiff")
    for name in ("in_sobel-x.tiff", "in_sobel-y.tiff"):
        with tifffile.TiffFile(banded / name) as tif:
            assert tif.is_bigtiff and tif.pages[0].is_tiled and tif.pages[0].dtype == np.float32
            streamed = tif.asarray()
        assert np.array_equal(streamed, tifffile.imread(whole / name))


def test_zarr_output_and_input(tmp_path):
    import zarr

    source = tiled_tiff(tmp_path / "in.tif", pattern((66, 40, 3)))
    whole, banded = whole_and_streamed(tmp_path, source, "-k", "edge", "-k", "sobel-y", "--padding", "same",
                                       fmt="zarr")
    a = zarr.open_array(str(whole / "in.zarr"), mode="r")
    b = zarr.open_array(str(banded / "in.zarr"), mode="r")
    assert a.shape == b.shape == (66, 40, 2) and a.dtype == np.float32
    assert np.array_equal(a[:], b[:])
    # A zarr array is an input too (here H×W×2), read by regions when streamed.
    again_whole, again_banded = tmp_path / "w2", tmp_path / "b2"
    run("apply", banded / "in.zarr", "-k", "box-blur", "--padding", "same", "--format", "npy", "-o", again_whole, "-q")
    run("apply", banded / "in.zarr", "-k", "box-blur", "--padding", "same", "--format", "npy", "-o", again_banded,
        "-q", "--memory-limit", "32KiB")
    assert np.array_equal(np.load(again_whole / "in.npy"), np.load(again_banded / "in.npy"))


@pytest.mark.parametrize("kind", ["npy", "striped-tiff", "png", "float-tiff"])
def test_every_input_kind_streams(tmp_path, small_tiles, kind):
    pixels = pattern((71, 45, 3), seed=4)
    if kind == "npy":
        source = tmp_path / "in.npy"
        np.save(source, pixels.astype(np.float32) / 7)
    elif kind == "striped-tiff":
        source = tmp_path / "in.tif"
        tifffile.imwrite(source, pixels, rowsperstrip=5, photometric="rgb")
    elif kind == "float-tiff":
        source = tmp_path / "in.tif"
        tifffile.imwrite(source, pixels.astype(np.float32) - 100, tile=(16, 32), photometric="rgb")
    else:
        source = tmp_path / "in.png"
        Image.fromarray(pixels).save(source)
    whole, banded = whole_and_streamed(tmp_path, source, "-k", "sobel-x", "--mode", "gray", "--scale", "unit",
                                       "--padding", "same")
    assert small_tiles[-1].bands >= 4
    assert np.array_equal(np.load(whole / "in.npy"), np.load(banded / "in.npy"))


def test_a_seam_off_by_one_row_is_caught(tmp_path, monkeypatch):
    """The comparison above can fail: with the band windows shifted by one row it does."""
    source = tiled_tiff(tmp_path / "in.tif", pattern((60, 33)))
    whole, banded = whole_and_streamed(tmp_path, source, "-k", "sobel-y", "--padding", "same")
    assert np.array_equal(np.load(whole / "in.npy"), np.load(banded / "in.npy"))
    span = LayerPlan.input_span
    monkeypatch.setattr(LayerPlan, "input_span",
                        lambda self, r0, r1: tuple(v + (1 if r0 else 0) for v in span(self, r0, r1)))
    (tmp_path / "again").mkdir()
    whole, shifted = whole_and_streamed(tmp_path / "again", source, "-k", "sobel-y", "--padding", "same")
    assert not np.array_equal(np.load(whole / "in.npy"), np.load(shifted / "in.npy"))


def test_compute_band_gives_any_rows_of_the_whole_output(tmp_path):
    from convcli.pipeline import load_pipeline

    net = tmp_path / "net.yaml"
    net.write_text("layers:\n  - conv: {kernels: [sobel-x, edge], stride: 3, padding: same, border: circular}\n"
                   "  - conv: {kernels: [box-blur], dilation: 2, padding: same, border: circular}\n"
                   "  - conv: {kernels: [emboss], padding: full, border: reflect}\n")
    source = tiled_tiff(tmp_path / "in.tif", pattern((97, 51, 3)))
    stack = load_pipeline(net)
    run("apply", source, "--pipeline", net, "--format", "npy", "-o", tmp_path / "whole", "-q")
    whole = np.load(tmp_path / "whole" / "in.npy")
    rng = np.random.default_rng(0)
    for _ in range(12):
        r0 = int(rng.integers(0, whole.shape[0]))
        r1 = int(rng.integers(r0 + 1, whole.shape[0] + 1))
        band = streaming.compute_band(str(source), (r0, r1), stack)
        assert np.array_equal(band, whole[r0:r1]), (r0, r1)


def test_layer_plan_on_random_layers_matches_run_layer():
    """Engine level: random layers (every border, padding, stride, dilation, pool, depthwise, uint8 input)."""
    rng = np.random.default_rng(12)
    checked = 0
    while checked < 40:
        h, w, c = int(rng.integers(4, 60)), int(rng.integers(4, 40)), int(rng.choice([1, 3]))
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        depthwise = bool(rng.integers(0, 2))
        weights = rng.standard_normal((kh, kw, 1 if depthwise else c, int(rng.integers(1, 3)))).astype(np.float32)
        if rng.integers(0, 2):
            weights = weights[:, :, 0, 0]  # a 2-D kernel: summed over channels (or each channel, depthwise)
        bank = WeightsBank(weights, rng.standard_normal(1 if weights.ndim == 2 else weights.shape[3]))
        spec = ConvSpec.from_options(stride=(int(rng.integers(1, 4)), int(rng.integers(1, 3))),
                                     dilation=(int(rng.integers(1, 3)), 1), depthwise=depthwise,
                                     padding=str(rng.choice(["valid", "same", "full", "1,2,0,1"])),
                                     border=str(rng.choice(["zeros", "reflect", "replicate", "circular"])),
                                     activation=str(rng.choice(["none", "relu"])))
        pool = (PoolSpec.from_options(mode=str(rng.choice(["max", "avg"])), size=int(rng.integers(1, 4)),
                                      padding=str(rng.choice(["valid", "same"]))) if rng.integers(0, 2) else None)
        x = (rng.integers(0, 256, (h, w, c)).astype(np.uint8) if rng.integers(0, 2)
             else rng.standard_normal((h, w, c)).astype(np.float32))
        algorithm = str(rng.choice(["auto", "direct", "fft", "separable"]))
        try:
            expected = engine.run_layer(x, bank, spec, pool, algorithm=algorithm).output
        except Exception:  # noqa: BLE001 - a layer that cannot work (too small, not separable): draw again
            continue
        plan = engine.plan_layer(x.shape, bank, spec, pool, algorithm=algorithm)
        cuts = sorted({0, plan.output_shape[0], *rng.integers(1, max(2, plan.output_shape[0]), 3).tolist()})
        cuts = [v for v in cuts if v <= plan.output_shape[0]]
        got = np.concatenate([plan.compute(lambda a, b: x[a:b], (a, b)) for a, b in zip(cuts, cuts[1:]) if b > a])
        assert np.array_equal(got, expected), (h, w, c, weights.shape, spec, pool, algorithm)
        checked += 1


def test_opencv_layers_stream_bit_for_bit(monkeypatch):
    pytest.importorskip("cv2")
    from convcli.engine import choose

    monkeypatch.setattr(choose, "choose", lambda layer, opencv_ok, **_: "opencv" if opencv_ok else "direct")
    from convcli import load_kernels

    rng = np.random.default_rng(5)
    sobel = load_kernels("sobel-x").weights_hwio(1)[:, :, 0, 0]  # symmetric: OpenCV has loops of its own for these
    blur = load_kernels("gaussian-blur").weights_hwio(1)[:, :, 0, 0]
    for shape, weights, depthwise, border in [((90, 70, 1), rng.standard_normal((3, 3)), False, "replicate"),
                                              ((81, 64, 3), rng.standard_normal((1, 5)), False, "reflect"),
                                              ((77, 50, 3), rng.standard_normal((5, 5)), True, "zeros"),
                                              ((60, 41, 2), rng.standard_normal((3, 3, 2, 2)), False, "reflect"),
                                              ((300, 257, 1), sobel, False, "zeros"),
                                              ((211, 190, 3), blur, True, "reflect"),
                                              ((150, 149, 3), sobel, False, "replicate")]:
        x = rng.integers(0, 256, shape).astype(np.uint8)
        bank = WeightsBank(np.asarray(weights, np.float32), 0.25)
        spec = ConvSpec.from_options(padding="same", border=border, depthwise=depthwise, activation="relu")
        expected = engine.run_layer(x, bank, spec)
        plan = engine.plan_layer(x.shape, bank, spec)
        assert plan.backend == expected.backend == "opencv"
        got = np.concatenate([plan.compute(lambda a, b: x[a:b], (a, min(a + 7, shape[0])))
                              for a in range(0, shape[0], 7)])
        assert np.array_equal(got, expected.output)


def test_json_and_outputs_of_a_streamed_input(tmp_path, small_tiles):
    import json

    source = tiled_tiff(tmp_path / "in.tif", pattern((100, 60, 3)))
    result = run("apply", source, "-k", "sobel-x", "-k", "edge", "--stride", "2", "--json", "-o", tmp_path / "o",
                 "--memory-limit", "64KiB")
    line = json.loads(result.stdout)
    assert line["input_shape"] == [100, 60, 3] and line["output_shape"] == [49, 29, 2]
    assert line["filters"] == ["sobel-x", "edge"] and line["error"] is None
    assert sorted(line["outputs"]) == sorted(str(tmp_path / "o" / f"in_{n}.png") for n in ("sobel-x", "edge"))
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["in_edge.png", "in_sobel-x.png"]
    assert small_tiles and small_tiles[-1].bands > 1  # the limit made it stream


def test_inputs_that_cannot_fit_are_refused_before_any_work(tmp_path):
    png = tmp_path / "big.png"
    Image.fromarray(pattern((200, 300, 3))).save(png)
    result = run("apply", png, "-k", "edge", "-o", tmp_path / "o", "--memory-limit", "100KiB", status=1)
    assert "big.png: its 300×200×3 pixels take 175.8 KiB decoded, more than the 100 KiB memory limit" in result.stderr
    assert "tiled TIFF" in result.stderr and "raise --memory-limit" in result.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    tif = tiled_tiff(tmp_path / "in.tif", pattern((200, 300, 3)))
    result = run("apply", tif, "-k", "edge", "-o", tmp_path / "o", "--memory-limit", "4KiB", status=1)
    assert re.search(r"in\.tif: one band of \d+ output rows needs about [0-9.]+ KiB, more than the 4 KiB memory "
                     r"limit; raise --memory-limit", result.stderr)
    result = run("apply", tif, "-k", "edge", "--print", "--memory-limit", "64KiB", status=1)
    assert "in.tif: --print needs the whole image in memory, about" in result.stderr
    assert "raise --memory-limit or drop --print" in result.stderr


def test_memory_limit_option_values():
    assert parse_size("512MiB") == 512 << 20 and parse_size("2GiB") == 2 << 30 and parse_size("1.5G") == 3 << 29
    assert parse_size("300MB") == 300_000_000 and parse_size("1000000") == 1_000_000 and parse_size("64 kib") == 65536
    with pytest.raises(OptionError, match=r"--memory-limit: '12 parsecs' is not a size; write it like 512MiB"):
        parse_size("12 parsecs")
    with pytest.raises(OptionError, match=r"--memory-limit: '0' must be more than 0 bytes"):
        parse_size("0")
    with pytest.raises(OptionError, match=r"--memory-limit: '2000000000PiB' is not a size"):
        parse_size("2000000000PiB")
    with pytest.raises(OptionError, match=r"--memory-limit: '9{40}…' \(401 characters\) is too large"):
        parse_size("9" * 400 + "G")
    result = run("apply", "x.png", "-k", "edge", "--memory-limit", "lots", status=2)
    assert "--memory-limit" in result.stderr and "'lots' is not a size" in result.stderr


def test_zarr_cannot_go_to_standard_output(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(pattern((10, 12))).save(png)
    result = run("apply", png, "-k", "edge", "--format", "zarr", "-o", "-", status=2)
    assert "--format zarr: a zarr array is a folder and cannot go to standard output" in result.stderr


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_interrupt_or_failed_write_leaves_no_file(tmp_path, monkeypatch, failure):
    from convcli.io import tiff

    source = tiled_tiff(tmp_path / "in.tif", pattern((90, 40, 3)))
    calls = {"n": 0}
    write = tiff.TiffSink.write

    def failing(self, band):
        calls["n"] += 1
        if calls["n"] == 3:  # mid-image, after two bands were written
            raise failure(28, "No space left on device") if failure is OSError else failure()
        return write(self, band)

    from convcli import apply as apply_module

    monkeypatch.setattr(tiff.TiffSink, "write", failing)
    monkeypatch.setattr(apply_module, "_whole_fits", lambda source, job, needs: False)
    out = tmp_path / "o"
    result = CliRunner().invoke(cli, ["apply", str(source), "-k", "edge", "-k", "sobel-x", "--format", "tiff",
                                      "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == (130 if failure is KeyboardInterrupt else 1), result.stderr
    assert calls["n"] == 3
    assert list(out.iterdir()) == []  # no output under its final name, no temporary file left


def test_band_progress_advances_once_per_band(tmp_path, monkeypatch, small_tiles):
    import contextlib

    advanced: list[tuple[int, int]] = []

    @contextlib.contextmanager
    def factory(total, label):
        count = [0]

        class Bar:
            def advance(self):
                count[0] += 1

        yield Bar()
        advanced.append((total, count[0]))

    monkeypatch.setattr(streaming, "band_progress", factory)
    source = tiled_tiff(tmp_path / "in.tif", pattern((70, 20)))
    whole_and_streamed(tmp_path, source, "-k", "edge", fmt="tiff")
    assert advanced and advanced[-1][0] == advanced[-1][1] == small_tiles[-1].bands >= 4


def test_open_source_reads_bands_as_read_input_reads_the_whole(tmp_path):
    from convcli.io import read_input

    source = tiled_tiff(tmp_path / "in.tif", pattern((40, 30, 3)), tile=(16, 16))
    for mode, scale in (("keep", "raw"), ("gray", "unit"), ("rgba", "raw")):
        whole = read_input(source, mode=mode, scale=scale).array
        with open_source(source, mode=mode, scale=scale) as band_source:
            assert band_source.streams and band_source.shape == whole.shape
            rows = [band_source.read_rows(a, min(40, a + 9)) for a in range(0, 40, 9)]
        assert np.array_equal(np.concatenate(rows), whole)
    with pytest.raises(InputError, match=r"nope\.tif: no such file"):
        open_source(tmp_path / "nope.tif")


@pytest.mark.parametrize("layout", ["tiles", "strips", "npy"])
def test_a_source_read_from_two_threads_at_once_gives_each_its_rows(tmp_path, layout):
    """The stream's read-ahead thread and the rows of a circular border read off the stream
    (from the other end) at the same time: each read gets its own rows. A reader whose kept
    row of tiles was replaced between its check and its use once gave a band the wrong
    tiles (one run in 50 of the circular, pooled layer above)."""
    import sys
    import threading

    pixels = pattern((96, 40, 3), seed=5)
    if layout == "npy":
        path = tmp_path / "in.npy"
        np.save(path, pixels.astype(np.float32))
    else:
        path = tmp_path / "in.tif"
        if layout == "tiles":
            tiled_tiff(path, pixels)
        else:
            tifffile.imwrite(path, pixels, rowsperstrip=8, photometric="rgb")
    expected = pixels.astype(np.float32)
    wrong: list = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        with open_source(path) as source:
            assert source.streams

            def reader(seed):
                rng = np.random.default_rng(seed)
                for _ in range(1500):
                    start = int(rng.integers(0, 95))
                    stop = int(rng.integers(start + 1, min(96, start + 20) + 1))
                    if not np.array_equal(source.read_rows(start, stop), expected[start:stop]):
                        wrong.append((start, stop))

            threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(3)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not wrong, f"{len(wrong)} reads of 4500 got other rows, first {wrong[:3]}"


def test_streaming_through_a_real_process(tmp_path):
    """Once through ``python -m convcli`` (no test budgets): a streamed TIFF equals the whole-image run."""
    source = tiled_tiff(tmp_path / "in.tif", pattern((700, 300)), tile=(64, 64))
    for folder, limit in (("whole", "1GiB"), ("banded", "1MiB")):
        proc = subprocess.run([sys.executable, "-m", "convcli", "apply", str(source), "-k", "sobel-x", "--padding",
                               "same", "--format", "npy", "-o", str(tmp_path / folder), "--memory-limit", limit],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "whole" / "in.npy").read_bytes() == (tmp_path / "banded" / "in.npy").read_bytes()


def test_errors_of_sources_sinks_and_bands(tmp_path):
    from convcli.io.bands import put_in_place, temporary_path
    from convcli.io.npy import NpyRegionReader
    from convcli.io.png import PngSink
    from convcli.io.tiff import TiffSink
    from convcli.errors import OutputError

    nan = tmp_path / "nan.tif"
    values = np.ones((40, 20), np.float32)
    values[33, 7] = np.nan
    tifffile.imwrite(nan, values, tile=(16, 16))
    with open_source(nan) as source:
        assert source.read_rows(0, 30).shape == (30, 20, 1)
        with pytest.raises(InputError, match=r"nan\.tif: non-finite values .* the first at row 33, column 7, "
                                             r"channel 0"):
            source.read_rows(30, 40)
        with pytest.raises(ValueError, match=r"rows: expected 0 <= start < stop <= 40, got 39, 41"):
            source.read_rows(39, 41)
    plan = engine.plan_layer((40, 20, 1), WeightsBank(np.ones((3, 3), np.float32)), ConvSpec.from_options())
    with pytest.raises(ValueError, match=r"rows: expected 0 <= r0 < r1 <= 38, got \(5, 39\)"):
        plan.compute(lambda a, b: values[a:b, :, None], (5, 39))
    with pytest.raises(ValueError, match=r"read\(0, 3\) gave shape \(3, 20\), expected \(3, 20, 1\)"):
        plan.compute(lambda a, b: values[a:b], (0, 1))
    np.save(tmp_path / "words.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(InputError, match=r"words\.npy: \.npy of dtype <U1; expected numbers"):
        NpyRegionReader("words.npy", tmp_path / "words.npy")
    np.save(tmp_path / "cut.npy", np.ones((50, 40), np.float32))
    data = (tmp_path / "cut.npy").read_bytes()
    reader = NpyRegionReader("cut.npy", tmp_path / "cut.npy")
    (tmp_path / "cut.npy").write_bytes(data[:-100])  # cut short while it is being read
    with pytest.raises(InputError, match=r"cut\.npy: truncated \.npy \(rows 40–50 are missing\)"):
        reader.read(40, 50)
    reader.close()
    with pytest.raises(InputError, match=r"cut\.npy: cannot read \.npy: truncated: the header declares 50×40 float32 "
                                         r"\(8000 bytes of data\), the file holds 7900"):
        NpyRegionReader("cut.npy", tmp_path / "cut.npy")
    with pytest.raises(OptionError, match=r"--tiff-compression: 'lzw' is not one of none, deflate, zstd"):
        TiffSink(tmp_path / "x.tiff", (4, 4), compression="lzw")
    with pytest.raises(OutputError, match=r"cannot write 5 channels as PNG"):
        PngSink(tmp_path / "x.png", 4, 4, 5)
    with pytest.raises(OptionError, match=r"--compress-level: expected 0 to 9, got 10"):
        PngSink(tmp_path / "x.png", 4, 4, 1, compress_level=10)
    sink = TiffSink(tmp_path / "short.tiff", (10, 4))
    sink.write(np.zeros((6, 4), np.float32))
    with pytest.raises(ValueError, match=r"short\.tiff: 6 rows written of 10"):
        sink.commit()
    sink.discard()
    assert list(tmp_path.glob(".short.tiff.*")) == []
    with pytest.raises(OutputError, match=r"missing/x\.png: cannot write: No such file or directory"):
        temporary_path(tmp_path / "missing" / "x.png")
    scratch = temporary_path(tmp_path / "y.png")
    with pytest.raises(OutputError, match=r"gone/y\.png: cannot write"):
        put_in_place(scratch, tmp_path / "gone" / "y.png")


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_maps_with_nan_cannot_become_streamed_pngs(tmp_path):
    from convcli import apply as apply_module

    values = np.ones((60, 30), np.float32) * 1e38
    np.save(tmp_path / "big.npy", values)  # 1e38 · 9 overflows float32: the maps hold Inf
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(apply_module, "_whole_fits", lambda source, job, needs: False)
        result = run("apply", tmp_path / "big.npy", "-k", "3x3: 1,1,1 1,1,1 1,1,1", "-o", tmp_path / "o", status=1)
    assert re.search(r": NaN/Inf values cannot be shown as pixels; use --format tiff or npy", result.stderr)
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_tiff_compression_of_whole_and_streamed_files(tmp_path):
    source = tiled_tiff(tmp_path / "in.tif", pattern((50, 40, 3)))
    whole, banded = whole_and_streamed(tmp_path, source, "-k", "edge", "--tiff-compression", "deflate", fmt="tiff")
    for folder in (whole, banded):
        with tifffile.TiffFile(folder / "in_edge.tiff") as tif:
            assert tif.pages[0].compression.name == "ADOBE_DEFLATE"
    assert np.array_equal(tifffile.imread(whole / "in_edge.tiff"), tifffile.imread(banded / "in_edge.tiff"))


def test_sinks_take_bands_in_any_order(tmp_path):
    import zarr

    from convcli.io.npy import NpySink, encode_npy
    from convcli.io.zarr_array import ZarrSink, chunk_rows

    values = np.random.default_rng(3).standard_normal((53, 7, 3)).astype(np.float32)
    npy = NpySink(tmp_path / "a.npy", values.shape)
    for start in (40, 0, 20):
        npy.write_at(start, values[start:start + 20])
    with pytest.raises(ValueError, match=r"a\.npy: rows 50–70 of shape \(20, 7, 3\) do not fit \(53, 7, 3\)"):
        npy.write_at(50, values[:20])
    npy.commit()
    assert (tmp_path / "a.npy").read_bytes() == encode_npy(values)
    sink = ZarrSink(tmp_path / "a.zarr", values.shape)
    step = chunk_rows(values.shape)
    for start in reversed(range(0, 53, step)):
        sink.write_at(start, values[start:start + step])
    with pytest.raises(ValueError, match=r"a\.zarr: rows 50–60 do not fit \(53, 7, 3\)"):
        sink.write_at(50, values[:10])
    sink.commit()
    assert np.array_equal(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[:], values)


def test_workers_share_the_memory_limit(tmp_path, monkeypatch):
    from convcli import batch

    seen = []

    def outcomes(items, job, plan, reporter, workers, many, session=None):
        seen.append((workers, job.memory_limit))
        yield from ()

    monkeypatch.setattr(batch, "_outcomes", outcomes)
    for name in "abc":
        Image.fromarray(pattern((8, 8))).save(tmp_path / f"{name}.png")
    run("apply", tmp_path, "-k", "edge", "-o", tmp_path / "o", "-j", "3", "--memory-limit", "600MiB", "-q")
    run("apply", tmp_path, "-k", "edge", "-o", tmp_path / "o", "-j", "3", "--memory-limit", "100MiB", "-q")
    assert seen == [(3, 200 << 20), (1, 100 << 20)]  # 96 MiB at least each: -j 3 becomes 1 under 100 MiB


def test_sweep_removes_a_zarr_array_left_half_written(tmp_path):
    from convcli import batch
    from convcli.apply import Job, OutputSpec
    from convcli.batch import InputItem, plan_batch
    from convcli.kernels import load_kernels
    from convcli.layer import ConvSpec
    from convcli.stack import Stack

    Image.fromarray(pattern((8, 8))).save(tmp_path / "x.png")
    job = Job(stack=Stack.single(load_kernels("edge"), ConvSpec()),
              output=OutputSpec(directory=tmp_path / "out", format="zarr"))
    plan = plan_batch([InputItem(str(tmp_path / "x.png"))], job)
    ours = tmp_path / "out" / ".x.zarr.k2j4_x9q.tmp"
    (ours / "c").mkdir(parents=True)
    (ours / "zarr.json").write_text("{}")
    theirs = tmp_path / "out" / ".y.zarr.abcdefgh.tmp"
    theirs.mkdir()
    batch._sweep_temporaries(plan)
    assert not ours.exists() and theirs.exists()


def test_a_tiff_over_max_pixels_streams_a_png_over_it_is_refused(tmp_path, small_tiles):
    pixels = pattern((60, 50))
    source = tiled_tiff(tmp_path / "in.tif", pixels)
    run("apply", source, "-k", "edge", "--format", "npy", "-o", tmp_path / "w", "-q")
    run("apply", source, "-k", "edge", "--format", "npy", "-o", tmp_path / "s", "-q", "--max-pixels", "1000")
    assert small_tiles  # read by region: the memory limit governs it, not the decompression-bomb guard
    assert (tmp_path / "w" / "in.npy").read_bytes() == (tmp_path / "s" / "in.npy").read_bytes()
    Image.fromarray(pixels).save(tmp_path / "in.png")
    result = run("apply", tmp_path / "in.png", "-k", "edge", "-o", tmp_path / "p", "--max-pixels", "1000", status=1)
    assert "in.png: 50×60 = 3,000 pixels is more than the limit of 1,000" in result.stderr


def test_the_bar_over_bands_is_a_second_task_of_the_batch_bar():
    import io

    from convcli.batch import BarProgress

    stream = io.StringIO()
    with BarProgress(1, stream) as bar:
        with bar.bands(4, "big.tif") as bands:
            for _ in range(4):
                bands.advance()
            assert len(bar._progress.tasks) == 2 and bar._progress.tasks[1].completed == 4
        assert len(bar._progress.tasks) == 1  # removed once the input is done
        bar.advance()


def test_zstd_tiff_streams_and_whole_needs_imagecodecs(tmp_path):
    import importlib.util

    source = tiled_tiff(tmp_path / "in.tif", pattern((40, 30)))
    whole, banded = tmp_path / "w", tmp_path / "b"
    from convcli import apply as apply_module

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(apply_module, "_whole_fits", lambda source, job, needs: False)
        run("apply", source, "-k", "edge", "--format", "tiff", "--tiff-compression", "zstd", "-o", banded, "-q")
    with open(banded / "in_edge.tiff", "rb") as fh:
        assert fh.read(4) == b"II+\x00"  # a BigTIFF, written by convcli itself (zstd through numcodecs)
    if importlib.util.find_spec("imagecodecs") is None:
        result = run("apply", source, "-k", "edge", "--format", "tiff", "--tiff-compression", "zstd", "-o", whole,
                     status=2)
        assert re.search(r"--tiff-compression zstd: not available here .*install imagecodecs or use deflate",
                         result.stderr)
    else:  # pragma: no cover - depends on the environment
        run("apply", source, "-k", "edge", "--format", "tiff", "--tiff-compression", "zstd", "-o", whole, "-q")
        assert np.array_equal(tifffile.imread(whole / "in_edge.tiff"), tifffile.imread(banded / "in_edge.tiff"))


def test_ctrl_c_in_a_real_process_leaves_no_file(tmp_path):
    import signal
    import time

    source = tiled_tiff(tmp_path / "in.tif", pattern((6000, 3000)), tile=(256, 256))
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "convcli", "apply", str(source), "-k", "gaussian-blur",
                             "--algorithm", "direct", "--padding", "same", "--format", "tiff", "-o", str(out),
                             "--memory-limit", "40MiB"], stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline and not (
            out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir())):
        time.sleep(0.01)  # until the stream writes its temporary file
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert stderr.decode().strip().splitlines()[-1] == "convcli: interrupted"
    assert list(out.iterdir()) == []


def test_compiled_core_layers_stream_bit_for_bit():
    """The compiled core (when built): plain and pooled in one pass (valid, stride = size), as run_layer runs them."""
    from convcli.engine import ccore

    if not ccore.active():
        pytest.skip("the compiled core is not built here")
    rng = np.random.default_rng(8)
    checked = 0
    for h, w, c, stride, padding, border, pool_mode in [(97, 61, 3, 1, "same", "reflect", "max"),
                                                         (80, 45, 1, 2, "valid", "circular", "avg"),
                                                         (73, 70, 3, 1, "same", "zeros", None)]:
        x = rng.integers(0, 256, (h, w, c)).astype(np.uint8)
        bank = WeightsBank(rng.standard_normal((3, 3, c, 8)).astype(np.float32), rng.standard_normal(8))
        spec = ConvSpec.from_options(stride=stride, padding=padding, border=border, activation="relu")
        pool = PoolSpec.from_options(mode=pool_mode, size=2) if pool_mode else None
        expected = engine.run_layer(x, bank, spec, pool, algorithm="auto")
        plan = engine.plan_layer(x.shape, bank, spec, pool)
        if plan.backend != "ccore":
            continue
        rows = plan.output_shape[0]
        got = np.concatenate([plan.compute(lambda a, b: x[a:b], (r, min(rows, r + 5))) for r in range(0, rows, 5)])
        assert np.array_equal(got, expected.output)
        checked += 1
    assert checked, "the cost model chose no layer for the compiled core"
