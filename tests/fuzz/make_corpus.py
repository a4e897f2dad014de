"""Write the fuzzers' seed corpus: small valid files of every format convcli reads.

Run from the repository root (``python tests/fuzz/make_corpus.py``); the files land in
``tests/fuzz/corpus/`` and are committed, so every fuzz run starts from the same bytes.
The output is deterministic: fixed pixel values, no timestamps (PNG and TIFF writers
here add none), so re-running it gives the same files and ``git status`` stays clean.

Images are 5×7 or 6×4 pixels (odd and even sizes), kernels 3×3: the whole corpus is a
few tens of KB, and a mutated seed decodes in well under a millisecond when it decodes.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

CORPUS = Path(__file__).resolve().parent / "corpus"


def _pixels(height: int, width: int, channels: int, dtype=np.uint8) -> np.ndarray:
    """Deterministic, varied values (every channel different) in the dtype's range."""
    top = 255 if dtype == np.uint8 else 65535
    grid = np.arange(height * width * channels, dtype=np.int64).reshape(height, width, channels)
    return ((grid * 7919 + 13) % (top + 1)).astype(dtype)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png(array: np.ndarray, color_type: int, bit_depth: int, palette: bytes | None = None,
         trns: bytes | None = None) -> bytes:
    """A minimal PNG written by hand (filter 0 rows), so every header field is ours."""
    height, width = array.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    data = array.astype(">u2" if bit_depth == 16 else np.uint8).reshape(height, -1).tobytes()
    stride = len(data) // height
    raw = b"".join(b"\x00" + data[r * stride:(r + 1) * stride] for r in range(height))
    out = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
    if palette is not None:
        out += _png_chunk(b"PLTE", palette)
    if trns is not None:
        out += _png_chunk(b"tRNS", trns)
    # Two IDAT chunks: the decoder must join them (a mutation may cut between them).
    body = zlib.compress(raw, 9)
    half = len(body) // 2
    return out + _png_chunk(b"IDAT", body[:half]) + _png_chunk(b"IDAT", body[half:]) + _png_chunk(b"IEND", b"")


def _pillow(array: np.ndarray, fmt: str, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _tiff(array: np.ndarray, **options) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def images() -> dict[str, bytes]:
    gray8 = _pixels(5, 7, 1)
    rgb8 = _pixels(5, 7, 3)
    rgba8 = _pixels(6, 4, 4)
    gray16 = _pixels(6, 4, 1, np.uint16)
    rgb16 = _pixels(5, 7, 3, np.uint16)
    rgba16 = _pixels(5, 7, 4, np.uint16)
    la16 = _pixels(6, 4, 2, np.uint16)
    indices = (_pixels(5, 7, 1) % 4).astype(np.uint8)
    palette = bytes([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    planar = np.ascontiguousarray(np.moveaxis(_pixels(5, 7, 3, np.uint16), -1, 0))
    float_gray = (_pixels(6, 4, 1, np.uint16).astype(np.float32) / 1000.0 - 20.0)
    return {
        "gray8.png": _png(gray8, 0, 8),
        "rgb8.png": _png(rgb8, 2, 8),
        "rgba8.png": _png(rgba8, 6, 8),
        "gray16.png": _png(gray16, 0, 16),
        "rgb16.png": _png(rgb16, 2, 16),
        "rgba16.png": _png(rgba16, 6, 16),
        "la16.png": _png(la16, 4, 16),
        "palette.png": _png(indices, 3, 8, palette=palette),
        "palette-trns.png": _png(indices, 3, 8, palette=palette, trns=bytes([0, 128])),
        "pillow-rgb.png": _pillow(rgb8, "PNG"),
        "rgb.jpg": _pillow(rgb8, "JPEG", quality=90),
        "gray-progressive.jpg": _pillow(gray8, "JPEG", quality=75, progressive=True),
        "gray8.tif": _tiff(gray8[:, :, 0]),
        "rgb16.tif": _tiff(rgb16, photometric="rgb"),
        "planar16.tif": _tiff(planar, photometric="rgb", planarconfig="separate"),
        "float32.tif": _tiff(float_gray[:, :, 0]),
        "float-rgb.tif": _tiff(rgb8.astype(np.float32) / 255.0, photometric="rgb"),
        "tiled.tif": _tiff(_pixels(32, 48, 1)[:, :, 0], tile=(16, 16)),
        "tiled-deflate.tif": _tiff(_pixels(32, 32, 3), tile=(16, 16), photometric="rgb", compression="zlib"),
        "bigtiff.tif": _tiff(gray16[:, :, 0], bigtiff=True),
        "lzw.tif": _pillow(rgb8, "TIFF", compression="tiff_lzw"),
        "palette.tif": _palette_tiff(indices),
        "rgb.bmp": _pillow(rgb8, "BMP"),
        "gray.bmp": _pillow(gray8, "BMP"),
        "palette.gif": _gif(indices),
        "rgb-lossless.webp": _pillow(rgb8, "WEBP", lossless=True),
        "rgba.webp": _pillow(rgba8, "WEBP", quality=80),
    }


def _palette_tiff(indices: np.ndarray) -> bytes:
    from PIL import Image

    image = Image.fromarray(indices[:, :, 0], mode="L").convert("P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 12))
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    return buffer.getvalue()


def _gif(indices: np.ndarray) -> bytes:
    from PIL import Image

    image = Image.fromarray(indices[:, :, 0], mode="L").convert("P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 12))
    buffer = io.BytesIO()
    image.save(buffer, format="GIF")
    return buffer.getvalue()


def arrays() -> dict[str, bytes]:
    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()

    values = np.arange(35, dtype=np.float64).reshape(5, 7) / 4 - 3
    return {
        "table.csv": b"# a 3x4 table\n1,2,3,4\n5,6.5,-7,8\n9,10,11,1e3\n",
        "signal.csv": b"0,0,1,1,0,0\n",
        "table.txt": b"1 2 3\n4 5 6\n7 8 9\n10 11 12\n",
        "column.txt": b"1\n2\n3\n4\n5\n",
        "float64.npy": npy(values),
        "uint8-hwc.npy": npy(_pixels(5, 7, 3)),
        "uint16.npy": npy(_pixels(4, 6, 1, np.uint16)[:, :, 0]),
        "int32-signal.npy": npy(np.arange(9, dtype=np.int32)),
        "bool.npy": npy(np.eye(4, dtype=bool)),
        "float32-fortran.npy": npy(np.asfortranarray(values.astype(np.float32))),
    }


def kernels() -> dict[str, bytes]:
    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()

    sobel = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    bank = {"name": "bank", "description": "two filters",
            "filters": [{"name": "sx", "weights": sobel, "bias": 0.5},
                        {"name": "sy", "weights": [list(r) for r in zip(*sobel)], "scale": 2, "normalize": False}]}
    hwio = np.arange(3 * 3 * 2 * 2, dtype=np.float32).reshape(3, 3, 2, 2) / 10
    return {
        "single.yaml": b"name: vline\ndescription: a vertical line\nweights: [[0, 1, 0], [0, 1, 0], [0, 1, 0]]\n"
                       b"bias: 0.25\nscale: 2\n",
        "block.yaml": b"weights:\n  - [1, 2, 1]\n  - [2, 4, 2]\n  - [1, 2, 1]\nnormalize: true\n",
        "bank.yaml": b"name: pair\nfilters:\n  - name: a\n    weights: [[1, 0], [0, -1]]\n"
                     b"  - name: b\n    weights: [[0, 1], [-1, 0]]\n    bias: -1.5\n",
        "anchors.yaml": b"weights: [&row [1, 2, 1], *row, *row]\n",
        "conv1d-wio.yaml": b"name: bump\nlayout: wio\nweights: [[[0]], [[1]], [[0]]]\nbias: [0.0]\n",
        "oihw.yaml": b"layout: oihw\nweights: " + json.dumps(np.moveaxis(hwio, (2, 3), (1, 0)).tolist()).encode() + b"\n",
        "bank.json": json.dumps(bank).encode(),
        "hwio.json": json.dumps({"weights": hwio.tolist(), "bias": [0.1, -0.1]}).encode(),
        "list.json": b"[[1, 2, 3], [4, 5, 6], [7, 8, 9]]",
        "sharpen.mat": b"3 3 1 0\n0 -1 0\n-1 5 -1\n0 -1 0\n",
        "blur.mat": b"3 3 16 2\n1 2 1\n2 4 2\n1 2 1\n",
        "kernel2d.npy": npy(np.array(sobel, dtype=np.float64)),
        "hwio.npy": npy(hwio),
        "int-kernel.npy": npy(np.array(sobel, dtype=np.int16)),
        "inline.magick": b"3x3: 0,1,0 0,1,0 0,1,0",
        "inline-square.magick": b"3: -1,-1,-1 -1,8,-1 -1,-1,-1",
        "inline-rows.magick": b"2x3: 1 2; 3 4; 5 6",
        "inline-json.magick": b"[[0, 1], [1, 0]]",
    }


def pipelines() -> dict[str, bytes]:
    return {
        "edge-pool.yaml": b"layers:\n  - conv: {kernels: [sobel-x, sobel-y], padding: same, activation: abs}\n"
                          b"  - pool: {mode: max, size: 2}\n",
        "two-conv.yaml": b"name: net\ndescription: two layers\nlayers:\n"
                         b"  - conv: {kernels: ['3x3: 0,1,0 0,1,0 0,1,0'], stride: 1, padding: valid, bias: 0.5}\n"
                         b"  - conv: {kernels: [edge], dilation: 1, activation: relu, name: second}\n",
        "depthwise.yaml": b"layers:\n  - conv: {kernels: [box-blur], depthwise: true, padding: [1, 1], border: reflect}\n"
                          b"  - pool: {mode: avg, size: [2, 1], stride: 1, padding: same}\n",
        "leaky.json": json.dumps({"layers": [{"conv": {"kernels": "sharpen", "activation": "leaky-relu",
                                                        "negative_slope": 0.1, "flip": True}},
                                             {"pool": {"mode": "max", "size": 2}}]}).encode(),
        "shape-only.yaml": b"layers:\n  - conv: {filters: 4, kernel_size: 3}\n  - conv: {filters: 2, kernel_size: [1, 3], stride: 2}\n",
    }


def main() -> int:
    groups = {"images": images(), "arrays": arrays(), "kernels": kernels(), "pipelines": pipelines()}
    total = 0
    for group, files in groups.items():
        folder = CORPUS / group
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.iterdir():
            if stale.name not in files:
                stale.unlink()
        for name, blob in sorted(files.items()):
            (folder / name).write_bytes(blob)
            total += len(blob)
    print(f"{sum(len(f) for f in groups.values())} seed files, {total:,} bytes in {CORPUS.name}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
