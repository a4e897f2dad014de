"""The numeric core: one convolution layer (pad → correlate → + bias → activation → pool).

The operation is a **cross-correlation**, as in Keras/PyTorch/TensorFlow::

    out[y, x, f] = sum_{i,j,c} in[y*sh + i*dh, x*sw + j*dw, c] * w[i, j, c, f] + bias[f]

over the input padded by :func:`convcli.geometry.conv_pad_amounts`; ``flip`` rotates
each kernel by 180° in its two spatial axes first (true convolution). Output sizes are
those of :func:`convcli.geometry.conv_layer` (the same numbers ``convcli shape`` prints):
valid ``floor((H - ((kh-1)·dh + 1)) / sh) + 1``, same ``ceil(H / sh)``, and so on.

Everything is float32 and vectorised; the work is cut into tiles of output rows so the
scratch memory stays a fraction of the output's size.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from .. import geometry
from ..errors import KernelError, OptionError
from ..layer import ConvSpec, PoolSpec
from . import _common, _threads, ccore, choose, direct, fft, opencv, separable
from ._common import as_image
from ._threads import get_threads, set_threads
from .activations import activate
from .pooling import pool2d

__all__ = [
    "ALGORITHMS", "LayerResult", "WeightsBank", "conv2d", "depthwise_conv2d", "apply_layer", "run_layer",
    "pool2d", "activate", "set_threads", "get_threads", "use_opencv", "use_ccore", "engines",
]

#: Names accepted by ``algorithm=`` (and ``--algorithm``).
ALGORITHMS = ("auto", "direct", "separable", "fft")


@dataclass(frozen=True)
class LayerResult:
    """What :func:`run_layer` computed: the float32 H'×W'×F' output and the path that ran.

    ``algorithm`` is direct, separable or fft; ``backend`` is numpy, opencv when
    ``cv2`` computed it, or ccore when the compiled core did (both only in ``auto`` mode,
    when installed).
    """

    output: np.ndarray
    algorithm: str
    backend: str = "numpy"


def _parse_algorithm(algorithm) -> str:
    name = str(algorithm if algorithm is not None else "auto").strip().lower()
    if name not in ALGORITHMS:
        raise OptionError(f"algorithm: {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    return name


def _check_weights(w: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(w)
    if arr.size == 0 or 0 in arr.shape:
        raise KernelError(f"{name}: the kernel is empty, shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise KernelError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise KernelError(f"{name}: the kernel holds {int(np.sum(~np.isfinite(arr)))} NaN/Inf value(s)")
    return arr


class WeightsBank:
    """The FilterBank interface (size, depth, filters, weights_hwio, biases) over plain arrays.

    ``weights``: (kw,) or (kh, kw) one 2-D kernel (used on every channel), (kh, kw, C)
    one 3-D kernel, or (kh, kw, C, F) HWIO.
    """

    def __init__(self, weights, bias=None, name: str = "weights"):
        w = _check_weights(weights, name)
        if w.ndim == 1:
            w = w.reshape(1, -1)
        if w.ndim == 2:
            self._w, self.depth = w[:, :, None, None], None
        elif w.ndim == 3:
            self._w, self.depth = w[:, :, :, None], w.shape[2]
        elif w.ndim == 4:
            self._w, self.depth = w, w.shape[2]
        else:
            raise KernelError(f"{name}: expected kh×kw, kh×kw×C or kh×kw×C×F (HWIO) weights, got shape {w.shape}")
        self.size = (self._w.shape[0], self._w.shape[1])
        self.filters = self._w.shape[3]
        self._bias = _bias_vector(bias, self.filters, "bias")

    def weights_hwio(self, channels: int) -> np.ndarray:
        if self.depth is None:
            return np.ascontiguousarray(np.broadcast_to(self._w, self.size + (channels, self.filters)))
        if self.depth != channels:
            raise KernelError(f"weights: depth {self.depth} does not match {channels} channels")
        return self._w

    def biases(self) -> np.ndarray:
        return self._bias


def _bias_vector(bias, n: int, name: str) -> np.ndarray:
    if bias is None:
        return np.zeros(n, dtype=np.float32)
    b = np.asarray(bias, dtype=np.float32).reshape(-1)
    if b.size == 1:
        b = np.full(n, b[0], dtype=np.float32)
    if b.size != n:
        raise KernelError(f"{name}: {b.size} values for {n} output maps")
    if not np.all(np.isfinite(b)):
        raise KernelError(f"{name}: holds NaN/Inf")
    return b


_use_opencv = True


def use_opencv(enabled: bool) -> None:
    """Allow (default) or forbid the optional OpenCV backend in ``auto`` mode."""
    global _use_opencv
    _use_opencv = bool(enabled)


use_ccore = ccore.use_ccore


def engines() -> list[str]:
    """The engines this process can use, fastest first: "compiled core (avx512)", "OpenCV 4.x", "numpy"."""
    names = []
    if ccore.active():
        names.append(f"compiled core ({ccore.isa()})")
    if _use_opencv and opencv.installed():
        cv2 = opencv.module()
        if cv2 is not None:
            names.append(f"OpenCV {cv2.__version__}")
    names.append(f"numpy {np.__version__}")
    return names


def _opencv_terms(w: np.ndarray) -> dict:
    """Rank-1 factors of each (kh, kw) slice of ``w`` keyed (channel, filter); slices of higher rank are absent."""
    out = {}
    if min(w.shape[:2]) < 3:
        return out
    for c in range(w.shape[2]):
        for m in range(w.shape[3]):
            pair = separable.decompose(w[:, :, c, m], 1)
            if pair:
                out[(c, m)] = pair[0]
    return out


def _select(x, w, *, pads, spec: ConvSpec, depthwise: bool, out_hw, algorithm: str, finish: int = 0):
    """Pick the path; returns (run, path name, backend).

    ``run(rows=None, epilogue=None, scratch=None, out=None)`` runs it on ``x``.
    """
    path, extra, name, backend = _choose(x.shape, w, pads=pads, spec=spec, depthwise=depthwise, out_hw=out_hw,
                                         algorithm=algorithm, finish=finish)
    return _bind(path, x, w, pads=pads, spec=spec, depthwise=depthwise, out_hw=out_hw, **extra), name, backend


def _bind(path, x, w, *, pads, spec: ConvSpec, depthwise: bool, out_hw, **extra):
    """``run(rows=None, epilogue=None, scratch=None, out=None, **more)``: ``path.correlate`` on ``x``."""
    kwargs = dict(pads=pads, stride=spec.stride, dilation=spec.dilation, border=spec.border,
                  out_hw=out_hw, depthwise=depthwise, **extra)
    return lambda rows=None, epilogue=None, scratch=None, out=None, **more: path.correlate(
        x, w, rows=rows, epilogue=epilogue, scratch=scratch, out=out, **kwargs, **more)


def _choose(x_shape, w, *, pads, spec: ConvSpec, depthwise: bool, out_hw, algorithm: str, finish: int = 0):
    """The path for a layer on an input of ``x_shape``: (path module, its extra arguments, name, backend)."""
    layer_rank = None

    def rank() -> int:
        nonlocal layer_rank
        if layer_rank is None:
            layer_rank = choose.rank_of(w)
        return layer_rank

    if algorithm == "auto":
        cv_ok = _use_opencv and opencv.why_not(x_shape, w.shape, pads=pads, stride=spec.stride,
                                               dilation=spec.dilation, border=spec.border,
                                               depthwise=depthwise, rank1=rank() == 1) is None
        layer = choose.Layer(tuple(x_shape), w.shape, tuple(out_hw), spec.stride, spec.dilation, depthwise, rank(),
                             finish)
        algorithm = choose.choose(layer, opencv_ok=cv_ok, ccore_ok=ccore.active())
        if algorithm == "ccore":
            return ccore, {}, "direct", "ccore"
        if algorithm == "opencv":
            terms = _opencv_terms(w)
            name = "separable" if terms and len(terms) == w.shape[2] * w.shape[3] else "direct"
            return opencv, {"terms": terms}, name, "opencv"
    if algorithm == "separable":
        terms = separable.terms_of(w, depthwise, x_shape[2], choose.MAX_RANK)
        if terms is None:
            raise OptionError(f"algorithm: 'separable' cannot run this layer: a kernel has rank {rank()}"
                              f" (at most {choose.MAX_RANK} is separable)")
        return separable, {"terms": terms}, "separable", "numpy"
    if algorithm == "fft":
        return fft, {}, "fft", "numpy"
    return direct, {}, "direct", "numpy"


def _epilogue(bias: np.ndarray | None, spec: ConvSpec) -> "_common.Epilogue | None":
    """Bias then activation, in place on finished output (None when both are no-ops)."""
    has_bias = bias is not None and bool(np.any(bias))
    if not has_bias and spec.activation.value == "none":
        return None
    return _common.Epilogue(bias if has_bias else None, spec.activation, spec.negative_slope)


#: Most bytes of pre-pool chunks a pooled layer holds at once (all threads together). A
#: bound independent of the image, so a layer is cut into the same chunks whether it runs
#: whole or in bands of rows (:mod:`convcli.engine.bands`), and a huge layer's chunks stay small.
POOL_CHUNK_MAX_BYTES = 32 << 20


def _pool_chunks(conv_hw, n_maps: int, pool: PoolSpec, pooled_bytes: int, macs_per_byte: float) -> tuple[int, int, int]:
    """(pooled rows per chunk, scratch bytes per thread, parts) of a pooled layer.

    ``pooled_bytes``: the size of the whole pooled output. Chunks are cut from row 0 in
    steps of the chunk, whatever rows a call computes.
    """
    ow = conv_hw[1]
    poh = geometry.pool_output_hw(conv_hw, pool)[0]
    conv_row_bytes = 4 * ow * n_maps * pool.strides[0]
    # The pre-pool chunks (one per thread) share the memory budget with the path's tiles.
    budget = min(POOL_CHUNK_MAX_BYTES, max(_common.TILE_MIN_BYTES * 16, int(_common.TILE_FRACTION * pooled_bytes) // 2))
    parts = _threads.threads_for(budget, macs_per_byte)
    per_thread = budget // parts
    chunk = max(1, min(poh, per_thread // max(1, conv_row_bytes)))
    return chunk, per_thread, parts


def _pooled(run, conv_hw, n_maps: int, pool: PoolSpec, epilogue, out=None, macs_per_byte: float = 0.0, *,
            pooled_rows=None, conv_row0: int = 0, pooled_bytes: int | None = None) -> np.ndarray:
    """Convolve and pool in chunks of rows, so the full pre-pool map never exists at once.

    ``macs_per_byte``: the multiply-adds per byte of a tile's scratch (whether threads pay).
    ``pooled_rows=(p0, p1)``: compute only those pooled rows (``p0`` at a chunk boundary);
    ``run`` then computes conv rows counted from ``conv_row0``, and ``pooled_bytes`` is the
    size of the whole layer's pooled output (the chunks are planned for it).
    """
    from .pooling import input_rows, pool_rows

    oh, ow = conv_hw
    poh, pow_ = geometry.pool_output_hw(conv_hw, pool)
    first, last = pooled_rows if pooled_rows is not None else (0, poh)
    out = _common.result_array((last - first, pow_, n_maps), out)
    chunk, per_thread, parts = _pool_chunks(conv_hw, n_maps, pool,
                                            out.nbytes if pooled_bytes is None else pooled_bytes, macs_per_byte)

    def work(p_lo: int, p_hi: int) -> None:
        # Each thread convolves and pools its own chunks; the path inside runs on this
        # thread alone (nested ranges run inline), so chunks need no locking.
        bufs = _common.Buffers()  # this thread's pre-pool chunk, reused (a fresh one per chunk costs its page faults)
        for p0 in range(p_lo + first, p_hi + first, chunk):
            p1 = min(p_hi + first, p0 + chunk)
            a, b = input_rows(pool, conv_hw, (p0, p1))
            conv = run(rows=(a - conv_row0, b - conv_row0), epilogue=epilogue, scratch=per_thread,
                       out=bufs.get("conv", (b - a, ow, n_maps)))
            out[p0 - first:p1 - first] = pool_rows(conv, pool, in_h=oh, out_rows=(p0, p1))

    _threads.run_ranges(work, _threads.tile_ranges(last - first, chunk, parts))
    return out


def run_layer(x, bank, conv: ConvSpec, pool: PoolSpec | None = None, *, algorithm: str = "auto",
              reuse: np.ndarray | None = None) -> LayerResult:
    """Apply one layer of ``bank``'s filters to ``x`` (H×W×C; H×W and 1-D are accepted).

    Parameters
    ----------
    x : array_like
        The input, converted to float32 H×W×C (a 1-D signal of length L is 1×L×1).
    bank : FilterBank
        Anything with ``size``, ``depth``, ``filters``, ``weights_hwio(C)`` and ``biases()``.
        2-D kernels act on every channel and the products are summed (one map per
        kernel); 3-D kernels must have depth C.
    conv : ConvSpec
        Stride, padding, dilation, border, flip, depthwise, activation.
        With ``depthwise`` each 2-D kernel is applied to every channel separately
        (Keras DepthwiseConv2D, multiplier F); a 3-D kernel of depth C gives channel c its
        own slice. Output channel c·F + f holds channel c through filter f, plus filter
        f's bias.
    pool : PoolSpec, optional
        Max/avg pooling after the activation.
    algorithm : {'auto', 'direct', 'separable', 'fft'}
        Force a path; ``auto`` lets the cost model choose.
    reuse : numpy.ndarray, optional
        An array that is no longer needed (an earlier result): when it has the output's
        shape and is float32 and C-contiguous, the output is written into it, which saves
        fresh memory's page faults on large outputs. Otherwise it is ignored.

    Returns
    -------
    LayerResult
        ``output``: float32 H'×W'×F (F·C with ``depthwise``), sizes as
        :func:`convcli.geometry.conv_layer` then :func:`~convcli.geometry.pool_layer`
        compute them; ``algorithm``: the path that ran.

    Raises
    ------
    GeometryError
        The output would be empty, or 3-D kernels do not match C (same messages as ``shape``).
    OptionError
        An unknown algorithm, or one that cannot serve this layer.
    """
    algo = _parse_algorithm(algorithm)
    # A 2-D kernel sums the channels first: uint8/uint16 pixels are summed as integers.
    x = as_image(x, keep_integers=bank.depth is None and not conv.depthwise)
    geom = geometry.conv_layer(x.shape, kernel_size=tuple(bank.size), filters=bank.filters,
                               spec=conv, kernel_depth=bank.depth)
    if pool is not None:
        geometry.pool_layer(geom.output_shape, pool)  # fail before the work, not after
    weights, bias, sums = _layer_weights(bank, conv, x.shape[2])
    x = _layer_input(x, sums)
    epilogue = _epilogue(bias, conv)
    run, used, backend = _select(x, weights, pads=geom.pads, spec=conv, depthwise=conv.depthwise,
                                 out_hw=geom.output_shape[:2], algorithm=algo,
                                 finish=0 if epilogue is None else epilogue.passes)
    final_hw = geom.output_shape[:2] if pool is None else geometry.pool_output_hw(geom.output_shape[:2], pool)
    final_shape = tuple(final_hw) + (geom.output_shape[2],)
    target = (reuse if reuse is not None and reuse.shape == final_shape and reuse.dtype == np.float32
              and reuse.flags.c_contiguous and reuse.flags.writeable else None)
    try:
        if pool is None:
            out = run(epilogue=epilogue, out=target)
        elif backend == "ccore" and ccore.can_pool(pool, geom.output_shape[:2]):
            # Convolution, bias, activation and pooling in one pass: no un-pooled rows in memory.
            out = ccore.correlate_pooled(x, weights, pool, pads=geom.pads, stride=conv.stride,
                                         dilation=conv.dilation, border=conv.border,
                                         out_hw=geom.output_shape[:2], depthwise=conv.depthwise,
                                         epilogue=epilogue, out=target)
        else:
            # OpenCV's chunks run banded on the engine's threads, with its own pool at one thread.
            cv_pool = opencv.pool_threads(opencv.module(), 1) if backend == "opencv" else contextlib.nullcontext()
            with cv_pool:
                out = _pooled(run, geom.output_shape[:2], geom.output_shape[2], pool, epilogue, out=target,
                              macs_per_byte=direct.tile_macs_per_byte(x.shape[2], weights.shape, conv.depthwise))
    finally:
        _common.release_buffers()
    return LayerResult(out, used, backend)


def _layer_weights(bank, conv: ConvSpec, channels: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(float32 HWIO weights as the paths take them, float32 bias per output map, sums channels).

    ``sums``: the layer correlates the channel sum of its input (:func:`_layer_input`).
    """
    bias = np.asarray(bank.biases(), dtype=np.float32)
    sums = False
    if conv.depthwise:
        # (kh, kw, 1, F): the same 2-D kernels for every channel; (kh, kw, C, F): a slice each.
        weights = bank.weights_hwio(1) if bank.depth in (None, 1) else bank.weights_hwio(channels)
        bias = np.tile(bias, channels)  # output c·F + f gets filter f's bias
    elif bank.depth is None and channels > 1:
        # A 2-D kernel on C channels means np.repeat(kernel, C, axis=2) (SPEC §1). By
        # linearity, sum_c corr(x_c, k) = corr(sum_c x_c, k) for every border mode (each
        # is a linear re-indexing), so correlate the channel sum once: C times less work.
        weights, sums = bank.weights_hwio(1), True
    else:
        weights = bank.weights_hwio(channels)
    weights = np.asarray(weights, dtype=np.float32)
    if conv.flip:
        weights = weights[::-1, ::-1]  # spatial axes only; the channel axis is not flipped
    return weights, bias, sums


def _layer_input(x: np.ndarray, sums: bool) -> np.ndarray:
    """The float32 array the path correlates: ``x`` itself, or its channel sum (pixel by pixel)."""
    if sums:
        x = _channel_sum(x)
    return np.asarray(x, dtype=np.float32)  # integer pixels of a single channel


def _channel_sum(x: np.ndarray) -> np.ndarray:
    """``x.sum(axis=2, keepdims=True)`` as float32 (H, W, 1), added channel by channel in order.

    numpy's reduction over a short last axis runs an inner loop of C elements per pixel
    (40 ms on a 1080p RGB image); whole-plane adds take 3 ms. For C < 8 numpy's pairwise
    sum adds in this same order, so the values are identical. uint8/uint16 pixels are
    summed as integers and converted once — the same values as converting first (sums
    below 2**24 are exact either way), without a float32 copy of every channel.
    """
    top = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}.get(x.dtype)
    if top is not None and top * x.shape[2] >= 2**24:
        x, top = x.astype(np.float32), None  # an integer sum could pass float32's exact range
    if top is None:
        total = np.add(x[:, :, 0], x[:, :, 1], dtype=np.float32)
    else:
        total = np.add(x[:, :, 0], x[:, :, 1], dtype=np.uint16 if top * x.shape[2] < 2**16 else np.uint32)
    for ch in range(2, x.shape[2]):
        total += x[:, :, ch]
    return np.asarray(total, dtype=np.float32)[:, :, None]


def _pool_spec(pool, pool_size, pool_stride, pool_padding) -> PoolSpec | None:
    if pool is None or isinstance(pool, PoolSpec):
        return pool
    if str(getattr(pool, "value", pool)).strip().lower() == "none":
        return None
    return PoolSpec.from_options(mode=pool, size=pool_size, stride=pool_stride, padding=pool_padding)


def _as_bank(bank):
    if hasattr(bank, "weights_hwio"):
        return bank
    if isinstance(bank, np.ndarray):
        return WeightsBank(bank)
    from ..kernels import load_kernels

    return load_kernels(*bank) if isinstance(bank, (list, tuple)) else load_kernels(bank)


def apply_layer(x, bank, *, stride=1, padding="valid", dilation=1, border="zeros", flip=False,
                depthwise=False, activation=None, negative_slope=0.3, pool=None, pool_size=2,
                pool_stride=None, pool_padding="valid", algorithm="auto") -> np.ndarray:
    """Apply a filter bank as one layer (pad → correlate → + bias → activation → pool).

    ``bank`` is a FilterBank, an HWIO weights array, or kernel sources for
    :func:`convcli.load_kernels`. The options are those of ``convcli apply`` (SPEC §1).
    Returns float32 H'×W'×F (see :func:`run_layer` for the shape rules).
    """
    spec = ConvSpec.from_options(stride=stride, padding=padding, dilation=dilation, border=border, flip=flip,
                                 depthwise=depthwise, activation=activation, negative_slope=negative_slope)
    return run_layer(x, _as_bank(bank), spec, _pool_spec(pool, pool_size, pool_stride, pool_padding),
                     algorithm=algorithm).output


def conv2d(x, weights, bias=None, *, stride=1, padding="valid", dilation=1, border="zeros", flip=False,
           algorithm="auto") -> np.ndarray:
    """Cross-correlate ``x`` (H×W×C; H×W → H×W×1) with HWIO ``weights`` (kh×kw×C×F).

    ``weights`` may also be kh×kw (one 2-D kernel used on every channel, summed),
    kh×kw×C (one filter) or kw (a 1-D kernel, 1×kw). ``bias``: None, a number or F
    values. Returns float32 H'×W'×F with H' = floor((H + pad_h − ((kh−1)·dh+1)) / sh) + 1
    (valid/explicit/full/causal) or ceil(H / sh) (same), likewise W'.
    """
    spec = ConvSpec.from_options(stride=stride, padding=padding, dilation=dilation, border=border, flip=flip)
    return run_layer(x, WeightsBank(weights, bias), spec, algorithm=algorithm).output


def depthwise_conv2d(x, weights, bias=None, *, stride=1, padding="valid", dilation=1, border="zeros",
                     flip=False, algorithm="auto") -> np.ndarray:
    """Keras DepthwiseConv2D: each channel correlated with its own kernels.

    ``weights`` is (kh, kw, C, M) (Keras layout, depth multiplier M) or (kh, kw, 1, M)
    (the same M 2-D kernels for every channel); kh×kw means (kh, kw, 1, 1). ``bias``:
    None, a number, C·M values (Keras) or M values (one per kernel, added to every
    channel). Returns float32 H'×W'×(C·M), channel-major: map c·M + m is channel c
    through kernel m. Output sizes as :func:`conv2d`.
    """
    w = _check_weights(weights, "weights")
    if w.ndim == 1:
        w = w.reshape(1, -1)
    if w.ndim == 2:
        w = w[:, :, None, None]
    elif w.ndim == 3:
        w = w[:, :, :, None]
    elif w.ndim != 4:
        raise KernelError(f"weights: expected kh×kw×C×M depthwise weights, got shape {w.shape}")
    x = as_image(x)
    c, m = x.shape[2], w.shape[3]
    if bias is not None and np.size(bias) == c * m and c > 1 and m != c * m:
        # Keras' (C·M,) bias: hand the engine M zeros and add the full vector afterwards.
        full_bias = _bias_vector(bias, c * m, "bias")
        bank = WeightsBank(w, None)
    else:
        full_bias = None
        bank = WeightsBank(w, bias)
    spec = ConvSpec.from_options(stride=stride, padding=padding, dilation=dilation, border=border,
                                 flip=flip, depthwise=True)
    out = run_layer(x, bank, spec, algorithm=algorithm).output
    if full_bias is not None:
        out += full_bias
    return out


from .bands import LayerPlan, plan_layer  # noqa: E402  (bands uses the helpers above)

__all__ += ["LayerPlan", "plan_layer"]
