"""Every engine path (direct, separable, fft, and OpenCV when installed) against the loop reference.

Inputs are random, of odd and even sizes; tiles are forced small so seams fall everywhere,
including strides that do not divide the tile. The chooser is checked on layer sizes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from convcli import engine
from convcli.engine import _common, _threads, choose, direct, fft, opencv, separable
from convcli.errors import OptionError
from convcli.geometry import conv_layer
from convcli.layer import ConvSpec, PoolSpec

from test_engine import ATOL, RTOL, Bank, ref_conv, ref_pool  # the plain-loop references

BORDERS = ["zeros", "reflect", "replicate", "circular"]
GEOMETRIES = [  # stride, dilation, padding
    ((1, 1), (1, 1), "same"),
    ((2, 3), (2, 1), "same"),
    ((1, 2), (1, 1), "full"),
    ((3, 1), (1, 2), "valid"),
    ((2, 2), (1, 1), (2, 0, 1, 3)),
]


def low_rank_weights(rng, kh, kw, c, f, rank=1):
    """HWIO weights whose every 2-D slice has the given rank (so the separable path can serve them)."""
    w = np.zeros((kh, kw, c, f), np.float64)
    for ch in range(c):
        for m in range(f):
            for _ in range(rank):
                w[:, :, ch, m] += np.outer(rng.standard_normal(kh), rng.standard_normal(kw))
    return w.astype(np.float32)


def _pad_arg(padding):
    return ",".join(map(str, padding)) if isinstance(padding, tuple) else padding


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.fixture
def small_tiles(monkeypatch):
    """Budgets so small that every path cuts even these tiny layers into many tiles."""
    monkeypatch.setattr(_common, "TILE_MAX_BYTES", 900)
    monkeypatch.setattr(_common, "TILE_MIN_BYTES", 1)
    monkeypatch.setattr(fft, "TILE_BYTES", 2000)
    monkeypatch.setattr(separable, "MIN_TILE_ROWS", 1)
    monkeypatch.setattr(separable, "BLOCK_COLS", 5)
    monkeypatch.setattr(_threads, "PARALLEL_MIN_BYTES", 1)  # and still split them between threads


@pytest.mark.parametrize("algorithm", ["direct", "separable", "fft"])
@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("hw", [(23, 30), (26, 19)])
def test_path_matches_reference(rng, small_tiles, algorithm, border, hw):
    x = rng.standard_normal(hw + (2,)).astype(np.float32)
    w = low_rank_weights(rng, 5, 4, 2, 3, rank=2)
    b = rng.standard_normal(3).astype(np.float32)
    for stride, dilation, padding in GEOMETRIES:
        y = engine.conv2d(x, w, b, stride=stride, dilation=dilation, padding=_pad_arg(padding), border=border,
                          algorithm=algorithm)
        ref = ref_conv(x, w, b, stride, dilation, padding, border)
        assert y.shape == ref.shape and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, rtol=RTOL, atol=5 * ATOL)


@pytest.mark.parametrize("algorithm", ["direct", "separable", "fft"])
@pytest.mark.parametrize("shared", [True, False])
def test_path_depthwise_matches_reference(rng, small_tiles, algorithm, shared):
    x = rng.standard_normal((21, 24, 3)).astype(np.float32)
    w = low_rank_weights(rng, 3, 5, 1 if shared else 3, 2)
    for stride, dilation, padding in GEOMETRIES:
        for border in ("zeros", "reflect"):
            y = engine.depthwise_conv2d(x, w, stride=stride, dilation=dilation, padding=_pad_arg(padding),
                                        border=border, algorithm=algorithm)
            for c in range(3):
                for m in range(2):
                    k = w[:, :, 0 if shared else c, m]
                    ref = ref_conv(x[:, :, c:c + 1], k[:, :, None, None], None, stride, dilation, padding, border)
                    np.testing.assert_allclose(y[:, :, c * 2 + m], ref[:, :, 0], rtol=RTOL, atol=5 * ATOL)


@pytest.mark.parametrize("algorithm", ["direct", "separable", "fft"])
def test_paths_on_1d_signal(rng, small_tiles, algorithm):
    sig = rng.standard_normal(101).astype(np.float32)
    k = rng.standard_normal(7).astype(np.float32)
    for padding, dilation, stride in [("causal", 2, 1), ("same", 1, 3), ("valid", 3, 2)]:
        y = engine.conv2d(sig, k, padding=padding, dilation=dilation, stride=stride, algorithm=algorithm)
        ref = ref_conv(sig.reshape(1, -1, 1), k.reshape(1, -1, 1, 1), None, (stride, stride), (1, dilation), padding)
        np.testing.assert_allclose(y, ref, rtol=RTOL, atol=5 * ATOL)


@pytest.mark.parametrize("algorithm", ["direct", "separable", "fft"])
@pytest.mark.parametrize("pool", [("max", 2, None, "valid"), ("avg", 3, 2, "same"), ("max", 3, 2, "same")])
def test_pool_fused_in_row_chunks(rng, monkeypatch, algorithm, pool):
    # A small budget makes run_layer convolve and pool the map in many row chunks.
    monkeypatch.setattr(_common, "TILE_MIN_BYTES", 1)
    monkeypatch.setattr(_common, "TILE_FRACTION", 0.001)
    monkeypatch.setattr(_threads, "PARALLEL_MIN_BYTES", 1)  # the chunks shared between threads
    mode, size, stride, padding = pool
    x = rng.standard_normal((31, 28, 2)).astype(np.float32)
    w = low_rank_weights(rng, 3, 3, 2, 2)
    bank = Bank((w[:, :, :, 0], w[:, :, :, 1]), (0.5, -0.25))
    spec = ConvSpec.from_options(padding="same", activation="leaky-relu", negative_slope=0.2)
    pspec = PoolSpec.from_options(mode=mode, size=size, stride=stride, padding=padding)
    result = engine.run_layer(x, bank, spec, pspec, algorithm=algorithm)
    conv = ref_conv(x, w, [0.5, -0.25], padding="same")
    conv = np.where(conv >= 0, conv, 0.2 * conv)
    ref = ref_pool(conv, mode, (size, size), (stride or size,) * 2, padding)
    assert result.algorithm == algorithm and result.output.shape == ref.shape
    np.testing.assert_allclose(result.output, ref, rtol=RTOL, atol=5 * ATOL)


@pytest.mark.parametrize("pool", [None, ("max", 2, None, "valid")])
def test_threads_do_not_change_results(rng, monkeypatch, pool):
    # Every bit is the same whatever the thread count: BLAS and FFTs round by the shape of
    # each call, so the tiles must not depend on it (they did, and 2 threads differed from 1).
    monkeypatch.setattr(_threads, "PARALLEL_MIN_BYTES", 1)  # a layer this small would run on one thread
    monkeypatch.setattr(_threads, "CPUS", 2)
    x = rng.standard_normal((300, 257, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 16)).astype(np.float32)  # enough arithmetic to run threaded
    sep = low_rank_weights(rng, 7, 7, 3, 2, rank=1)
    pspec = PoolSpec.from_options(mode=pool[0], size=pool[1], stride=pool[2], padding=pool[3]) if pool else None
    layers = [(w, "direct"), (w, "fft"), (sep, "separable"), (sep, "fft")]
    before = engine.get_threads()
    try:
        outs = {}
        for n in (1, 2, 3):
            engine.set_threads(n)
            outs[n] = [engine.run_layer(x, engine.WeightsBank(k, np.arange(k.shape[3], dtype=np.float32)),
                                        ConvSpec.from_options(padding="same", stride=(1, 2), activation="relu"),
                                        pspec, algorithm=a).output
                       for k, a in layers]
    finally:
        engine.set_threads(before)
    for n in (2, 3):
        for k, (_, algorithm) in enumerate(layers):
            np.testing.assert_array_equal(outs[n][k], outs[1][k], err_msg=f"{algorithm} on {n} threads")
    if pool is None:
        np.testing.assert_allclose(outs[1][0], np.maximum(ref_conv(x, w, np.arange(16), (1, 2), padding="same"), 0),
                                   rtol=RTOL, atol=ATOL)


def test_tile_ranges_are_whole_tiles(monkeypatch):
    monkeypatch.setattr(_threads, "_threads", 3)
    assert _threads.tile_ranges(100, 7, 3) == [(0, 35), (35, 70), (70, 100)]  # 15 tiles, 5 each
    assert _threads.tile_ranges(100, 7, 2) == [(0, 49), (49, 100)]  # at most `parts` ranges
    assert _threads.tile_ranges(100, 7, 3, min_rows=40) == [(0, 49), (49, 100)]  # 40 rows need 6 tiles
    assert _threads.tile_ranges(5, 7, 3) == [(0, 5)]
    monkeypatch.setattr(_threads, "_threads", 1)
    assert _threads.tile_ranges(100, 7, 3) == [(0, 100)]  # at most get_threads() ranges


def test_separable_decompose(rng):
    u, v = rng.standard_normal(7), rng.standard_normal(5)
    terms = separable.decompose(np.outer(u, v), 1)
    assert len(terms) == 1
    np.testing.assert_allclose(np.outer(*terms[0]), np.outer(u, v), rtol=1e-5, atol=1e-6)
    assert separable.decompose(rng.standard_normal((5, 5)), 2) is None
    assert separable.decompose(np.zeros((3, 3)), 1) == []
    two = np.outer(u, v) + np.outer(rng.standard_normal(7), rng.standard_normal(5))
    assert len(separable.decompose(two, 2)) == 2


def test_zero_kernel_on_separable_path(rng):
    x = rng.standard_normal((9, 9)).astype(np.float32)
    y = engine.conv2d(x, np.zeros((3, 3)), bias=2.0, algorithm="separable")
    assert (y == 2.0).all()


def test_separable_refuses_full_rank_kernel(rng):
    x = rng.standard_normal((12, 12)).astype(np.float32)
    k = np.eye(4, dtype=np.float32)  # rank 4
    with pytest.raises(OptionError, match=r"algorithm: 'separable' cannot run this layer: a kernel has rank 4"):
        engine.conv2d(x, k, algorithm="separable")


# ----------------------------------------------------------------------------- the chooser
def layer(hwc, w_shape, *, out_hw=None, stride=(1, 1), depthwise=False, rank=3):
    return choose.Layer(hwc, w_shape, out_hw or hwc[:2], stride, (1, 1), depthwise, rank)


@pytest.mark.parametrize("case,expected", [
    (layer((1080, 1920, 3), (3, 3, 3, 64)), "direct"),  # many small filters: GEMM
    (layer((1080, 1920, 3), (3, 3, 3, 4)), "direct"),
    (layer((1080, 1920, 3), (31, 31, 1, 1), depthwise=True, rank=1), "separable"),  # big Gaussian blur
    (layer((1080, 1920, 1), (21, 21, 1, 1)), "fft"),  # big kernel, not separable
    (layer((1080, 1920, 1), (7, 7, 1, 1)), "fft"),  # gray 7×7: fft 23–26 ms, direct 63–73 ms measured
    (layer((1080, 1920, 1), (7, 7, 1, 1), rank=1), "separable"),  # rank 1: separable 16 ms
    (layer((1, 8, 1), (1, 3, 1, 1), rank=1), "direct"),  # tiny layers stay exact and cheap
])
def test_chooser_picks_each_path(case, expected):
    assert choose.choose(case, opencv_ok=False) == expected


def test_opencv_only_where_it_saves_more_than_its_import_risks():
    # W5 (Sobel on 1080p RGB) saves tens of ms a call: OpenCV. A small picture saves less
    # than the margin that bounds what a one-off command can lose to cv2's import: numpy.
    w5 = layer((1080, 1920, 3), (3, 3, 1, 1), depthwise=True, rank=1)
    small = layer((240, 320, 3), (3, 3, 1, 1), depthwise=True, rank=1)
    assert choose.choose(w5, opencv_ok=True) == "opencv"
    assert choose.choose(small, opencv_ok=True) != "opencv"
    costs = choose.estimates(small, opencv_ok=True)
    assert costs["opencv"] < min(v for k, v in costs.items() if k != "opencv")  # faster, but not by enough


def test_auto_reports_each_path(rng):
    # The numpy paths (the compiled core, when built, serves these layers in auto mode).
    engine.use_opencv(False)
    engine.use_ccore(False)
    try:
        x = rng.standard_normal((200, 220, 3)).astype(np.float32)
        g = np.exp(-0.5 * ((np.arange(31) - 15) / 5.0) ** 2)
        spec = ConvSpec.from_options(padding="same", depthwise=True)
        seen = {
            engine.run_layer(x, Bank((rng.standard_normal((3, 3)).astype(np.float32),) * 4), ConvSpec()).algorithm,
            engine.run_layer(x, Bank((np.outer(g, g).astype(np.float32),)), spec).algorithm,
            engine.run_layer(x[:, :, 0], Bank((rng.standard_normal((25, 25)).astype(np.float32),)),
                             ConvSpec.from_options(padding="same")).algorithm,
        }
    finally:
        engine.use_opencv(True)
        engine.use_ccore(True)
    assert seen == {"direct", "separable", "fft"}


def test_auto_agrees_with_forced_paths(rng):
    x = rng.standard_normal((64, 70, 3)).astype(np.float32)
    w = low_rank_weights(rng, 7, 7, 3, 2)
    ref = ref_conv(x, w, None, padding="same", border="replicate")
    for algorithm in engine.ALGORITHMS:
        y = engine.conv2d(x, w, padding="same", border="replicate", algorithm=algorithm)
        np.testing.assert_allclose(y, ref, rtol=RTOL, atol=5 * ATOL)


# ----------------------------------------------------------------------------- OpenCV (optional)
@pytest.mark.parametrize("border", ["zeros", "reflect", "replicate"])
@pytest.mark.parametrize("padding", ["same", "valid", (1, 0, 0, 2)])
def test_opencv_path_matches_reference(rng, border, padding):
    pytest.importorskip("cv2")
    x = rng.standard_normal((33, 40, 3)).astype(np.float32)
    g = np.outer([1, 4, 6, 4, 1], [1, 2, 1]).astype(np.float32)  # rank 1: sepFilter2D
    full = rng.standard_normal((5, 3)).astype(np.float32)  # full rank: filter2D
    for w, depthwise in [(np.stack([g, full], 2)[:, :, None, :], True),
                               (rng.standard_normal((5, 3, 3, 2)).astype(np.float32), True),
                               (rng.standard_normal((5, 3, 3, 2)).astype(np.float32), False)]:
        spec = ConvSpec.from_options(padding=_pad_arg(padding), border=border, depthwise=depthwise)
        geom = conv_layer(x.shape, kernel_size=w.shape[:2], filters=w.shape[3], spec=spec,
                          kernel_depth=None if w.shape[2] == 1 else w.shape[2])
        reason = opencv.why_not(x.shape, w.shape, pads=geom.pads, stride=(1, 1), dilation=(1, 1),
                                border=spec.border, depthwise=depthwise)
        if reason is not None:
            continue
        terms = engine._opencv_terms(w)
        y = opencv.correlate(x, w, pads=geom.pads, stride=(1, 1), dilation=(1, 1), border=spec.border,
                             out_hw=geom.output_shape[:2], depthwise=depthwise, terms=terms)
        for m in range(y.shape[2]):
            if depthwise:
                c, f = divmod(m, w.shape[3])
                k = w[:, :, 0 if w.shape[2] == 1 else c, f]
                ref = ref_conv(x[:, :, c:c + 1], k[:, :, None, None], None, (1, 1), (1, 1), padding, border)[:, :, 0]
            else:
                ref = ref_conv(x, w[:, :, :, m:m + 1], None, (1, 1), (1, 1), padding, border)[:, :, 0]
            np.testing.assert_allclose(y[:, :, m], ref, rtol=RTOL, atol=5 * ATOL)


@pytest.mark.parametrize("border", ["zeros", "reflect", "replicate"])
@pytest.mark.parametrize("padding", ["same", "valid", (2, 0, 0, 1)])
@pytest.mark.parametrize("shape,depthwise", [
    ((5, 3, 3, 2), False),  # map by map: planes, sums, the bias as OpenCV's delta
    ((3, 4, 1, 2), True),  # one call per filter on the 3-channel band, strided into place
    ((3, 3, 3, 2), True),  # a kernel per channel: plane by plane
    ((4, 3, 1, 1), True),  # one call on the whole image when the size is kept
])
def test_opencv_bands_rows_out_and_epilogue(rng, monkeypatch, border, padding, shape, depthwise):
    # Bands of one to a few rows put seams everywhere, also next to the reflected edges.
    pytest.importorskip("cv2")
    monkeypatch.setattr(opencv, "MIN_BAND_ROWS", 1)
    monkeypatch.setattr(opencv, "BAND_MAX_BYTES", 1)
    x = rng.standard_normal((23, 17, 3)).astype(np.float32)
    w = rng.standard_normal(shape).astype(np.float32)
    spec = ConvSpec.from_options(padding=_pad_arg(padding), border=border, depthwise=depthwise)
    geom = conv_layer(x.shape, kernel_size=w.shape[:2], filters=w.shape[3], spec=spec,
                      kernel_depth=None if w.shape[2] == 1 else w.shape[2])
    assert opencv.why_not(x.shape, w.shape, pads=geom.pads, stride=(1, 1), dilation=(1, 1),
                          border=spec.border, depthwise=depthwise) is None
    oh, ow, n_maps = geom.output_shape
    if depthwise:
        ref = np.concatenate([ref_conv(x[:, :, c:c + 1], w[:, :, [0 if w.shape[2] == 1 else c]], None,
                                       (1, 1), (1, 1), padding, border) for c in range(3)], axis=2)
    else:
        ref = ref_conv(x, w, None, (1, 1), (1, 1), padding, border)
    bias = rng.standard_normal(n_maps).astype(np.float32)
    finished = np.maximum(ref + bias, 0)
    kwargs = dict(pads=geom.pads, stride=(1, 1), dilation=(1, 1), border=spec.border, out_hw=(oh, ow),
                  depthwise=depthwise)
    fused = _common.Epilogue(bias, "relu", 0.3)
    for rows in [None, (1, oh - 2), (0, 1), (oh - 1, oh)]:  # single rows at the edges: reflected halos
        a, b = rows or (0, oh)
        out = np.full((b - a, ow, n_maps), np.nan, np.float32)
        y = opencv.correlate(x, w, rows=rows, out=out, **kwargs)
        assert y is out
        np.testing.assert_allclose(y, ref[a:b], rtol=RTOL, atol=5 * ATOL)
        for epilogue in (fused, lambda block: fused(block)):  # fused into the calls, or after them
            y = opencv.correlate(x, w, rows=rows, epilogue=epilogue, **kwargs)
            np.testing.assert_allclose(y, finished[a:b], rtol=RTOL, atol=5 * ATOL)


def test_opencv_in_run_layer_pools_and_reuses_like_numpy(rng):
    # W1's shape of layer, small: the chooser's OpenCV pick, its pooled chunks and ``reuse``.
    pytest.importorskip("cv2")
    x = rng.integers(0, 256, (40, 52, 3)).astype(np.float32)
    bank = engine.WeightsBank(rng.standard_normal((3, 3, 3, 4)).astype(np.float32), rng.standard_normal(4))
    spec = ConvSpec.from_options(padding="same", activation="relu")
    pool = PoolSpec.from_options(mode="max", size=2, stride=None, padding="valid")
    original = choose.choose
    try:
        choose.choose = lambda layer, *, opencv_ok, ccore_ok=False: ("opencv" if opencv_ok
                                                                      else original(layer, opencv_ok=False))
        for p in (None, pool):
            reuse = np.full((20, 26, 4) if p else (40, 52, 4), np.nan, np.float32)
            got = engine.run_layer(x, bank, spec, p, reuse=reuse)
            assert got.backend == "opencv" and got.output is reuse
            engine.use_opencv(False)
            engine.use_ccore(False)
            want = engine.run_layer(x, bank, spec, p)
            engine.use_opencv(True)
            engine.use_ccore(True)
            assert want.backend == "numpy"
            np.testing.assert_allclose(got.output, want.output, rtol=RTOL, atol=ATOL * 256)
    finally:
        choose.choose = original
        engine.use_opencv(True)


def test_small_layers_run_on_one_thread(monkeypatch):
    # Two threads pay only when each one's tiles are large (GIL hand-overs between short calls).
    monkeypatch.setattr(_threads, "CPUS", 2)
    monkeypatch.setattr(_threads, "_threads", 1)  # planned for the machine, not for set_threads
    assert _threads.threads_for(_threads.PARALLEL_MIN_BYTES - 1) == 1
    assert _threads.threads_for(2 * _threads.PARALLEL_MIN_BYTES) == 2
    assert _threads.threads_for(100 * _threads.PARALLEL_MIN_BYTES) == 2
    # ... or much arithmetic per byte (W4: 16 filters 5×5×3, 1.6 MB tiles).
    w4 = direct.tile_macs_per_byte(3, (5, 5, 3, 16), False)
    assert _threads.threads_for(2 * (1600 << 10), w4) == 2
    assert _threads.threads_for(2 * (1600 << 10), direct.tile_macs_per_byte(1, (3, 3, 1, 1), False)) == 1
    assert _threads.split_rows(100, 1, parts=1) == [(0, 100)]
    monkeypatch.setattr(_threads, "_threads", 2)
    assert _threads.split_rows(100, 1) == [(0, 50), (50, 100)]


def test_opencv_refusals():
    pytest.importorskip("cv2")
    kw = dict(pads=(1, 1, 1, 1), dilation=(1, 1), border="zeros", depthwise=True)
    assert "stride 1" in opencv.why_not((9, 9, 3), (3, 3, 1, 1), stride=(2, 2), **{**kw})
    assert "circular" in opencv.why_not((9, 9, 3), (3, 3, 1, 1), stride=(1, 1), **{**kw, "border": "circular"})
    assert "anchor" in opencv.why_not((9, 9, 3), (3, 3, 1, 1), stride=(1, 1), **{**kw, "pads": (2, 2, 2, 2)})


def test_separable_correlate_refuses_high_rank_directly(rng):
    x = rng.standard_normal((8, 8, 1)).astype(np.float32)
    w = np.eye(3, dtype=np.float32)[:, :, None, None]
    with pytest.raises(ValueError, match=r"a kernel has rank above 2"):
        separable.correlate(x, w, pads=(0, 0, 0, 0), stride=(1, 1), dilation=(1, 1), border="zeros",
                            out_hw=(6, 6))


def test_engine_import_stays_light():
    import subprocess
    import sys

    code = "import sys, convcli.engine; print(sorted(m for m in ('scipy', 'cv2', 'PIL', 'skimage') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_fft_plan_uses_2d_blocks_within_budget():
    # 1080p gray, a 21×21 kernel, the default budget (20 % of the 8 MB output over 2 threads):
    # a band of whole rows would need a 21-row margin on every few rows, so the plan cuts
    # 2-D blocks whose transforms fit the budget and are at least half output.
    out_bytes = 1080 * 1920 * 4
    budget = int(_common.TILE_FRACTION * out_bytes) // 2
    rows, cols, n_h, n_w = fft.plan((1080, 1920), (21, 21), (1, 1), (1, 1), 1, 1, budget)
    assert cols < 1920 and rows < 1080
    assert n_h * n_w * fft._BYTES_PER_POINT_PLANE * 2 <= budget
    assert rows + 20 <= n_h and cols + 20 <= n_w  # every block's band fits its transform
    assert rows * cols >= n_h * n_w / 2
    # A narrow image keeps whole rows.
    rows, cols, n_h, n_w = fft.plan((1080, 64), (21, 21), (1, 1), (1, 1), 1, 1, budget)
    assert cols == 64 and rows > 64


@pytest.mark.parametrize("algorithm", ["direct", "separable", "fft"])
def test_paths_write_into_a_given_array(rng, algorithm):
    from convcli.engine import direct
    from convcli.layer import Border

    x = rng.standard_normal((19, 23, 2)).astype(np.float32)
    w = low_rank_weights(rng, 3, 3, 2, 3, rank=1)
    path = {"direct": direct, "separable": separable, "fft": fft}[algorithm]
    kwargs = dict(pads=(1, 1, 1, 1), stride=(1, 1), dilation=(1, 1), border=Border.ZEROS, out_hw=(19, 23))
    expected = path.correlate(x, w, **kwargs)
    target = np.full((19, 23, 3), np.nan, np.float32)
    assert path.correlate(x, w, out=target, **kwargs) is target
    np.testing.assert_array_equal(target, expected)
    with pytest.raises(ValueError, match=r"out: expected a C-contiguous float32 array of shape \(19, 23, 3\)"):
        path.correlate(x, w, out=np.empty((19, 23, 2), np.float32), **kwargs)


def test_opencv_leaves_the_callers_thread_count(rng):
    # The engine sets OpenCV's pool for its own calls only; a program using cv2 keeps its setting.
    cv2 = pytest.importorskip("cv2")
    before = cv2.getNumThreads()
    x = rng.standard_normal((40, 52, 3)).astype(np.float32)
    bank = engine.WeightsBank(rng.standard_normal((3, 3, 3, 2)).astype(np.float32))
    pool = PoolSpec.from_options(mode="max", size=2, stride=None, padding="valid")
    original = choose.choose
    try:
        cv2.setNumThreads(3)
        choose.choose = lambda layer, *, opencv_ok, ccore_ok=False: ("opencv" if opencv_ok
                                                                      else original(layer, opencv_ok=False))
        for spec, p in [(ConvSpec.from_options(padding="same"), None), (ConvSpec.from_options(padding="same"), pool),
                        (ConvSpec.from_options(padding="same", depthwise=True), None)]:
            b = bank if not spec.depthwise else engine.WeightsBank(rng.standard_normal((3, 3)).astype(np.float32))
            assert engine.run_layer(x, b, spec, p).backend == "opencv"
            assert cv2.getNumThreads() == 3
    finally:
        choose.choose = original
        cv2.setNumThreads(before)


_THREADS_AFTER_CV2 = """
import os, sys
import numpy
env_before = os.environ.get("OPENBLAS_NUM_THREADS")
before = len(os.listdir("/proc/self/task"))
if sys.argv[1] == "convcli":
    from convcli.engine import opencv
    assert opencv.module() is not None and opencv.module() is sys.modules["cv2"]
else:
    import cv2
print(len(os.listdir("/proc/self/task")) - before, os.environ.get("OPENBLAS_NUM_THREADS") == env_before)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="counts the threads of a process in /proc, on a machine of several cores")
def test_cv2_is_loaded_without_its_bundled_openblas_threads():
    # The opencv-python wheels bundle an OpenBLAS whose worker threads spin on the cores the
    # engine's threads need; the engine loads cv2 with OPENBLAS_NUM_THREADS=1 (unless set).
    pytest.importorskip("cv2")
    # (the dask workers of the cluster tests, run in this process, leave some of these set to 1)
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOTO_NUM_THREADS",
                                                               "OPENBLAS_NUM_THREADS")}

    def started(how, **env):
        run = subprocess.run([sys.executable, "-c", _THREADS_AFTER_CV2, how], capture_output=True, text=True,
                             env={**base, **env}, check=True)
        threads, env_kept = run.stdout.split()
        assert env_kept == "True"  # the variable is restored (or left as the user set it)
        return int(threads)

    plain = started("plain")
    if plain == 0:
        pytest.skip("this cv2 starts no threads of its own when imported")
    assert started("convcli") < plain
    # a user's own setting is kept: the bundled BLAS then starts the threads asked for
    assert started("convcli", OPENBLAS_NUM_THREADS=str(os.cpu_count())) == plain
