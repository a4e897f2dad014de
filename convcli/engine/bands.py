"""One layer in bands of output rows, bit for bit the same as the whole-image call.

:func:`convcli.engine.run_layer` cuts a layer's output into tiles of rows (direct,
separable), blocks (fft) or pooled chunks, planned from the layer alone — its sizes, its
weights and the machine's CPU count — never from the rows a call computes (each path's
``row_unit`` says how many rows its tiles have). :class:`LayerPlan` computes any rows of
the output in whole tiles of that plan, from the input rows they need, so each pixel
comes out of the same numpy/BLAS/FFT call, with the same operands, as in the whole-image
call: the result is identical, not merely close.

The input rows come from a ``read(a, b)`` function (rows [a, b) of the layer's input,
``0 <= a < b <= H``, as an array (b − a, W, C)); the plan asks for the rows its window
needs, including the rows a reflect, replicate or circular border brings in from
elsewhere in the image. The window is padded vertically by the plan (with
:func:`~convcli.engine._common.source_index`, the engine's one definition of the borders)
and handed to the path with no top or bottom padding; the columns are padded by the path
as usual.

Example — the output of a layer, band by band, from an array held elsewhere::

    plan = plan_layer(x.shape, bank, conv_spec, pool_spec)
    for a in range(0, plan.output_shape[0], plan.unit * 8):
        band = plan.compute(lambda r0, r1: x[r0:r1], (a, min(a + plan.unit * 8, plan.output_shape[0])))
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import geometry
from ..layer import ConvSpec, PoolSpec
from . import _common, ccore, direct, fft, opencv
from ._common import as_image, source_index

#: ``read(a, b)``: rows [a, b) of a layer's input, (b − a, W, C).
ReadRows = Callable[[int, int], np.ndarray]


@dataclass
class LayerPlan:
    """A conv layer (with the pooling that follows it, if any) planned for one input size.

    Attributes
    ----------
    input_shape : (H, W, C)
        The layer's input.
    output_shape : (H', W', F')
        Its output (pooled, when there is a pool).
    unit : int
        Output rows of one tile of the plan: a band whose first row is a multiple of it
        costs no recomputation at its seams.
    algorithm, backend : str
        The path that runs (as :class:`~convcli.engine.LayerResult` names it).
    """

    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    unit: int
    algorithm: str
    backend: str
    conv: ConvSpec
    pool: PoolSpec | None
    _path: object = field(repr=False)
    _extra: dict = field(repr=False)
    _weights: np.ndarray = field(repr=False)
    _epilogue: object = field(repr=False)
    _sums: bool = field(repr=False)
    _keep_integers: bool = field(repr=False)
    _conv_hw: tuple[int, int] = field(repr=False)
    _pads: tuple[int, int, int, int] = field(repr=False)
    _scratch: int = field(repr=False)
    _pooled_bytes: int = field(repr=False)
    _rows_map: np.ndarray = field(repr=False)
    _opencv_whole: bool = field(repr=False, default=False)
    _ccore_pooled: bool = field(repr=False, default=False)

    @property
    def row_step(self) -> int:
        """Input rows per output row: the conv stride times the pool stride."""
        return self.conv.stride[0] * (self.pool.strides[0] if self.pool is not None else 1)

    @property
    def halo_rows(self) -> int:
        """Input rows a band reads beyond ``row_step`` per output row (its overlap with the next band)."""
        rows = min(self.unit, self.output_shape[0])
        p0, p1 = self.input_span(0, rows)
        return max(0, (p1 - p0) - rows * self.row_step)

    def conv_rows(self, r0: int, r1: int) -> tuple[int, int]:
        """The conv rows (before pooling) whole units around output rows [r0, r1) compute."""
        a, b = self._units(r0, r1)
        if self.pool is None:
            return a, b
        from .pooling import input_rows

        return input_rows(self.pool, self._conv_hw, (a, b))

    def input_span(self, r0: int, r1: int) -> tuple[int, int]:
        """Padded input rows [p0, p1) the whole units around output rows [r0, r1) read."""
        ca, cb = self.conv_rows(r0, r1)
        (sh, _), (dh, _) = self.conv.stride, self.conv.dilation
        eh = (self._weights.shape[0] - 1) * dh + 1
        return ca * sh, (cb - 1) * sh + eh

    def input_rows(self, r0: int, r1: int) -> list[tuple[int, int]]:
        """Runs [a, b) of the input's own rows that output rows [r0, r1) need, in increasing order.

        The rows of the band itself and, at the image's top or bottom, the rows its border
        copies (for ``circular``, those of the other end).
        """
        p0, p1 = self.input_span(r0, r1)
        return _runs(self._rows_map[p0:p1])

    def _units(self, r0: int, r1: int) -> tuple[int, int]:
        unit, oh = self.unit, self.output_shape[0]
        return r0 // unit * unit, min(oh, -(-r1 // unit) * unit)

    def compute(self, read: ReadRows, rows: tuple[int, int]) -> np.ndarray:
        """Output rows [r0, r1) as float32 (r1 − r0, W', F'), identical to those of the whole-image call.

        ``read(a, b)`` gives rows [a, b) of the input (uint8/uint16 pixels, or any real
        dtype, converted here as :func:`~convcli.engine.run_layer` converts them).
        Whole units are computed and the rows asked for are returned (a view).
        """
        r0, r1 = rows
        if not 0 <= r0 < r1 <= self.output_shape[0]:
            raise ValueError(f"rows: expected 0 <= r0 < r1 <= {self.output_shape[0]}, got {rows}")
        from . import _bind, _pooled

        a, b = self._units(r0, r1)
        if self._opencv_whole:
            return self._opencv_rows(read, a, b)[r0 - a:r1 - a]
        ca, cb = self.conv_rows(r0, r1)
        p0, p1 = self.input_span(r0, r1)
        window = self._window(read, p0, p1)
        top, bottom, left, right = self._pads
        run = _bind(self._path, window, self._weights, pads=(0, 0, left, right), spec=self.conv,
                    depthwise=self.conv.depthwise, out_hw=(cb - ca, self._conv_hw[1]), **self._extra)
        cv2 = opencv.module() if self.backend == "opencv" else None
        # OpenCV's own pool at one thread while the engine's threads run the bands (a
        # caller streaming many bands sets it once: changing it restarts OpenCV's threads).
        cv_pool = (opencv.pool_threads(cv2, 1) if cv2 is not None and cv2.getNumThreads() != 1
                   else contextlib.nullcontext())
        with cv_pool:
            if self._ccore_pooled:
                # As run_layer: the compiled loop convolves, finishes and pools in one pass (its
                # conv rows for pooled rows [a, b) are [a·ph, b·ph): valid pooling, stride = size).
                out = ccore.correlate_pooled(window, self._weights, self.pool, pads=(0, 0, left, right),
                                             stride=self.conv.stride, dilation=self.conv.dilation,
                                             border=self.conv.border, out_hw=(cb - ca, self._conv_hw[1]),
                                             depthwise=self.conv.depthwise, epilogue=self._epilogue)
            elif self.pool is None:
                more = {"layer_rows": self.output_shape[0]} if self._path is fft else {}
                epilogue = self._epilogue
                if self._opencv_whole and epilogue is not None:
                    # The whole-image call adds the bias after OpenCV's filter, not as its
                    # ``delta`` (which rounds differently): so must the bands.
                    epilogue = _unfused(epilogue)
                out = run(rows=(0, cb - ca), epilogue=epilogue, scratch=self._scratch, **more)
            else:
                out = _pooled(run, self._conv_hw, self.output_shape[2], self.pool, self._epilogue,
                              macs_per_byte=direct.tile_macs_per_byte(window.shape[2], self._weights.shape,
                                                                      self.conv.depthwise),
                              pooled_rows=(a, b), conv_row0=ca, pooled_bytes=self._pooled_bytes)
        return out[r0 - a:r1 - a]

    def _opencv_rows(self, read: ReadRows, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of a one-call OpenCV layer, computed as run_layer computes them whole.

        One filter call on OpenCV's threads over the input rows with their halo, with the
        layer's own anchor and border (OpenCV picks its symmetric-kernel loops only for a
        centred anchor, and they round differently), then the bias and activation. At the
        image's top and bottom OpenCV makes the border rows itself, as in the whole call;
        the rows it invents past a band's cut are only read by rows that are cropped.
        """
        cv2 = opencv.module()
        h = self.input_shape[0]
        top = self._pads[0]
        kh = self._weights.shape[0]
        s0, s1 = max(0, a - top), min(h, b - top + kh - 1)
        if s0 == 0:  # the rows a border at the top reflects must be in the window
            s1 = min(h, max(s1, kh))
        if s1 == h:
            s0 = max(0, min(s0, h - kh))
        window = as_image(np.asarray(read(s0, s1)), keep_integers=self._keep_integers)
        from . import _layer_input, get_threads

        window = np.ascontiguousarray(_layer_input(window, self._sums))
        job = opencv._Job(cv2, window, self._weights, pads=self._pads, border=self.conv.border,
                          out_w=self._conv_hw[1], depthwise=self.conv.depthwise, terms=self._extra.get("terms") or {})
        full = np.empty(window.shape[:2] + (self.output_shape[2],), np.float32)
        threads = get_threads()
        with (opencv.pool_threads(cv2, threads) if cv2.getNumThreads() != threads else contextlib.nullcontext()):
            job.whole(full)
        out = full[a - s0:b - s0]
        if self._epilogue is not None:
            self._epilogue(out)
        return out

    def _window(self, read: ReadRows, p0: int, p1: int) -> np.ndarray:
        """Padded input rows [p0, p1), as the path correlates them (float32, channels summed if so)."""
        index = self._rows_map[p0:p1]
        h, w, c = self.input_shape
        pieces: dict[int, np.ndarray] = {}
        for a, b in _runs(index):
            block = np.asarray(read(a, b))
            if block.shape != (b - a, w, c):
                raise ValueError(f"read({a}, {b}) gave shape {block.shape}, expected {(b - a, w, c)}")
            pieces[a] = block
        dtype = next(iter(pieces.values())).dtype if pieces else np.float32
        if not (self._sums and self._keep_integers and dtype in (np.uint8, np.uint16)):
            # The path correlates float32 values: convert while copying (pixel by pixel, as
            # run_layer's one conversion), not in a second pass.
            dtype = np.float32
        window = np.empty((p1 - p0, w, c), dtype=dtype)
        starts = sorted(pieces)
        for position, row in enumerate(index):
            if row < 0:
                window[position] = 0
        # Runs of consecutive source rows are copied as blocks (the interior is one run).
        position = 0
        while position < len(index):
            row = int(index[position])
            if row < 0:
                position += 1
                continue
            length = 1
            while position + length < len(index) and index[position + length] == row + length:
                length += 1
            start = starts[np.searchsorted(starts, row, side="right") - 1]
            window[position:position + length] = pieces[start][row - start:row - start + length]
            position += length
        window = as_image(window, keep_integers=self._keep_integers)
        from . import _layer_input

        return np.ascontiguousarray(_layer_input(window, self._sums))


def _runs(index: np.ndarray) -> list[tuple[int, int]]:
    """The source rows ``index`` names (-1: a zero row), as increasing runs [a, b)."""
    wanted = np.unique(index)
    wanted = wanted[wanted >= 0]
    if wanted.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(wanted) > 1) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(wanted, cuts)]


def plan_layer(input_shape, bank, conv: ConvSpec, pool: PoolSpec | None = None, *,
               algorithm: str = "auto") -> LayerPlan:
    """Plan ``bank``'s layer (and ``pool`` after it) on an input of ``input_shape`` (H, W, C).

    The path is chosen as :func:`~convcli.engine.run_layer` chooses it for that input
    (the cost model sees the whole image), so both run the same path with the same tiles.

    Raises
    ------
    GeometryError
        The output would be empty, or 3-D kernels do not match C (as ``run_layer``).
    OptionError
        An unknown algorithm, or one that cannot serve this layer.
    """
    from . import _choose, _epilogue, _layer_weights, _parse_algorithm, _pool_chunks

    algo = _parse_algorithm(algorithm)
    h, w, c = (int(v) for v in input_shape)
    geom = geometry.conv_layer((h, w, c), kernel_size=tuple(bank.size), filters=bank.filters,
                               spec=conv, kernel_depth=bank.depth)
    conv_hw = tuple(geom.output_shape[:2])
    n_maps = geom.output_shape[2]
    if pool is not None:
        geometry.pool_layer(geom.output_shape, pool)
        final_hw = geometry.pool_output_hw(conv_hw, pool)
    else:
        final_hw = conv_hw
    weights, bias, sums = _layer_weights(bank, conv, c)
    prepared = (h, w, 1 if sums else c)
    epilogue = _epilogue(bias, conv)
    path, extra, name, backend = _choose(prepared, weights, pads=geom.pads, spec=conv, depthwise=conv.depthwise,
                                         out_hw=conv_hw, algorithm=algo,
                                         finish=0 if epilogue is None else epilogue.passes)
    scratch = int(_common.TILE_FRACTION * conv_hw[0] * conv_hw[1] * n_maps * 4)
    pooled_bytes = final_hw[0] * final_hw[1] * n_maps * 4
    ccore_pooled = pool is not None and backend == "ccore" and ccore.can_pool(pool, conv_hw)
    if pool is None or ccore_pooled:
        unit = path.row_unit(prepared, weights.shape, out_hw=conv_hw, stride=conv.stride, dilation=conv.dilation,
                             depthwise=conv.depthwise, scratch=scratch, **extra)
    else:
        unit = _pool_chunks(conv_hw, n_maps, pool, pooled_bytes,
                            direct.tile_macs_per_byte(prepared[2], weights.shape, conv.depthwise))[0]
    top, bottom = geom.pads[0], geom.pads[1]
    return LayerPlan(
        input_shape=(h, w, c), output_shape=(final_hw[0], final_hw[1], n_maps), unit=max(1, int(unit)),
        algorithm=name, backend=backend, conv=conv, pool=pool, _path=path, _extra=extra, _weights=weights,
        _epilogue=epilogue, _sums=sums, _keep_integers=bank.depth is None and not conv.depthwise,
        _conv_hw=conv_hw, _pads=tuple(geom.pads), _scratch=scratch, _pooled_bytes=pooled_bytes,
        _rows_map=source_index(h, top, bottom, conv.border),
        # run_layer gives such a layer to one OpenCV call on the whole image (see opencv.correlate).
        _opencv_whole=(backend == "opencv" and pool is None and opencv.one_call(prepared, weights.shape, conv.depthwise)
                       and (conv_hw[0], conv_hw[1], n_maps) == prepared),
        _ccore_pooled=ccore_pooled,
    )


def _unfused(epilogue):
    """The epilogue as a plain function: a path then applies it after its filters, not inside them."""
    return lambda block: epilogue(block)


def pool_rows_of(x_rows: np.ndarray, pool: PoolSpec, *, in_hw, rows: tuple[int, int]) -> np.ndarray:
    """Pooled rows [r0, r1) of a map of size ``in_hw`` from its rows :func:`pool_input_rows` gives."""
    from .pooling import pool_rows

    return pool_rows(np.asarray(x_rows, dtype=np.float32), pool, in_h=in_hw[0], out_rows=rows)


def pool_input_rows(pool: PoolSpec, in_hw, rows: tuple[int, int]) -> tuple[int, int]:
    """Rows [a, b) of a map that pooled rows ``rows`` read (a pooling step on its own)."""
    from .pooling import input_rows

    return input_rows(pool, in_hw, rows)


__all__ = ["LayerPlan", "plan_layer", "pool_rows_of", "pool_input_rows", "ReadRows"]
