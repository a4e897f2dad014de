"""PNG codecs: ISA-L deflate (zlib fallback) in the encoder, libspng (Pillow fallback) in the reader.

Every PNG we write must read back exactly in Pillow and in libpng (through OpenCV, and
``pngcheck`` where installed); every PNG libspng decodes must give Pillow's pixels.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

import convcli.io as cio
from convcli.errors import InputError
from convcli.io import deflate, pillow, spng
from test_io import SIZES, reference_png, rng

CHANNELS = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}


def pixels_for(channels: int, bits: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth ramps (the filters matter) in some channels, noise in the others."""
    y, x = np.mgrid[0:size[0], 0:size[1]]
    top = 2**bits
    smooth = (x * 37 + y * 101) % top
    noise = rng(seed).integers(0, top, size + (channels,))
    return np.where(np.arange(channels) % 2 == 0, smooth[..., None], noise).astype(np.uint16 if bits == 16 else np.uint8)


def libpng_decode(blob: bytes) -> np.ndarray:
    """Pixels as libpng decodes them, through OpenCV (BGR(A) reordered to RGB(A))."""
    cv2 = pytest.importorskip("cv2")
    out = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out is not None, "libpng refused the file"
    if out.ndim == 3 and out.shape[2] in (3, 4):
        out = out[:, :, [2, 1, 0, 3][:out.shape[2]]]
    return out if out.ndim == 3 else out[:, :, None]


def assert_chunk_crcs(blob: bytes) -> None:
    """Every chunk's CRC, checked with zlib's own crc32, up to IEND."""
    pos, kinds = 8, []
    while pos < len(blob):
        length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        payload = blob[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + payload) == struct.unpack(">I", blob[pos + 8 + length:pos + 12 + length])[0], kind
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds


# --------------------------------------------------------------------------- the encoder


@pytest.mark.parametrize("level", [0, 1, 2, 3, 6])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_every_png_we_write_reads_back_in_pillow_and_libpng(channels, bits, level):
    size = (23, 18) if channels % 2 else (16, 31)
    pixels = pixels_for(channels, bits, size, seed=channels * bits + level)
    blob = cio.encode_png(pixels, bits=bits, compress_level=level)
    with Image.open(io.BytesIO(blob)) as im:
        im.load()
        pil = np.asarray(im)
    if bits == 8 or channels == 1:
        # Pillow is exact for all 8-bit kinds and 16-bit gray (mode I;16).
        np.testing.assert_array_equal(pil.reshape(pixels.shape), pixels)
    else:
        # Pillow decodes 16-bit colour to 8 bits by keeping the high byte (LA;16 as RGBA).
        high = pil[:, :, [0, 3]] if channels == 2 else pil
        np.testing.assert_array_equal(high, pixels >> 8)
    if channels != 2:  # OpenCV turns gray+alpha into BGRA
        np.testing.assert_array_equal(libpng_decode(blob), pixels)
    np.testing.assert_array_equal(cio.read_input(blob, keep_integers=True).array, pixels)
    assert_chunk_crcs(blob)
    assert zlib.decompress(b"".join(blob[p + 8:p + 8 + struct.unpack(">I", blob[p:p + 4])[0]]
                                    for p in _chunk_offsets(blob, b"IDAT")))  # Adler-32 checked by zlib


def _chunk_offsets(blob: bytes, wanted: bytes) -> list[int]:
    pos, found = 8, []
    while pos < len(blob):
        length, kind = struct.unpack(">I4s", blob[pos:pos + 8])
        if kind == wanted:
            found.append(pos)
        pos += 12 + length
    return found


@pytest.mark.skipif(shutil.which("pngcheck") is None, reason="pngcheck not installed (apt-get install pngcheck)")
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_pngcheck_finds_every_kind_we_write_valid(tmp_path, channels, bits):
    files = []
    for level in (0, 1, 3, 9):
        path = tmp_path / f"c{channels}-b{bits}-l{level}.png"
        path.write_bytes(cio.encode_png(pixels_for(channels, bits, (40, 33)), compress_level=level))
        files.append(str(path))
    proc = subprocess.run(["pngcheck", "-q", *files], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_level_mapping_onto_the_libraries(monkeypatch):
    if deflate._isal_zlib() is None:
        pytest.skip("isal is not installed here")
    assert [deflate.backend_name(level) for level in range(10)] == ["zlib"] + ["isal"] * 5 + ["zlib"] * 4
    # Levels 1, 2 and 3-5 are ISA-L's own 1, 2 and 3: the same bytes as isal_zlib itself.
    data = pixels_for(3, 8, (64, 80)).tobytes()
    isal_zlib = deflate._isal_zlib()
    for level, native in ((1, 1), (2, 2), (3, 3), (5, 3)):
        ours = deflate.compressor(level, raw=False)
        assert ours.compress(data) + ours.flush() == isal_zlib.compress(data, native)
    # Higher levels make smaller files, on the whole scale.
    photo = pixels_for(1, 8, (200, 300))
    sizes = [len(cio.encode_png(photo, compress_level=level)) for level in (0, 1, 3, 9)]
    assert sizes == sorted(sizes, reverse=True)


def test_zlib_fallback_when_isal_cannot_be_imported(monkeypatch):
    pixels = pixels_for(4, 8, (300, 257))
    with_isal = cio.encode_png(pixels, compress_level=1)
    monkeypatch.setattr(deflate, "_isal", None)
    assert deflate.backend_name(1) == "zlib"
    with_zlib = cio.encode_png(pixels, compress_level=1)
    for blob in (with_isal, with_zlib):
        with Image.open(io.BytesIO(blob)) as im:
            np.testing.assert_array_equal(np.asarray(im), pixels)
        assert_chunk_crcs(blob)
    # zlib at level 1 with the RLE strategy, as the fallback promises.
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    rows = pixels.reshape(300, -1)
    scanlines = np.empty((300, rows.shape[1] + 1), np.uint8)
    scanlines[:, 0] = 1
    scanlines[:, 1:5] = rows[:, :4]
    np.subtract(rows[:, 4:], rows[:, :-4], out=scanlines[:, 5:])
    expected = compressor.compress(scanlines.tobytes()) + compressor.flush()
    assert expected in with_zlib


def test_fallback_in_a_process_without_isal(tmp_path):
    # A real failed import: the package is hidden from this interpreter.
    code = ("import sys; sys.modules['isal'] = None; sys.modules['pyspng'] = None\n"
            "import numpy as np, convcli.io as cio\n"
            "from convcli.io import deflate\n"
            "x = (np.arange(5 * 7 * 3) % 251).astype(np.uint8).reshape(5, 7, 3)\n"
            "blob = cio.encode_png(x)\n"
            "assert (cio.read_input(blob, keep_integers=True).array == x).all()\n"
            "print(deflate.backend_name(1))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "zlib"


# --------------------------------------------------------------------------- the decoder


def _pillow_route(blob: bytes) -> np.ndarray:
    return pillow._read_image("<bytes>", None, blob, max_pixels=None).array


def _taken_by_spng(blob: bytes) -> bool:
    head = blob[:33]
    return spng.read_png("<bytes>", None, blob, head, max_pixels=None) is not None


def _palette_png(size, depth: int, transparency: bool = False, interlace: bool = False) -> bytes:
    colours = 2**depth
    index = rng(depth).integers(0, colours, size, dtype=np.uint8)
    palette = rng(99).integers(0, 256, (colours, 3), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.ravel().tolist())
    params = {"bits": depth, "optimize": False}
    if transparency:
        params["transparency"] = bytes(range(0, 256, 256 // colours))[:colours]
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    blob = buffer.getvalue()
    assert blob[24] == depth and blob[25] == 3
    return blob


def _kinds(size):
    """(label, PNG bytes, whether libspng takes it) for every kind convcli reads."""
    yield "RGB 8", reference_png(pixels_for(3, 8, size), bit_depth=8, filters=[0, 1, 2, 3, 4]), True
    yield "RGBA 8", reference_png(pixels_for(4, 8, size), bit_depth=8, filters=[4, 3, 2]), True
    yield "RGB 16", reference_png(pixels_for(3, 16, size), bit_depth=16, filters=[1, 4]), True
    yield "RGBA 16", reference_png(pixels_for(4, 16, size), bit_depth=16, filters=[2, 3]), True
    for channels in (3, 4):
        for bits in (8, 16):
            yield (f"{CHANNELS[channels]} {bits} interlaced",
                   reference_png(pixels_for(channels, bits, size), bit_depth=bits, filters=[0, 4, 1], interlace=True),
                   True)
    for depth in (1, 2, 4, 8):
        yield f"palette {depth}-bit", _palette_png(size, depth), True
    yield "palette with transparency", _palette_png(size, 8, transparency=True), False
    yield "gray 8", reference_png(pixels_for(1, 8, size), bit_depth=8, filters=[1]), False
    yield "gray 16", reference_png(pixels_for(1, 16, size), bit_depth=16, filters=[1]), False
    yield "gray+alpha 8", reference_png(pixels_for(2, 8, size), bit_depth=8, filters=[1]), False
    yield "gray+alpha 16", reference_png(pixels_for(2, 16, size), bit_depth=16, filters=[1]), False


@pytest.mark.parametrize("size", SIZES[:2] + [(33, 64)])
def test_libspng_gives_pillows_pixels_on_every_kind(size):
    pytest.importorskip("pyspng")
    for label, blob, taken in _kinds(size):
        assert _taken_by_spng(blob) == taken, label
        loaded = cio.read_input(blob, keep_integers=True)
        reference = _pillow_route(blob)
        assert loaded.array.dtype == reference.dtype, label
        np.testing.assert_array_equal(loaded.array, reference, err_msg=label)
        assert cio.read_shape(blob) == loaded.shape, label


@pytest.mark.parametrize("size", [(7, 10), (8, 9)])
def test_header_shapes_without_pillow_match_pillows(size, tmp_path):
    from convcli.io import read as reader

    for label, blob, taken in _kinds(size):
        path = tmp_path / "x.png"
        path.write_bytes(blob)
        with pillow._pillow_open("<bytes>", None, blob) as im:
            expected = (im.size[1], im.size[0], pillow._pillow_channels(im))
        for source in (blob, path):
            shape = spng.header_shape(path if source is path else None, blob if source is blob else None, blob[:33])
            # The libspng kinds, and palettes with transparency (4 channels from the header).
            assert shape == (expected if taken or label.startswith("palette") else None), label
            assert reader.read_header(source) == (expected, "image"), label
    # A palette's tRNS chunk is found behind large ancillary chunks; a file cut before IDAT is left to Pillow.
    blob = _palette_png((5, 6), 4, transparency=True)
    idat = blob.index(b"IDAT") - 4
    text = b"tEXt" + b"k\0" + bytes(70_000)
    padded = blob[:33] + struct.pack(">I", len(text) - 4) + text + struct.pack(">I", zlib.crc32(text)) + blob[33:]
    assert spng.header_shape(None, padded, padded[:33]) == (5, 6, 4)
    assert spng.header_shape(None, blob[:idat], blob[:33]) is None


def test_reader_without_pyspng_uses_pillow(monkeypatch):
    blob = reference_png(pixels_for(3, 16, (9, 11)), bit_depth=16, filters=[4])
    monkeypatch.setattr(spng, "_pyspng", None)
    assert not _taken_by_spng(blob)
    np.testing.assert_array_equal(cio.read_input(blob, keep_integers=True).array, pixels_for(3, 16, (9, 11)))


def _idat_span(blob: bytes) -> tuple[int, int]:
    start = blob.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", blob[start:start + 4])
    return start + 8, start + 8 + length


def test_corrupt_idat_is_left_to_pillow_not_decoded_wrong():
    pytest.importorskip("pyspng")
    pixels = pixels_for(3, 8, (40, 50))
    blob = bytearray(reference_png(pixels, bit_depth=8, filters=[1]))
    begin, end = _idat_span(bytes(blob))
    # A flipped byte inside the compressed data: libspng, told by pyspng to skip CRC and
    # Adler-32 checks, would decode it to other pixels; the CRC check sends it to Pillow.
    blob[(begin + end) // 2] ^= 0x55
    assert not _taken_by_spng(bytes(blob))
    with pytest.raises(InputError, match=r"<bytes>: cannot decode image"):
        cio.read_input(bytes(blob))


def test_truncated_png_is_left_to_pillow():
    blob = reference_png(pixels_for(4, 8, (40, 50)), bit_depth=8, filters=[1])
    begin, end = _idat_span(blob)
    cut = blob[:(begin + end) // 2]
    assert not _taken_by_spng(cut)
    with pytest.raises(InputError, match=r"<bytes>: cannot decode image"):
        cio.read_input(cut)


def test_bomb_guard_runs_before_libspng_decodes():
    blob = reference_png(pixels_for(3, 8, (40, 50)), bit_depth=8, filters=[1])
    with pytest.raises(InputError, match=r"50×40 = 2,000 pixels is more than the limit of 1,999"):
        cio.read_input(blob, max_pixels=1999)
    assert cio.read_input(blob, max_pixels=2000).shape == (40, 50, 3)


def test_png_header_parsing():
    blob = reference_png(pixels_for(4, 16, (3, 5)), bit_depth=16, filters=[0])
    assert spng.png_header(blob[:33]) == (5, 3, 16, 6)
    assert spng.png_header(blob[:32]) is None
    assert spng.png_header(b"GIF89a" + blob[6:33]) is None
    flipped = bytearray(blob[:33])
    flipped[20] ^= 0xFF  # the height, under a CRC that no longer matches
    assert spng.png_header(bytes(flipped)) is None


def test_one_kernel_on_an_rgb_png_never_imports_pillow(tmp_path):
    # Start-up: libspng reads the photo and convcli's encoder writes the map, so the
    # command pays no Pillow import (PIL.Image + PngImagePlugin: ~20 ms).
    pytest.importorskip("pyspng")
    photo = tmp_path / "photo.png"
    photo.write_bytes(cio.encode_png(pixels_for(3, 8, (31, 40))))
    code = ("import sys\n"
            "from convcli.cli import main\n"
            "try:\n"
            f"    main(['apply', {str(photo)!r}, '-k', 'edge', '--padding', 'same', '-o', {str(tmp_path / 'out')!r}])\n"
            "except SystemExit as exit:\n"
            "    assert not exit.code, exit.code\n"
            "print(sorted(m for m in sys.modules if m == 'PIL' or m.startswith('PIL.')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    with Image.open(tmp_path / "out" / "photo_edge.png") as im:
        assert im.size == (40, 31)
