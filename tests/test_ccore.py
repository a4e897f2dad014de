"""The compiled core (convcli/engine/_ccore.c) against a float64 reference, its bands and threads, its fallback.

The reference here sums every kernel tap's shifted slice of the padded input in float64
(np.pad gives the border, the padding comes from SPEC §1 via test_engine.ref_pads), then
adds the bias, applies the activation and pools with test_engine's loop reference.
"""

from __future__ import annotations

import math
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from convcli import engine
from convcli.cli import cli
from convcli.engine import _threads, ccore, choose, direct
from convcli.errors import GeometryError
from convcli.layer import Border, ConvSpec, PoolSpec

from test_engine import NP_MODE, ref_pads, ref_pool

REPO = Path(__file__).resolve().parent.parent
built = pytest.mark.skipif(not ccore.active(), reason="the compiled core is not built here, or is switched off (CONVCLI_DISABLE_CCORE)")
ACTIVATIONS = {
    "none": lambda v: v,
    "relu": lambda v: np.maximum(v, 0),
    "leaky-relu": lambda v: np.where(v >= 0, v, 0.2 * v),
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "tanh": np.tanh,
    "abs": np.abs,
}


def ref_layer(x, w, bias, *, kind, stride, dilation, padding, border, flip, activation, pool):
    """float64: pad → every tap's slice times its weights → + bias → activation → pool."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    h, wd, c = x.shape
    if kind == "2d":  # one 2-D kernel on every channel, summed (SPEC §1)
        w = np.repeat(w[:, :, None, :], c, axis=2)
    if flip:
        w = w[::-1, ::-1]
    kh, kw = w.shape[:2]
    t, b, l, r = ref_pads(h, wd, kh, kw, stride, dilation, padding)
    xp = np.pad(x, ((t, b), (l, r), (0, 0)), mode=NP_MODE[border])
    (sh, sw), (dh, dw) = stride, dilation
    oh = (xp.shape[0] - ((kh - 1) * dh + 1)) // sh + 1
    ow = (xp.shape[1] - ((kw - 1) * dw + 1)) // sw + 1
    n_maps = c * w.shape[3] if kind == "depthwise" else w.shape[3]
    out = np.zeros((oh, ow, n_maps))
    for i in range(kh):
        for j in range(kw):
            tap = xp[i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw]
            if kind == "depthwise":  # map c·M + m: channel c through kernel m
                per = np.broadcast_to(w[i, j], (c, w.shape[3]))
                out += (tap[:, :, :, None] * per).reshape(oh, ow, -1)
            else:
                out += tap @ w[i, j]
    out += np.asarray(bias, np.float64)
    out = ACTIVATIONS[activation](out)
    if pool is not None:
        mode, size, pstride, ppad = pool
        out = ref_pool(out, mode, (size, size), (pstride, pstride), ppad)
    return out


@st.composite
def layers(draw):
    kind = draw(st.sampled_from(["dense", "depthwise", "2d"]))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    c = draw(st.integers(1, 5))
    f = draw(st.integers(1, 20 if kind != "depthwise" else 6))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["valid", "same", "full", "causal", (1, 0, 2, 1)]))
    border = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    pool = draw(st.sampled_from([None, None, ("max", 2, 2, "valid"), ("avg", 2, 2, "valid"),
                                 ("max", 3, 3, "valid"), ("avg", 3, 2, "same"), ("max", 2, 1, "valid")]))
    shared = draw(st.booleans())  # depthwise: one set of kernels for every channel
    return dict(kind=kind, hwc=(h, w, c), f=f, k=(kh, kw), stride=stride, dilation=dilation, padding=padding,
                border=border, flip=draw(st.booleans()), activation=draw(st.sampled_from(sorted(ACTIVATIONS))),
                pool=pool, shared=shared, seed=draw(st.integers(0, 2**32 - 1)))


def _kernels(rng, shape, rank1):
    """Random kernels of ``shape`` (kh, kw, ...); with ``rank1`` each 2-D slice is an outer product."""
    if not rank1:
        return rng.standard_normal(shape).astype(np.float32)
    rest = tuple(shape[2:])
    return (rng.standard_normal((shape[0], 1) + rest) * rng.standard_normal((1, shape[1]) + rest)).astype(np.float32)


def run_case(case, rank1=False):
    """(engine result, float64 reference) of one drawn layer; skips layers the geometry refuses."""
    rng = np.random.default_rng(case["seed"])
    h, w, c = case["hwc"]
    kh, kw = case["k"]
    x = rng.standard_normal((h, w, c)).astype(np.float32)
    kind, f = case["kind"], case["f"]
    if kind == "2d":  # F 2-D kernels: a bank whose weights_hwio repeats each kernel over the channels
        weights = _kernels(rng, (kh, kw, f), rank1)
        bank = _Bank2D(weights, rng.standard_normal(f).astype(np.float32))
        ref_w, bias = weights, bank.biases()
    elif kind == "depthwise":
        cw = 1 if case["shared"] else c
        ref_w = _kernels(rng, (kh, kw, cw, f), rank1)
        bias = rng.standard_normal(f).astype(np.float32)
        bank = engine.WeightsBank(ref_w, bias)
    else:
        ref_w = _kernels(rng, (kh, kw, c, f), rank1)
        bias = rng.standard_normal(f).astype(np.float32)
        bank = engine.WeightsBank(ref_w, bias)
    spec = ConvSpec.from_options(stride=case["stride"], dilation=case["dilation"], padding=case["padding"],
                                 border=case["border"], flip=case["flip"], depthwise=kind == "depthwise",
                                 activation=case["activation"], negative_slope=0.2)
    pool = case["pool"]
    pspec = None if pool is None else PoolSpec.from_options(mode=pool[0], size=pool[1], stride=pool[2],
                                                            padding=pool[3])
    try:
        result = engine.run_layer(x, bank, spec, pspec)
    except GeometryError:
        assume(False)
    ref_bias = np.tile(bias, c) if kind == "depthwise" else bias
    ref = ref_layer(x, ref_w, ref_bias, kind=kind, stride=case["stride"], dilation=case["dilation"],
                    padding=case["padding"], border=case["border"], flip=case["flip"],
                    activation=case["activation"], pool=pool)
    return result, ref


class _Bank2D:
    """F 2-D kernels (kh, kw, F) used on every channel and summed: the bank of SPEC §1's 2-D kernels."""

    def __init__(self, weights, bias):
        self._w, self._b = weights, bias
        self.size, self.depth, self.filters = weights.shape[:2], None, weights.shape[2]

    def weights_hwio(self, channels):
        return np.ascontiguousarray(np.broadcast_to(self._w[:, :, None, :], self.size + (channels, self.filters)))

    def biases(self):
        return self._b


@pytest.fixture
def ccore_always(monkeypatch):
    """Auto mode takes the compiled core for every layer (tiny ones included)."""
    original = choose.choose
    monkeypatch.setattr(choose, "choose", lambda layer, *, opencv_ok, ccore_ok=False:
                        "ccore" if ccore_ok else original(layer, opencv_ok=opencv_ok))


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@built
@SETTINGS
@given(case=layers())
def test_ccore_matches_float64_reference(ccore_always, case):
    result, ref = run_case(case)
    assert result.backend == "ccore" and result.algorithm == "direct"
    assert result.output.shape == ref.shape and result.output.dtype == np.float32
    np.testing.assert_allclose(result.output, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


@built
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=layers())
def test_ccore_fallback_kernels_match_float64_reference(ccore_always, monkeypatch, case):
    # With no room for expanded rows, few-map layers take the broadcast kernel and depthwise
    # layers the gather kernel (large images pick them this way).
    monkeypatch.setattr(ccore, "RING_MAX_BYTES", 0)
    result, ref = run_case(case)
    assert result.backend == "ccore"
    np.testing.assert_allclose(result.output, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


@built
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=layers(), width=st.integers(145, 520), fallback=st.booleans(),
       pool=st.sampled_from([("max", 2, 2, "valid"), ("avg", 2, 2, "valid"), ("max", 3, 3, "valid"),
                             ("avg", 3, 3, "valid")]))
def test_pooled_rows_wider_than_a_column_tile_match_the_reference(ccore_always, monkeypatch, case, width, fallback,
                                                                  pool):
    # Pooled layers are computed in tiles of 144 conv columns (broadcast and gather kernels):
    # rows of several tiles, every border and stride, fused max and average pooling.
    if fallback:
        monkeypatch.setattr(ccore, "RING_MAX_BYTES", 0)
    case = dict(case, hwc=(min(case["hwc"][0], 9), width, case["hwc"][2]), pool=pool)
    result, ref = run_case(case)
    assert result.backend == "ccore"
    np.testing.assert_allclose(result.output, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


@built
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("layer", [
    ((7, 700, 3), (5, 5, 3, 16), False, (2, 2), (1, 1), (1, 2, 1, 2), "zeros"),  # W4's kind: broadcast
    ((7, 611, 3), (3, 3, 3, 20), False, (1, 1), (1, 2), (1, 1, 9, 1), "reflect"),  # first tile past column 9
    ((8, 500, 2), (3, 4, 1, 3), True, (1, 1), (1, 1), (1, 1, 1, 2), "replicate"),  # depthwise: gather
])
def test_fused_max_pooling_keeps_the_bits_of_the_conv_maps(monkeypatch, layer, stream):
    # Max pooling picks values: the fused result equals numpy's max over the unpooled maps of
    # the same kernel, bit for bit, with the pooled rows written through the cache or past it.
    monkeypatch.setattr(ccore, "RING_MAX_BYTES", 0)  # the broadcast and gather kernels
    monkeypatch.setattr(ccore, "STREAM_BYTES", 0 if stream else 1 << 62)
    rng = np.random.default_rng(5)
    x, w, kwargs = _band_args(*layer, rng)
    epilogue = engine._common.Epilogue(rng.standard_normal(w.shape[3] * (x.shape[2] if layer[2] else 1))
                                       .astype(np.float32), "relu", 0.0)
    maps = ccore.correlate(x, w, epilogue=epilogue, **kwargs)
    for size in (2, 3):
        pspec = PoolSpec.from_options(mode="max", size=size, stride=None, padding="valid")
        pooled = ccore.correlate_pooled(x, w, pspec, epilogue=epilogue, **kwargs)
        oh, ow = maps.shape[0] // size * size, maps.shape[1] // size * size
        windows = maps[:oh, :ow].reshape(oh // size, size, ow // size, size, -1)
        np.testing.assert_array_equal(pooled, windows.max(axis=(1, 3)))


def _fold_2x2(maps, mode):
    """2×2 windows (valid, stride 2) folded in the loop's order: top row left to right, then the bottom row."""
    oh, ow = maps.shape[0] // 2 * 2, maps.shape[1] // 2 * 2
    v = [maps[dy:oh:2, dx:ow:2] for dy in (0, 1) for dx in (0, 1)]
    a = v[0].copy()
    for e in v[1:]:
        if mode == "max":
            a = np.where(e > a, e, a)  # the loop's v > a ? v : a (NaN and -0 included)
        else:
            a = a + e
    return a if mode == "max" else a / np.float32(4)


@built
@pytest.mark.parametrize("activation", ["none", "relu", "abs", "leaky-relu"])
@pytest.mark.parametrize("layer", [
    ((9, 700, 3), (5, 5, 3, 16), (2, 2), (2, 2, 1, 2)),  # W4's kind: a pixel steps 6 values
    ((8, 301, 3), (3, 3, 3, 20), (1, 1), (1, 1, 1, 1)),  # steps 3; two map blocks, the second of 4
    ((7, 150, 4), (3, 5, 4, 5), (2, 2), (0, 1, 2, 2)),  # steps 8; 5 maps
    ((9, 97, 5), (3, 3, 5, 16), (1, 3), (1, 1, 1, 1)),  # any other step
])
def test_2x2_pooling_in_registers_gives_the_bits_and_overflow_flag_of_the_unpooled_maps(monkeypatch, layer,
                                                                                      activation):
    # With AVX-512, a 2×2 pool over the broadcast kernel's interior columns is folded in the
    # registers (the conv rows never reach memory): the bits of the unfused maps folded in the
    # same order, for max and average pooling, whatever the tile, map block and last block;
    # border rows (zero padding) and an Inf hidden by the max still flag the overflow.
    from convcli.engine._common import Epilogue

    monkeypatch.setattr(ccore, "RING_MAX_BYTES", 0)  # the broadcast kernel
    hwc, w_shape, stride, pads = layer
    rng = np.random.default_rng(11)
    x, w, kwargs = _band_args(hwc, w_shape, False, stride, (1, 1), pads, "zeros", rng)
    epilogue = Epilogue(rng.standard_normal(w_shape[3]).astype(np.float32), activation, 0.2)
    for overflow in (False, True):
        if overflow:
            x[3, hwc[1] // 2:hwc[1] // 2 + 40] = 3e38
            x[5, 20:60] = -3e38
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            maps = ccore.correlate(x, w, epilogue=epilogue, **kwargs)
        unpooled_flag = any("Inf or NaN" in str(s.message) for s in seen)
        assert unpooled_flag == (not np.isfinite(maps).all()) == overflow
        for mode in ("max", "avg"):
            pspec = PoolSpec.from_options(mode=mode, size=2, stride=None, padding="valid")
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                pooled = ccore.correlate_pooled(x, w, pspec, epilogue=epilogue, **kwargs)
            np.testing.assert_array_equal(pooled.view(np.uint32), _fold_2x2(maps, mode).view(np.uint32))
            assert any("Inf or NaN" in str(s.message) for s in seen) == unpooled_flag, mode


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=layers())
def test_without_the_extension_the_numpy_paths_match_the_reference(monkeypatch, case):
    monkeypatch.setenv(ccore.DISABLE_ENV, "1")
    result, ref = run_case(case)
    assert result.backend != "ccore"
    np.testing.assert_allclose(result.output, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


@pytest.fixture
def ccore_separable_always(monkeypatch):
    """Auto mode takes the compiled separable loop for every rank-1 layer it can serve."""
    original = choose.choose

    def forced(layer, *, opencv_ok, ccore_ok=False):
        if ccore_ok and layer.rank <= 1 and ccore.separable_ok(layer.in_hwc, layer.w_shape, layer.depthwise):
            return "ccore-separable"
        return original(layer, opencv_ok=opencv_ok, ccore_ok=ccore_ok)

    monkeypatch.setattr(choose, "choose", forced)


@built
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=layers().filter(lambda c: c["kind"] != "dense" or c["hwc"][2] == 1))
def test_ccore_separable_matches_float64_reference(ccore_separable_always, case):
    # Rank-1 kernels (depthwise, or 2-D kernels summed over the channels): the two 1-D passes.
    result, ref = run_case(case, rank1=True)
    assert (result.backend, result.algorithm) == ("ccore", "separable")
    assert result.output.shape == ref.shape and result.output.dtype == np.float32
    np.testing.assert_allclose(result.output, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))


def test_the_chooser_never_sends_other_layers_to_the_separable_loop():
    assert choose.cost_ccore_separable(_layer((50, 60, 3), (3, 3, 3, 4), rank=1)) == float("inf")  # 3 channels summed
    assert choose.cost_ccore_separable(_layer((50, 60, 3), (3, 3, 1, 1), depthwise=True, rank=2)) == float("inf")
    assert choose.cost_ccore_separable(_layer((50, 60, 1), (65, 3, 1, 1), rank=1)) == float("inf")  # > 64 rows
    assert choose.cost_ccore_separable(_layer((50, 60, 1), (5, 3, 1, 2), rank=1)) < float("inf")


# ----------------------------------------------------------------------------- bands and threads
BAND_LAYERS = [  # (input, weights, depthwise, stride, dilation, pads, border, pool)
    ((37, 45, 3), (3, 3, 3, 4), False, (1, 1), (1, 1), (1, 1, 1, 1), "zeros", None),  # expand, 4 maps
    ((37, 45, 3), (3, 3, 3, 20), False, (2, 1), (1, 2), (1, 2, 3, 1), "reflect", None),  # broadcast, 20 maps
    ((37, 45, 3), (5, 5, 3, 16), False, (2, 2), (1, 1), (1, 2, 1, 2), "zeros", ("max", 2)),  # W4's kind
    ((37, 45, 3), (3, 3, 1, 1), True, (1, 1), (1, 1), (1, 1, 1, 1), "replicate", None),  # Sobel-like
    ((37, 45, 5), (3, 2, 5, 4), True, (1, 3), (2, 1), (2, 0, 1, 1), "circular", ("avg", 2)),  # 20 maps
    ((37, 45, 1), (7, 7, 1, 1), False, (1, 1), (1, 1), (3, 3, 3, 3), "zeros", None),  # gray, 1 map
    ((9, 700, 3), (3, 3, 3, 3), False, (1, 1), (1, 1), (1, 1, 1, 1), "reflect", None),  # several column tiles
    ((9, 700, 3), (3, 3, 1, 1), True, (1, 2), (1, 1), (1, 1, 2, 2), "zeros", None),
]


def _band_args(shape, w_shape, depthwise, stride, dilation, pads, border, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    h, wd = shape[:2]
    kh, kw = w_shape[:2]
    oh = (h + pads[0] + pads[1] - ((kh - 1) * dilation[0] + 1)) // stride[0] + 1
    ow = (wd + pads[2] + pads[3] - ((kw - 1) * dilation[1] + 1)) // stride[1] + 1
    return x, w, dict(pads=pads, stride=stride, dilation=dilation, border=Border(border), out_hw=(oh, ow),
                      depthwise=depthwise)


@built
@pytest.mark.parametrize("layer", BAND_LAYERS)
def test_a_bands_bits_do_not_depend_on_the_bands(layer):
    # Any cut of the output rows into bands gives the bits of the whole, on every kernel.
    rng = np.random.default_rng(7)
    *geom, pool = layer
    x, w, kwargs = _band_args(*geom, rng)
    whole = ccore.correlate(x, w, **kwargs)
    oh = kwargs["out_hw"][0]
    for cuts in ([1], [5, 6, 20], list(range(1, oh))):
        bounds = [0, *[c for c in cuts if c < oh], oh]
        parts = [ccore.correlate(x, w, rows=(a, b), **kwargs) for a, b in zip(bounds, bounds[1:])]
        np.testing.assert_array_equal(np.concatenate(parts), whole)


SEP_LAYERS = [  # (input, weights, depthwise, stride, dilation, pads, border)
    ((37, 45, 3), (3, 3, 1, 1), True, (1, 1), (1, 1), (1, 1, 1, 1), "zeros"),  # W5's kind
    ((37, 45, 3), (7, 5, 3, 2), True, (2, 1), (1, 2), (3, 2, 4, 1), "reflect"),  # 6 maps, a slice each
    ((37, 45, 1), (5, 5, 1, 4), False, (1, 3), (2, 1), (0, 4, 2, 2), "circular"),  # gray, 4 maps, strided
    ((9, 700, 3), (3, 9, 1, 1), True, (1, 1), (1, 1), (1, 1, 4, 4), "replicate"),  # several column tiles
]


def _sep_args(layer, seed):
    rng = np.random.default_rng(seed)
    x, w, kwargs = _band_args(*layer, rng)
    w = _kernels(rng, w.shape, True)
    n_maps = w.shape[3] * (x.shape[2] if kwargs["depthwise"] else 1)
    epilogue = engine._common.Epilogue(rng.standard_normal(n_maps).astype(np.float32), "leaky-relu", 0.1)
    return x, w, dict(kwargs, epilogue=epilogue)


@built
@pytest.mark.parametrize("layer", SEP_LAYERS)
def test_the_separable_loops_bits_do_not_depend_on_bands_tiles_or_threads(monkeypatch, layer):
    x, w, kwargs = _sep_args(layer, 13)
    whole = ccore.correlate_separable(x, w, **kwargs)
    ref = direct.correlate(x, w, **{k: v for k, v in kwargs.items() if k != "epilogue"})
    kwargs["epilogue"](ref)
    np.testing.assert_allclose(whole, ref, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(ref).max()))
    oh = kwargs["out_hw"][0]
    for cuts in ([1], [5, 6, 20], list(range(1, oh))):
        bounds = [0, *[c for c in cuts if c < oh], oh]
        parts = [ccore.correlate_separable(x, w, rows=(a, b), **kwargs) for a, b in zip(bounds, bounds[1:])]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    # One 16-pixel group per column tile, and non-temporal stores: the same bits.
    monkeypatch.setenv("CONVCLI_SEP_TILE", "1")
    monkeypatch.setenv("CONVCLI_SEP_STREAM", "1")
    np.testing.assert_array_equal(ccore.correlate_separable(x, w, **kwargs), whole)
    monkeypatch.delenv("CONVCLI_SEP_TILE")
    monkeypatch.delenv("CONVCLI_SEP_STREAM")
    monkeypatch.setattr(ccore, "MIN_MACS_PER_THREAD", 1)
    monkeypatch.setattr(_threads, "CPUS", 3)
    before = engine.get_threads()
    try:
        for n in (2, 3):
            engine.set_threads(n)
            np.testing.assert_array_equal(ccore.correlate_separable(x, w, **kwargs), whole, err_msg=f"{n} threads")
    finally:
        engine.set_threads(before)


def _separable_run(x, w, kwargs, out=None):
    """(output, whether the overflow warning was raised) of the separable loop."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = ccore.correlate_separable(x, w, out=out, **kwargs)
    return result, any("overflow" in str(c.message) for c in caught)


@built
@pytest.mark.parametrize("activation", ["none", "relu", "abs"])
@pytest.mark.parametrize("layer", SEP_LAYERS)
def test_the_separable_loops_finish_in_registers_gives_the_bits_and_overflow_flag_of_its_passes(
        monkeypatch, layer, activation):
    # Without an activation, with ReLU or abs, each vector is finished in registers and stored
    # once (non-temporally to an aligned output); CONVCLI_SEP_FUSE=0 finishes rows in passes.
    rng = np.random.default_rng(31)
    x, w, kwargs = _band_args(*layer, rng)
    w = _kernels(rng, w.shape, True)
    n_maps = w.shape[3] * (x.shape[2] if kwargs["depthwise"] else 1)
    kwargs["epilogue"] = engine._common.Epilogue(rng.standard_normal(n_maps).astype(np.float32), activation, 0.0)
    bad = x.copy()
    bad[x.shape[0] // 2, 1, 0] = np.inf  # +Inf and -Inf among the maps: ReLU clears one of them
    bad[1, x.shape[1] // 2, -1] = np.nan  # NaN: ReLU makes it 0, abs and none keep it
    size = math.prod(ccore.correlate_separable(x, w, **kwargs).shape)
    for stream in ("0", "1"):
        monkeypatch.setenv("CONVCLI_SEP_STREAM", stream)
        for image in (x, bad):
            runs = {}
            for fuse in ("1", "0"):
                monkeypatch.setenv("CONVCLI_SEP_FUSE", fuse)
                aligned = _separable_run(image, w, kwargs)
                shape = aligned[0].shape
                # rows that do not start on a 64-byte line: the finished rows are copied out
                unaligned = _separable_run(image, w, kwargs, out=np.empty(size + 1, np.float32)[1:].reshape(shape))
                runs[fuse] = (aligned, unaligned)
            for (fused, flag), (passes, flag_passes) in zip(runs["1"], runs["0"]):
                np.testing.assert_array_equal(fused, passes, err_msg=f"stream {stream}")
                assert flag == flag_passes == (not np.isfinite(passes).all())
            if image is bad and activation != "relu":
                assert runs["1"][0][1], "the NaN reaches the output"
    assert ccore.correlate_separable(x, w, **kwargs).ctypes.data % 64 == 0  # the engine's outputs are aligned


@built
def test_the_separable_loop_refuses_what_it_cannot_compute():
    x = np.ones((6, 7, 3), np.float32)
    kwargs = dict(pads=(1, 1, 1, 1), stride=(1, 1), dilation=(1, 1), border=Border.ZEROS, out_hw=(6, 7))
    with pytest.raises(ValueError, match="one channel per map"):
        ccore.correlate_separable(x, np.ones((3, 3, 3, 2), np.float32), **kwargs)
    with pytest.raises(ValueError, match="rank above 1"):
        ccore.correlate_separable(x, np.eye(3, dtype=np.float32)[:, :, None, None], depthwise=True, **kwargs)
    from convcli.engine import _ccore

    u = np.ones((3, 48), np.float32)
    out = np.empty((6, 7, 3), np.float32)
    rows = np.array([-1, 0, 1, 2, 3, 4, 5, -1], np.int32)  # zero padding of 1
    cols = np.array([-1, 0, 1, 2, 3, 4, 5, 6, -1], np.int32)
    geom = (6, 7, 3, 3, 3, 1, 1, 1, 1, 7, 3, 1, 1)
    with pytest.raises(ValueError, match="bad geometry"):
        _ccore.sep_rows(x, u, u, u[0], out, rows, cols, geom[:10] + (4,) + geom[11:], 0, 0.0, 0, 6)
    with pytest.raises(ValueError, match="rowmap/colmap index outside the input"):
        _ccore.sep_rows(x, u, u, u[0], out, rows, cols + 1, geom, 0, 0.0, 0, 6)
    with pytest.raises(ValueError, match="u: expected at least 144 4-byte items"):
        _ccore.sep_rows(x, u[:2], u, u[0], out, rows, cols, geom, 0, 0.0, 0, 6)
    assert _ccore.sep_rows(x, u, u, u[0] / 2, out, rows, cols, geom, 0, 0.0, 0, 6) is False
    np.testing.assert_array_equal(out[1:-1, 1:-1], 9.5)  # all-ones 3x3 inside the image, bias 0.5
    np.testing.assert_array_equal(out[0, 1:-1], 6.5)  # the zero row above


@built
@pytest.mark.parametrize("layer", BAND_LAYERS)
def test_threads_do_not_change_any_bit(monkeypatch, layer):
    monkeypatch.setattr(ccore, "MIN_MACS_PER_THREAD", 1)  # split even these small layers
    monkeypatch.setattr(_threads, "CPUS", 3)
    rng = np.random.default_rng(11)
    *geom, pool = layer
    x, w, kwargs = _band_args(*geom, rng)
    pspec = None if pool is None else PoolSpec.from_options(mode=pool[0], size=pool[1], stride=None, padding="valid")
    epilogue = engine._common.Epilogue(rng.standard_normal(w.shape[3] * (x.shape[2] if geom[2] else 1))
                                       .astype(np.float32), "leaky-relu", 0.1)
    before = engine.get_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            engine.set_threads(n)
            if pspec is None:
                outs.append(ccore.correlate(x, w, epilogue=epilogue, **kwargs))
            else:
                outs.append(ccore.correlate_pooled(x, w, pspec, epilogue=epilogue, **kwargs))
    finally:
        engine.set_threads(before)
    for n, out in zip((2, 3), outs[1:]):
        np.testing.assert_array_equal(out, outs[0], err_msg=f"{n} threads")


@built
def test_run_layer_on_threads_matches_one_thread_bit_for_bit(monkeypatch):
    # Through the engine: W1's kind of layer with pooling (fused) and without, 1 to 3 threads.
    monkeypatch.setattr(ccore, "MIN_MACS_PER_THREAD", 1)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (61, 83, 3)).astype(np.float32)
    bank = engine.WeightsBank(rng.standard_normal((3, 3, 3, 4)).astype(np.float32), rng.standard_normal(4))
    spec = ConvSpec.from_options(padding="same", activation="relu")
    pool = PoolSpec.from_options(mode="max", size=2, stride=None, padding="valid")
    before = engine.get_threads()
    try:
        for p in (None, pool):
            outs = []
            for n in (1, 2, 3):
                engine.set_threads(n)
                result = engine.run_layer(x, bank, spec, p)
                assert result.backend == "ccore"
                outs.append(result.output)
            for out in outs[1:]:
                np.testing.assert_array_equal(out, outs[0])
    finally:
        engine.set_threads(before)


@built
@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_every_instruction_set_build_agrees(isa):
    # The other builds in the binary (chosen at import by the CPU) give the reference's numbers too.
    code = (
        "import numpy as np\n"
        "from convcli.engine import ccore, direct, _ccore\n"
        "from convcli.layer import Border\n"
        "rng = np.random.default_rng(5)\n"
        "x = rng.standard_normal((23, 29, 3)).astype(np.float32)\n"
        "worst = 0.0\n"
        "for wshape, dw, s in [((3, 3, 3, 4), False, (1, 1)), ((3, 3, 3, 20), False, (2, 1)),\n"
        "                      ((3, 3, 1, 2), True, (1, 2)), ((5, 5, 3, 3), True, (1, 1))]:\n"
        "    w = rng.standard_normal(wshape).astype(np.float32)\n"
        "    oh = (23 + 2 - wshape[0]) // s[0] + 1; ow = (29 + 2 - wshape[1]) // s[1] + 1\n"
        "    kw = dict(pads=(1, 1, 1, 1), stride=s, dilation=(1, 1), border=Border.REFLECT, out_hw=(oh, ow),\n"
        "              depthwise=dw)\n"
        "    a, b = ccore.correlate(x, w, **kw), direct.correlate(x, w, **kw)\n"
        "    worst = max(worst, float(np.abs(a - b).max()))\n"
        "    if dw and wshape[2] == 1:\n"
        "        w = (rng.standard_normal(wshape[:1] + (1,) + wshape[2:]) * rng.standard_normal((1,) + wshape[1:]))\n"
        "        w = w.astype(np.float32)\n"
        "        a, b = ccore.correlate_separable(x, w, **kw), direct.correlate(x, w, **kw)\n"
        "        worst = max(worst, float(np.abs(a - b).max()))\n"
        "print(_ccore.ISA, worst)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CONVCLI_CCORE_ISA": isa})
    assert proc.returncode == 0, proc.stderr
    name, worst = proc.stdout.split()
    assert name in (isa, "baseline")  # a CPU without AVX2 falls back to the baseline build
    assert float(worst) < 1e-4


@built
def test_avx2_and_avx512_builds_give_the_same_bits():
    # Both vector builds contract multiply-adds into FMAs in the same order, so a file written on
    # an AVX2 machine equals one written on an AVX-512 machine: plain, depthwise, strided and
    # pooled layers (the broadcast, planar and expand kernels, pooled tiles, stride phases) and
    # the separable loop (its finish in registers, with each build's non-temporal stores). The baseline build (no FMA)
    # rounds differently: within the reference tolerance only (the test above).
    code = (
        "import hashlib, numpy as np\n"
        "from convcli.engine import ccore, _ccore\n"
        "from convcli.layer import Border\n"
        "rng = np.random.default_rng(9)\n"
        "x = rng.standard_normal((41, 37, 3)).astype(np.float32)\n"
        "digest = hashlib.sha256()\n"
        "for wshape, dw in [((3, 3, 3, 4), False), ((5, 5, 3, 20), False), ((3, 3, 1, 2), True)]:\n"
        "    w = rng.standard_normal(wshape).astype(np.float32)\n"
        "    oh, ow = 41 + 2 - wshape[0] + 1, 37 + 2 - wshape[1] + 1\n"
        "    y = ccore.correlate(x, w, pads=(1, 1, 1, 1), stride=(1, 1), dilation=(1, 1), border=Border.ZEROS,\n"
        "                        out_hw=(oh, ow), depthwise=dw)\n"
        "    digest.update(y.tobytes())\n"
        "from convcli.layer import PoolSpec\n"
        "x = rng.standard_normal((13, 401, 3)).astype(np.float32)\n"
        "for wshape, mode in [((5, 5, 3, 16), 'max'), ((5, 5, 3, 16), 'avg'), ((3, 3, 3, 4), 'max')]:\n"
        "    w = rng.standard_normal(wshape).astype(np.float32)\n"  # pooled tiles, stride 2: W4's kernel
        "    kw = dict(pads=(1, 2, 1, 2), stride=(2, 2), dilation=(1, 1), border=Border.REFLECT,\n"
        "              out_hw=((13 + 3 - wshape[0]) // 2 + 1, (401 + 3 - wshape[1]) // 2 + 1))\n"
        "    digest.update(ccore.correlate(x, w, **kw).tobytes())\n"
        "    pool = PoolSpec.from_options(mode=mode, size=2, stride=None, padding='valid')\n"
        "    digest.update(ccore.correlate_pooled(x, w, pool, **kw).tobytes())\n"
        "from convcli.engine._common import Epilogue\n"  # the separable loop, finished in registers
        "x = rng.standard_normal((37, 301, 3)).astype(np.float32)\n"
        "for k, act in [(3, 'relu'), (9, 'abs'), (5, 'leaky-relu')]:\n"
        "    w = (rng.standard_normal((k, 1, 1, 1)) * rng.standard_normal((1, k, 1, 1))).astype(np.float32)\n"
        "    kw = dict(pads=(k // 2,) * 4, stride=(1, 1), dilation=(1, 1), border=Border.REFLECT, out_hw=(37, 301),\n"
        "              depthwise=True, epilogue=Epilogue(rng.standard_normal(3).astype(np.float32), act, 0.1))\n"
        "    digest.update(ccore.correlate_separable(x, w, **kw).tobytes())\n"
        "print(_ccore.ISA, digest.hexdigest())\n")
    found = {}
    for isa in ("avx512", "avx2"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "CONVCLI_CCORE_ISA": isa, "CONVCLI_SEP_STREAM": "1"})
        assert proc.returncode == 0, proc.stderr
        name, digest = proc.stdout.split()
        found[name] = digest
    if len(found) < 2:
        pytest.skip(f"this CPU runs only {sorted(found)} of the vector builds")
    assert found["avx512"] == found["avx2"]


# ----------------------------------------------------------------------------- checks and switches
@built
def test_wrapper_refuses_what_the_loop_cannot_read():
    w = np.ones((3, 3, 1, 1), np.float32)
    kwargs = dict(pads=(0, 0, 0, 0), stride=(1, 1), dilation=(1, 1), border=Border.ZEROS, out_hw=(2, 2))
    with pytest.raises(ValueError, match="C-contiguous float32 H×W×C"):
        ccore.correlate(np.ones((4, 4, 1), np.float64), w, **kwargs)
    with pytest.raises(ValueError, match="C-contiguous float32 H×W×C"):
        ccore.correlate(np.ones((4, 8, 1), np.float32)[:, ::2], w, **kwargs)


@built
def test_the_loop_checks_its_arguments():
    from convcli.engine import _ccore

    x = np.ones((4, 4, 1), np.float32)
    w = np.ones(3 * 3 * 16, np.float32)
    bias = np.zeros(16, np.float32)
    out = np.empty((2, 2, 1), np.float32)
    maps = np.arange(4, dtype=np.int32)
    geom = (4, 4, 1, 3, 3, 1, 1, 1, 1, 2, 1, 16, 0, 1, 0, 0)
    assert _ccore.rows(x, w, bias, out, maps, maps, geom, 0, 0.0, 0, 2, (0, 1, 1)) is False  # finite maps
    np.testing.assert_array_equal(out, 9)
    with pytest.raises(ValueError, match="bad geometry"):
        _ccore.rows(x, w, bias, out, maps, maps, geom[:3] + (0,) + geom[4:], 0, 0.0, 0, 2, (0, 1, 1))
    with pytest.raises(ValueError, match="bad lane count"):
        _ccore.rows(x, w, bias, out, maps, maps, geom[:11] + (5,) + geom[12:], 0, 0.0, 0, 2, (0, 1, 1))
    with pytest.raises(ValueError, match="at most 64 kernel columns"):
        _ccore.rows(x, w, bias, out, maps, maps, geom[:4] + (65,) + geom[5:11] + (1, 0, 1, 0, 1), 0, 0.0, 0, 2,
                    (0, 1, 1))
    with pytest.raises(ValueError, match="rowmap/colmap index outside the input"):
        _ccore.rows(x, w, bias, out, maps + 1, maps, geom, 0, 0.0, 0, 2, (0, 1, 1))
    with pytest.raises(ValueError, match=r"out: expected at least 4 4-byte items"):
        _ccore.rows(x, w, bias, out[:1], maps, maps, geom, 0, 0.0, 0, 2, (0, 1, 1))


@built
def test_overflow_is_reported_as_numpy_reports_it(ccore_always):
    # convcli._noise turns numpy's overflow warning into one line; the C loop warns alike.
    x = np.full((8, 9, 1), 1e38, np.float32)
    bank = engine.WeightsBank(np.ones((3, 3), np.float32))
    with pytest.warns(RuntimeWarning, match="^overflow encountered"):
        result = engine.run_layer(x, bank, ConvSpec())
    assert result.backend == "ccore" and np.isinf(result.output).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite maps: no warning
        engine.run_layer(x / 1e30, bank, ConvSpec())


def test_switches_turn_the_core_off(monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 30, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    monkeypatch.setenv(ccore.DISABLE_ENV, "1")
    assert not ccore.active() and not any(e.startswith("compiled core") for e in engine.engines())
    assert engine.run_layer(x, engine.WeightsBank(w), ConvSpec()).backend != "ccore"
    monkeypatch.delenv(ccore.DISABLE_ENV)
    engine.use_ccore(False)
    try:
        assert not ccore.active()
        assert engine.run_layer(x, engine.WeightsBank(w), ConvSpec()).backend != "ccore"
    finally:
        engine.use_ccore(True)
    assert ccore.active() == ccore.built()


@built
def test_version_names_the_active_engines(monkeypatch):
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].startswith("convcli, version ")
    assert lines[1].startswith("engines: ") and lines[1].endswith(f"numpy {np.__version__}")
    assert ("compiled core (" in lines[1]) == ccore.built()
    monkeypatch.setenv(ccore.DISABLE_ENV, "1")
    assert "compiled core" not in CliRunner().invoke(cli, ["--version"]).output


def test_version_in_a_real_process():
    proc = subprocess.run([sys.executable, "-c", "from convcli.cli import main; main()", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "engines: " in proc.stdout and "numpy" in proc.stdout


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI builds the extension from source and must use it")
def test_ci_built_the_extension_and_uses_it():
    # A silent fallback to numpy must not pass CI: the install there compiles the core.
    assert ccore.built(), "convcli.engine._ccore did not build (see the pip install log)"
    assert ccore.active()
    assert ccore.isa() in ("avx512", "avx2", "baseline")
    w1 = choose.Layer((1080, 1920, 3), (3, 3, 3, 4), (1080, 1920), (1, 1), (1, 1), False, 3, 2)
    assert choose.choose(w1, opencv_ok=True, ccore_ok=ccore.active()) == "ccore"


def test_a_failed_compile_leaves_a_working_install(monkeypatch, capsys):
    # setup.py's build_ext warns and goes on when the compiler fails (PyYAML's way).
    from setuptools.command.build_ext import build_ext

    ns = runpy.run_path(str(REPO / "setup.py"), run_name="convcli_setup_under_test")
    optional = ns["OptionalBuildExt"]

    def broken(self, ext):
        raise RuntimeError("gcc: not found")

    monkeypatch.setattr(build_ext, "build_extension", broken)
    monkeypatch.delenv("CONVCLI_REQUIRE_CCORE", raising=False)
    optional.build_extension(object.__new__(optional), None)
    assert "compiled core was not built (gcc: not found)" in capsys.readouterr().err
    monkeypatch.setenv("CONVCLI_REQUIRE_CCORE", "1")
    with pytest.raises(RuntimeError, match="gcc: not found"):
        optional.build_extension(object.__new__(optional), None)


def _layer(hwc, w_shape, out_hw=None, stride=(1, 1), depthwise=False, rank=3, finish=0):
    return choose.Layer(hwc, w_shape, out_hw or hwc[:2], stride, (1, 1), depthwise, rank, finish)


@pytest.mark.parametrize("case,opencv_ok,expected", [
    (_layer((1080, 1920, 3), (3, 3, 3, 4), finish=2), True, "ccore"),  # W1: few maps, bias, ReLU
    (_layer((1080, 1920, 3), (3, 3, 3, 64)), True, "ccore"),  # W2: many maps
    (_layer((2160, 3840, 3), (5, 5, 3, 16), out_hw=(1080, 1920), stride=(2, 2)), True, "ccore"),  # W4
    # W5 (Sobel) and W3 (31×31 Gaussian): the separable loop measured 0.8× OpenCV (one core, same run)
    (_layer((1080, 1920, 3), (3, 3, 1, 1), depthwise=True, rank=1), True, "ccore-separable"),
    (_layer((1080, 1920, 3), (3, 3, 1, 1), depthwise=True, rank=1), False, "ccore-separable"),
    (_layer((1080, 1920, 3), (31, 31, 1, 1), depthwise=True, rank=1), True, "ccore-separable"),
    (_layer((1080, 1920, 3), (3, 3, 1, 1), depthwise=True, rank=2), True, "ccore"),  # not separable: direct
    (_layer((1080, 1920, 1), (21, 21, 1, 1)), True, "fft"),  # L21: the C loop measured 95 ms, FFT 73
])
def test_chooser_takes_the_core_where_it_measured_faster(case, opencv_ok, expected):
    assert choose.choose(case, opencv_ok=opencv_ok, ccore_ok=True) == expected
    estimates = choose.estimates(case, opencv_ok=opencv_ok)
    assert "ccore" not in estimates and "ccore-separable" not in estimates  # only when it is there


# ----------------------------------------------------------------------------- the planar kernel
def _planar_case(maps, channels, stride, dilation, width):
    rng = np.random.default_rng(100 * maps + 10 * channels + stride[1])
    x = (rng.standard_normal((9, width, channels)) * 4).astype(np.float32)
    w = rng.standard_normal((3, 3, channels, maps)).astype(np.float32)
    pad = dilation[1]
    out_hw = ((9 + 2 * dilation[0] - 2 * dilation[0] - 1) // stride[0] + 1,
              (width + 2 * pad - 2 * dilation[1] - 1) // stride[1] + 1)
    kwargs = dict(pads=(dilation[0], dilation[0], pad, pad), stride=stride, dilation=dilation, out_hw=out_hw)
    return x, w, rng.standard_normal(maps).astype(np.float32), kwargs


@built
@pytest.mark.parametrize("maps", range(1, 9))
@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5])
def test_planar_kernel_on_wide_rows_matches_the_reference(maps, channels):
    # Dense layers of at most 8 maps take the planar kernel: rows wide enough for several column
    # tiles and an odd last vector, channel counts with and without the fast de-interleave,
    # strides and dilations (column phases), every border.
    for stride, dilation, border, width in [((1, 1), (1, 1), Border.ZEROS, 1203),
                                            ((1, 2), (1, 1), Border.REFLECT, 997),
                                            ((2, 1), (2, 2), Border.REPLICATE, 1001),
                                            ((1, 3), (1, 2), Border.CIRCULAR, 77)]:
        x, w, _, kw = _planar_case(maps, channels, stride, dilation, width)
        assert ccore.plan(x.shape, w.shape, kw["out_hw"], stride, dilation, False) == (ccore._PLANAR, 1)
        got = ccore.correlate(x, w, border=border, **kw)
        want = direct.correlate(x, w, border=border, **kw)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())


@built
@pytest.mark.parametrize("activation", ["none", "relu", "leaky-relu", "abs", "sigmoid", "tanh"])
@pytest.mark.parametrize("maps", [1, 3, 4, 8])
def test_planar_kernel_gives_the_broadcast_kernels_bits_and_overflow_flag(monkeypatch, activation, maps):
    # The planar kernel adds the same products in the same order as the broadcast kernel, and
    # its fused ReLU and abs (integer lane arithmetic) are the scalar pass's expressions: the
    # two kernels give the same bits, Inf included (inputs of 3e38 overflow float32),
    # and both report the overflow.
    from convcli.engine._common import Epilogue

    x, w, bias, kw = _planar_case(maps, 3, (1, 1), (1, 1), 301)
    x[2, 5:40] = 3e38
    x[4, 60:90] = -3e38
    w[0, 0, 0, 0] = -w[0, 0, 0, 0]  # (no NaN: a fused multiply-add of finite values never adds -Inf to Inf)
    epilogue = Epilogue(bias, activation, 0.2)
    outs, flagged = [], []
    for ring in (ccore.RING_MAX_BYTES, 0):  # 0: no room for planes, the broadcast kernel serves
        monkeypatch.setattr(ccore, "RING_MAX_BYTES", ring)
        assert ccore.plan(x.shape, w.shape, kw["out_hw"], (1, 1), (1, 1), False)[0] == (3 if ring else 0)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            outs.append(ccore.correlate(x, w, border=Border.ZEROS, epilogue=epilogue, **kw))
        flagged.append(any("Inf or NaN" in str(s.message) for s in seen))
    np.testing.assert_array_equal(outs[0].view(np.uint32), outs[1].view(np.uint32))
    assert flagged[0] == flagged[1] == (not np.isfinite(outs[0]).all())
    if activation in ("none", "leaky-relu", "abs"):  # these keep the overflow
        assert flagged[0] and np.isinf(outs[0]).any()
