"""Tests for convcli.io: every format and bit depth read back exactly, the 16-bit
colour PNG path against a plain-Python PNG encoder (all five filters, Adam7), the
display mappings against numpy.interp, and every error message."""

from __future__ import annotations

import io
import os
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convcli.io as cio
from convcli.io import _common
from convcli.io import png as png_encoder
from convcli.errors import InputError, OptionError, OutputError

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_images"
SIZES = [(7, 10), (8, 9), (1, 5), (13, 1)]  # odd and even, one row, one column


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- helpers


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _filter_rows(sub: np.ndarray, bit_depth: int, filters: list[int]) -> bytes:
    """Scanlines of one (sub)image, filter types taken in turn from ``filters``; plain loops."""
    height, width, channels = sub.shape
    bpp = channels * bit_depth // 8
    dtype = ">u2" if bit_depth == 16 else "u1"
    out = bytearray()
    prev = [0] * (width * bpp)
    for y in range(height):
        row = list(sub[y].astype(dtype).tobytes())
        kind = filters[y % len(filters)]
        out.append(kind)
        for i, value in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            predictor = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
            out.append((value - predictor) % 256)
        prev = row
    return bytes(out)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def reference_png(pixels: np.ndarray, *, bit_depth: int, filters: list[int], interlace: bool = False) -> bytes:
    """An independent PNG encoder: gray/LA/RGB/RGBA, any filter sequence, optional Adam7."""
    height, width, channels = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    if interlace:
        data = b""
        for x0, y0, dx, dy in ADAM7:
            sub = pixels[y0::dy, x0::dx]
            if sub.size:
                data += _filter_rows(sub, bit_depth, filters)
    else:
        data = _filter_rows(pixels, bit_depth, filters)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, int(interlace))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(data))
            + _chunk(b"IEND", b""))


def pillow_bytes(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def bomb_png(width: int, height: int) -> bytes:
    """A 1×1 RGB PNG whose IHDR claims width×height (CRC fixed, so only the size is wrong)."""
    blob = bytearray(pillow_bytes(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"))
    assert blob[12:16] == b"IHDR"
    blob[16:24] = struct.pack(">II", width, height)
    blob[29:33] = struct.pack(">I", zlib.crc32(bytes(blob[12:29])))
    return bytes(blob)


# --------------------------------------------------------------------------- 16-bit colour PNG


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_16bit_colour_png_exact_every_filter(channels, interlace, size):
    pixels = rng(channels + size[0]).integers(0, 65536, size + (channels,), dtype=np.uint16)
    pixels[0, 0] = [257, 65535, 1, 4095][:channels]  # >255, odd, extremes
    blob = reference_png(pixels, bit_depth=16, filters=[0, 1, 2, 3, 4, 4, 3, 1], interlace=interlace)
    loaded = cio.read_input(blob)
    assert loaded.array.dtype == np.float32
    np.testing.assert_array_equal(loaded.array, pixels.astype(np.float32))
    assert loaded.bit_depth == 16
    assert loaded.mode == {2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[channels]
    assert cio.read_shape(blob) == pixels.shape


@pytest.mark.parametrize("level", [1, 6])
@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("size", SIZES)
def test_encode_png_16bit_colour_round_trip(channels, size, level):
    y, x = np.mgrid[0:size[0], 0:size[1]]
    smooth = (x * 997 + y * 3001) % 65536  # Sub/Up/Paeth rows get chosen on smooth data
    noise = rng(size[1]).integers(0, 65536, size + (channels,))
    pixels = np.where(np.arange(channels) % 2 == 0, smooth[..., None], noise).astype(np.uint16)
    blob = cio.encode_png(pixels, bits=16, compress_level=level)
    np.testing.assert_array_equal(cio.read_input(blob).array, pixels.astype(np.float32))
    # Pillow's own decoder (8-bit for colour) sees the same high bytes: the file is valid PNG.
    with Image.open(io.BytesIO(blob)) as im:
        high = np.asarray(im)
    if channels == 2:
        high = high[:, :, [0, 3]]
    np.testing.assert_array_equal(high, pixels >> 8)


def test_encode_png_16bit_uses_several_filters():
    y, x = np.mgrid[0:40, 0:50]
    pixels = np.stack([x * 1300, y * 1600, (x * y) % 65536], axis=-1).astype(np.uint16)
    blob = cio.encode_png(pixels, compress_level=6)
    idat = blob[blob.index(b"IDAT") + 4:]
    raw = zlib.decompress(idat[:struct.unpack(">I", blob[blob.index(b"IDAT") - 4:blob.index(b"IDAT")])[0]])
    row_bytes = 1 + 50 * 6
    kinds = {raw[i] for i in range(0, len(raw), row_bytes)}
    assert kinds - {0}, kinds  # the heuristic found something better than "None" on a ramp
    np.testing.assert_array_equal(cio.read_input(blob).array, pixels)


def _idat_stream(blob: bytes) -> bytes:
    """The concatenated IDAT payloads of a PNG (the zlib stream)."""
    pos, stream = 8, b""
    while pos < len(blob):
        length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        if kind == b"IDAT":
            stream += blob[pos + 8:pos + 8 + length]
        pos += 12 + length
    return stream


@pytest.mark.parametrize("level", [0, 1, 6, 9])
@pytest.mark.parametrize("shape", [(700, 1500), (613, 577, 3), (1200, 900, 4)])
def test_large_png_deflated_in_parts_is_one_valid_stream(monkeypatch, shape, level):
    # Small parts, so these sizes are cut into several (with ragged last parts).
    monkeypatch.setattr(png_encoder, "DEFLATE_PART_BYTES", 100_003)
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    smooth = ((x // 7 + y // 5) % 256).astype(np.uint8)
    pixels = smooth if len(shape) == 2 else np.stack(
        [smooth, rng(shape[1]).integers(0, 256, shape[:2], dtype=np.uint8)] * 2, axis=-1)[:, :, :shape[2]]
    blobs = {workers: cio.encode_png(pixels, compress_level=level, workers=workers) for workers in (1, 2, 3)}
    assert blobs[1] == blobs[2] == blobs[3]  # the bytes do not depend on the threads
    blob = blobs[1]
    stream = _idat_stream(blob)
    raw = zlib.decompress(stream)  # checks the Adler-32 of the whole data
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    assert len(raw) == shape[0] * (1 + shape[1] * channels)
    assert (stream[0] * 256 + stream[1]) % 31 == 0 and stream[0] == 0x78  # a valid zlib header
    with Image.open(io.BytesIO(blob)) as im:
        np.testing.assert_array_equal(np.asarray(im), pixels)
    # Priming each part with the previous 32 KiB keeps the size of a single stream, but for
    # each part's own block headers and sync marker.
    parts = -(-len(raw) // png_encoder.DEFLATE_PART_BYTES)
    monkeypatch.setattr(png_encoder, "DEFLATE_PART_BYTES", 1 << 40)
    single = cio.encode_png(pixels, compress_level=level)
    assert parts >= 3 and len(blob) <= len(single) * 1.01 + 64 * parts


@pytest.mark.parametrize("size", SIZES)
def test_16bit_gray_png_both_ways(size):
    pixels = rng(3).integers(0, 65536, size, dtype=np.uint16)
    ours = cio.encode_png(pixels, bits=16)
    with Image.open(io.BytesIO(ours)) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im), pixels)
    theirs = reference_png(pixels[:, :, None], bit_depth=16, filters=[4, 3, 2, 1, 0])
    loaded = cio.read_input(theirs)
    np.testing.assert_array_equal(loaded.array[:, :, 0], pixels)
    assert (loaded.mode, loaded.bit_depth) == ("I;16", 16)


# --------------------------------------------------------------------------- 8-bit formats


@pytest.mark.parametrize("mode,channels", [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4)])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "WEBP"])
@pytest.mark.parametrize("size", SIZES[:2])
def test_lossless_8bit_round_trip(tmp_path, mode, channels, fmt, size):
    if fmt == "BMP" and mode in ("LA", "RGBA"):
        pytest.skip("Pillow writes no BMP alpha it reads back (32-bit BMPs open as RGB)")
    if fmt == "WEBP" and mode in ("L", "LA"):
        pytest.skip("WebP stores colour only")
    pixels = rng(channels).integers(0, 256, size + (channels,), dtype=np.uint8)
    if fmt == "WEBP" and channels == 4:
        # Lossless WebP drops an all-opaque alpha, and may alter fully transparent pixels.
        pixels[..., 3] = rng(7).integers(1, 255, size, dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
    params = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    path = write(tmp_path, f"x.{fmt.lower()}", pillow_bytes(image, fmt, **params))
    loaded = cio.read_input(path)
    np.testing.assert_array_equal(loaded.array, pixels.astype(np.float32))
    assert (loaded.bit_depth, loaded.mode, loaded.kind, loaded.stem) == (8, mode, "image", "x")
    assert cio.read_shape(path) == pixels.shape


def test_jpeg_matches_pillow_decode(tmp_path):
    pixels = rng(5).integers(0, 256, (15, 22, 3), dtype=np.uint8)
    path = write(tmp_path, "photo.jpg", pillow_bytes(Image.fromarray(pixels), "JPEG", quality=90))
    loaded = cio.read_input(path)
    with Image.open(path) as im:
        np.testing.assert_array_equal(loaded.array, np.asarray(im))
    assert loaded.shape == (15, 22, 3) and cio.read_shape(path) == (15, 22, 3)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    image = Image.new("CMYK", (6, 4), (0, 255, 255, 0))
    path = write(tmp_path, "cmyk.jpg", pillow_bytes(image, "JPEG", quality=100))
    loaded = cio.read_input(path)
    assert loaded.shape == (4, 6, 3) and cio.read_shape(path) == (4, 6, 3)
    with Image.open(path) as im:
        np.testing.assert_array_equal(loaded.array, np.asarray(im.convert("RGB")))


def test_palette_png_to_rgb_and_rgba(tmp_path):
    index = rng(1).integers(0, 4, (5, 7), dtype=np.uint8)
    colours = np.array([[10, 20, 30], [200, 0, 0], [0, 255, 0], [7, 8, 9]], np.uint8)
    image = Image.frombytes("P", (7, 5), index.tobytes())
    image.putpalette(colours.ravel().tolist())
    plain = write(tmp_path, "p.png", pillow_bytes(image, "PNG"))
    loaded = cio.read_input(plain)
    np.testing.assert_array_equal(loaded.array, colours[index])
    assert (loaded.mode, cio.read_shape(plain)) == ("RGB", (5, 7, 3))
    see_through = write(tmp_path, "pt.png", pillow_bytes(image, "PNG", transparency=1))
    loaded = cio.read_input(see_through)
    alpha = np.where(index == 1, 0, 255)
    np.testing.assert_array_equal(loaded.array, np.dstack([colours[index], alpha]))
    assert (loaded.mode, cio.read_shape(see_through)) == ("RGBA", (5, 7, 4))


def test_gif_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((4, 6), value, np.uint8)).convert("P") for value in (30, 220)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    loaded = cio.read_input(path)
    assert loaded.shape == (4, 6, 3) and cio.read_shape(path) == (4, 6, 3)
    np.testing.assert_array_equal(loaded.array, 30.0)


def test_one_bit_image_is_0_or_255(tmp_path):
    bits = rng(2).integers(0, 2, (6, 9)).astype(bool)
    path = write(tmp_path, "bw.png", pillow_bytes(Image.fromarray(bits), "PNG"))
    loaded = cio.read_input(path)
    np.testing.assert_array_equal(loaded.array[:, :, 0], bits * 255.0)
    assert (loaded.mode, cio.read_shape(path)) == ("L", (6, 9, 1))


# --------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_tiff_keeps_type_and_channels(tmp_path, dtype, channels):
    import tifffile

    size = (9, 6, channels)
    pixels = (rng(channels).integers(0, 65536, size) if dtype == np.uint16
              else rng(channels).integers(0, 256, size) if dtype == np.uint8
              else rng(channels).normal(size=size) * 1000).astype(dtype)
    path = tmp_path / "t.tiff"
    tifffile.imwrite(path, pixels[:, :, 0] if channels == 1 else pixels,
                     photometric="minisblack" if channels == 1 else "rgb")
    loaded = cio.read_input(path)
    np.testing.assert_array_equal(loaded.array, pixels.astype(np.float32))
    assert loaded.bit_depth == {np.uint8: 8, np.uint16: 16, np.float32: None}[dtype]
    assert cio.read_shape(path) == size


def test_tiff_planar_and_pillow_fallback(tmp_path):
    import tifffile

    planar = rng(4).integers(0, 65536, (3, 5, 7)).astype(np.uint16)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(cio.read_input(path).array, np.moveaxis(planar, 0, -1))
    assert cio.read_shape(path) == (5, 7, 3)
    # A palette TIFF is left to Pillow (tifffile would give the indices).
    image = Image.frombytes("P", (4, 2), bytes([0, 1, 1, 0, 1, 0, 0, 1]))
    image.putpalette([5, 6, 7, 250, 251, 252])
    palette = write(tmp_path, "palette.tif", pillow_bytes(image, "TIFF"))
    loaded = cio.read_input(palette)
    assert loaded.mode == "RGB" and loaded.array[0, 1].tolist() == [250, 251, 252]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "L", "I;16", "1", "P"])
def test_tiff_with_an_orientation_tag_is_read_in_stored_order_by_either_decoder(tmp_path, orientation, mode):
    # convcli applies no orientation (README). tifffile reads TIFFs in stored order; Pillow
    # (which decodes the LZW ones, tifffile needing imagecodecs for LZW, and 1-bit ones) turns
    # them by their Orientation tag, and reports the turned size when it opens them: the reader
    # undoes both, so the header and the pixels are the stored ones whichever decoder reads them.
    stored = rng(orientation).integers(0, 256 if mode != "I;16" else 65536, (5, 7, 3) if mode == "RGB" else (5, 7))
    stored = stored.astype(np.uint16 if mode == "I;16" else np.uint8)
    if mode == "1":
        stored = stored > 127
    for compression in ("tiff_lzw", "tiff_deflate", None):
        path = tmp_path / f"o{orientation}-{compression}.tif"
        image = Image.fromarray(stored) if mode != "P" else Image.fromarray(stored).convert("L")
        if mode == "P":
            image = Image.frombytes("P", image.size, image.tobytes())  # a gray palette: index i is colour (i, i, i)
            image.putpalette([v for i in range(256) for v in (i, i, i)])
        assert image.mode == mode
        image.save(path, compression=compression, tiffinfo={274: orientation})
        try:
            got = cio.read_input(path).array
        except InputError as err:
            # Pillow 13 turns uncompressed palette pixels of Orientation 5-8 but keeps the stored
            # size: refused in one line (the compressed ones, decoded by libtiff, are read).
            assert mode == "P" and orientation >= 5 and compression is None, (compression, str(err))
            assert "which Pillow decodes turned in a way that cannot be undone" in str(err)
            continue
        assert cio.read_header(path)[0] == got.shape == (5, 7, 3 if mode in ("RGB", "P") else 1), (compression,
                                                                                                got.shape)
        if mode == "P":
            np.testing.assert_array_equal(got, np.repeat(stored[:, :, None], 3, axis=2))
        else:
            np.testing.assert_array_equal(got.reshape(stored.shape), stored * 255 if mode == "1" else stored)


def test_encode_tiff_round_trip():
    one = rng(6).normal(size=(7, 8)).astype(np.float32)
    with Image.open(io.BytesIO(cio.encode_tiff(one))) as im:
        assert im.mode == "F"
        np.testing.assert_array_equal(np.asarray(im), one)
    for channels in (1, 2, 3, 5):
        many = rng(channels).normal(size=(6, 9, channels)).astype(np.float32)
        loaded = cio.read_input(cio.encode_tiff(many))
        np.testing.assert_array_equal(loaded.array, many)
        assert loaded.bit_depth is None


# --------------------------------------------------------------------------- modes and scale


def _rgb_images():
    pixels = rng(9).integers(0, 256, (11, 12, 4), dtype=np.uint8)
    palette = Image.fromarray(pixels[:, :, :3]).quantize(17)
    return {"RGB": Image.fromarray(pixels[:, :, :3]), "RGBA": Image.fromarray(pixels),
            "LA": Image.fromarray(pixels[:, :, :2]), "P": palette, "L": Image.fromarray(pixels[:, :, 0])}


@pytest.mark.parametrize("pil_mode", ["RGB", "RGBA", "LA", "P", "L"])
def test_gray_is_pillow_convert_L(pil_mode):
    image = _rgb_images()[pil_mode]
    loaded = cio.read_input(pillow_bytes(image, "PNG"), mode="gray")
    np.testing.assert_array_equal(loaded.array[:, :, 0], np.asarray(image.convert("L")))
    assert (loaded.mode, loaded.shape[2]) == ("L", 1)


def test_gray_16bit_is_luma_of_16bit_values():
    pixels = rng(10).integers(0, 65536, (7, 8, 3), dtype=np.uint16)
    loaded = cio.read_input(cio.encode_png(pixels), mode="gray")
    luma = pixels[..., 0] * 0.299 + pixels[..., 1] * 0.587 + pixels[..., 2] * 0.114
    assert np.abs(loaded.array[:, :, 0] - luma).max() <= 0.5 + 65535 * 1e-4  # fixed-point weights
    assert loaded.array.max() > 255 and (loaded.mode, loaded.bit_depth) == ("I;16", 16)
    assert np.array_equal(loaded.array, np.rint(loaded.array))


@pytest.mark.parametrize("source_channels", [1, 2, 3, 4])
def test_rgb_and_rgba_modes(source_channels):
    pixels = rng(source_channels).integers(0, 256, (5, 6, source_channels), dtype=np.uint8)
    blob = encode_8bit(pixels)
    colour = pixels[:, :, :3] if source_channels >= 3 else np.repeat(pixels[:, :, :1], 3, axis=2)
    alpha = pixels[:, :, -1:] if source_channels in (2, 4) else np.full((5, 6, 1), 255)
    rgb = cio.read_input(blob, mode="rgb")
    rgba = cio.read_input(blob, mode="rgba")
    np.testing.assert_array_equal(rgb.array, colour)
    np.testing.assert_array_equal(rgba.array, np.concatenate([colour, alpha], axis=2))
    assert (rgb.mode, rgba.mode) == ("RGB", "RGBA")


def encode_8bit(pixels: np.ndarray) -> bytes:
    return cio.encode_png(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def test_rgba_on_16bit_gray_uses_65535():
    pixels = rng(1).integers(0, 65536, (3, 4), dtype=np.uint16)
    loaded = cio.read_input(cio.encode_png(pixels), mode="rgba")
    assert loaded.mode == "RGBA;16"
    np.testing.assert_array_equal(loaded.array[:, :, 3], 65535)
    np.testing.assert_array_equal(loaded.array[:, :, 1], pixels)


def test_modes_on_float_arrays(tmp_path):
    array = rng(2).normal(size=(4, 5, 3))
    np.save(tmp_path / "a.npy", array)
    gray = cio.read_input(tmp_path / "a.npy", mode="gray")
    np.testing.assert_allclose(gray.array[:, :, 0], array @ [0.299, 0.587, 0.114], rtol=1e-6, atol=1e-6)
    rgba = cio.read_input(tmp_path / "a.npy", mode="rgba")
    np.testing.assert_array_equal(rgba.array[:, :, 3], 1.0)
    assert (gray.mode, rgba.mode) == ("F", "RGBA;F")


def test_scale_unit():
    eight = rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    sixteen = rng(2).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    np.testing.assert_allclose(cio.read_input(encode_8bit(eight), scale="unit").array, eight / 255.0,
                               rtol=1e-6)
    np.testing.assert_allclose(cio.read_input(cio.encode_png(sixteen), scale="unit").array,
                               sixteen / 65535.0, rtol=1e-6)
    raw = cio.read_input(encode_8bit(eight), scale="raw").array
    assert raw.max() > 1 and raw.dtype == np.float32
    floats = rng(3).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(cio.read_input(cio.encode_npy(floats), scale="unit").array[:, :, 0],
                                  floats)


# --------------------------------------------------------------------------- arrays and text


@pytest.mark.parametrize("shape,expected,kind", [
    ((8,), (1, 8, 1), "signal"), ((1, 8), (1, 8, 1), "signal"), ((8, 1), (1, 8, 1), "signal"),
    ((5, 6), (5, 6, 1), "array"), ((5, 6, 3), (5, 6, 3), "array"), ((4, 7, 9), (4, 7, 9), "array"),
])
def test_npy_shapes(tmp_path, shape, expected, kind):
    array = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) * 10 + 1
    np.save(tmp_path / "a.npy", array)
    loaded = cio.read_input(tmp_path / "a.npy")
    assert (loaded.shape, loaded.kind, cio.read_shape(tmp_path / "a.npy")) == (expected, kind, expected)
    assert cio.read_header(tmp_path / "a.npy") == (expected, kind)  # `shape` reads the header only
    np.testing.assert_array_equal(loaded.array.ravel(), array.ravel())


def test_header_kind_a_one_row_image_or_3d_array_is_no_signal(tmp_path):
    Image.fromarray(np.zeros((1, 12, 3), np.uint8)).save(tmp_path / "row.png")
    np.save(tmp_path / "row3.npy", np.zeros((1, 12, 1), np.float32))
    (tmp_path / "row.csv").write_text("1,2,3\n")
    assert cio.read_header(tmp_path / "row.png") == ((1, 12, 3), "image")
    assert cio.read_header(tmp_path / "row3.npy") == ((1, 12, 1), "array")
    assert cio.read_header(tmp_path / "row.csv") == ((1, 3, 1), "signal")
    for name in ("row.png", "row3.npy", "row.csv"):
        assert cio.read_input(tmp_path / name).kind == cio.read_header(tmp_path / name)[1]


def test_npy_integer_and_bool_types(tmp_path):
    for dtype, depth in ((np.uint8, 8), (np.uint16, 16), (np.int32, None), (np.bool_, None)):
        np.save(tmp_path / "a.npy", np.array([[0, 1], [1, 0]], dtype=dtype))
        loaded = cio.read_input(tmp_path / "a.npy")
        assert loaded.bit_depth == depth and loaded.array.dtype == np.float32
        np.testing.assert_array_equal(loaded.array[:, :, 0], [[0, 1], [1, 0]])


@pytest.mark.parametrize("text,suffix,expected", [
    ("0,0,0,1,1,0,0,0\n", ".csv", (1, 8, 1)),
    ("0\n0\n1\n1\n0\n", ".csv", (1, 5, 1)),
    ("1 2 3\n4 5 6\n", ".txt", (2, 3, 1)),
    ("1, 2, 3\n4, 5, 6\n", ".txt", (2, 3, 1)),
    ("# a comment\n1\t2\n\n3\t4  # trailing\n", ".txt", (2, 2, 1)),
    ("\ufeff1.5,-2e3\r\n3,4\r\n", ".csv", (2, 2, 1)),
])
def test_text_tables(tmp_path, text, suffix, expected):
    path = tmp_path / f"t{suffix}"
    path.write_text(text, encoding="utf-8")
    loaded = cio.read_input(path)
    assert loaded.shape == expected == cio.read_shape(path)
    assert loaded.kind == ("signal" if expected[0] == 1 else "array")


def test_seed_inputs_in_sample_images():
    line = cio.read_input(SAMPLES / "vertical-line-8x8.csv")
    expected = np.zeros((8, 8, 1), np.float32)
    expected[:, 3:5] = 1
    np.testing.assert_array_equal(line.array, expected)
    bump = cio.read_input(SAMPLES / "bump-1d.csv")
    assert bump.kind == "signal"
    np.testing.assert_array_equal(bump.array.ravel(), [0, 0, 0, 1, 1, 0, 0, 0])


PHOTOGRAPHS = ("astronaut.png", "coffee.png", "chelsea.png")


def test_sample_images_are_small_and_read():
    pngs = sorted(SAMPLES.glob("*.png"))
    assert len(pngs) >= 3 + len(PHOTOGRAPHS)
    total_pixels = 0
    for path in pngs:
        photo = path.name in PHOTOGRAPHS
        assert path.stat().st_size < (450_000 if photo else 150_000)
        h, w, _c = cio.read_shape(path)
        assert (h <= 600 and w <= 600) if photo else (h <= 240 and w <= 320)
        assert cio.read_input(path).shape == cio.read_shape(path)
        total_pixels += h * w
    # The README's main job reads every PNG here: it must stay a matter of seconds.
    assert total_pixels < 1_000_000
    assert cio.read_input(SAMPLES / "gradient-16bit.png").bit_depth == 16


def test_every_sample_file_has_its_licence():
    licences = (SAMPLES / "LICENSES.md").read_text(encoding="utf-8")
    for path in SAMPLES.iterdir():
        if path.suffix in (".png", ".csv"):
            assert f"`{path.name}`" in licences, path.name
    for photo in PHOTOGRAPHS:
        assert photo in licences and cio.read_shape(SAMPLES / photo)[2] == 3


def test_stdin(monkeypatch):
    class FakeStdin:
        def __init__(self, data: bytes):
            self.buffer = io.BytesIO(data)

    pixels = rng(1).integers(0, 65536, (3, 4, 3), dtype=np.uint16)
    for data, shape in ((cio.encode_png(pixels), (3, 4, 3)), (cio.encode_npy(np.ones(5)), (1, 5, 1)),
                        (b"1,2\n3,4\n", (2, 2, 1)), (b"1 2 3\n", (1, 3, 1))):
        monkeypatch.setattr(sys, "stdin", FakeStdin(data))
        loaded = cio.read_input("-")
        assert (loaded.shape, loaded.name, loaded.stem) == (shape, "<stdin>", "stdin")
    monkeypatch.setattr(sys, "stdin", FakeStdin(cio.encode_png(pixels)))
    assert cio.read_shape("-") == (3, 4, 3)


# --------------------------------------------------------------------------- errors


def test_missing_directory_empty(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png: no such file"):
        cio.read_input(tmp_path / "nope.png")
    with pytest.raises(InputError, match=r"is a directory"):
        cio.read_input(tmp_path)
    with pytest.raises(InputError, match=r"empty\.png: empty file"):
        cio.read_input(write(tmp_path, "empty.png", b""))
    with pytest.raises(InputError, match=r"nope\.png: no such file"):
        cio.read_shape(tmp_path / "nope.png")


def test_read_failures_after_open(tmp_path, monkeypatch):
    png = write(tmp_path, "locked.png", cio.encode_png(np.zeros((2, 2), np.uint8)))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_common, "open", denied, raising=False)  # the module's open(), not builtins
    with pytest.raises(InputError, match=r"locked\.png: cannot read: Permission denied"):
        cio.read_input(png)
    monkeypatch.undo()
    table = write(tmp_path, "locked.csv", b"1,2\n")
    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(InputError, match=r"locked\.csv: cannot read: Permission denied"):
        cio.read_input(table)


def test_pillow_open_error_is_corrupt_header(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("broken data stream when reading image file")

    monkeypatch.setattr(Image, "open", broken)
    with pytest.raises(InputError, match=r"x\.gif: corrupt image header: broken data stream"):
        cio.read_input(write(tmp_path, "x.gif", b"GIF89a...."))


def test_not_an_image(tmp_path):
    with pytest.raises(InputError, match=r"junk\.png: not an image Pillow can read"):
        cio.read_input(write(tmp_path, "junk.png", bytes(range(256)) * 4))
    with pytest.raises(InputError, match=r"blob\.dat: not an image Pillow can read"):
        cio.read_input(write(tmp_path, "blob.dat", b"\x00\x01\x02binary"))
    with pytest.raises(InputError, match=r"fake\.npy: not a \.npy file"):
        cio.read_input(write(tmp_path, "fake.npy", b"hello"))


def test_corrupt_and_truncated_png(tmp_path):
    pixels = rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    good = pillow_bytes(Image.fromarray(pixels), "PNG")
    truncated = write(tmp_path, "cut.png", good[: len(good) // 2])
    with pytest.raises(InputError, match=r"cut\.png: cannot decode image \(OSError: .*truncated"):
        cio.read_input(truncated)
    assert cio.read_shape(truncated) == (40, 50, 3)  # the header alone is enough: no decoding
    broken = bytearray(good)
    broken[20] ^= 0xFF  # inside IHDR: the CRC no longer matches
    with pytest.raises(InputError, match=r"bad\.png: corrupt PNG file \(Pillow cannot read its header\)"):
        cio.read_input(write(tmp_path, "bad.png", bytes(broken)))
    garbled = bytearray(good)
    start = garbled.index(b"IDAT") + 4
    garbled[start:start + 30] = bytes(30)
    with pytest.raises(InputError, match=r"garbled\.png: cannot decode image"):
        cio.read_input(write(tmp_path, "garbled.png", bytes(garbled)))


def test_truncated_16bit_colour_png(tmp_path):
    blob = cio.encode_png(rng(1).integers(0, 65536, (30, 30, 3), dtype=np.uint16))
    with pytest.raises(InputError, match=r"cut16\.png: cannot decode image"):
        cio.read_input(write(tmp_path, "cut16.png", blob[: len(blob) // 2]))


def test_decompression_bomb_refused_before_decoding(tmp_path):
    path = write(tmp_path, "bomb.png", bomb_png(20000, 20000))
    with pytest.raises(InputError, match=r"bomb\.png: 20000×20000 = 400,000,000 pixels is more than the limit "
                                         r"of 89,478,485 .*--max-pixels"):
        cio.read_input(path)
    with pytest.raises(InputError, match=r"of 1,000 "):
        cio.read_input(write(tmp_path, "small.png", bomb_png(50, 21)), max_pixels=1000)
    assert cio.read_shape(path) == (20000, 20000, 3)
    # With the guard lifted decoding starts, and fails on the missing pixel data instead.
    with pytest.raises(InputError, match=r"cannot decode image"):
        cio.read_input(write(tmp_path, "mini.png", bomb_png(30, 20)), max_pixels=None)


def test_pillow_bomb_error_maps_to_input_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise Image.DecompressionBombError("Image size (1 pixels) exceeds limit")

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(InputError, match=r"x\.png: refused by Pillow's decompression-bomb check"):
        cio.read_input(write(tmp_path, "x.png", b"\x89PNG\r\n\x1a\n"))


def test_tiff_bomb_refused(tmp_path):
    import tifffile

    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((40, 30), np.uint16))
    with pytest.raises(InputError, match=r"big\.tif: 30×40 = 1,200 pixels is more than the limit of 1,000"):
        cio.read_input(path, max_pixels=1000)


@pytest.mark.parametrize("text,message", [
    ("1,2,3\n4,x,6\n", r"t\.csv: line 2, column 2: 'x' is not a number"),
    ("1,2,3\n4,,6\n", r"t\.csv: line 2, column 2: an empty cell"),
    ("1,2,3\n\n4,5\n", r"t\.csv: ragged rows: line 3 has 2 values, line 1 has 3"),
    ("# nothing\n\n", r"t\.csv: no numbers in the file"),
    ("1,2\nnan,4\n", r"t\.csv: 1 non-finite values .*row 1, column 0, channel 0"),
    ("1,inf\n", r"t\.csv: 1 non-finite values"),
])
def test_text_errors(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        cio.read_input(path)


def test_text_not_utf8(tmp_path):
    with pytest.raises(InputError, match=r"t\.txt: not a UTF-8 text file \(byte 2\)"):
        cio.read_input(write(tmp_path, "t.txt", b"1 \xff 2\n"))


def test_unparseable_text_falls_back_to_numpy_message(monkeypatch, tmp_path):
    # A row numpy rejects but float() accepts cannot happen with real files; make it happen.
    monkeypatch.setattr(np, "loadtxt", lambda *a, **k: (_ for _ in ()).throw(ValueError("odd")))
    with pytest.raises(InputError, match=r"t\.csv: cannot parse numbers: odd"):
        cio.read_input(write(tmp_path, "t.csv", b"1,2\n"))


@pytest.mark.parametrize("array,message", [
    (np.zeros((1, 4, 4, 3)), r"4-D array of shape \(1, 4, 4, 3\); expected .*drop the batch axis"),
    (np.zeros((2, 4, 4, 3)), r"4-D array of shape \(2, 4, 4, 3\); expected 1-D \(L\), 2-D \(H, W\) or 3-D \(H, W, C\)$"),
    (np.float64(3.0), r"holds a single number \(a 0-D array\)"),
    (np.zeros((0, 5)), r"empty array of shape \(0, 5\)"),
    (np.zeros((2, 2), np.complex64), r"\.npy of dtype complex64; expected numbers"),
    (np.array([[1.0, np.inf]]), r"1 non-finite values .*row 0, column 1"),
    (np.array([[1e300, 0.0]]), r"1 non-finite values \(NaN/Inf, or beyond float32's range\)"),
])
def test_npy_errors(tmp_path, array, message):
    np.save(tmp_path / "a.npy", array)
    with pytest.raises(InputError, match=r"a\.npy: " + message):
        cio.read_input(tmp_path / "a.npy")


def test_npy_object_and_truncated(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"o\.npy: cannot read \.npy: Object arrays cannot be loaded"):
        cio.read_input(tmp_path / "o.npy")
    data = cio.encode_npy(np.ones((10, 10)))
    with pytest.raises(InputError, match=r"cut\.npy: cannot read \.npy: "):
        cio.read_input(write(tmp_path, "cut.npy", data[:-7]))
    with pytest.raises(InputError, match=r"hdr\.npy: cannot read \.npy header: "):
        cio.read_shape(write(tmp_path, "hdr.npy", data[:20]))
    with pytest.raises(InputError, match=r"a\.npy: 4-D array"):
        np.save(tmp_path / "a.npy", np.zeros((1, 2, 2, 2)))
        cio.read_shape(tmp_path / "a.npy")


def test_mode_needs_at_most_four_channels(tmp_path):
    np.save(tmp_path / "five.npy", np.zeros((3, 3, 5)))
    with pytest.raises(InputError, match=r"five\.npy: --mode gray needs 1 to 4 channels .*the input has 5"):
        cio.read_input(tmp_path / "five.npy", mode="gray")
    assert cio.read_input(tmp_path / "five.npy").shape == (3, 3, 5)


def test_bad_options():
    with pytest.raises(OptionError, match=r"--mode: 'grey' is not one of keep, gray, rgb, rgba"):
        cio.read_input(b"1", mode="grey")
    with pytest.raises(OptionError, match=r"--scale: 'unity' is not one of raw, unit"):
        cio.read_input(b"1", scale="unity")


def test_read_shape_matches_read_input_on_every_kind(tmp_path):
    cases = {
        "rgb16.png": cio.encode_png(np.zeros((3, 5, 3), np.uint16)),
        "la16.png": cio.encode_png(np.zeros((3, 5, 2), np.uint16)),
        "la8.png": cio.encode_png(np.zeros((3, 5, 2), np.uint8)),
        "g16.png": cio.encode_png(np.zeros((3, 5), np.uint16)),
        "f.tif": cio.encode_tiff(np.zeros((3, 5), np.float32)),
        "v.npy": cio.encode_npy(np.zeros(7)),
        "t.txt": b"1 2\n3 4\n5 6\n",
        "noext": b"1,2,3\n",
    }
    for name, data in cases.items():
        path = write(tmp_path, name, data)
        assert cio.read_shape(path) == cio.read_input(path).shape, name


def test_light_imports():
    """Importing the module loads neither numpy nor Pillow; read_shape never loads skimage."""
    code = ("import sys, convcli.io as m; heavy = [n for n in ('PIL', 'numpy', 'skimage') if n in sys.modules]; "
            "m.read_shape(sys.argv[1]); m.read_shape(sys.argv[2]); print(heavy, 'skimage' in sys.modules)")
    npy = REPO / "sample_images" / "bump-1d.csv"
    result = subprocess.run([sys.executable, "-c", code, str(SAMPLES / "building.png"), str(npy)],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] False"


# --------------------------------------------------------------------------- to_display


def test_to_display_known_values_8_bit():
    x = np.array([[-2.0, 0.0, 1.0, 2.0]])
    assert cio.to_display(x, normalize="minmax").tolist() == [[0, 128, 191, 255]]  # 127.5 → 128 (even)
    assert cio.to_display(x, normalize="clip").tolist() == [[0, 0, 1, 2]]
    assert cio.to_display(x, normalize="abs").tolist() == [[255, 0, 128, 255]]  # 127.5 → 128
    assert cio.to_display(x, normalize="offset").tolist() == [[0, 128, 191, 255]]
    assert cio.to_display(np.array([[0.5, 1.5, 2.5, 300.0]]), normalize="clip").tolist() == [[0, 2, 2, 255]]


def test_to_display_known_values_16_bit():
    x = np.array([[-4.0, 0.0, 1.0, 4.0]])
    out = cio.to_display(x, normalize="offset", bits=16)
    # (1/4 + 1) · 65535/2 = 40959.375 → 40959; mid-grey 32767.5 → 32768 (half to even)
    assert out.dtype == np.uint16 and out.tolist() == [[0, 32768, 40959, 65535]]
    assert cio.to_display(x, normalize="minmax", bits=16).tolist() == [[0, 32768, 40959, 65535]]
    assert cio.to_display(x, normalize="abs", bits=16).tolist() == [[65535, 0, 16384, 65535]]


def test_to_display_constant_and_zero_maps():
    flat = np.full((3, 4), 7.0)
    zero = np.zeros((3, 4))
    for bits, dtype in ((8, np.uint8), (16, np.uint16)):
        assert (cio.to_display(flat, bits=bits) == 0).all()
        assert (cio.to_display(zero, normalize="abs", bits=bits) == 0).all()
        mid = cio.to_display(zero, normalize="offset", bits=bits)
        assert mid.dtype == dtype and (mid == (128 if bits == 8 else 32768)).all()


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("shape", [(7, 10), (8, 9), (5, 6, 3)])
def test_to_display_against_interp(bits, shape):
    x = rng(bits + len(shape)).normal(size=shape).astype(np.float32) * 50
    top = 2**bits - 1
    lo, hi, peak = float(x.min()), float(x.max()), float(np.abs(x).max())
    xd = x.astype(np.float64)
    expected = {
        "minmax": np.interp(xd, [lo, hi], [0, top]),
        "clip": np.clip(xd, 0, top),
        "abs": np.interp(np.abs(xd), [0, peak], [0, top]),
        "offset": np.interp(xd, [-peak, peak], [0, top]),
    }
    for mode, reference in expected.items():
        out = cio.to_display(x, normalize=mode, bits=bits)
        assert out.shape == shape and out.dtype == (np.uint8 if bits == 8 else np.uint16)
        # Exact except where float rounding lands within 1e-9 of a .5 boundary.
        assert np.abs(out.astype(np.int64) - np.rint(reference)).max() <= 1, mode
        assert (out.astype(np.int64) == np.rint(reference)).mean() > 0.999, mode


def test_to_display_errors():
    with pytest.raises(OptionError, match=r"--normalize: 'log' is not one of minmax, clip, abs, offset"):
        cio.to_display(np.zeros((2, 2)), normalize="log")
    with pytest.raises(OptionError, match=r"bits: expected 8 or 16, got 12"):
        cio.to_display(np.zeros((2, 2)), bits=12)
    with pytest.raises(OutputError, match=r"x_sobel: 2 NaN/Inf values cannot be shown as pixels; use --format tiff"):
        cio.to_display(np.array([[np.nan, 1.0], [np.inf, 0.0]]), name="x_sobel")


# --------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("level", [0, 1, 2, 3, 9])
@pytest.mark.parametrize("size", SIZES)
def test_encode_png_8bit_all_layouts_decode_in_pillow(level, size):
    for channels in (1, 2, 3, 4):
        pixels = rng(channels).integers(0, 256, size + (channels,), dtype=np.uint8)
        pixels[: size[0] // 2] = np.arange(size[1], dtype=np.uint8)[None, :, None]  # smooth rows too
        blob = cio.encode_png(pixels, bits=8, compress_level=level)
        with Image.open(io.BytesIO(blob)) as im:
            assert im.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
            decoded = np.asarray(im)
        np.testing.assert_array_equal(decoded.reshape(pixels.shape), pixels)


def test_encode_png_default_level_is_fast_level():
    pixels = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)
    assert cio.encode_png(pixels) == cio.encode_png(pixels, compress_level=1)
    assert len(cio.encode_png(pixels, compress_level=0)) > len(cio.encode_png(pixels))


def test_encode_png_errors():
    with pytest.raises(OutputError, match=r"shape \(2, 2, 5\) as PNG .*use --format tiff or npy"):
        cio.encode_png(np.zeros((2, 2, 5), np.uint8))
    with pytest.raises(OptionError, match=r"--compress-level: expected 0 to 9, got 10"):
        cio.encode_png(np.zeros((2, 2), np.uint8), compress_level=10)
    with pytest.raises(ValueError, match=r"expected uint8 \(bits=8\) or uint16 \(bits=16\) pixels, got uint16 with bits=8"):
        cio.encode_png(np.zeros((2, 2), np.uint16), bits=8)
    with pytest.raises(ValueError, match=r"got float32 with bits=None"):
        cio.encode_png(np.zeros((2, 2), np.float32))


def test_encode_npy_round_trip():
    for array in (rng(1).normal(size=(3, 4, 5)).astype(np.float32), rng(2).normal(size=(1, 9, 1))):
        back = np.load(io.BytesIO(cio.encode_npy(array)), allow_pickle=False)
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)


# --------------------------------------------------------------------------- files


def test_write_atomic_writes_and_replaces(tmp_path):
    target = tmp_path / "out.png"
    cio.write_atomic(target, b"first")
    assert target.read_bytes() == b"first"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    target.chmod(0o640)
    cio.write_atomic(target, b"second", fsync=True)
    assert target.read_bytes() == b"second" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_write_atomic_cleans_up_on_failure(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        cio.write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(OutputError, match=r"a-folder: cannot write: Is a directory"):
        cio.write_atomic(folder, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder", "out.png"]
    with pytest.raises(OutputError, match=r"missing/out\.png: cannot write: No such file or directory"):
        cio.write_atomic(tmp_path / "missing" / "out.png", b"data")


def test_same_file(tmp_path):
    a = write(tmp_path, "a.png", b"x")
    os.link(a, tmp_path / "hard.png")
    (tmp_path / "soft.png").symlink_to(a)
    assert cio.same_file(a, tmp_path / "hard.png")
    assert cio.same_file(tmp_path / "soft.png", a)
    assert cio.same_file(tmp_path / "sub" / ".." / "a.png", a)
    assert cio.same_file(tmp_path / "new.png", tmp_path / "." / "new.png")
    assert not cio.same_file(a, tmp_path / "new.png")
    assert not cio.same_file("-", "-")


# --------------------------------------------------------------------------- montage, printing


def test_montage_layout_and_tiles():
    maps = [np.full((6, 6), value, np.uint8) for value in (0, 100, 200)]
    maps[1][2, 3] = 255
    blob = cio.montage(maps, ["vertical-line", "edge", "sobel-x"])
    with Image.open(io.BytesIO(blob)) as im:
        assert im.mode == "L"  # gray maps make a gray montage (a third of the bytes)
        canvas = np.asarray(im.convert("RGB")).astype(int)
    # 6×6 tiles enlarged 16× to 96×96; ceil(sqrt(3)) = 2 columns, 2 rows; 8-pixel gaps.
    assert canvas.shape[1] == 2 * 96 + 3 * 8
    assert canvas[0, 0].tolist() == [64, 64, 64]
    assert (canvas[8:104, 8:104] == 0).all()
    second = canvas[8:104, 112:208, 0]
    bright = np.argwhere(second == 255)
    assert bright.min(axis=0).tolist() == [32, 48] and bright.max(axis=0).tolist() == [47, 63]
    assert (second == 100).sum() == 96 * 96 - 16 * 16
    label_band = canvas[104:104 + 20, 8:104]
    assert (label_band > 200).any() and (label_band == 64).any()  # text drawn on the background
    cell_h = (canvas.shape[0] - 3 * 8) // 2
    third = canvas[8 + cell_h + 8:8 + cell_h + 8 + 96, 8:104]
    assert (third == 200).all()


def test_montage_of_colour_maps_stays_colour():
    maps = [np.zeros((6, 6), np.uint8), np.full((6, 6, 3), (250, 10, 20), np.uint8)]
    with Image.open(io.BytesIO(cio.montage(maps, ["gray", "red"]))) as im:
        assert im.mode == "RGB"
        assert np.asarray(im)[8 + 40, 112 + 40].tolist() == [250, 10, 20]


def test_montage_errors():
    with pytest.raises(ValueError, match=r"one label per map, got 1 maps and 2 labels"):
        cio.montage([np.zeros((2, 2), np.uint8)], ["a", "b"])
    with pytest.raises(ValueError, match=r"tiles must be uint8 .*got float64 \(2, 2\)"):
        cio.montage([np.zeros((2, 2))], ["a"])


SEED_ROW = "[0.0, 0.0, 3.0, 3.0, 0.0, 0.0]"


def test_format_map_rows_seed_example():
    feature_map = np.tile(np.array([0, 0, 3, 3, 0, 0], np.float32), (6, 1))
    assert cio.format_map_rows(feature_map) == [SEED_ROW] * 6
    assert cio.format_map_rows(np.array([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]], np.float32)) == [
        "[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]"]


def test_format_map_rows_values():
    row = np.array([[-0.0, 0.1, -2.5, 1e20, 123456.0]], np.float32)
    assert cio.format_map_rows(row) == ["[0.0, 0.1, -2.5, 1e+20, 123456.0]"]
    assert cio.format_map_rows(np.array([[0.1, 1 / 3]])) == [str([0.1, 1 / 3])]  # float64: Python's repr
    with pytest.raises(ValueError, match=r"expected a 2-D map, got shape \(2, 2, 1\)"):
        cio.format_map_rows(np.zeros((2, 2, 1)))


def test_is_supported():
    assert cio.is_supported("a/b.PNG") and cio.is_supported("x.csv") and cio.is_supported("y.tif")
    assert not cio.is_supported("notes.md")


@pytest.mark.parametrize("normalize", ["minmax", "clip", "abs", "offset"])
@pytest.mark.parametrize("bits", [8, 16])
def test_to_display_planes_equals_per_map_to_display_on_strided_views(normalize, bits):
    generator = rng(11)
    output = (generator.standard_normal((9, 14, 40)) * 300).astype(np.float32)
    output[:, :, 5] = 7.0  # a constant map
    output[:, :, 6] = 0.0  # an all-zero map
    block = output[:, :, 3:22]  # a strided view, as apply passes it
    planes = cio.to_display_planes(block, normalize=normalize, bits=bits)
    assert planes.shape == (19, 9, 14) and planes.flags["C_CONTIGUOUS"]
    for index in range(19):
        expected = cio.to_display(output[:, :, 3 + index], normalize=normalize, bits=bits)
        np.testing.assert_array_equal(planes[index], expected)


def test_to_display_planes_reference_values():
    block = np.array([[[-2.0, -4.0], [0.0, 0.0]], [[2.0, 4.0], [6.0, 2.0]]], np.float32)  # 2×2×2
    np.testing.assert_array_equal(cio.to_display_planes(block, normalize="minmax")[0],
                                  [[0, 64], [128, 255]])  # (-2, 0, 2, 6) over [-2, 6]; 63.75 -> 64
    np.testing.assert_array_equal(cio.to_display_planes(block, normalize="abs")[1], [[255, 0], [255, 128]])
    np.testing.assert_array_equal(cio.to_display_planes(block, normalize="offset")[1], [[0, 128], [255, 191]])


def test_to_display_planes_names_the_map_with_nan():
    block = np.zeros((2, 2, 3), np.float32)
    block[0, 1, 2] = np.inf
    with pytest.raises(OutputError, match=r"^x_sobel-y: 1 NaN/Inf values cannot be shown as pixels"):
        cio.to_display_planes(block, names=["x_edge", "x_sobel-x", "x_sobel-y"])


@pytest.mark.parametrize("shape", [(7, 10, 1), (8, 9, 3), (1, 5, 64), (13, 1, 16), (33, 31, 5)])
def test_channel_extrema_equals_numpy_per_channel(shape):
    values = rng(sum(shape)).standard_normal(shape).astype(np.float32)
    low, high = cio.channel_extrema(values)
    np.testing.assert_array_equal(low, values.min(axis=(0, 1)))
    np.testing.assert_array_equal(high, values.max(axis=(0, 1)))


def test_keep_integers_leaves_pixels_native():
    pixels = rng(8).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    blob = cio.encode_png(pixels)
    kept = cio.read_input(blob, keep_integers=True)
    assert kept.array.dtype == np.uint8 and kept.mode == "RGB" and kept.bit_depth == 8
    np.testing.assert_array_equal(kept.array, pixels)
    sixteen = cio.read_input(cio.encode_png(pixels.astype(np.uint16) * 257), keep_integers=True)
    assert sixteen.array.dtype == np.uint16
    # --scale unit and float data are float32 as always.
    assert cio.read_input(blob, keep_integers=True, scale="unit").array.dtype == np.float32
    assert cio.read_input(cio.encode_npy(np.ones((2, 3))), keep_integers=True).array.dtype == np.float32

