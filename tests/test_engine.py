"""Engine numerics against independent references: plain numpy loops, scipy.signal, scipy.ndimage.

The loop references below re-derive padding from SPEC §1's formulas on purpose (they do not
call convcli.geometry), so a wrong rule in either place shows up as a mismatch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage, signal, special

from convcli import engine
from convcli.engine import _common
from convcli.errors import GeometryError, InputError, KernelError, OptionError
from convcli.layer import ConvSpec, PoolSpec

RTOL, ATOL = 1e-4, 1e-4
NP_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
NDI_MODE = {"zeros": "constant", "reflect": "mirror", "replicate": "nearest", "circular": "wrap"}


# ----------------------------------------------------------------------------- references
def ref_pads(h, w, kh, kw, stride, dilation, padding):
    """(top, bottom, left, right) straight from SPEC §1."""
    (sh, sw), (dh, dw) = stride, dilation
    eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        def axis(n, e, s):
            out = math.ceil(n / s)
            total = max((out - 1) * s + e - n, 0)
            return total // 2, total - total // 2
        return axis(h, eh, sh) + axis(w, ew, sw)
    if padding == "full":
        return (eh - 1, eh - 1, ew - 1, ew - 1)
    if padding == "causal":
        return (0, 0, ew - 1, 0)
    return tuple(padding)


def ref_conv(x, w, bias=None, stride=(1, 1), dilation=(1, 1), padding="valid", border="zeros"):
    """The obvious loop: out[y,x,f] = sum_{i,j,c} xp[y*sh+i*dh, x*sw+j*dw, c] * w[i,j,c,f] (float64)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    kh, kw, c, f = w.shape
    t, b, l, r = ref_pads(x.shape[0], x.shape[1], kh, kw, stride, dilation, padding)
    xp = np.pad(x, ((t, b), (l, r), (0, 0)), mode=NP_MODE[border])
    (sh, sw), (dh, dw) = stride, dilation
    oh = (xp.shape[0] - ((kh - 1) * dh + 1)) // sh + 1
    ow = (xp.shape[1] - ((kw - 1) * dw + 1)) // sw + 1
    out = np.zeros((oh, ow, f))
    for y in range(oh):
        for xx in range(ow):
            patch = xp[y * sh: y * sh + (kh - 1) * dh + 1: dh, xx * sw: xx * sw + (kw - 1) * dw + 1: dw, :]
            for ff in range(f):
                out[y, xx, ff] = np.sum(patch * w[:, :, :, ff])
    if bias is not None:
        out += np.asarray(bias, np.float64)
    return out


def ref_pool(x, mode, size, stride, padding):
    """Keras pooling by loops: same pads by TF's rule; max ignores pads, avg averages real cells."""
    h, w, c = x.shape
    (ph, pw), (sh, sw) = size, stride
    if padding == "valid":
        oh, ow, top, left = (h - ph) // sh + 1, (w - pw) // sw + 1, 0, 0
    else:
        oh, ow = math.ceil(h / sh), math.ceil(w / sw)
        top = max((oh - 1) * sh + ph - h, 0) // 2
        left = max((ow - 1) * sw + pw - w, 0) // 2
    out = np.zeros((oh, ow, c))
    for y in range(oh):
        for xx in range(ow):
            y0, x0 = y * sh - top, xx * sw - left
            cells = x[max(y0, 0):min(y0 + ph, h), max(x0, 0):min(x0 + pw, w)]
            out[y, xx] = cells.max(axis=(0, 1)) if mode == "max" else cells.mean(axis=(0, 1))
    return out


def positions(h, w, c=1):
    """x[i, j, k] = 10*i + j + 100*k: every value tells where it came from."""
    i, j, k = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    return (10 * i + j + 100 * k).astype(np.float32)


@dataclass(frozen=True)
class Bank:
    """A minimal stand-in for convcli.kernels.FilterBank (the interface in the notes)."""

    weights: tuple  # of (kh, kw) or (kh, kw, C) float32 arrays
    bias: tuple = ()

    @property
    def size(self):
        return self.weights[0].shape[:2]

    @property
    def depth(self):
        depths = {w.shape[2] for w in self.weights if w.ndim == 3}
        return depths.pop() if depths else None

    @property
    def filters(self):
        return len(self.weights)

    def weights_hwio(self, channels):
        cols = [w if w.ndim == 3 else np.repeat(w[:, :, None], channels, axis=2) for w in self.weights]
        return np.stack(cols, axis=3).astype(np.float32)

    def biases(self):
        return np.asarray(self.bias or [0.0] * self.filters, np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(20240531)


# ----------------------------------------------------------------------------- seeds (SPEC §4)
def test_seed_1d_bump():
    y = engine.conv2d(np.array([0, 0, 0, 1, 1, 0, 0, 0]), np.array([0, 1, 0]))
    assert y.shape == (1, 6, 1) and y.dtype == np.float32
    assert y.ravel().tolist() == [0, 0, 1, 1, 0, 0]


def test_seed_vertical_line_8x8():
    image = np.zeros((8, 8), np.float32)
    image[:, 3:5] = 1
    kernel = np.array([[0, 1, 0]] * 3, np.float32)
    y = engine.conv2d(image, kernel)
    assert y.shape == (6, 6, 1)
    assert (y[:, :, 0] == np.array([0, 0, 3, 3, 0, 0], np.float32)).all()


def test_seed_vertical_line_rgb_is_repeat_over_channels():
    image = np.zeros((8, 8, 3), np.float32)
    image[:, 3:5] = 1
    kernel = np.array([[0, 1, 0]] * 3, np.float32)
    y = engine.conv2d(image, np.repeat(kernel[:, :, None, None], 3, axis=2))
    assert (y[:, :, 0] == np.array([0, 0, 9, 9, 0, 0], np.float32)).all()


def test_seed_max_pool_3x3x2(rng):
    fmap = rng.standard_normal((3, 3, 2)).astype(np.float32)
    y = engine.pool2d(fmap, PoolSpec.from_options(mode="max", size=2, stride=2))
    assert y.shape == (1, 1, 2)
    assert (y[0, 0] == fmap[:2, :2].max(axis=(0, 1))).all()


@pytest.mark.parametrize("h,expected_rows", [(7, [0, 2, 4, 6]), (8, [1, 3, 5, 7])])
def test_tf_same_stride2_odd_even(h, expected_rows):
    # 3×3 centre tap, same, stride 2: odd H pads 1 on top (pick rows 0,2,..), even H pads
    # 0 on top and 1 at the bottom (pick rows 1,3,..), as TensorFlow does.
    x = positions(h, h)
    k = np.zeros((3, 3), np.float32)
    k[1, 1] = 1
    y = engine.conv2d(x, k, stride=2, padding="same")
    assert y.shape == (4, 4, 1)
    assert (y[:, :, 0] == x[:, :, 0][np.ix_(expected_rows, expected_rows)]).all()


def test_positions_pin_stride_and_dilation():
    x = positions(9, 9)
    k = np.zeros((3, 3), np.float32)
    k[2, 0] = 1  # picks in[y*sh + 2*dh, x*sw + 0]
    y = engine.conv2d(x, k, stride=(2, 3), dilation=(2, 1))
    assert y.shape == (3, 3, 1)
    expected = np.array([[10 * (2 * r + 4) + 3 * c for c in range(3)] for r in range(3)], np.float32)
    assert (y[:, :, 0] == expected).all()


# ----------------------------------------------------------------------------- conv vs references
CASES = list(itertools.product(
    [(7, 9), (8, 6)],  # odd and even sizes
    [(3, 3), (2, 4), (1, 1)],  # kernel sizes, odd and even
    [(1, 1), (2, 2), (1, 3)],  # strides
    [(1, 1), (2, 1)],  # dilations
))


@pytest.mark.parametrize("hw,ksize,stride,dilation", CASES)
@pytest.mark.parametrize("padding", ["valid", "same", "full", (1, 0, 2, 3)])
def test_conv2d_matches_loop_reference(rng, hw, ksize, stride, dilation, padding):
    x = rng.standard_normal(hw + (2,)).astype(np.float32)
    w = rng.standard_normal(ksize + (2, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    pad_arg = ",".join(map(str, padding)) if isinstance(padding, tuple) else padding
    y = engine.conv2d(x, w, b, stride=stride, dilation=dilation, padding=pad_arg)
    ref = ref_conv(x, w, b, stride, dilation, padding)
    assert y.dtype == np.float32 and y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("border", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("hw", [(9, 11), (10, 8)])
@pytest.mark.parametrize("stride,dilation", [((1, 1), (1, 1)), ((2, 3), (1, 2)), ((3, 2), (2, 1))])
def test_borders_match_loop_reference(rng, border, hw, stride, dilation):
    x = rng.standard_normal(hw + (3,)).astype(np.float32)
    w = rng.standard_normal((3, 4, 3, 2)).astype(np.float32)
    for padding in ["same", "full", (2, 1, 0, 3)]:
        pad_arg = ",".join(map(str, padding)) if isinstance(padding, tuple) else padding
        y = engine.conv2d(x, w, stride=stride, dilation=dilation, padding=pad_arg, border=border)
        np.testing.assert_allclose(y, ref_conv(x, w, None, stride, dilation, padding, border),
                                   rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("hw", [(13, 16), (16, 13)])
@pytest.mark.parametrize("mode", ["valid", "full", "same"])
def test_stride1_matches_scipy_correlate2d(rng, hw, mode):
    x = rng.standard_normal(hw).astype(np.float32)
    k = rng.standard_normal((5, 3)).astype(np.float32)  # odd kernel: scipy's 'same' centre = TF's
    y = engine.conv2d(x, k, padding=mode)
    np.testing.assert_allclose(y[:, :, 0], signal.correlate2d(x.astype(np.float64), k, mode=mode),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("border", ["zeros", "reflect", "replicate", "circular"])
def test_same_borders_match_ndimage(rng, border):
    x = rng.standard_normal((12, 15)).astype(np.float32)
    k = rng.standard_normal((5, 7)).astype(np.float32)
    y = engine.conv2d(x, k, padding="same", border=border)
    ref = ndimage.correlate(x.astype(np.float64), k.astype(np.float64), mode=NDI_MODE[border])
    np.testing.assert_allclose(y[:, :, 0], ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("hw", [(9, 10), (12, 7)])
def test_flip_is_true_convolution(rng, hw):
    x = rng.standard_normal(hw).astype(np.float32)
    k = rng.standard_normal((3, 4)).astype(np.float32)
    y = engine.conv2d(x, k, flip=True)
    np.testing.assert_allclose(y[:, :, 0], signal.convolve2d(x.astype(np.float64), k, mode="valid"),
                               rtol=RTOL, atol=ATOL)


def test_flip_does_not_flip_channels(rng):
    x = rng.standard_normal((8, 9, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    y = engine.conv2d(x, w, flip=True, padding="same")
    np.testing.assert_allclose(y, ref_conv(x, w[::-1, ::-1], padding="same"), rtol=RTOL, atol=ATOL)


def test_2d_kernels_summed_over_channels_equal_repeat_hwio(rng):
    x = rng.standard_normal((11, 10, 3)).astype(np.float32)
    k1, k2 = rng.standard_normal((2, 3, 3)).astype(np.float32)
    bank = Bank((k1, k2), (0.5, -1.0))
    for border in NP_MODE:
        spec = ConvSpec.from_options(padding="same", stride=2, border=border)
        y = engine.run_layer(x, bank, spec).output
        hwio = np.stack([np.repeat(k[:, :, None], 3, axis=2) for k in (k1, k2)], axis=3)
        np.testing.assert_allclose(y, ref_conv(x, hwio, [0.5, -1.0], (2, 2), (1, 1), "same", border),
                                   rtol=RTOL, atol=ATOL)


def test_bank_of_3d_and_2d_kernels(rng):
    x = rng.standard_normal((9, 8, 2)).astype(np.float32)
    k3 = rng.standard_normal((3, 3, 2)).astype(np.float32)
    k2 = rng.standard_normal((3, 3)).astype(np.float32)
    y = engine.run_layer(x, Bank((k3, k2), (1.0, 2.0)), ConvSpec()).output
    hwio = np.stack([k3, np.repeat(k2[:, :, None], 2, axis=2)], axis=3)
    np.testing.assert_allclose(y, ref_conv(x, hwio, [1.0, 2.0]), rtol=RTOL, atol=ATOL)


def test_1d_signal_valid_same_causal(rng):
    sig = rng.standard_normal(21).astype(np.float32)
    k = rng.standard_normal(4).astype(np.float32)
    for padding, dilation in [("valid", 1), ("same", 1), ("causal", 1), ("causal", 3)]:
        y = engine.conv2d(sig, k, padding=padding, dilation=dilation)
        ref = ref_conv(sig.reshape(1, -1, 1), k.reshape(1, 4, 1, 1), None, (1, 1), (1, dilation), padding)
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
    y = engine.conv2d(sig, k, padding="causal")
    assert y.shape == (1, 21, 1)  # causal keeps the length: (kw-1) on the left
    np.testing.assert_allclose(y.ravel(), np.convolve(sig, k[::-1])[:21], rtol=RTOL, atol=ATOL)


def test_float64_input_computed_in_float32(rng):
    x = rng.standard_normal((6, 7))
    y = engine.conv2d(x, np.ones((2, 2)))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[:, :, 0], signal.correlate2d(x, np.ones((2, 2)), "valid"), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("stride", [(1, 1), (3, 2)])
def test_tile_seams(rng, monkeypatch, stride):
    # A tiny tile budget forces many row tiles (and column tiles) with strides that do not
    # divide them; the result must not depend on where the seams fall.
    x = rng.standard_normal((37, 41, 2)).astype(np.float32)
    w = rng.standard_normal((4, 3, 2, 3)).astype(np.float32)
    ref = ref_conv(x, w, None, stride, (2, 1), "same", "reflect")
    for max_bytes, min_bytes in [(700, 1), (50, 1)]:
        monkeypatch.setattr(_common, "TILE_MAX_BYTES", max_bytes)
        monkeypatch.setattr(_common, "TILE_MIN_BYTES", min_bytes)
        y = engine.conv2d(x, w, stride=stride, dilation=(2, 1), padding="same", border="reflect")
        np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_tile_plan_bounds_scratch_memory():
    rows, cols = _common.tile_plan(1080, 1920, 4 * 27 + 16, 1080 * 1920 * 16)
    assert rows * cols * (4 * 27 + 16) <= 0.25 * 1080 * 1920 * 16
    assert cols == 1920 and 1 <= rows < 1080
    rows, cols = _common.tile_plan(1, 10**6, 4 * 64, 4 * 10**6)  # a long 1-D signal: split the row
    assert rows == 1 and cols * 4 * 64 <= max(0.25 * 4 * 10**6, _common.TILE_MIN_BYTES)


# ----------------------------------------------------------------------------- depthwise
def test_depthwise_channel_major_order_and_bias(rng):
    x = positions(7, 8, 3)
    k1 = rng.standard_normal((3, 3)).astype(np.float32)
    k2 = rng.standard_normal((3, 3)).astype(np.float32)
    spec = ConvSpec.from_options(padding="same", depthwise=True)
    y = engine.run_layer(x, Bank((k1, k2), (10.0, -20.0)), spec).output
    assert y.shape == (7, 8, 6)
    for c in range(3):
        for f, (k, b) in enumerate([(k1, 10.0), (k2, -20.0)]):
            ref = ndimage.correlate(x[:, :, c].astype(np.float64), k.astype(np.float64), mode="constant") + b
            np.testing.assert_allclose(y[:, :, c * 2 + f], ref, rtol=RTOL, atol=1e-3)


def test_depthwise_3d_kernel_gives_each_channel_its_slice(rng):
    x = rng.standard_normal((9, 10, 3)).astype(np.float32)
    k = rng.standard_normal((3, 2, 3)).astype(np.float32)
    y = engine.run_layer(x, Bank((k,)), ConvSpec.from_options(depthwise=True, stride=2)).output
    for c in range(3):
        np.testing.assert_allclose(y[:, :, c], ref_conv(x[:, :, c:c + 1], k[:, :, c, None, None], None, (2, 2))[:, :, 0],
                                   rtol=RTOL, atol=ATOL)


def test_depthwise_conv2d_keras_layout_and_bias(rng):
    x = rng.standard_normal((10, 9, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 2, 2)).astype(np.float32)  # (kh, kw, C, M)
    b = rng.standard_normal(4).astype(np.float32)  # Keras: C·M biases
    for border in NP_MODE:
        y = engine.depthwise_conv2d(x, w, b, padding="same", dilation=2, border=border)
        for c in range(2):
            for m in range(2):
                ref = ref_conv(x[:, :, c:c + 1], w[:, :, c:c + 1, m:m + 1], None, (1, 1), (2, 2), "same", border)
                np.testing.assert_allclose(y[:, :, c * 2 + m], ref[:, :, 0] + b[c * 2 + m], rtol=RTOL, atol=ATOL)


def test_depthwise_conv2d_shared_kernels(rng):
    x = rng.standard_normal((8, 8, 3)).astype(np.float32)
    w = rng.standard_normal((2, 3, 1, 2)).astype(np.float32)
    y = engine.depthwise_conv2d(x, w, [1.0, 2.0], stride=(1, 2))
    full = engine.depthwise_conv2d(x, np.repeat(w, 3, axis=2), np.tile([1.0, 2.0], 3), stride=(1, 2))
    assert y.shape == (7, 3, 6)
    np.testing.assert_array_equal(y, full)


# ----------------------------------------------------------------------------- bias, activations, pool
ACTS = {
    "none": lambda v: v,
    "relu": lambda v: np.maximum(v, 0),
    "leaky-relu": lambda v: np.where(v >= 0, v, 0.3 * v),
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "tanh": np.tanh,
    "abs": np.abs,
}


@pytest.mark.parametrize("name", list(ACTS))
def test_activations(rng, name):
    x = rng.standard_normal((9, 8, 2)).astype(np.float32) * 3
    w = rng.standard_normal((3, 3, 2, 2)).astype(np.float32)
    bank = Bank(tuple(w[:, :, :, f] for f in range(2)), (0.25, -0.5))
    y = engine.run_layer(x, bank, ConvSpec.from_options(activation=name, padding="same")).output
    ref = ACTS[name](ref_conv(x, w, [0.25, -0.5], padding="same"))
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_leaky_relu_slope_and_sigmoid_extremes():
    v = np.array([-1000.0, -2.0, 0.0, 3.0, 1000.0], np.float32)
    np.testing.assert_allclose(engine.activate(v, "leaky-relu", 0.1), [-100.0, -0.2, 0.0, 3.0, 1000.0])
    with np.errstate(all="raise"):
        s = engine.activate(v, "sigmoid")
    np.testing.assert_allclose(s, special.expit(v.astype(np.float64)), atol=1e-7)
    assert engine.activate(v, None) is not v  # not in place unless asked


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("hw,size,stride", [((7, 9), (2, 2), None), ((8, 6), (3, 3), (2, 2)),
                                           ((9, 10), (2, 3), (3, 1)), ((5, 5), (3, 2), (1, 2))])
def test_pool_matches_keras_loop(rng, mode, padding, hw, size, stride):
    x = rng.standard_normal(hw + (2,)).astype(np.float32) - 3  # negative: padding must not win a max
    y = engine.pool2d(x, PoolSpec.from_options(mode=mode, size=size, stride=stride, padding=padding))
    ref = ref_pool(x, mode, size, stride or size, padding)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_layer_order_pad_conv_bias_act_pool(rng):
    x = rng.standard_normal((11, 12, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    y = engine.apply_layer(x, w, padding="same", stride=1, activation="relu", pool="avg", pool_size=2,
                           pool_padding="same")
    # apply_layer on a bare HWIO array has no bias; build the reference explicitly
    ref = ref_pool(np.maximum(ref_conv(x, w, None, padding="same"), 0), "avg", (2, 2), (2, 2), "same")
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
    r = engine.run_layer(x, Bank(tuple(w[:, :, :, f] for f in range(2)), (1.0, -1.0)),
                         ConvSpec.from_options(activation="tanh"), PoolSpec.from_options(mode="max", size=3))
    ref = ref_pool(np.tanh(ref_conv(x, w, [1.0, -1.0])), "max", (3, 3), (3, 3), "valid")
    np.testing.assert_allclose(r.output, ref, rtol=RTOL, atol=ATOL)
    assert r.algorithm in engine.ALGORITHMS[1:]


# ----------------------------------------------------------------------------- errors
def test_errors_each_raise():
    x = np.zeros((5, 6, 3), np.float32)
    with pytest.raises(OptionError, match=r"algorithm: 'gemm' is not one of auto, direct, separable, fft"):
        engine.conv2d(x, np.ones((3, 3)), algorithm="gemm")
    with pytest.raises(GeometryError, match=r"kernel extent 7×7 .* larger than the padded input 5×6"):
        engine.conv2d(x, np.ones((7, 7)))
    with pytest.raises(GeometryError, match=r"kernels are 3×3×2 but the input has 3 channels"):
        engine.conv2d(x, np.ones((3, 3, 2, 1)))
    with pytest.raises(GeometryError, match=r"depthwise kernels of depth 2 do not match the input's 3"):
        engine.depthwise_conv2d(x, np.ones((3, 3, 2, 1)))
    with pytest.raises(GeometryError, match=r"padding 'causal' is for 1-D signals .* 5×6"):
        engine.conv2d(x, np.ones((3, 3)), padding="causal")
    with pytest.raises(GeometryError, match=r"pool 4×4 is larger than its input 3×4"):
        engine.apply_layer(x, np.ones((3, 3, 3, 1)), pool="max", pool_size=4)
    with pytest.raises(KernelError, match=r"weights: the kernel holds 1 NaN/Inf value"):
        engine.conv2d(x, np.array([[1.0, np.nan]]))
    with pytest.raises(KernelError, match=r"weights: the kernel is empty, shape \(0, 3\)"):
        engine.conv2d(x, np.zeros((0, 3)))
    with pytest.raises(KernelError, match=r"weights: expected numbers, got dtype <U1"):
        engine.conv2d(x, np.array([["a"]]))
    with pytest.raises(KernelError, match=r"weights: expected kh×kw, kh×kw×C or kh×kw×C×F .* \(1, 1, 1, 1, 1\)"):
        engine.conv2d(x, np.ones((1, 1, 1, 1, 1)))
    with pytest.raises(KernelError, match=r"weights: expected kh×kw×C×M depthwise weights, got shape"):
        engine.depthwise_conv2d(x, np.ones((1, 1, 1, 1, 1)))
    with pytest.raises(KernelError, match=r"bias: 2 values for 3 output maps"):
        engine.conv2d(x, np.ones((3, 3, 3, 3)), bias=[1, 2])
    with pytest.raises(KernelError, match=r"bias: holds NaN/Inf"):
        engine.conv2d(x, np.ones((3, 3)), bias=np.inf)
    with pytest.raises(InputError, match=r"input: expected an H×W×C, H×W or 1-D array, got 4 dimensions"):
        engine.conv2d(np.zeros((1, 2, 3, 4)), np.ones((1, 1)))
    with pytest.raises(InputError, match=r"input: the array is empty, shape \(0, 4, 1\)"):
        engine.conv2d(np.zeros((0, 4)), np.ones((1, 1)))
    with pytest.raises(InputError, match=r"input: expected a numeric array, got dtype <U1"):
        engine.conv2d(np.array([["a"]]), np.ones((1, 1)))
    with pytest.raises(OptionError, match=r"threads: must be a whole number of at least 1, got 0"):
        engine.set_threads(0)
    with pytest.raises(OptionError, match=r"activation: 'gelu' is not one of"):
        engine.activate(x, "gelu")


def test_array_bank_depth_check():
    bank = engine.WeightsBank(np.ones((3, 3, 2, 1)))
    with pytest.raises(KernelError, match=r"weights: depth 2 does not match 3 channels"):
        bank.weights_hwio(3)


def test_set_threads_roundtrip():
    before = engine.get_threads()
    try:
        engine.set_threads(1)
        assert engine.get_threads() == 1
    finally:
        engine.set_threads(before)


def test_run_ranges_runs_the_first_range_on_the_calling_thread_and_waits_for_the_others():
    import threading
    import time

    from convcli.engine import _threads

    ran, nested = {}, []

    def fn(r0, r1):
        if r0 == 0:
            _threads.run_ranges(lambda a, b: nested.append((a, threading.current_thread().name)), [(7, 8), (8, 9)])
        else:
            time.sleep(0.05)  # the caller's own range ends first; the call still waits
        ran[(r0, r1)] = threading.current_thread().name

    _threads.run_ranges(fn, [(0, 1), (1, 2), (2, 3)])
    assert ran[(0, 1)] == threading.current_thread().name
    assert {ran[(1, 2)], ran[(2, 3)]} <= {f"convcli-engine_{i}" for i in range(2)}
    # a range that asks for threads again runs its parts inline, on its own thread
    assert nested == [(7, threading.current_thread().name), (8, threading.current_thread().name)]

    finished = []

    def failing(r0, r1):
        if r0 == 0:
            raise ValueError("range 0")
        time.sleep(0.05)
        finished.append(r0)

    with pytest.raises(ValueError, match="range 0"):
        _threads.run_ranges(failing, [(0, 1), (1, 2)])
    assert finished == [1]  # the pool's range was finished before the error was raised


def test_kernel_decompositions_are_kept_and_given_back_unchanged():
    from convcli.engine import ccore, choose, separable

    w = np.random.default_rng(3).standard_normal((5, 5, 1, 1)).astype(np.float32)
    sep = np.outer(np.arange(1, 6), np.arange(2, 7)).astype(np.float32).reshape(5, 5, 1, 1)
    calls = []
    original = separable.max_rank_of
    try:
        separable.max_rank_of = lambda w: calls.append(1) or original(w)
        separable._MEMO.clear()
        assert choose.rank_of(w) == choose.rank_of(w.copy()) > 1 and len(calls) == 1  # same bytes: kept
        assert choose.rank_of(sep) == 1 and len(calls) == 2
    finally:
        separable.max_rank_of = original
    u, v = ccore.separable_factors(sep, False, 1)
    assert ccore.separable_factors(sep.copy(), False, 1)[0] is u
    np.testing.assert_allclose(np.outer(u[:, 0], v[:, 0]), sep[:, :, 0, 0], rtol=1e-5)
    with pytest.raises(ValueError):
        u[0, 0] = 1  # kept results are read-only
    assert ccore.separable_factors(w, False, 1) is None


@pytest.mark.parametrize("channels", [2, 3, 4, 7])
def test_channel_sum_matches_numpy_sum_exactly(channels):
    # The 2-D-kernel rewrite sums the channels plane by plane; for C < 8 numpy's own sum
    # adds in the same order, so the results are bit-identical.
    from convcli.engine import _channel_sum

    x = np.random.default_rng(channels).standard_normal((37, 41, channels)).astype(np.float32) * 1e3
    np.testing.assert_array_equal(_channel_sum(x), x.sum(axis=2, keepdims=True, dtype=np.float32))


def test_scratch_is_released_after_a_layer():
    # The direct path reuses per-thread scratch across tiles; none of it outlives the call.
    x = np.random.default_rng(5).standard_normal((64, 80, 3)).astype(np.float32)
    engine.conv2d(x, np.ones((3, 3, 3, 4), np.float32), padding="same", algorithm="direct")
    assert all(not bufs._flat for bufs in _common._all_buffers)
    assert _common._all_buffers  # the path did use them


@pytest.mark.parametrize("pooled", [False, True])
def test_run_layer_writes_into_a_reusable_array(pooled):
    from convcli.layer import ConvSpec, PoolSpec

    x = np.random.default_rng(6).standard_normal((30, 41, 2)).astype(np.float32)
    bank = engine.WeightsBank(np.random.default_rng(7).standard_normal((3, 3, 2, 5)).astype(np.float32), 0.5)
    spec = ConvSpec.from_options(padding="same", activation="relu")
    pool = PoolSpec.from_options(mode="max", size=2) if pooled else None
    fresh = engine.run_layer(x, bank, spec, pool).output
    spare = np.full(fresh.shape, np.nan, np.float32)
    again = engine.run_layer(x, bank, spec, pool, reuse=spare).output
    assert again is spare
    np.testing.assert_array_equal(again, fresh)
    wrong = np.zeros((fresh.shape[0] + 1,) + fresh.shape[1:], np.float32)
    other = engine.run_layer(x, bank, spec, pool, reuse=wrong).output
    assert other is not wrong and not wrong.any()
    np.testing.assert_array_equal(other, fresh)


@pytest.mark.parametrize("dtype, channels", [(np.uint8, 3), (np.uint8, 4), (np.uint16, 3), (np.uint16, 300)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_integer_pixels_give_the_float_results_exactly(dtype, channels, padding):
    # A 2-D kernel on integer pixels: the channels are summed as integers (uint16 with 300
    # channels could pass 2**24 and is summed in float32); both give identical maps.
    rng = np.random.default_rng(channels)
    x = rng.integers(0, np.iinfo(dtype).max + 1, (23, 30, channels)).astype(dtype)
    bank = engine.WeightsBank(rng.standard_normal((3, 3)).astype(np.float32), 0.25)
    spec = ConvSpec.from_options(padding=padding)
    from_integers = engine.run_layer(x, bank, spec).output
    np.testing.assert_array_equal(from_integers, engine.run_layer(x.astype(np.float32), bank, spec).output)
    summed = engine._channel_sum(x)
    assert summed.dtype == np.float32 and summed.shape == (23, 30, 1)
    if channels < 8:  # numpy's own sum adds in the same order below 8 channels
        np.testing.assert_array_equal(summed, x.astype(np.float32).sum(axis=2, keepdims=True))
