"""The command line, driven through click's CliRunner (and once through a real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from convcli.cli import cli

REPO = Path(__file__).resolve().parent.parent

SEED_2D = np.array([[0, 0, 0, 1, 1, 0, 0, 0]] * 8, dtype=np.float32)


def run(*args, input=None, ok=True, status=None):
    """Invoke the CLI; fail loudly on an unexpected exit status."""
    runner = CliRunner()
    result = runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    if status is not None:
        assert result.exit_code == status, (result.exit_code, result.output, result.stderr)
    elif ok:
        assert result.exit_code == 0, (result.exit_code, result.output, result.stderr)
    return result


@pytest.fixture
def seeds(tmp_path):
    one_d = tmp_path / "bump.csv"
    one_d.write_text("0,0,0,1,1,0,0,0\n")
    two_d = tmp_path / "line.csv"
    two_d.write_text("\n".join(",".join(str(int(v)) for v in row) for row in SEED_2D) + "\n")
    return one_d, two_d


# --- the seeds' worked examples (SPEC §4) ---------------------------------------------------------

def test_seed_1d_bump_prints_exactly(seeds):
    result = run("apply", seeds[0], "-k", "bump", "--print")
    assert result.stdout == "[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]\n"


def test_seed_1d_with_keras_conv1d_weights_file(seeds, tmp_path):
    weights = tmp_path / "conv1d.yaml"
    weights.write_text("layout: wio\nweights: [[[0]], [[1]], [[0]]]\nbias: [0.0]\n")
    result = run("apply", seeds[0], "-k", weights, "--print")
    assert result.stdout == "[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]\n"


def test_1d_signal_sizes_mean_1xN_as_keras_conv1d(seeds):
    # padding 1 pads the two ends only (PyTorch Conv1d(padding=1)); pool 2 is MaxPooling1D(2).
    result = run("apply", seeds[0], "-k", "bump", "--padding", "1", "--pool", "max", "--print")
    assert result.stdout == "[0.0, 1.0, 1.0, 0.0]\n"
    result = run("apply", seeds[0], "-k", "bump", "--padding", "causal", "--dilation", "2", "--print")
    assert result.stdout == "[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0]\n"
    data = json.loads(run("shape", "--input", "8", "--filters", "1", "--kernel-size", "3", "--pool", "max",
                          "--json").stdout)
    assert [layer["output_shape"] for layer in data["layers"]] == [[1, 6, 1], [1, 3, 1]]


def test_seed_2d_vertical_line_prints_exactly(seeds):
    result = run("apply", seeds[1], "-k", "vertical-line", "--print")
    assert result.stdout == "[0.0, 0.0, 3.0, 3.0, 0.0, 0.0]\n" * 6


def test_depthwise_print_labels_each_channel_like_the_file_names(tmp_path):
    # Channel c·F + f of a depthwise layer is filter f on input channel c (Keras' order).
    rgb = np.random.default_rng(7).integers(0, 9, (4, 5, 3)).astype(np.float32)
    np.save(tmp_path / "rgb.npy", rgb)
    text = run("apply", tmp_path / "rgb.npy", "-k", "identity", "-k", "sobel-x", "--depthwise", "--print").stdout
    blocks = text.split("# rgb ")[1:]
    assert [b.splitlines()[0] for b in blocks] == [
        "identity.c0", "sobel-x.c0", "identity.c1", "sobel-x.c1", "identity.c2", "sobel-x.c2"]
    for c in range(3):
        printed = np.array([json.loads(row) for row in blocks[2 * c].splitlines()[1:]])
        np.testing.assert_array_equal(printed, rgb[1:-1, 1:-1, c])


def test_seed_keras_shape_report():
    result = run("shape", "--input", "725x1280x3", "--filters", "32", "--kernel-size", "4")
    assert "722×1277×32" in result.stdout
    assert "4×4×3×32" in result.stdout
    assert "1,568" in result.stdout
    data = json.loads(run("shape", "--input", "725x1280x3", "--filters", "32", "--kernel-size", "4",
                          "--json").stdout)
    assert data["input_shape"] == [725, 1280, 3]
    assert data["layers"][0]["output_shape"] == [722, 1277, 32]
    assert data["layers"][0]["weights_shape"] == [4, 4, 3, 32]
    assert data["layers"][0]["params"] == 1568
    assert data["total_params"] == 1568
    assert data["total_macs"] == 722 * 1277 * 32 * 4 * 4 * 3


def test_shape_same_stride_2_and_pool_as_keras():
    data = json.loads(run("shape", "--input", "7x8x3", "--filters", "2", "--kernel-size", "3", "--stride", "2",
                          "--padding", "same", "--pool", "max", "--json").stdout)
    assert [layer["type"] for layer in data["layers"]] == ["conv2d", "max_pool"]
    assert data["layers"][0]["output_shape"] == [4, 4, 2]
    assert data["layers"][1]["output_shape"] == [2, 2, 2]
    assert data["layers"][1]["params"] == 0


def test_shape_explain_and_depthwise_and_locally_connected():
    text = run("shape", "--input", "10x11x3", "--filters", "2", "--kernel-size", "3", "--depthwise",
               "--explain").stdout
    assert "params = 3·3·3·2 + 3·2 = 60" in text
    data = json.loads(run("shape", "--input", "5x5x3", "--filters", "2", "--kernel-size", "3",
                          "--locally-connected", "--json").stdout)
    assert data["total_params"] == 504


def test_shape_from_kernels_and_image_header(tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(image)
    data = json.loads(run("shape", image, "-k", "sobel-x", "-k", "sobel-y", "--json").stdout)
    assert data["input_shape"] == [40, 30, 3]
    assert data["layers"][0]["output_shape"] == [38, 28, 2]
    assert data["layers"][0]["params"] == (3 * 3 * 3 + 1) * 2
    no_bias = json.loads(run("shape", image, "-k", "sobel-x", "-k", "sobel-y", "--no-bias", "--json").stdout)
    assert no_bias["layers"][0]["params"] == 3 * 3 * 3 * 2
    gray = json.loads(run("shape", image, "--mode", "gray", "-k", "edge", "--json").stdout)
    assert gray["input_shape"] == [40, 30, 1]


# --- 1-D signals (Keras Conv1D) and one-row images (Keras Conv2D) -----------------------------------
# A signal is an input read as one (.npy/.csv/.txt of one row or column) or `shape --input L`; on it a
# value written as one number acts along the length. A one-row image or `--input 1xWxC` is 2-D.
# Keras numbers below were checked with Keras 3.15.1 (TensorFlow 2.21) in a scratch script.

BUMP_SIGNAL = np.array([0, 0, 0, 1, 1, 0, 0, 0], np.float32)


@pytest.fixture
def one_row(tmp_path):
    """A 1×12 RGB PNG (an image, not a signal) and a 1-D .npy signal of the seed's bump."""
    image = tmp_path / "onerow.png"
    Image.fromarray((np.arange(36, dtype=np.uint8) * 5).reshape(1, 12, 3)).save(image)
    signal = tmp_path / "sig.npy"
    np.save(signal, BUMP_SIGNAL)
    return image, signal


def _shape_json(*args) -> dict:
    return json.loads(run("shape", *args, "--json").stdout)


def test_one_row_input_is_2d_as_keras_conv2d():
    # Keras: Conv2D(4, (2, 2), padding='same') on (1, 12, 2) → (1, 12, 4), kernel (2, 2, 2, 4), 36 parameters.
    data = _shape_json("--input", "1x12x2", "--filters", "4", "--kernel-size", "2,2", "--padding", "same")
    layer, = data["layers"]
    assert (layer["type"], layer["output_shape"], layer["weights_shape"], layer["params"]) == (
        "conv2d", [1, 12, 4], [2, 2, 2, 4], 36)
    assert layer["macs"] == 1 * 12 * 4 * 2 * 2 * 2


@pytest.mark.parametrize("args, size", [
    (["--input", "1x12x3", "--filters", "1", "--kernel-size", "3,3"], "1×12"),
    (["onerow.png", "--kernel-size", "3"], "1×12"),
    (["sig.npy", "--kernel-size", "3,3"], "1×8"),
    (["--input", "8", "--kernel-size", "3,3"], "1×8"),
])
def test_a_3x3_kernel_on_one_row_is_an_error_naming_the_numbers(one_row, tmp_path, args, size):
    # Keras: Conv2D(1, (3, 3)) on (1, 12, 3) raises "Computed output size would be zero or negative".
    args = [tmp_path / a if a.endswith((".png", ".npy")) else a for a in args]
    line = _one_line(run("shape", *args, status=2))
    width = int(size.split("×")[1])
    assert line == (f"convcli: error: conv2d: kernel extent 3×3 (kernel 3×3, dilation 1,1) is larger than the padded"
                    f" input {size} (input {size}, padding valid); the output would be 0×{width - 2}")


def test_one_row_pool_that_does_not_fit_is_an_error():
    # SPEC §1 sizes (the rule Keras/PyTorch use): full padding adds (k−1)·d on each side.
    h = (1 + 2 * (2 - 1) * 3 - ((2 - 1) * 3 + 1)) // 3 + 1
    w = (26 + 2 * (4 - 1) - 4) // 1 + 1
    assert (h, w) == (2, 29)  # torch Conv2d(3, 1, (2, 4), stride=(3, 1), dilation=(3, 1), padding=3) agrees
    # Keras: AveragePooling2D((3, 3), strides=(1, 2)) on (2, 29, 1) raises (empty output).
    line = _one_line(run("shape", "--input", "1x26x3", "--filters", "1", "--kernel-size", "2,4", "--stride", "3,1",
                         "--dilation", "3,1", "--padding", "full", "--pool", "avg", "--pool-size", "3,3",
                         "--pool-stride", "1,2", status=2))
    assert line == ("convcli: error: average_pooling2d: pool 3×3 is larger than its input 2×29 (padding valid);"
                    " the output would be 0×14")


def test_pool_on_a_one_row_image_fails_the_input(one_row, tmp_path):
    # Keras: MaxPooling2D(2) on the (1, 10, 1) map of a 1×3 kernel on (1, 12, 3) raises.
    line = _one_line(run("apply", one_row[0], "-k", "bump", "--pool", "max", "-o", tmp_path / "o", status=1))
    assert line.endswith("onerow.png: max_pooling2d: pool 2×2 is larger than its input 1×10 (padding valid);"
                         " the output would be 0×5")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_signal_kernel_size_3_is_a_1x3_conv1d_kernel():
    data = _shape_json("--input", "8", "--filters", "1", "--kernel-size", "3")
    assert [layer["output_shape"] for layer in data["layers"]] == [[1, 6, 1]]
    assert data["layers"][0]["weights_shape"] == [3, 1, 1]  # Keras Conv1D(1, 3) on (8, 1): kernel (3, 1, 1)


def test_one_padding_number_pads_the_ends_of_a_signal_and_a_pair_pads_rows(one_row, tmp_path):
    _, signal = one_row
    ends = run("apply", signal, "-k", "bump", "--padding", "1", "--format", "npy", "-o", tmp_path / "ends")
    assert ends.exit_code == 0
    expected_ends = np.correlate(np.pad(BUMP_SIGNAL, 1), [0, 1, 0], mode="valid")  # PyTorch Conv1d(padding=1)
    np.testing.assert_array_equal(np.load(tmp_path / "ends" / "sig.npy"), expected_ends.reshape(1, 8, 1))
    # --padding 1,1 is PH,PW: Keras ZeroPadding2D((1, 1)) then Conv2D with the 1×3 kernel gives (3, 8, 1).
    run("apply", signal, "-k", "bump", "--padding", "1,1", "--format", "npy", "-o", tmp_path / "rows")
    rows = np.load(tmp_path / "rows" / "sig.npy")
    from scipy.signal import correlate2d

    padded = np.pad(BUMP_SIGNAL.reshape(1, 8), 1)
    np.testing.assert_array_equal(rows[:, :, 0], correlate2d(padded, np.array([[0, 1, 0]]), mode="valid"))
    assert rows.shape == (3, 8, 1)
    printed = run("apply", signal, "-k", "bump", "--padding", "1,1", "--print").stdout
    assert printed == ("[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]\n[0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]\n"
                       "[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]\n")


def test_shape_on_a_signal_reports_keras_conv1d_layers(one_row):
    # Keras: Conv1D(4, 3) then MaxPooling1D(2) on (8, 1): kernels (3, 1, 4) + (4,), 16 parameters, (6, 4), (3, 4).
    for source in (["--input", "8"], [one_row[1]]):
        data = _shape_json(*source, "--filters", "4", "--kernel-size", "3", "--pool", "max")
        assert [(layer["name"], layer["type"]) for layer in data["layers"]] == [
            ("conv1d", "conv1d"), ("max_pooling1d", "max_pooling1d")]
        assert [layer["output_shape"] for layer in data["layers"]] == [[1, 6, 4], [1, 3, 4]]
        assert data["layers"][0]["weights_shape"] == [3, 1, 4] and data["total_params"] == 16
    # Keras: DepthwiseConv1D(3, depth_multiplier=2) on (8, 3): kernel (3, 3, 2), bias (6,), 24 parameters.
    data = _shape_json(one_row[1], "--mode", "rgb", "--filters", "2", "--kernel-size", "3", "--depthwise",
                       "--pool", "avg")
    assert [layer["type"] for layer in data["layers"]] == ["depthwise_conv1d", "average_pooling1d"]
    assert (data["layers"][0]["weights_shape"], data["layers"][0]["output_shape"], data["total_params"]) == (
        [3, 3, 2], [1, 6, 6], 24)
    table = run("shape", "--input", "8", "--filters", "4", "--kernel-size", "3").stdout
    assert "conv1d (conv1d)" in table and "3×1×4 + 4" in table and "1×6×4" in table


def test_a_signal_layer_written_with_pairs_is_2d_and_so_is_what_follows(one_row, tmp_path):
    # --padding 1,1 adds rows: Keras ZeroPadding2D((1, 1)) + Conv2D(1, (1, 3)) → (3, 8, 1); the pool after it
    # is MaxPooling2D(2) → (1, 4, 1), where on the signal it would have been MaxPooling1D(2).
    data = _shape_json(one_row[1], "-k", "bump", "--padding", "1,1", "--pool", "max")
    assert [(layer["type"], layer["output_shape"]) for layer in data["layers"]] == [
        ("conv2d", [3, 8, 1]), ("max_pool", [1, 4, 1])]
    assert data["layers"][0]["weights_shape"] == [1, 3, 1, 1]
    ends = _shape_json(one_row[1], "-k", "bump", "--padding", "1", "--pool", "max")
    assert [(layer["type"], layer["output_shape"]) for layer in ends["layers"]] == [
        ("conv1d", [1, 8, 1]), ("max_pooling1d", [1, 4, 1])]


def test_pipeline_kernel_size_3_is_3x3_on_a_one_row_image_and_1x3_on_a_signal(one_row, tmp_path):
    net = tmp_path / "net.yaml"
    net.write_text("layers:\n  - conv: {filters: 4, kernel_size: 3}\n  - pool: {size: 2}\n"
                   "  - conv: {filters: 2, kernel_size: 2}\n")
    line = _one_line(run("shape", one_row[0], "--pipeline", net, status=2))
    assert line == (f"convcli: error: {net}: layers[0] (conv2d): kernel extent 3×3 (kernel 3×3, dilation 1,1) is"
                    " larger than the padded input 1×12 (input 1×12, padding valid); the output would be 0×10")
    # Keras: Conv1D(4, 3), MaxPooling1D(2), Conv1D(2, 2) on (8, 1) → (6, 4), (3, 4), (2, 2).
    data = _shape_json(one_row[1], "--pipeline", net)
    assert [(layer["name"], layer["output_shape"], layer["weights_shape"]) for layer in data["layers"]] == [
        ("conv1d", [1, 6, 4], [3, 1, 4]), ("max_pooling1d", [1, 3, 4], None), ("conv1d_1", [1, 2, 2], [2, 4, 2])]
    assert data["total_params"] == (3 * 1 + 1) * 4 + (2 * 4 + 1) * 2


def test_apply_pipeline_pool_2_is_2x2_on_a_one_row_image_and_1x2_on_a_signal(one_row, tmp_path):
    net = tmp_path / "bump.yaml"
    net.write_text("layers:\n  - conv: {kernels: [bump]}\n  - pool: {size: 2}\n")
    line = _one_line(run("apply", one_row[0], "--pipeline", net, "-o", tmp_path / "o", status=1))
    assert line.endswith("layers[1] (max_pooling2d): pool 2×2 is larger than its input 1×10 (padding valid);"
                         " the output would be 0×5")
    printed = run("apply", one_row[1], "--pipeline", net, "--print").stdout
    valid = np.correlate(BUMP_SIGNAL, [0, 1, 0], mode="valid")  # [0, 0, 1, 1, 0, 0]
    assert printed == str(valid.reshape(-1, 2).max(axis=1).tolist()) + "\n"


# --- apply writes what the engine computes --------------------------------------------------------

def _minmax_u8(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - lo) / (hi - lo) * 255).astype(np.uint8)


def test_apply_writes_one_png_per_filter_with_the_engine_numbers(tmp_path):
    from scipy.signal import correlate2d

    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (21, 16, 3), dtype=np.uint8)
    source = tmp_path / "pic.png"
    Image.fromarray(pixels).save(source)
    out = tmp_path / "out"
    run("apply", source, "-k", "vertical-line", "-k", "horizontal-line", "--padding", "same", "-o", out,
        "--format", "npy")
    maps = np.load(out / "pic.npy")
    assert maps.shape == (21, 16, 2)
    gray_sum = pixels.astype(np.float64).sum(axis=2)
    vertical = np.array([[0, 1, 0]] * 3, np.float64)
    expected = correlate2d(gray_sum, vertical, mode="same")
    np.testing.assert_allclose(maps[:, :, 0], expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(maps[:, :, 1], correlate2d(gray_sum, vertical.T, mode="same"), rtol=1e-5, atol=1e-3)
    # The command hands the engine 8-bit pixels (summed as integers): bit-identical to float input.
    import convcli

    as_float = convcli.apply_layer(pixels.astype(np.float32), ["vertical-line", "horizontal-line"], padding="same")
    np.testing.assert_array_equal(maps, as_float)

    run("apply", source, "-k", "vertical-line", "-k", "horizontal-line", "--padding", "same", "-o", out)
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["pic_horizontal-line.png", "pic_vertical-line.png"]
    png = np.asarray(Image.open(out / "pic_vertical-line.png"))
    assert png.dtype == np.uint8 and png.shape == (21, 16)
    assert np.abs(png.astype(int) - _minmax_u8(maps[:, :, 0]).astype(int)).max() <= 1


def test_repeated_filter_names_are_numbered_not_overwritten(tmp_path, seeds):
    named = tmp_path / "named.yaml"
    named.write_text("name: edge_1\nweights: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\n")
    result = run("apply", seeds[1], "-k", "edge", "-k", "edge", "-k", named, "--padding", "same", "-o",
                 tmp_path / "d", "--json")
    record = json.loads(result.stdout)
    assert record["filters"] == ["edge", "edge_2", "edge_1"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["line_edge.png", "line_edge_1.png",
                                                                  "line_edge_2.png"]


def test_apply_png16_and_tiff_outputs(tmp_path, seeds):
    out = tmp_path / "o"
    run("apply", seeds[1], "-k", "vertical-line", "-o", out, "--format", "png16")
    png16 = np.asarray(Image.open(out / "line_vertical-line.png"))
    assert png16.dtype in (np.uint16, np.int32) and png16.max() == 65535 and png16.min() == 0
    run("apply", seeds[1], "-k", "vertical-line", "-o", out, "--format", "tiff")
    import tifffile

    tiff = tifffile.imread(out / "line_vertical-line.tiff")
    assert tiff.dtype == np.float32
    np.testing.assert_array_equal(np.squeeze(tiff), np.tile([0, 0, 3, 3, 0, 0], (6, 1)))


def test_apply_depthwise_blur_to_stdout_is_an_rgb_image(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    source = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(source)
    result = run("apply", source, "-k", "box-blur", "--depthwise", "--padding", "same", "-o", "-",
                 "--normalize", "clip")
    from io import BytesIO

    image = Image.open(BytesIO(result.stdout_bytes))
    assert image.mode == "RGB" and image.size == (9, 12)
    from scipy.ndimage import uniform_filter

    expected = np.stack([uniform_filter(pixels[:, :, c].astype(np.float64), 3, mode="constant")
                         for c in range(3)], axis=2)
    assert np.abs(np.asarray(image).astype(float) - np.clip(np.rint(expected), 0, 255)).max() <= 1


def test_apply_json_lines(tmp_path, seeds):
    result = run("apply", seeds[1], "-k", "vertical-line", "-k", "edge", "-o", tmp_path / "j", "--json")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["input"] == str(seeds[1])
    assert record["input_shape"] == [8, 8, 1]
    assert record["output_shape"] == [6, 6, 2]
    assert record["filters"] == ["vertical-line", "edge"]
    assert len(record["outputs"]) == 2 and all(Path(p).exists() for p in record["outputs"])
    assert record["seconds"] >= 0


def test_apply_montage(tmp_path, seeds):
    montage = tmp_path / "m.png"
    run("apply", seeds[1], "-k", "vertical-line", "-k", "edge", "-k", "sobel-x", "--montage", montage,
        "-o", tmp_path / "m")
    grid = Image.open(montage)
    assert grid.width > 12 and grid.height > 6


# --- errors: one line, the right exit status ------------------------------------------------------

def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unknown_kernel_is_a_usage_error(seeds):
    result = run("apply", seeds[1], "-k", "no-such-kernel", status=2)
    assert "no-such-kernel" in _one_line(result)


def test_bad_option_is_a_usage_error(seeds):
    result = run("apply", seeds[1], "-k", "edge", "--stride", "0", status=2)
    assert "--stride" in _one_line(result)


@pytest.mark.parametrize("slope", ["inf", "-inf", "nan", "steep"])
def test_non_finite_negative_slope_is_a_usage_error(seeds, slope):
    # inf or nan would fill the maps with NaN/Inf: refused before any input is read.
    result = run("apply", seeds[1], "-k", "edge", "--activation", "leaky-relu", "--negative-slope", slope,
                 "--format", "npy", "-o", "-", status=2)
    assert "--negative-slope" in _one_line(result) and slope in _one_line(result)
    assert result.stdout_bytes == b""


def test_kernel_larger_than_input_fails_the_input(tmp_path):
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("1,2\n3,4\n")
    result = run("apply", tiny, "-k", "gaussian-blur", "-o", tmp_path, status=1)
    line = _one_line(result)
    assert "tiny.csv" in line and "5×5" in line and "2×2" in line


def test_depth_mismatch_names_both_numbers(tmp_path):
    kernel = tmp_path / "k3.yaml"
    kernel.write_text("weights: " + json.dumps(np.ones((3, 3, 3)).tolist()) + "\n")
    gray = tmp_path / "g.csv"
    gray.write_text("\n".join(",".join(["1"] * 6) for _ in range(6)))
    result = run("apply", gray, "-k", kernel, "-o", tmp_path, status=1)
    line = _one_line(result)
    assert "3×3×3" in line and "1 channel" in line


def test_missing_input_is_an_input_failure(tmp_path):
    result = run("apply", tmp_path / "nope.png", "-k", "edge", "-o", tmp_path, status=1)
    assert "nope.png" in result.stderr


def test_stdout_with_several_outputs_is_a_usage_error(seeds):
    result = run("apply", seeds[1], "-k", "edge", "-k", "sobel-x", "-o", "-", status=2)
    assert "2 outputs" in result.stderr


def test_shape_needs_an_input_shape():
    result = run("shape", "--filters", "3", status=2)
    assert "no input shape: give --input" in _one_line(result)


def test_shape_takes_one_input_shape_not_two(tmp_path):
    image = tmp_path / "img.npy"
    np.save(image, np.zeros((4, 5), np.float32))
    result = run("shape", image, "--input", "8x8x1", "--filters", "1", status=2)
    assert "--input (8x8x1)" in _one_line(result) and "img.npy" in _one_line(result)


def test_shape_locally_connected_depthwise_is_refused():
    # One full filter per position has no depthwise form: refused, not silently ignored.
    result = run("shape", "--input", "8x8x3", "--filters", "2", "--kernel-size", "3", "--depthwise",
                 "--locally-connected", status=2)
    assert "--locally-connected" in _one_line(result) and "depthwise" in _one_line(result)


def test_shape_empty_output_is_a_usage_error():
    result = run("shape", "--input", "2x2x1", "--filters", "1", "--kernel-size", "3", status=2)
    assert "output would be 0×0" in _one_line(result)


def test_kernels_listing_and_show():
    listing = run("kernels").stdout
    assert "edges-bank" in listing  # banks are listed too
    for name in ("identity", "vertical-line", "horizontal-line", "edge", "box-blur", "gaussian-blur", "sobel-x",
                 "sobel-y", "prewitt-x", "prewitt-y", "sharpen", "emboss", "bump"):
        assert name in listing
    shown = run("kernels", "sobel-x").stdout
    assert shown.splitlines()[1:4] == ["  -1   0   1", "  -2   0   2", "  -1   0   1"]
    data = json.loads(run("kernels", "edge", "--json").stdout)
    assert data[0]["weights"] == [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]


def test_cli_algorithm_choices_are_the_engines():
    # cli.py keeps its own tuple so `convcli --help` does not import numpy; they must agree.
    from convcli import cli as cli_module, engine

    assert cli_module.ALGORITHMS == engine.ALGORITHMS


def test_bare_convcli_shows_the_help_on_stderr_as_a_usage_error():
    result = run(status=2)
    assert result.stdout == ""
    assert result.stderr.startswith("Usage: convcli") and "apply" in result.stderr


def test_every_command_has_help_with_an_example():
    for command in (["--help"], ["apply", "--help"], ["shape", "--help"], ["kernels", "--help"]):
        text = run(*command).stdout
        assert "Example" in text


def test_readme_command_reference_is_current():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "cli_reference.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = ci.strip().splitlines()[-1]
    assert command in readme


# --- a real process --------------------------------------------------------------------------------

def test_real_subprocess_apply_and_read_back(tmp_path, seeds):
    out = tmp_path / "real"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "convcli", "apply", str(seeds[1]), "-k", "vertical-line", "-o", str(out),
         "--format", "npy", "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["output_shape"] == [6, 6, 1]
    np.testing.assert_array_equal(np.load(out / "line.npy")[:, :, 0], np.tile([0, 0, 3, 3, 0, 0], (6, 1)))
    bad = subprocess.run([sys.executable, "-m", "convcli", "apply", str(seeds[1]), "-k", "edge", "--stride", "x"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_many_filters_are_written_group_by_group_with_the_same_files(tmp_path, monkeypatch, fmt):
    """A 40-filter bank runs 16 filters at a time; the files equal those of one whole run.

    (For PNG each group is written into the previous group's array; TIFF encodes read the
    group's array after the next group has started, so it is never reused there.) PNG
    files are the same bytes; TIFF's float32 maps agree to float32 rounding, not bit for
    bit: BLAS may round a product of 16 filters differently from one of 40.
    """
    import convcli.apply

    rng = np.random.default_rng(40)
    source = tmp_path / "pic.png"
    Image.fromarray(rng.integers(0, 256, (23, 18, 3), dtype=np.uint8)).save(source)
    bank = tmp_path / "bank40.npy"
    np.save(bank, rng.standard_normal((3, 3, 3, 40)).astype(np.float32))
    args = ["apply", source, "-k", bank, "--padding", "same", "--activation", "relu", "--pool", "max",
            "--name", "{stem}_{index:02d}_{filter}.{ext}", "--format", fmt]
    assert convcli.apply.FILTER_GROUP < 40
    runs = []
    real_run = convcli.apply.Stack.run
    monkeypatch.setattr(convcli.apply.Stack, "run", lambda self, x, **kw: runs.append(1) or real_run(self, x, **kw))
    grouped = json.loads(run(*args, "-o", tmp_path / "grouped", "--json").stdout)
    assert len(runs) == 3  # 16 + 16 + 8 filters
    monkeypatch.setattr(convcli.apply, "FILTER_GROUP", 1000)
    whole = json.loads(run(*args, "-o", tmp_path / "whole", "--json").stdout)
    assert grouped["output_shape"] == whole["output_shape"] == [11, 9, 40]
    names = sorted(p.name for p in (tmp_path / "grouped").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert len(names) == 40 and names[17] == f"pic_17_bank40[17].{fmt}"
    for name in names:
        if fmt == "png":
            assert (tmp_path / "grouped" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
        else:
            got, want = (np.asarray(Image.open(tmp_path / part / name)) for part in ("grouped", "whole"))
            assert got.dtype == want.dtype == np.float32 and got.shape == want.shape == (11, 9)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
