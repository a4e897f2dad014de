"""Tests of convcli.kernels: value objects, every file format, every error, built-ins, safe names."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convcli import kernels as K
from convcli.errors import KernelError
from convcli.kernels import FilterBank, Kernel, load_kernels

SPEC_BUILTINS = [
    "identity", "vertical-line", "horizontal-line", "edge", "box-blur", "gaussian-blur", "sobel-x",
    "sobel-y", "prewitt-x", "prewitt-y", "sharpen", "emboss", "bump",
]

# The seeds' Keras weights, as written in their set_weights calls.
SEED_CONV1D = [[[0]], [[1]], [[0]]]  # kw × cin × cout = 3×1×1
SEED_CONV2D = [[[[0]], [[1]], [[0]]], [[[0]], [[1]], [[0]]], [[[0]], [[1]], [[0]]]]  # 3×3×1×1 HWIO


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def write_doc(tmp_path: Path, name: str, document) -> Path:
    """Write a document as JSON (for .json) or as YAML flow text (JSON is valid YAML)."""
    return write(tmp_path, name, json.dumps(document))


def correlate_valid(image: np.ndarray, weights_hwio: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Reference valid cross-correlation with plain loops over the output (H'×W'×F)."""
    kh, kw, _, filters = weights_hwio.shape
    out_h, out_w = image.shape[0] - kh + 1, image.shape[1] - kw + 1
    out = np.zeros((out_h, out_w, filters))
    for y in range(out_h):
        for x in range(out_w):
            for f in range(filters):
                out[y, x, f] = np.sum(image[y:y + kh, x:x + kw, :] * weights_hwio[:, :, :, f]) + bias[f]
    return out


# --------------------------------------------------------------------------- Kernel


def test_kernel_normalises_weights_to_readonly_float32():
    kernel = Kernel("k", [1, 2, 3], bias=np.float64(0.5), source="test")
    assert kernel.weights.shape == (1, 3)
    assert kernel.weights.dtype == np.float32
    assert kernel.weights.flags.c_contiguous and not kernel.weights.flags.writeable
    assert kernel.size == (1, 3) and kernel.depth is None
    assert type(kernel.bias) is float and kernel.bias == 0.5
    with pytest.raises(ValueError, match="read-only"):
        kernel.weights[0, 0] = 9


def test_kernel_copies_its_weights():
    source = np.arange(6, dtype=np.float32).reshape(2, 3)
    kernel = Kernel("k", source)
    source[0, 0] = 100
    assert kernel.weights[0, 0] == 0


def test_kernel_3d_has_depth():
    kernel = Kernel("k", np.ones((2, 4, 3)))
    assert kernel.size == (2, 4) and kernel.depth == 3


def test_kernel_equality_ignores_source_and_hash_agrees():
    a = Kernel("k", [[1, 2], [3, 4]], 1.0, "d", source="a.yaml")
    b = Kernel("k", np.array([[1, 2], [3, 4]], dtype=np.float64), 1.0, "d", source="b.json")
    assert a == b and hash(a) == hash(b)
    assert a != Kernel("k", [[1, 2], [3, 5]], 1.0, "d")
    assert a != Kernel("k", [[1, 2, 3, 4]], 1.0, "d")
    assert a != Kernel("other", [[1, 2], [3, 4]], 1.0, "d")
    assert a.__eq__("k") is NotImplemented
    assert "2x2" in repr(a)


@pytest.mark.parametrize(
    ("weights", "bias", "message"),
    [
        (np.ones((1, 1, 1, 1)), 0.0, r"src: kernel 'k': weights must be 1-D, 2-D or 3-D, got 4-D shape 1x1x1x1"),
        (np.float32(1.0), 0.0, r"weights must be 1-D, 2-D or 3-D, got 0-D"),
        (np.zeros((0, 3)), 0.0, r"weights are empty \(shape 0x3\)"),
        ([[1, np.nan]], 0.0, r"src: kernel 'k': weights\[0\]\[1\] is nan; NaN and Inf are not allowed"),
        ([[1, 1e39]], 0.0, r"weights\[0\]\[1\] = 1e\+39 does not fit in float32"),
        ([[1, "x"]], 0.0, r"weights are not a numeric array"),
        ([[1]], float("inf"), r"bias inf is not a finite float32 number"),
        ([[1]], "zero", r"bias must be a number, got 'zero'"),
    ],
)
def test_kernel_rejects_bad_values(weights, bias, message):
    with pytest.raises(KernelError, match=message):
        Kernel("k", weights, bias, source="src")


def test_kernel_rejects_non_string_name():
    with pytest.raises(KernelError, match="kernel name must be a string, got 3"):
        Kernel(3, [[1]])


def test_kernel_rejects_too_many_weights(monkeypatch):
    monkeypatch.setattr(K, "MAX_WEIGHTS", 8)
    with pytest.raises(KernelError, match="kernel 'k': 9 weights, more than the 8 allowed"):
        Kernel("k", np.ones((3, 3)))


# --------------------------------------------------------------------------- FilterBank


@pytest.mark.parametrize(("kh", "kw", "channels"), [(3, 3, 1), (2, 4, 3), (5, 2, 2), (1, 3, 4)])
def test_weights_hwio_matches_np_repeat_and_stack(kh, kw, channels):
    rng = np.random.default_rng(kh * 10 + kw)
    flat = rng.standard_normal((kh, kw)).astype(np.float32)
    deep = rng.standard_normal((kh, kw, channels)).astype(np.float32)
    bank = FilterBank((Kernel("flat", flat, 1.5), Kernel("deep", deep, -2.0)))
    hwio = bank.weights_hwio(channels)
    # The seeds build multi-channel kernels with np.repeat over a new channel axis.
    reference = np.stack([np.repeat(flat[:, :, None], channels, axis=2), deep], axis=3)
    assert hwio.dtype == np.float32 and hwio.flags.c_contiguous
    assert hwio.shape == (kh, kw, channels, 2)
    np.testing.assert_array_equal(hwio, reference)
    np.testing.assert_array_equal(bank.biases(), np.array([1.5, -2.0], dtype=np.float32))
    assert bank.biases().dtype == np.float32
    assert bank.depth == channels and bank.size == (kh, kw)


def test_filterbank_basics():
    a, b = Kernel("a", [[1, 2]]), Kernel("b", [[3, 4]])
    bank = FilterBank([a, b])
    assert isinstance(bank.kernels, tuple)
    assert bank.names == ["a", "b"] and bank.filters == 2 and len(bank) == 2
    assert list(bank) == [a, b] and bank[1] is b
    assert bank.depth is None
    assert bank == FilterBank((a, b)) and hash(bank) == hash(FilterBank((a, b)))
    assert bank != FilterBank((b, a))
    assert bank.__eq__(3) is NotImplemented
    assert "Kernel(name='a'" in repr(bank)


def test_filterbank_rejects_empty_and_non_kernels():
    with pytest.raises(KernelError, match="empty filter bank: a layer needs at least one kernel"):
        FilterBank(())
    with pytest.raises(TypeError, match="FilterBank takes Kernel objects, got ndarray"):
        FilterBank((np.ones((3, 3)),))


def test_filterbank_size_mismatch_names_both():
    bank = FilterBank((Kernel("small", np.ones((3, 3)), source="a.yaml"), Kernel("big", np.ones((5, 5)))))
    with pytest.raises(
        KernelError, match=r"same size: kernel 'small' \(a.yaml\) is 3x3, kernel 'big' is 5x5"
    ):
        bank.size


def test_filterbank_depth_mismatch_names_both():
    bank = FilterBank((Kernel("rgb", np.ones((3, 3, 3))), Kernel("flat", np.ones((3, 3))), Kernel("ga", np.ones((3, 3, 2)))))
    with pytest.raises(KernelError, match="same depth: kernel 'rgb' has depth 3, kernel 'ga' has depth 2"):
        bank.depth


@pytest.mark.parametrize(("channels", "message"), [(1, "input has 1 channel$"), (4, "input has 4 channels$")])
def test_weights_hwio_depth_mismatch(channels, message):
    bank = FilterBank((Kernel("rgb", np.ones((3, 3, 3)), source="rgb.npy"),))
    with pytest.raises(KernelError, match=r"kernel 'rgb' \(rgb.npy\) has depth 3 but the " + message):
        bank.weights_hwio(channels)


# --------------------------------------------------------------------------- YAML / JSON files


SINGLE_YAML = """\
name: line
description: A vertical line
weights:
  - [0, 1, 0]
  - [0, 1, 0]
  - [0, 1, 0]
bias: 0.25
scale: 2
"""


def test_yaml_single_kernel(tmp_path):
    bank = load_kernels(write(tmp_path, "v.yaml", SINGLE_YAML))
    (kernel,) = bank.kernels
    assert kernel.name == "line" and kernel.description == "A vertical line"
    assert kernel.bias == 0.25
    np.testing.assert_array_equal(kernel.weights, 2 * np.array([[0, 1, 0]] * 3, dtype=np.float32))
    assert kernel.source == str(tmp_path / "v.yaml")


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_yaml_and_json_read_the_same_schema(tmp_path, suffix):
    rng = np.random.default_rng(7)
    weights = rng.standard_normal((4, 5)).round(3)
    document = {"name": "r", "description": "random", "weights": weights.tolist(), "bias": -1.5}
    bank = load_kernels(write_doc(tmp_path, "r" + suffix, document))
    assert bank.names == ["r"] and bank[0].bias == -1.5
    np.testing.assert_array_equal(bank[0].weights, weights.astype(np.float32))


def test_name_defaults_to_file_stem(tmp_path):
    bank = load_kernels(write(tmp_path, "my-kernel.yml", "weights: [[1, 2], [3, 4]]\n"))
    assert bank.names == ["my-kernel"] and bank[0].description == ""


def test_top_level_list_is_weights(tmp_path):
    bank = load_kernels(write(tmp_path, "bare.json", "[[1, 2, 3]]"))
    assert bank.names == ["bare"] and bank[0].size == (1, 3)


def test_normalize_divides_by_sum_then_scale_multiplies(tmp_path):
    rng = np.random.default_rng(3)
    weights = rng.uniform(0.1, 1.0, (3, 4))
    path = write_doc(tmp_path, "n.json", {"weights": weights.tolist(), "normalize": True, "scale": 3.0})
    np.testing.assert_allclose(load_kernels(path)[0].weights, 3.0 * weights / weights.sum(), rtol=1e-6)
    assert abs(float(load_kernels(path)[0].weights.sum(dtype=np.float64)) - 3.0) < 1e-5


def test_one_dimensional_weights_become_1_by_kw(tmp_path):
    bank = load_kernels(write(tmp_path, "b.yaml", "weights: [0, 1, 0]\n"))
    assert bank[0].weights.shape == (1, 3) and bank[0].depth is None


def test_three_d_weights_without_layout_are_kh_kw_cin(tmp_path):
    rng = np.random.default_rng(5)
    weights = rng.integers(-9, 9, (2, 3, 4))
    bank = load_kernels(write_doc(tmp_path, "d.json", {"weights": weights.tolist()}))
    assert bank.filters == 1 and bank[0].size == (2, 3) and bank[0].depth == 4
    np.testing.assert_array_equal(bank[0].weights, weights)


def test_seed_conv1d_weights_load_as_written_with_wio(tmp_path):
    path = write_doc(tmp_path, "bump.json", {"name": "bump", "weights": SEED_CONV1D, "bias": [0.0], "layout": "wio"})
    bank = load_kernels(path)
    assert bank.names == ["bump[0]"]
    assert bank[0].weights.shape == (1, 3, 1)
    np.testing.assert_array_equal(bank[0].weights[0, :, 0], [0, 1, 0])
    # Without the layout the same array is an ordinary 3-D kernel: 3 rows, 1 column, depth 1.
    plain = load_kernels(write_doc(tmp_path, "plain.json", {"weights": SEED_CONV1D}))
    assert plain[0].weights.shape == (3, 1, 1)


def test_seed_conv1d_worked_example(tmp_path):
    # Seeds: input [0,0,0,1,1,0,0,0], kernel [0,1,0], valid → [0,0,1,1,0,0].
    bank = load_kernels(write_doc(tmp_path, "bump.json", {"weights": SEED_CONV1D, "layout": "wio", "bias": [0.0]}))
    signal = np.array([0, 0, 0, 1, 1, 0, 0, 0], dtype=np.float32).reshape(1, 8, 1)
    out = correlate_valid(signal, bank.weights_hwio(1), bank.biases())
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 1, 0, 0])


def test_seed_conv2d_weights_load_as_hwio_and_reproduce_the_worked_example(tmp_path):
    bank = load_kernels(write_doc(tmp_path, "v.json", {"name": "v", "weights": SEED_CONV2D, "bias": [0.0]}))
    assert bank.names == ["v[0]"] and bank[0].weights.shape == (3, 3, 1)
    image = np.zeros((8, 8, 1), dtype=np.float32)
    image[:, 3:5, 0] = 1
    out = correlate_valid(image, bank.weights_hwio(1), bank.biases())
    np.testing.assert_array_equal(out[:, :, 0], np.tile([0, 0, 3, 3, 0, 0], (6, 1)))


@pytest.mark.parametrize(("kh", "kw", "cin", "cout"), [(3, 3, 2, 4), (2, 5, 1, 3), (4, 4, 3, 1)])
def test_oihw_and_hwio_give_the_same_bank(tmp_path, kh, kw, cin, cout):
    rng = np.random.default_rng(kh * 100 + kw * 10 + cin)
    hwio = rng.standard_normal((kh, kw, cin, cout)).round(4)
    bias = rng.standard_normal(cout).round(4).tolist()
    oihw = hwio.transpose(3, 2, 0, 1)  # PyTorch's Conv2d.weight layout
    a = load_kernels(write_doc(tmp_path, "a.json", {"name": "w", "weights": hwio.tolist(), "bias": bias}))
    b = load_kernels(write_doc(tmp_path, "b.yaml", {"name": "w", "weights": oihw.tolist(), "bias": bias, "layout": "OIHW"}))
    assert a == b
    assert a.names == [f"w[{i}]" for i in range(cout)]
    np.testing.assert_array_equal(b.weights_hwio(cin), hwio.astype(np.float32))
    np.testing.assert_array_equal(b.biases(), np.array(bias, dtype=np.float32))


def test_oiw_and_wio_give_the_same_bank(tmp_path):
    rng = np.random.default_rng(11)
    wio = rng.standard_normal((5, 2, 3)).round(4)
    a = load_kernels(write_doc(tmp_path, "a.json", {"name": "c", "weights": wio.tolist(), "layout": "wio"}))
    b = load_kernels(write_doc(tmp_path, "b.json", {"name": "c", "weights": wio.transpose(2, 1, 0).tolist(), "layout": "oiw"}))
    assert a == b and a.filters == 3
    assert a[0].weights.shape == (1, 5, 2)
    np.testing.assert_array_equal(a.weights_hwio(2)[0], wio.astype(np.float32))


def test_4d_scalar_bias_applies_to_every_filter_and_normalize_is_per_filter(tmp_path):
    hwio = np.arange(1, 2 * 2 * 1 * 3 + 1, dtype=float).reshape(2, 2, 1, 3)
    bank = load_kernels(write_doc(tmp_path, "w.json", {"weights": hwio.tolist(), "bias": 0.5, "normalize": True}))
    assert bank.biases().tolist() == [0.5, 0.5, 0.5]
    for f in range(3):
        np.testing.assert_allclose(bank[f].weights, hwio[:, :, :, f] / hwio[:, :, :, f].sum(), rtol=1e-6)


def test_single_kernel_accepts_one_element_bias_list(tmp_path):
    bank = load_kernels(write(tmp_path, "k.yaml", "weights: [[1, 2]]\nbias: [3.5]\n"))
    assert bank[0].bias == 3.5


BANK_YAML = """\
name: pair
description: two filters
filters:
  - name: first
    weights: [[1, 0], [0, 1]]
    bias: 1
  - weights: [[1, 1], [1, 1]]
    normalize: true
    description: own
  - name: third
    weights: [[[[1, 2]], [[3, 4]]], [[[5, 6]], [[7, 8]]]]
    bias: [1, 2]
"""


def test_bank_file_keeps_order_names_and_descriptions(tmp_path):
    bank = load_kernels(write(tmp_path, "pair.yaml", BANK_YAML))
    assert bank.names == ["first", "pair[1]", "third[0]", "third[1]"]
    assert [k.description for k in bank] == ["two filters", "own", "two filters", "two filters"]
    assert bank.biases().tolist() == [1, 0, 1, 2]
    np.testing.assert_array_equal(bank[1].weights, np.full((2, 2), 0.25, dtype=np.float32))
    np.testing.assert_array_equal(bank[3].weights[:, :, 0], [[2, 4], [6, 8]])


def test_yaml_merge_keys_and_small_aliases_work(tmp_path):
    text = """\
filters:
  - &base {name: a, weights: [[1, 2]], bias: 1}
  - <<: *base
    name: b
"""
    bank = load_kernels(write(tmp_path, "m.yaml", text))
    assert bank.names == ["a", "b"] and bank.biases().tolist() == [1, 1]
    assert bank[0].weights.tolist() == bank[1].weights.tolist()


def test_weights_with_large_integers_and_exponents(tmp_path):
    # YAML 1.1 would read 1e-3 and 2E2 as strings; everyone means numbers.
    bank = load_kernels(write(tmp_path, "e.yaml", "weights: [[1.5e3, -2, 0x10, 1e-3, 2E2, .5, +3.]]\n"))
    np.testing.assert_array_equal(bank[0].weights, np.array([[1500, -2, 16, 1e-3, 200, 0.5, 3]], dtype=np.float32))


# Each case: file name, content, the message (regex) it must produce.
FILE_ERRORS = [
    ("k.yaml", "weights: [[1, 2]]\ncolour: red\n", r"k.yaml: unknown key 'colour' \(allowed: bias, "),
    ("k.json", '{"weights": [[1]], "Weights": [[1]]}', r"k.json: unknown key 'Weights'"),
    ("k.yaml", "filters:\n  - {weights: [[1]], stride: 2}\n", r"k.yaml: filters\[0\] unknown key 'stride'"),
    ("k.yaml", "filters:\n  - {weights: [[1]], filters: []}\n", r"filters\[0\] unknown key 'filters'"),
    ("k.yaml", "weights: [[1]]\nfilters: [{weights: [[1]]}]\n", r"key 'weights' cannot be used together with 'filters'"),
    ("k.yaml", "filters: []\n", r"'filters' must be a non-empty list of filters, got an empty list"),
    ("k.yaml", "filters: {a: 1}\n", r"'filters' must be a non-empty list of filters, got a mapping"),
    ("k.yaml", "filters: [3]\n", r"filters\[0\] must be a mapping with 'weights', got the number 3"),
    ("k.yaml", "filters: [{name: a}]\n", r"filters\[0\] has no 'weights'"),
    ("k.yaml", "name: x\n", r"k.yaml: no 'weights' or 'filters' key"),
    ("k.yaml", "", r"k.yaml: the file is empty; expected 'weights' or 'filters'"),
    ("k.yaml", "# only a comment\n", r"the file is empty"),
    ("k.yaml", "7\n", r"expected a mapping with 'weights' or 'filters', got the number 7"),
    ("k.yaml", "just text\n", r"got the string 'just text'"),
    ("k.yaml", "weights: 3\n", r"'weights' must be a list of numbers \(1-D to 4-D\), got the number 3"),
    ("k.yaml", "weights: []\n", r"'weights' is empty \(an empty list at depth 1\)"),
    ("k.yaml", "weights: [[], []]\n", r"'weights' is empty \(an empty list at depth 2\)"),
    ("k.yaml", "weights: [[[[[1]]]]]\n", r"'weights' is nested 5 deep; weights are 1-D to 4-D"),
    ("k.yaml", "weights:\n  - [0, 1, 0]\n  - [0, 1]\n", r"'weights\[1\]' has 2 entries, 'weights\[0\]' has 3 \(ragged rows\)"),
    ("k.yaml", "weights: [[1, 2], [3]]\n", r"'weights\[1\]' has 1 entry, 'weights\[0\]' has 2"),
    ("k.yaml", "weights: [[[1, 2], [3, 4]], [[1, 2], [3]]]\n", r"'weights\[1\]\[1\]' has 1 entry, 'weights\[0\]\[0\]' has 2"),
    ("k.yaml", "weights: [[1, 2], 3]\n", r"'weights\[1\]' is the number 3, but 'weights\[0\]' is a list of 2 \(ragged"),
    ("k.yaml", "weights: [1, [2, 3]]\n", r"'weights\[1\]' is a list, but 'weights' is 1-D here \(shape 2\)"),
    ("k.yaml", "weights: [[1, x]]\n", r"'weights\[0\]\[1\]' is not a number: the string 'x'"),
    ("k.yaml", "weights: [[1, '2']]\n", r"'weights\[0\]\[1\]' is not a number: the string '2'"),
    ("k.yaml", "weights: [[1, true]]\n", r"'weights\[0\]\[1\]' is not a number: a boolean"),
    ("k.yaml", "weights: [[1, null]]\n", r"'weights\[0\]\[1\]' is not a number: a NoneType"),
    ("k.yaml", "weights: [[1, {a: 1}]]\n", r"'weights\[0\]\[1\]' is not a number: a mapping"),
    ("k.yaml", "weights: [[1, .nan]]\n", r"k.yaml: 'weights'\[0\]\[1\] is nan; NaN and Inf are not allowed"),
    ("k.yaml", "weights: [[1], [-.inf]]\n", r"'weights'\[1\]\[0\] is -inf; NaN and Inf are not allowed"),
    ("k.json", '{"weights": [[NaN, 1]]}', r"k.json: 'weights'\[0\]\[0\] is nan"),
    ("k.json", '{"weights": [[1, Infinity]]}', r"'weights'\[0\]\[1\] is inf"),
    ("k.yaml", "weights: [[1, 1.0e39]]\n", r"'weights'\[0\]\[1\] = 1e\+39 does not fit in float32"),
    ("k.json", '{"weights": [[1, 1' + "0" * 400 + "]]}", r"'weights'\[0\]\[1\] is inf"),
    ("k.yaml", "weights: [[1, 1]]\nbias: [1, 2]\n", r"'bias' has 2 values for 1 filter$"),
    ("k.json", json.dumps({"weights": SEED_CONV2D * 1, "bias": [0, 0]}), r"'bias' has 2 values for 1 filter$"),
    ("k.json", json.dumps({"weights": [[[[1, 2, 3]]]], "bias": [0, 0]}), r"'bias' has 2 values for 3 filters$"),
    ("k.json", json.dumps({"weights": [[[[1, 2, 3]]]], "bias": [0]}), r"'bias' has 1 value for 3 filters; give 3 values or one number"),
    ("k.yaml", "weights: [[1]]\nbias: one\n", r"'bias' must be a number, got the string 'one'"),
    ("k.yaml", "weights: [[1]]\nbias: [x]\n", r"'bias\[0\]' must be a number, got the string 'x'"),
    ("k.yaml", "weights: [[1]]\nbias: .inf\n", r"'bias' is inf, not a finite float32 number"),
    ("k.yaml", "weights: [[1, -1]]\nnormalize: true\n", r"'normalize' on kernel 'k': its weights sum to 0, cannot divide"),
    ("k.yaml", "weights: [[0.1, 0.2, -0.3]]\nnormalize: true\n", r"its weights sum to 0"),
    ("k.yaml", "filters: [{weights: [[1, -1]], normalize: true}]\n", r"'filters\[0\].normalize' on kernel 'k\[0\]'"),
    ("k.yaml", "weights: [[1]]\nnormalize: 1\n", r"'normalize' must be true or false, got the number 1"),
    ("k.yaml", "weights: [[1]]\nscale: 0\n", r"'scale' is 0, which would zero every weight"),
    ("k.yaml", "weights: [[1]]\nscale: 1/9\n", r"'scale' must be a number, got the string '1/9'"),
    ("k.yaml", "weights: [[1e38]]\nscale: 1e3\n", r"kernel 'k': weights times scale 1000.0 overflow float32"),
    ("k.yaml", "weights: [[1]]\nlayout: nhwc\n", r"unknown 'layout' 'nhwc' \(use hwio, oihw, hwc, wio, oiw, hw, w\)"),
    ("k.yaml", "weights: [[1]]\nlayout: 4\n", r"unknown 'layout' 4"),
    ("k.yaml", "weights: [[1]]\nlayout: oihw\n", r"'layout' 'oihw' needs 4-D weights, got 2-D \(shape 1x1\)"),
    ("k.yaml", "weights: [[[[1]]]]\nlayout: wio\n", r"'layout' 'wio' needs 3-D weights, got 4-D"),
    ("k.yaml", "name: 5\nweights: [[1]]\n", r"'name' must be a string, got the number 5"),
    ("k.yaml", "name: '  '\nweights: [[1]]\n", r"'name' is empty"),
    ("k.yaml", 'name: "a\\nb"\nweights: [[1]]\n', r"'name' 'a\\nb' contains control characters"),
    ("k.yaml", "name: " + "n" * 300 + "\nweights: [[1]]\n", r"'name' is 300 characters, more than 256"),
    ("k.yaml", "filters: [{name: [a], weights: [[1]]}]\n", r"'filters\[0\].name' must be a string, got a list"),
    ("k.yaml", "description: [a]\nweights: [[1]]\n", r"'description' must be a string, got a list"),
    ("k.yaml", "weights: [[1]\n", r"k.yaml: invalid YAML: .* at line 2, column 1"),
    ("k.yaml", "weights: [[1]]\nweights: [[2]]\n", r"line 2: duplicate key 'weights'"),
    ("k.json", '{"weights": [[1]], "weights": [[2]]}', r"k.json: duplicate key 'weights'"),
    ("k.json", '{"weights": [[1]],}', r"k.json: invalid JSON: .* at line 1, column 19"),
    ("k.json", "[" * 100000 + "]" * 100000, r"k.json: JSON nested too deeply"),
    ("k.yaml", "weights: !!python/object:os.system [[1]]\n", r"unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'"),
    ("k.yaml", "weights: [[!!python/name:os.system 1]]\n", r"line 1: unsupported YAML tag 'tag:yaml.org,2002:python/name:os.system'"),
    ("k.yaml", "weights: !!set {a, b}\n", r"unsupported YAML tag 'tag:yaml.org,2002:set'"),
    ("k.yaml", "weights: [[1]]\n---\nweights: [[2]]\n", r"line 2: more than one YAML document"),
    ("k.yaml", "weights: *nothing\n", r"(undefined YAML alias \*nothing|invalid YAML: found undefined alias)"),
    ("k.yaml", "a: &a [*a]\nweights: [[1]]\n", r"line 1: recursive YAML alias \*a"),
    ("k.yaml", "? [1, 2]\n: 3\n", r"line 1: a mapping key must be a plain value"),
    ("k.yaml", "<<: 3\nweights: [[1]]\n", r"line 1: a '<<' merge needs a mapping"),
    ("k.yaml", "[" * 100000 + "]" * 100000, r"line 1: nested deeper than 32 levels"),
]


@pytest.mark.parametrize(("name", "text", "message"), FILE_ERRORS, ids=[m[:40] for _, _, m in FILE_ERRORS])
def test_file_errors_are_one_line_kernel_errors(tmp_path, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(KernelError, match=message) as info:
        load_kernels(path)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))


def billion_laughs() -> str:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    previous = "a"
    for anchor in "bcdefghi":
        lines.append(f"{anchor}: &{anchor} [" + ", ".join([f"*{previous}"] * 9) + "]")
        previous = anchor
    lines.append("weights: *i")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused(tmp_path):
    path = write(tmp_path, "bomb.yaml", billion_laughs())
    with pytest.raises(KernelError, match=r"bomb.yaml: YAML aliases expand to more than 1000000 nodes"):
        load_kernels(path)


def test_yaml_alias_bound_counts_expanded_nodes(tmp_path, monkeypatch):
    # The anchored row is 3 nodes (a list and two numbers); 4 aliases add 12: allowed at 12, refused at 11.
    text = "r: &r [1, 1]\nweights: [*r, *r, *r, *r]\n"
    monkeypatch.setattr(K, "MAX_ALIAS_NODES", 12)
    assert K._parse_yaml(text, "t.yaml")["weights"] == [[1, 1]] * 4
    monkeypatch.setattr(K, "MAX_ALIAS_NODES", 11)
    with pytest.raises(KernelError, match="t.yaml: YAML aliases expand to more than 11 nodes"):
        K._parse_yaml(text, "t.yaml")


def test_oversized_file_is_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(K, "MAX_FILE_BYTES", 1 << 20)
    path = write(tmp_path, "huge.json", '{"weights": [' + "1, " * 600_000 + "1]}\n")
    with pytest.raises(KernelError, match=r"huge.json: 1.7 MiB, larger than the 1 MiB allowed for a kernel file$"):
        load_kernels(path)


def test_oversized_yaml_file_is_refused_before_parsing(tmp_path):
    # YAML is composed in Python (about a second per MiB of short numbers): its own, smaller bound.
    path = write(tmp_path, "huge.yaml", "weights: [" + "1, " * 400_000 + "1]\n")
    with pytest.raises(KernelError, match=r"huge.yaml: 1.1 MiB, larger than the 1 MiB allowed for a YAML kernel"
                                          r" file; save large banks as .json or .npy"):
        load_kernels(path)


def test_file_growing_past_the_bound_while_read_is_refused(tmp_path, monkeypatch):
    # A pipe or /proc file reports size 0; the bounded read still stops at the limit.
    path = write(tmp_path, "k.yaml", "weights: [[1, 2, 3]]\n")
    monkeypatch.setattr(K, "MAX_FILE_BYTES", 4)

    class FakeStat:
        st_size = 0
        st_mode = 0o100644  # a regular file

    monkeypatch.setattr(Path, "stat", lambda self, **kw: FakeStat())
    with pytest.raises(KernelError, match=r"k.yaml: larger than the 4 bytes allowed"):
        load_kernels(path)


def test_too_many_weights_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(K, "MAX_WEIGHTS", 10)
    with pytest.raises(KernelError, match=r"'weights' has 12 weights, more than the 10 allowed"):
        load_kernels(write(tmp_path, "k.yaml", "weights: [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]\n"))


def test_unreadable_inputs(tmp_path):
    with pytest.raises(KernelError, match=r"sub.yaml: is a directory, not a kernel file"):
        load_kernels((tmp_path / "sub.yaml").mkdir() or tmp_path / "sub.yaml")
    (tmp_path / "k.txt").write_text("1 2 3")
    with pytest.raises(KernelError, match=r"k.txt: unsupported kernel file type '.txt' \(use .yaml, .yml, .json, .mat or .npy\)"):
        load_kernels(tmp_path / "k.txt")
    (tmp_path / "noext").write_text("1 2 3")
    with pytest.raises(KernelError, match=r"noext: unsupported kernel file type '\(no extension\)'"):
        load_kernels(tmp_path / "noext")
    (tmp_path / "bin.yaml").write_bytes(b"weights: [[1, \xff]]")
    with pytest.raises(KernelError, match=r"bin.yaml: not UTF-8 text \(byte 0xff at offset 14\)"):
        load_kernels(tmp_path / "bin.yaml")


def test_unreadable_file_permissions(tmp_path, monkeypatch):
    path = write(tmp_path, "k.yaml", "weights: [[1]]\n")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(KernelError, match=r"k.yaml: cannot read: Permission denied"):
        K.load_file(path)
    with pytest.raises(KernelError, match=r"k.npy: cannot read: Permission denied"):
        K.load_file(tmp_path / "k.npy")


def test_utf8_bom_is_accepted(tmp_path):
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + b'{"weights": [[1, 2]]}')
    assert load_kernels(tmp_path / "bom.json")[0].weights.tolist() == [[1, 2]]


# --------------------------------------------------------------------------- libvips .mat


def test_mat_file_with_scale_and_offset(tmp_path):
    rng = np.random.default_rng(2)
    values = rng.integers(-9, 10, (3, 4))
    rows = "\n".join(" ".join(str(v) for v in row) for row in values)
    bank = load_kernels(write(tmp_path, "m.mat", f"4 3 8 12.5\n{rows}\n\n"))
    (kernel,) = bank.kernels
    assert kernel.name == "m" and kernel.size == (3, 4)
    # libvips computes sum(w·x) / scale + offset.
    np.testing.assert_array_equal(kernel.weights, (values / 8).astype(np.float32))
    assert kernel.bias == 12.5


def test_mat_file_defaults_and_separators(tmp_path):
    bank = load_kernels(write(tmp_path, "m.mat", '3 2\n"1", 2,\t3\n4,5,6\n'))
    assert bank[0].weights.tolist() == [[1, 2, 3], [4, 5, 6]] and bank[0].bias == 0.0


MAT_ERRORS = [
    ("", r"m.mat: the file is empty; expected a first line 'W H \[scale \[offset\]\]'"),
    ("3\n1 2 3\n", r"m.mat: line 1 must be 'W H \[scale \[offset\]\]', got '3'"),
    ("3.5 1\n1 2 3\n", r"line 1 must be 'W H \[scale \[offset\]\]', got '3.5 1'"),
    ("3 1 1 0 9\n1 2 3\n", r"line 1 must be 'W H"),
    ("0 1\n\n", r"line 1: the size 0x1 is empty"),
    ("3 1 0\n1 2 3\n", r"line 1: scale is 0 \(libvips divides by it\)"),
    ("3 1 x\n1 2 3\n", r"m.mat: scale 'x' is not a number"),
    ("3 1 1 nan\n1 2 3\n", r"m.mat: offset is 'nan'; NaN and Inf are not allowed"),
    ("3 2\n1 2 3\n", r"m.mat: 1 rows of numbers, the header says height 2"),
    ("3 1\n1 2 3\n4 5 6\n", r"2 rows of numbers, the header says height 1"),
    ("3 2\n1 2 3\n4 5\n", r"m.mat: line 3 has 2 numbers, the header says width 3 \(ragged rows\)"),
    ("2 1\n1 a\n", r"m.mat: line 2: value 'a' is not a number"),
    ("2 1\n1 inf\n", r"line 2: value is 'inf'; NaN and Inf are not allowed"),
    ("2 1\n1 1e39\n", r"line 2: value '1e39' does not fit in float32"),
    ("3 3000\n", r"3x3000 is more than the 1000 weights allowed"),
]


@pytest.mark.parametrize(("text", "message"), MAT_ERRORS)
def test_mat_errors(tmp_path, monkeypatch, text, message):
    monkeypatch.setattr(K, "MAX_WEIGHTS", 1000)
    with pytest.raises(KernelError, match=message):
        load_kernels(write(tmp_path, "m.mat", text))


# --------------------------------------------------------------------------- .npy and arrays


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 3), (3, 3, 2, 4)])
def test_npy_follows_weights_shape_rules(tmp_path, shape):
    rng = np.random.default_rng(len(shape))
    array = rng.standard_normal(shape).astype(np.float64)
    np.save(tmp_path / "w.npy", array)
    from_npy = load_kernels(tmp_path / "w.npy")
    from_json = load_kernels(write_doc(tmp_path, "w.json", {"weights": array.tolist()}))
    assert from_npy == from_json
    assert all(k.source == str(tmp_path / "w.npy") for k in from_npy)


def test_npy_integer_arrays_are_accepted(tmp_path):
    np.save(tmp_path / "i.npy", np.array([[1, 2], [3, 4]], dtype=np.int16))
    assert load_kernels(tmp_path / "i.npy")[0].weights.tolist() == [[1, 2], [3, 4]]


def test_npy_errors(tmp_path, monkeypatch):
    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(KernelError, match=r"obj.npy: expected a numeric array, got dtype object"):
        load_kernels(tmp_path / "obj.npy")
    np.save(tmp_path / "b.npy", np.ones((2, 2), dtype=bool))
    with pytest.raises(KernelError, match=r"b.npy: expected a numeric array, got dtype bool"):
        load_kernels(tmp_path / "b.npy")
    np.save(tmp_path / "c.npy", np.ones((2, 2), dtype=np.complex64))
    with pytest.raises(KernelError, match=r"c.npy: expected a numeric array, got dtype complex64"):
        load_kernels(tmp_path / "c.npy")
    (tmp_path / "bad.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(KernelError, match=r"bad.npy: not a valid .npy file"):
        load_kernels(tmp_path / "bad.npy")
    np.save(tmp_path / "trunc.npy", np.ones((4, 4)))
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "trunc.npy").read_bytes()[:-16])
    with pytest.raises(KernelError, match=r"trunc.npy: not a valid .npy file"):
        load_kernels(tmp_path / "trunc.npy")
    np.save(tmp_path / "five.npy", np.ones((1, 1, 1, 1, 2)))
    with pytest.raises(KernelError, match=r"five.npy: weights must be 1-D to 4-D, got 5-D shape 1x1x1x1x2"):
        load_kernels(tmp_path / "five.npy")
    np.save(tmp_path / "empty.npy", np.ones((0, 3)))
    with pytest.raises(KernelError, match=r"empty.npy: the array is empty \(shape 0x3\)"):
        load_kernels(tmp_path / "empty.npy")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    with pytest.raises(KernelError, match=r"nan.npy: weights\[0\]\[1\] is nan"):
        load_kernels(tmp_path / "nan.npy")
    np.save(tmp_path / "big.npy", np.ones((4, 4)))
    monkeypatch.setattr(K, "MAX_WEIGHTS", 10)
    with pytest.raises(KernelError, match=r"big.npy: shape 4x4 holds 16 weights, more than the 10 allowed"):
        load_kernels(tmp_path / "big.npy")


def test_npy_version_2_header(tmp_path):
    array = np.arange(6.0).reshape(2, 3)
    with open(tmp_path / "v2.npy", "wb") as handle:
        np.lib.format.write_array(handle, array, version=(2, 0))
    assert load_kernels(tmp_path / "v2.npy")[0].weights.tolist() == array.tolist()


def test_array_kernel_and_bank_sources():
    rng = np.random.default_rng(9)
    flat = rng.standard_normal((3, 3))
    bank4 = rng.standard_normal((3, 3, 2, 2))
    kernel = Kernel("given", np.ones((3, 3)))
    existing = FilterBank((Kernel("b0", np.zeros((3, 3))), Kernel("b1", np.eye(3))))
    bank = load_kernels(flat, kernel, existing, bank4)
    assert bank.names == ["array0", "given", "b0", "b1", "array3[0]", "array3[1]"]
    np.testing.assert_array_equal(bank[0].weights, flat.astype(np.float32))
    np.testing.assert_array_equal(bank[5].weights, bank4[:, :, :, 1].astype(np.float32))
    assert load_kernels(flat).names == ["array"]


def test_array_source_errors():
    with pytest.raises(KernelError, match=r"array argument 0: expected a numeric array, got dtype <U1"):
        load_kernels(np.array([["a"]]))
    with pytest.raises(KernelError, match=r"array argument 1: weights must be 1-D to 4-D, got 0-D"):
        load_kernels(np.ones((3, 3)), np.array(1.0))
    with pytest.raises(KernelError, match=r"array argument 0: weights\[1\]\[0\] is inf"):
        load_kernels(np.array([[0.0], [np.inf]]))


def test_array_source_too_big(monkeypatch):
    monkeypatch.setattr(K, "MAX_WEIGHTS", 4)
    with pytest.raises(KernelError, match=r"array argument 0: 9 weights, more than the 4 allowed"):
        load_kernels(np.ones((3, 3)))


def test_load_kernels_argument_errors():
    with pytest.raises(KernelError, match="no kernels given: a layer needs at least one kernel source"):
        load_kernels()
    with pytest.raises(TypeError, match="kernel source 1 must be a path, name, inline string, numpy array, Kernel or FilterBank, got list"):
        load_kernels("edge", [[0, 1, 0]])


def test_load_kernels_checks_that_the_bank_forms_one_layer():
    with pytest.raises(KernelError, match=r"same size: kernel 'sobel-x' \(built-in sobel-x\) is 3x3, kernel 'gaussian-blur' \(built-in gaussian-blur\) is 5x5"):
        load_kernels("sobel-x", "gaussian-blur")
    with pytest.raises(KernelError, match="same depth"):
        load_kernels(np.ones((3, 3, 3)), np.ones((3, 3, 1)))


def test_load_order_is_preserved_across_sources(tmp_path):
    path_a = write(tmp_path, "a.yaml", BANK_YAML)
    path_b = write(tmp_path, "b.json", json.dumps({"name": "b", "weights": [[1, 2], [3, 4]]}))
    np.save(tmp_path / "c.npy", np.ones((2, 2, 1, 2)))
    bank = load_kernels(path_b, "2x2: 1,2 3,4", path_a, tmp_path / "c.npy", str(path_b))
    assert bank.names == ["b", "inline", "first", "pair[1]", "third[0]", "third[1]", "c[0]", "c[1]", "b"]


# --------------------------------------------------------------------------- inline and resolution


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3x3: 0,1,0 0,1,0 0,1,0", [[0, 1, 0], [0, 1, 0], [0, 1, 0]]),
        ("3x3:0,1,0;0,1,0;0,1,0", [[0, 1, 0], [0, 1, 0], [0, 1, 0]]),
        ("3x2: 1 2 3 4 5 6", [[1, 2, 3], [4, 5, 6]]),
        ("3x2: 1, 2, 3, 4, 5, 6", [[1, 2, 3], [4, 5, 6]]),
        ("3X2 : 1,2,3 4,5,6", [[1, 2, 3], [4, 5, 6]]),
        ("2: -1,0.5 +2,-.25e1", [[-1, 0.5], [2, -2.5]]),
        ("3x1: 0 1 0", [[0, 1, 0]]),
        ("1x3: 0;1;0", [[0], [1], [0]]),
        ("[[0, 1], [2, 3]]", [[0, 1], [2, 3]]),
        (" [0, 1, 0]", [[0, 1, 0]]),
    ],
)
def test_inline_kernels(text, expected):
    bank = load_kernels(text)
    assert bank.names == ["inline"]
    assert bank[0].weights.tolist() == expected
    assert bank[0].source.startswith("inline kernel ")


INLINE_ERRORS = [
    ("3x3: 0,1,0 0,1,0 0,1", r"inline kernel '3x3: 0,1,0 0,1,0 0,1': row 3 has 2 values, the width is 3 \(ragged rows\)"),
    ("3x3: 0,1,0; 0,1; 0,1,0,0", r"row 2 has 2 values, the width is 3"),
    ("3x3: 0 1 0 0 1 0 0 1", r"expected 9 values for 3x3, got 8"),
    ("2x2: 1 2 3 4 5", r"expected 4 values for 2x2, got 5"),
    ("3x3:", r"no values \(an empty kernel\)"),
    ("0x3: 1", r"the size 0x3 is empty"),
    ("3x3+1+1: 0,1,0 0,1,0 0,1,0", r"origin offsets \(\+1\+1\) are not supported"),
    ("2x1: 1 nan", r"value 2 is 'nan'; NaN and Inf are not allowed"),
    ("2x1: 1 -Infinity", r"value 2 is '-Infinity'; NaN and Inf are not allowed"),
    ("2x1: 1 x", r"value 2 'x' is not a number"),
    ("2x1: 1 1_000", r"value 2 '1_000' is not a number"),
    ("2x1: 1 1e40", r"value 2 '1e40' does not fit in float32"),
    ("[[1, 2], [3]]", r"inline kernel '\[\[1, 2\], \[3\]\]': 'weights\[1\]' has 1 entry"),
    ("[[1, 2]", r"inline kernel '\[\[1, 2\]': invalid JSON"),
]


@pytest.mark.parametrize(("text", "message"), INLINE_ERRORS)
def test_inline_errors(text, message):
    with pytest.raises(KernelError, match=message):
        load_kernels(text)


def test_looks_inline_and_parse_document():
    assert K.looks_inline("3x3: 1") and K.looks_inline("5: 1") and K.looks_inline(" [1]")
    assert not K.looks_inline("edge") and not K.looks_inline("k.yaml")
    assert K.parse_document("a: [1, 2e1]", "p.yaml") == {"a": [1, 20.0]}
    assert K.parse_document('{"a": 1}', "p.json", json_format=True) == {"a": 1}
    with pytest.raises(KernelError, match=r"p.yaml: line 1: duplicate key 'a'"):
        K.parse_document("{a: 1, a: 2}", "p.yaml")


def test_inline_parser_direct_errors(monkeypatch):
    with pytest.raises(KernelError, match=r"inline kernel 'edge': expected 'WxH: values', e.g. '3x3: 0,1,0 0,1,0 0,1,0'"):
        K.parse_inline("edge")
    monkeypatch.setattr(K, "MAX_FILE_BYTES", 10)
    with pytest.raises(KernelError, match=r"13 characters, more than the 10 allowed"):
        K.parse_inline("2x1: 1,     2")


def test_inline_long_text_is_clipped_in_messages():
    with pytest.raises(KernelError, match=r"^inline kernel '9x9:( 1){27} …': expected 81 values for 9x9, got 80$"):
        load_kernels("9x9: " + "1 " * 80)


def test_resolve_order_path_then_inline_then_builtin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A file named like a built-in is not a kernel path unless it exists: then it wins.
    assert load_kernels("edge")[0].source == "built-in edge"
    (tmp_path / "edge.yaml").write_text("weights: [[7]]\n")
    assert load_kernels("edge.yaml")[0].weights.tolist() == [[7]]
    assert load_kernels("edge")[0].source == "built-in edge"
    (tmp_path / "sharpen").mkdir()
    assert load_kernels("sharpen")[0].source == "built-in sharpen"
    (tmp_path / "emboss").write_text("weights: [[1]]\n")
    with pytest.raises(KernelError, match=r"^emboss: unsupported kernel file type '\(no extension\)'"):
        load_kernels("emboss")


def test_source_file_names_the_file_resolve_source_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "edge.yaml").write_text("weights: [[7]]\n")
    (tmp_path / "sharpen").mkdir()  # a folder named like a built-in: the built-in
    assert K.source_file("edge.yaml") == Path("edge.yaml")
    assert K.source_file("edge") is None
    assert K.source_file("sharpen") is None
    assert K.source_file("3x3: 0,1,0 0,1,0 0,1,0") is None
    assert K.source_file("  ") is None
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "edge.yaml").write_text("weights: [[5]]\n")
    assert K.source_file("edge.yaml", base_dir="sub") == Path("sub") / "edge.yaml"


def test_builtin_lookup_is_case_and_underscore_insensitive():
    assert load_kernels("Sobel_X") == load_kernels("sobel-x")
    assert K.load_builtin("SOBEL_Y") == load_kernels("sobel-y")


def test_base_dir_resolves_relative_paths_first(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "k.yaml", "weights: [[5]]\n")
    assert load_kernels("k.yaml", base_dir=tmp_path / "sub")[0].weights.tolist() == [[5]]
    assert K.resolve_source(str(tmp_path / "sub" / "k.yaml"), base_dir=tmp_path)[0].weights.tolist() == [[5]]


def test_path_like_and_bytes_paths(tmp_path):
    path = write(tmp_path, "k.json", '{"weights": [[4]]}')
    assert K.resolve_source(path).names == ["k"]
    assert K.resolve_source(bytes(path)).names == ["k"]


def test_unknown_source_lists_builtins():
    with pytest.raises(KernelError, match=r"^kernel 'foo': no such file or built-in kernel \(built-ins: box-blur, bump, edge, .*\)$"):
        load_kernels("foo")
    with pytest.raises(KernelError, match=r"kernel 'missing.yaml': no such file or built-in kernel"):
        load_kernels("missing.yaml")
    with pytest.raises(KernelError, match=r"kernel 'a\\x00b': no such file"):
        load_kernels("a\x00b")
    with pytest.raises(KernelError, match=r"^kernel '': an empty kernel name or path$"):
        load_kernels("  ")
    with pytest.raises(KernelError, match=r"^kernel 'foo': no such built-in kernel \(built-ins: box-blur, "):
        K.load_builtin("foo")


# --------------------------------------------------------------------------- built-ins


def test_builtins_include_the_spec_names():
    names = K.builtin_names()
    assert set(SPEC_BUILTINS) <= set(names)
    assert names == sorted(names)


def _shipped_kernel_names() -> list[str]:
    """The built-in kernel files the installed convcli ships as convcli.kernels_data.

    With an editable install (or a wheel on sys.path) the package data imports. With a
    regular install run from the checkout, the checkout's convcli/ (first on sys.path)
    shadows the installed package and has no kernels_data: the installed distribution's
    file list (its RECORD) says what shipped, and each listed file must be on disk. The
    build leaves a convcli.egg-info in the checkout too, listing the sources: skipped.
    """
    from importlib import metadata
    from importlib.resources import files

    try:
        root = files("convcli.kernels_data")
    except ModuleNotFoundError:
        for dist in metadata.distributions(name="convcli"):
            entries = [f for f in dist.files or () if f.parts[:2] == ("convcli", "kernels_data")
                       and f.suffix == ".yaml"]
            if entries:
                assert all(Path(dist.locate_file(f)).is_file() for f in entries)
                return sorted(Path(f.name).stem for f in entries)
        pytest.fail("convcli.kernels_data is neither importable nor in an installed distribution")
    return sorted(entry.name[: -len(".yaml")] for entry in root.iterdir() if entry.name.endswith(".yaml"))


def test_builtins_ship_as_package_data_with_matching_names():
    shipped = _shipped_kernel_names()
    assert shipped == K.builtin_names()
    # The repo's kernels/ folder is what the package ships.
    repo = Path(__file__).resolve().parents[1] / "kernels"
    assert sorted(p.stem for p in repo.glob("*.yaml")) == shipped


def test_builtins_found_from_a_source_checkout(monkeypatch):
    # Imported from the repo without installing, convcli.kernels_data does not exist: the
    # kernels/ folder next to the package is used.
    import convcli

    monkeypatch.setitem(sys.modules, "convcli.kernels_data", None)  # makes the import fail
    monkeypatch.delattr(convcli, "kernels_data", raising=False)
    assert K._builtin_root() == Path(__file__).resolve().parents[1] / "kernels"


def test_builtin_index_is_current():
    # kernels/_index.json holds the parsed built-ins, so loading one needs no YAML parser.
    tool = Path(__file__).resolve().parents[1] / "tools" / "kernel_index.py"
    proc = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", K.builtin_names())
def test_builtin_index_gives_what_parsing_the_file_gives(name, monkeypatch):
    from_index = K._load_builtin_cached(name)
    assert K._builtin_index()[name]["fingerprint"] == K.file_fingerprint(K._builtin_files()[name].read_bytes())
    K._load_builtin_cached.cache_clear()
    monkeypatch.setattr(K, "_builtin_index", lambda: {})
    try:
        assert K._load_builtin_cached(name) == from_index
    finally:
        K._load_builtin_cached.cache_clear()


def test_builtin_index_entry_of_an_edited_file_is_ignored(monkeypatch):
    stale = {"edge": {"file": "edge.yaml", "fingerprint": "00000000-1", "document": {"name": "edge", "weights": [[7.0]]}}}
    K._load_builtin_cached.cache_clear()
    monkeypatch.setattr(K, "_builtin_index", lambda: stale)
    try:
        assert load_kernels("edge").size == (3, 3)  # the file itself, not the stale entry
    finally:
        K._load_builtin_cached.cache_clear()


@pytest.mark.parametrize("name", K.builtin_names())
def test_every_builtin_loads_and_is_well_formed(name):
    bank = load_kernels(name)
    entry = {e.name: e for e in K.builtin_catalog()}[name]
    assert entry.bank == bank and entry.description
    assert entry.size == bank.size and entry.filters == bank.filters
    assert all(k.source == f"built-in {name}" and k.description for k in bank)
    if bank.filters == 1:
        assert bank.names == [name]  # the file's name key matches its file name
    for kernel in bank:
        assert np.isfinite(kernel.weights).all()


@pytest.mark.parametrize("name", ["box-blur", "gaussian-blur", "gaussian-blur-3", "motion-blur", "sharpen", "unsharp-mask", "emboss", "identity"])
def test_blurs_and_sharpens_sum_to_one(name):
    (kernel,) = load_kernels(name).kernels
    assert abs(float(kernel.weights.sum(dtype=np.float64)) - 1.0) < 1e-6


@pytest.mark.parametrize("name", ["edge", "laplacian-4", "sobel-x", "sobel-y", "prewitt-x", "prewitt-y", "scharr-x", "scharr-y"])
def test_edge_detectors_sum_to_zero(name):
    assert float(load_kernels(name)[0].weights.sum(dtype=np.float64)) == 0.0


def test_builtin_weights_against_independent_definitions():
    def weights(name):
        return load_kernels(name)[0].weights

    np.testing.assert_array_equal(weights("edge"), [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(weights("vertical-line"), [[0, 1, 0]] * 3)
    np.testing.assert_array_equal(weights("horizontal-line"), weights("vertical-line").T)
    np.testing.assert_array_equal(weights("sobel-x"), np.outer([1, 2, 1], [-1, 0, 1]))
    np.testing.assert_array_equal(weights("sobel-y"), weights("sobel-x").T)
    np.testing.assert_array_equal(weights("prewitt-x"), np.outer([1, 1, 1], [-1, 0, 1]))
    np.testing.assert_array_equal(weights("prewitt-y"), weights("prewitt-x").T)
    np.testing.assert_array_equal(weights("scharr-y"), weights("scharr-x").T)
    np.testing.assert_allclose(weights("gaussian-blur"), np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256, rtol=1e-7)
    np.testing.assert_allclose(weights("box-blur"), np.full((3, 3), 1 / 9), rtol=1e-7)
    np.testing.assert_array_equal(weights("sharpen"), [[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
    np.testing.assert_array_equal(weights("emboss"), [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    np.testing.assert_array_equal(weights("bump"), [[0, 1, 0]])
    delta = np.zeros((5, 5))
    delta[2, 2] = 1
    np.testing.assert_allclose(weights("unsharp-mask"), 2 * delta - weights("gaussian-blur"), atol=1e-7)


def test_builtin_banks():
    edges = load_kernels("edges-bank")
    assert edges.names == ["sobel-x", "sobel-y", "laplacian-4"]
    assert edges[0] == FilterBank((Kernel("sobel-x", load_kernels("sobel-x")[0].weights, description="Sobel x gradient"),))[0]
    lines = load_kernels("lines-oihw")
    assert lines.names == ["lines-oihw[0]", "lines-oihw[1]"] and lines.depth == 1
    np.testing.assert_array_equal(lines.weights_hwio(1)[:, :, 0, 0], load_kernels("vertical-line")[0].weights)
    np.testing.assert_array_equal(lines.weights_hwio(1)[:, :, 0, 1], load_kernels("horizontal-line")[0].weights)
    single = {k.name for k in K.builtin_kernels()}
    assert "edges-bank" not in single and "lines-oihw" not in single
    assert set(SPEC_BUILTINS) <= single


# --------------------------------------------------------------------------- safe_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sobel-x", "sobel-x"),
        ("w[3]", "w[3]"),
        ("../../etc/passwd", "_etc_passwd"),
        ("/abs", "_abs"),
        ("a/../../b", "a_b"),
        ("..\\..\\windows", "_windows"),
        (".hidden", "hidden"),
        ("-rf", "rf"),
        ("..", "_"),
        ("", "kernel"),
        ("...", "_"),
        ("a\x00b\nc", "a_b_c"),
        ("two words", "two_words"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("name.", "name"),
        ("kernel:1", "kernel_1"),
        ("über", "über"),
        ("right\u202etxt.exe", "right_txt.exe"),
    ],
)
def test_safe_name_examples(name, expected):
    assert K.safe_name(name) == expected


def test_safe_name_bounds_length_in_utf8_bytes():
    result = K.safe_name("é" * 100)
    assert len(result.encode("utf-8")) <= K.SAFE_NAME_MAX_BYTES and result == "é" * 32


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_safe_name_properties(name):
    result = K.safe_name(name)
    assert result and len(result.encode("utf-8")) <= K.SAFE_NAME_MAX_BYTES
    assert "/" not in result and "\\" not in result and ".." not in result
    assert not result.startswith((".", "-")) and not result.endswith((".", " "))
    assert not any(unicodedata.category(ch)[0] in "CZ" for ch in result)
    assert Path(result).name == result and len(Path(result).parts) == 1
    assert K.safe_name(result) == result
