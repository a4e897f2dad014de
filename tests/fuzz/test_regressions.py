"""Every crash the fuzzers found, as a named test (issue 16).

Reproducers the fuzzers wrote are in ``tests/fuzz/crashes/``; the others are built here
from the seed corpus, so each test says exactly which bytes broke which reader.
"""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from checks import check_image, check_pipeline
from fuzzlib import CORPUS, png_chunks, png_join, streams_with_ccore_bands

from convcli.cli import cli
from convcli.errors import InputError, KernelError, OptionError
from convcli.io import read_header, read_input
from convcli.pipeline import load_pipeline

CRASHES = Path(__file__).resolve().parent / "crashes"


@pytest.fixture()
def out_dir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def one_line_error(args, name) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code in (1, 2) and len(lines) == 1 and str(name) in lines[0], (result.exit_code, result.stderr)
    return lines[0]


# --- TIFF: damaged IFDs --------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["tiff-width-tag-count-2.tif", "tiff-photometric-tuple.tif",
                                  "tiff-photometric-as-bytes.tif"])
def test_tiff_tag_of_the_wrong_count_or_type_is_one_line_not_a_type_error(case, out_dir):
    # tifffile gives such a tag as a tuple or bytes; int() of it was a TypeError/ValueError.
    path = CRASHES / case
    assert check_image(path, out_dir) in ("ok", "error")
    with pytest.raises(InputError, match="tiff-"):
        read_input(path)


def test_tiff_whose_data_decode_to_another_shape_than_its_header_is_refused(out_dir):
    # SamplesPerPixel 3 in the header, a 2-D array from the data: an IndexError in --mode.
    path = CRASHES / "tiff-decodes-2d-for-rgb-header.tif"
    assert check_image(path, out_dir) == "error"
    with pytest.raises(InputError, match=r"tiff-decodes-2d-for-rgb-header\.tif: corrupt"):
        read_input(path)


@pytest.mark.parametrize("case", ["tiff-decodes-1d.tif", "tiff-no-pages.tif"])
def test_tiff_with_a_1d_page_or_no_page_is_one_line(case, out_dir):
    path = CRASHES / case
    assert check_image(path, out_dir) == "error"
    with pytest.raises(InputError, match=case.replace(".", r"\.")):
        read_input(path)
    with pytest.raises(InputError, match=case.replace(".", r"\.")):
        read_header(path)


def _patch_tags(blob: bytes, patch) -> bytes:
    """The classic little-endian TIFF ``blob`` with ``patch(tag, type, count, value)`` applied to each
    first-IFD entry (it returns the new entry, or None to keep it)."""
    out = bytearray(blob)
    ifd = struct.unpack("<I", blob[4:8])[0]
    for k in range(struct.unpack("<H", blob[ifd:ifd + 2])[0]):
        at = ifd + 2 + 12 * k
        new = patch(blob, *struct.unpack("<HHII", blob[at:at + 12]))
        if new is not None:
            struct.pack_into("<HHII", out, at, *new)
    return bytes(out)


def _keep_first_tile(blob, tag, kind, count, value):
    """TileOffsets/TileByteCounts cut to the first tile (count 1, the value inline)."""
    if tag in (324, 325):
        return tag, 4, 1, struct.unpack("<I", blob[value:value + 4])[0]
    return None


def _planar_config(number):
    return lambda blob, tag, kind, count, value: (tag, 3, 1, number) if tag == 284 else None


@pytest.mark.parametrize("patch, message", [
    (_keep_first_tile, r"1 strip/tile offsets and 1 byte counts for a page of 4 strips or tiles"),
    (_planar_config(0), r"its PlanarConfiguration tag \(284\) is damaged: ValueError\('0 is not a valid PLANARCONFIG'\)"),
    (_planar_config(65535), r"its PlanarConfiguration tag \(284\) is damaged"),
], ids=["one-tile-of-four", "planar-config-0", "planar-config-65535"])
def test_tiff_whose_tiles_would_not_all_be_decoded_is_refused_not_read_as_whatever_memory_held(
        tmp_path, out_dir, patch, message):
    # tifffile decoded such pages with parts never written (np.empty): two reads of one file gave
    # different pixels. A PlanarConfiguration of 0 made it expect 3 planes of tiles where 1 exists.
    path = tmp_path / "damaged.tif"
    path.write_bytes(_patch_tags((CORPUS / "images" / "tiled-deflate.tif").read_bytes(), patch))
    with pytest.raises(InputError, match=r"damaged\.tif: corrupt TIFF file: " + message):
        read_input(path)
    assert check_image(path, out_dir) == "error"


def test_tifffile_log_lines_while_decoding_refuse_the_pixels(tmp_path, monkeypatch):
    # tifffile logs "read_segments: expected 4 segments, got 1" and returns the array anyway.
    import logging

    import tifffile

    real = tifffile.TiffPage.asarray

    def logging_asarray(self, *args, **kwargs):
        logging.getLogger("tifffile").warning("tifffile.read_segments: expected 4 segments, got 1")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffPage, "asarray", logging_asarray)
    with pytest.raises(InputError, match=r"tiled-deflate\.tif: corrupt TIFF file: expected 4 segments, got 1 "
                                         r"\(strips or tiles\)"):
        read_input(CORPUS / "images" / "tiled-deflate.tif")


# --- PNG ---------------------------------------------------------------------------------------

def test_palette_png_with_trns_after_the_image_data_has_the_channels_its_header_says(tmp_path, out_dir):
    # Pillow sees a tRNS chunk after IDAT only when decoding: read_shape said 3 channels, read_input 4.
    chunks = png_chunks((CORPUS / "images" / "palette-trns.png").read_bytes())
    trns = next(c for c in chunks if c[0] == b"tRNS")
    chunks.remove(trns)
    chunks.insert(len(chunks) - 1, trns)  # just before IEND
    path = tmp_path / "late-trns.png"
    path.write_bytes(png_join(chunks))
    assert read_header(path)[0] == read_input(path).array.shape == (5, 7, 3)
    assert check_image(path, out_dir) == "ok"


# --- .npy --------------------------------------------------------------------------------------

def test_npy_header_claiming_more_data_than_the_file_holds_is_refused_before_allocating(tmp_path, out_dir):
    # A 128-byte file declaring 2**60 bytes: numpy asked for exabytes (MemoryError).
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (1073741824, 1073741824), }"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    path = tmp_path / "liar.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\x00" * 16)
    with pytest.raises(InputError, match=r"liar\.npy: cannot read \.npy: truncated: the header declares "
                                         r"1073741824×1073741824 uint8 \(1152921504606846976 bytes of data\), "
                                         r"the file holds 16"):
        read_input(path)
    assert check_image(path, out_dir) == "error"


# --- text ----------------------------------------------------------------------------------------

def test_csv_cell_of_thousands_of_characters_is_shortened_in_the_message(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("1,2\n3," + "[" * 5000 + "\n")
    with pytest.raises(InputError, match=r"line 2, column 2: '\[{39}…' \(5,000 characters\) is not a number") as err:
        read_input(path)
    assert len(str(err.value)) < 200


def test_unknown_kernel_of_thousands_of_characters_is_shortened_in_the_message():
    with pytest.raises(KernelError, match=r"kernel '\\n1,1,1[1,]+…' \(4000 characters\): no such file") as err:
        from convcli.kernels import load_kernels

        load_kernels("\n" + ",".join(["1"] * 2000))
    assert len(str(err.value)) < 600


# --- pipelines -------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["pipeline-kernel-size-list-holds-a-mapping.yaml",
                                  "pipeline-kernel-size-list-holds-a-string.yaml"])
def test_pipeline_pair_holding_a_mapping_or_a_string_is_one_line(case):
    # float({}) was a TypeError, float('') a ValueError: tracebacks.
    with pytest.raises(OptionError, match=r"layers\[1\]\.kernel_size: expected whole numbers, got \[1, "):
        load_pipeline(CRASHES / case)


@pytest.mark.parametrize("key, value, message", [
    ("stride", "[1, 1000000000000000000000000000000000000000000000000000000000000]",
     r"layers\[0\]\.stride: a 61-digit number is more than 2147483647"),
    ("dilation", "1000000000000000000000000000000000000000000000000000000000000",
     r"layers\[0\]\.dilation: a 61-digit number is more than 2147483647"),
    ("padding", "[2147483648, 0]", r"layers\[0\]\.padding: \[2147483648, 0\] is not valid"),
])
def test_pipeline_numbers_beyond_c_integers_are_refused_when_the_file_is_read(tmp_path, key, value, message):
    # A 61-digit stride was "internal error: OverflowError: Python int too large to convert to C long".
    path = tmp_path / "huge.yaml"
    path.write_text(f"layers:\n  - conv: {{kernels: [box-blur], {key}: {value}}}\n")
    with pytest.raises(OptionError, match=message):
        load_pipeline(path)


def test_layer_whose_arrays_cannot_exist_is_refused_before_work_in_one_line(tmp_path):
    # Padding 2**31-1 asked numpy for an array larger than the address space: a ValueError
    # ("Maximum allowed dimension exceeded") reported as an internal error. The memory budget
    # (issue 18) now refuses it from the shapes, before any work.
    path = tmp_path / "pad.yaml"
    path.write_text("layers:\n  - conv: {kernels: [box-blur], padding: 2147483647}\n")
    image = tmp_path / "small.npy"
    np.save(image, np.ones((9, 11), np.float32))
    line = one_line_error(["apply", image, "--pipeline", path, "-o", tmp_path / "out", "-q", "-j", "1"], image)
    # Refused by the budget from the shapes, or (since row-band streaming landed, the budget counting
    # one band) failing its allocation: one line either way, never a traceback.
    assert (re.search(r"needs about [\d.]+ TiB of memory .* more than the 1 GiB memory limit", line)
            or line == f"convcli: {image}: out of memory"), line


def test_array_too_big_for_numpy_is_out_of_memory_in_one_line(tmp_path, monkeypatch):
    # Whatever still asks numpy for an impossible array fails that input in one line.
    from convcli import batch

    def impossible(*args, **kwargs):
        raise ValueError("Maximum allowed dimension exceeded")

    monkeypatch.setattr(batch, "process", impossible)
    image = tmp_path / "small.npy"
    np.save(image, np.ones((9, 11), np.float32))
    line = one_line_error(["apply", image, "-k", "edge", "-o", tmp_path / "out", "-q", "-j", "1"], image)
    assert line == f"convcli: {image}: out of memory: the layer needs an array larger than this machine can hold"


def test_pipeline_naming_a_kernel_longer_than_a_file_name_is_one_line():
    # An OSError (File name too long) traceback before issue 18 §6 was fixed on main.
    with pytest.raises(KernelError, match=r"pipeline-kernel-name-too-long\.yaml: layers\[0\]\.kernels: '3x\[+3\]+…' "
                                          r"\(1084 characters\): no kernel file"):
        load_pipeline(CRASHES / "pipeline-kernel-name-too-long.yaml")


# --- standard output on a full disk ------------------------------------------------------------------

@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")
@pytest.mark.parametrize("args", [["kernels"], ["shape", "--input", "9x9x3", "-k", "edge"],
                                  ["apply", "IMAGE", "-k", "edge", "-o", "-"],
                                  ["apply", "IMAGE", "-k", "edge", "--print"],
                                  ["apply", "IMAGE", "-k", "edge", "--json", "-o", "OUT"]])
def test_standard_output_on_a_full_disk_is_one_line_and_exit_1(tmp_path, args):
    # Writing to /dev/full fails with ENOSPC: a traceback (and an "Exception ignored" at exit) before.
    args = [str(CORPUS / "images" / "rgb8.png") if a == "IMAGE" else str(tmp_path / "out") if a == "OUT" else a
            for a in args]
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "convcli", *args], stdout=full, stderr=subprocess.PIPE,
                              timeout=120)
    assert done.returncode == 1
    assert done.stderr.decode() == "convcli: error: standard output: cannot write: No space left on device\n"


# --- file names --------------------------------------------------------------------------------------

def test_file_name_with_a_newline_or_escape_sequence_is_reported_on_one_line(tmp_path):
    # 'bad\nname.png' made the message two lines; '\x1b[2J' would clear the user's terminal; U+0085 too.
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad\nname.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 20)
    (folder / "clear\x1b[2J.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 20)
    (folder / "next\x85line.png").write_bytes(b"GIF89a")  # NEL: str.splitlines() breaks there too
    (folder / "caf\udce9.png").write_bytes((CORPUS / "images" / "rgb8.png").read_bytes())  # Latin-1 bytes
    done = subprocess.run([sys.executable, "-m", "convcli", "apply", str(folder), "-k", "edge", "-o",
                           str(tmp_path / "out"), "-j", "1"], capture_output=True, timeout=120)
    lines = done.stderr.decode("utf-8", "backslashreplace").splitlines()
    assert done.returncode == 1
    assert lines[0].startswith(f"convcli: {folder}/bad\\nname.png: corrupt ")
    assert lines[1].startswith(f"convcli: {folder}/clear\\x1b[2J.png: corrupt ")
    assert lines[2].startswith(f"convcli: {folder}/next\\x85line.png: corrupt GIF file")
    assert lines[3].startswith("convcli: 1 done, 3 failed") and len(lines) == 4
    assert b"\x1b" not in done.stderr


def test_npy_with_a_negative_size_in_its_shape_is_one_line_as_kernel_and_as_input():
    # numpy's header reader accepts shape (-1, 5): as a kernel, np.fromfile(count=-5) read the
    # whole file and reshape raised ValueError; as an input, `shape` reported a negative size.
    path = CRASHES / "npy-negative-size.npy"
    from convcli.kernels import load_kernels

    with pytest.raises(KernelError, match=r"npy-negative-size\.npy: not a valid \.npy file: a negative size in its "
                                          r"shape -1x5"):
        load_kernels(str(path))
    with pytest.raises(InputError, match=r"npy-negative-size\.npy: corrupt array header: a negative size in its "
                                         r"shape \(-1, 5\)"):
        read_header(path)
    with pytest.raises(InputError, match=r"npy-negative-size\.npy: "):
        read_input(path)


def test_warning_line_of_a_file_named_with_a_newline_stays_one_line(tmp_path):
    # The "warning: truncated JPEG data" line printed the name raw: the long fuzz run saw its tail
    # arrive as a line of its own.
    jpeg = (CORPUS / "images" / "rgb.jpg").read_bytes()
    path = tmp_path / "cut\nshort.jpg"
    path.write_bytes(jpeg[:-30])  # the scan cut short, the header whole
    done = subprocess.run([sys.executable, "-m", "convcli", "apply", str(path), "-k", "edge", "-o", str(tmp_path / "out"),
                           "-j", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"convcli: {tmp_path}/cut\\nshort.jpg: warning: truncated JPEG data")
    assert len(done.stderr.splitlines()) == 1


@streams_with_ccore_bands
def test_tiff_tile_that_does_not_inflate_when_streamed_is_one_line_not_an_internal_error(tmp_path, monkeypatch):
    # The row-band reader (an input over --memory-limit) let the codec's zlib.error out of
    # TiffRegionReader.read: "internal error: error: Error -5 while decompressing data".
    from convcli import streaming

    blob = bytearray((CORPUS / "images" / "tiled-deflate.tif").read_bytes())
    offset = 914  # the third tile (second row of 16×16 tiles), 305 deflated bytes
    blob[offset + 2:offset + 305] = zlib.compress(bytes(2000))[2:][:40] + bytes(263)  # a stream cut short
    path = tmp_path / "cut-tile.tif"
    path.write_bytes(bytes(blob))
    monkeypatch.setattr(streaming, "BAND_TARGET_BYTES", 1)
    streamed = []
    real = streaming.stream_input
    monkeypatch.setattr(streaming, "stream_input", lambda *a, **k: streamed.append(1) or real(*a, **k))
    result = CliRunner().invoke(cli, ["apply", str(path), "-k", "1x1: 1", "--depthwise", "--format", "npy", "-o",
                                      str(tmp_path / "out"), "-q", "--memory-limit", "8KiB"])
    assert streamed, "the limit did not make it stream"
    assert result.exit_code == 1
    assert re.fullmatch(rf"convcli: {re.escape(str(path))}: corrupt TIFF file: rows 16–32 do not decode: "
                        r"error: Error -[0-9] while decompressing data: [^\n]+\n", result.stderr), result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    # The first rows decode: the reader's error comes only once it reaches the damaged tile.
    from convcli.io.tiff import TiffRegionReader

    reader = TiffRegionReader(str(path), path)
    try:
        assert reader.read(0, 16).shape == (16, 32, 3)
        with pytest.raises(InputError, match=r"cut-tile\.tif: corrupt TIFF file: rows 16–32 do not decode: error: "):
            reader.read(16, 17)
    finally:
        reader.close()


@streams_with_ccore_bands
@pytest.mark.parametrize("case, limit", [("tiff-tile-after-empty-runs-past-eof.tif", "5KiB"),
                                         ("tiff-tile-width-0-one-offset.tif", "5KiB"),
                                         ("tiff-fill-order-tuple.tif", "5KiB"),
                                         ("tiff-uncompressed-empty-tile.tif", "5KiB")])
def test_tiff_streamed_by_rows_gives_the_whole_reads_pixels(case, limit, tmp_path, monkeypatch):
    # Found by the streamed TIFF fuzzer; both streamed other pixels than the whole run wrote.
    # past-eof: byte counts (256, 0, 29696) for a row of 3 tiles; tifffile's read_segments
    # returned the third tile's bytes from the wrong place after the empty one (the reader now
    # reads each segment itself; the page, uncompressed with an empty tile, is also decoded whole).
    # width-0: TileWidth 0, one offset and byte counts as bytes for 6 tiles; the region reader
    # read it as one empty strip (zeros), tifffile's whole read as the data at that offset; it
    # is now decoded whole and streamed from memory.
    # fill-order-tuple: FillOrder with 2 values; int() of the tuple in TiffRegionReader was a
    # TypeError ("internal error") where the whole read decodes it. Also decoded whole now.
    # uncompressed-empty-tile: byte counts (256, 0, 256, …): the region reader read zeros for the
    # empty tile, tifffile's whole read other bytes. Uncompressed pages with an empty tile are
    # now decoded whole.
    import tifffile

    from convcli import streaming

    path = CRASHES / case
    monkeypatch.setattr(streaming, "BAND_TARGET_BYTES", 1)
    streamed = []
    real = streaming.stream_input
    monkeypatch.setattr(streaming, "stream_input", lambda *a, **k: streamed.append(1) or real(*a, **k))
    maps = {}
    for run, extra in (("whole", []), ("banded", ["--memory-limit", limit])):
        result = CliRunner().invoke(cli, ["apply", str(path), "-k", "1x1: 1", "--depthwise", "--format", "npy", "-o",
                                          str(tmp_path / run), "-q", *extra])
        assert result.exit_code == 0, result.stderr
        maps[run] = np.load(tmp_path / run / f"{path.stem}.npy")
        assert bool(streamed) == (run == "banded"), "the limit did not make it stream"
    expected = tifffile.imread(path).astype(np.float32)[:, :, None]
    np.testing.assert_array_equal(maps["whole"], expected)
    np.testing.assert_array_equal(maps["banded"], expected)


@pytest.mark.parametrize("case", ["tiff-zero-samples-per-pixel.tif", "tiff-tile-length-without-width.tif"])
def test_tiff_the_whole_read_refuses_is_refused_streamed_as_whole(case, tmp_path, monkeypatch):
    # zero-samples: SamplesPerPixel 0 in a gray tiled TIFF: the whole read refuses it, but the
    # row-band reader took the page's "YX" axes for 1 sample and read it (a streamed run succeeded).
    # tile-length-without-width: TileWidth lost, so tifffile sees one strip of byte count 0; the
    # whole read fails ("failed to read 1536 bytes"), the row-band reader read zeros.
    from convcli import streaming

    path = CRASHES / case
    monkeypatch.setattr(streaming, "BAND_TARGET_BYTES", 1)
    for run, extra in (("whole", []), ("banded", ["--memory-limit", "3KiB"])):
        result = CliRunner().invoke(cli, ["apply", str(path), "-k", "1x1: 1", "--depthwise", "--format", "npy", "-o",
                                          str(tmp_path / run), "-q", *extra])
        assert result.exit_code == 1, (run, result.stderr)
        assert result.stderr.startswith(f"convcli: {path}: ") and len(result.stderr.splitlines()) == 1, result.stderr
        assert not (tmp_path / run).exists() or not list((tmp_path / run).iterdir())


def test_npy_size_that_overflows_numpys_memory_map_is_one_line(tmp_path, out_dir):
    # A bool .npy declaring 2**63 - 1 values: numpy's memory map computed a negative length
    # ("internal error: OverflowError: memory mapped length must be positive"). Found by the
    # long run of test_array_readers_survive_mutated_seeds; now refused from the header.
    from convcli.io.npy import NpyRegionReader

    path = CRASHES / "npy-size-overflows-the-memory-map.npy"
    with pytest.raises(InputError, match=r"cannot read \.npy: truncated: the header declares "
                                         r"9223372036854775807 bool \(9223372036854775807 bytes of data\), "
                                         r"the file holds 10"):
        NpyRegionReader(path.name, path)
    line = one_line_error(["apply", path, "-k", "edge", "-o", out_dir], path.name)
    assert "internal error" not in line
    assert check_image(path, out_dir) == "error"


def test_uncompressed_tiff_strip_shorter_than_its_rows_is_not_read_by_region(out_dir):
    # A 708-byte TIFF whose one uncompressed strip (420 bytes, at offset 0) declared 5×8323079
    # RGB floats: Pillow refuses it, but the row-band reader (it is over --max-pixels, so it
    # streamed) read an empty segment and wrote 500 MB of zeros. Found by the long run of
    # test_image_reader_survives_mutated_seeds[tiff]; such a page is now read whole only.
    from convcli.io.tiff import TiffRegionReader

    path = CRASHES / "tiff-uncompressed-strip-shorter-than-its-rows.tif"
    assert not TiffRegionReader.supports(path)
    line = one_line_error(["apply", path, "-k", "1x1: 1", "--depthwise", "--format", "npy", "-o", out_dir,
                           "--max-pixels", 1 << 20], path.name)
    assert "decompression-bomb guard" in line
    assert not list(out_dir.iterdir())
    assert check_image(path, out_dir) == "error"


def test_tiff_that_pillow_turns_by_its_orientation_tag_is_read_in_stored_order(out_dir):
    # An LZW RGB TIFF (tifffile needs imagecodecs for LZW, so Pillow decodes it) with
    # Orientation 5: Pillow transposed it to 7×5 while its header says 5×7 (read_header and
    # read_input disagreed). Found by the long run of test_image_reader_survives_mutated_seeds[tiff].
    path = CRASHES / "tiff-lzw-orientation-5.tif"
    assert read_header(path)[0] == read_input(path).array.shape == (5, 7, 3)
    assert check_image(path, out_dir) == "ok"


def test_tiff_of_thousands_of_samples_per_pixel_is_held_by_the_bomb_guard(out_dir):
    # A 32×48 gray TIFF declaring 65,279 samples per pixel in six mostly empty tiles: read_input
    # returned 401 MB of zeros under a 1 Mi-pixel limit (the guard counted pixels only). Found by
    # tests/fuzz/atheris_fuzz.py tiff. The guard now also bounds the samples of > 4 channels.
    path = CRASHES / "tiff-65279-samples-per-pixel.tif"
    with pytest.raises(InputError, match=r"48×32 pixels of 65,279 samples = 100,268,544 samples is more than the "
                                         r"4,194,304 of the pixel limit's RGBA pixels \(decompression-bomb guard\)"):
        read_input(path, max_pixels=1 << 20)
    assert check_image(path, out_dir) == "error"


def test_tiff_whose_size_pillow_reports_turned_has_the_header_of_its_stored_pixels(out_dir):
    # A 1-bit 5×7 TIFF with Orientation 8 (tifffile leaves 1-bit pages to Pillow): Pillow opens
    # it as 7×5, so read_header said 7×5 once read_input gave the stored 5×7. Found by the long
    # run of test_image_reader_survives_mutated_seeds[tiff] after the Orientation fix above.
    path = CRASHES / "tiff-1-bit-orientation-8.tif"
    assert read_header(path)[0] == read_input(path).array.shape == (5, 7, 1)
    assert check_image(path, out_dir) == "ok"


def test_palette_tiff_that_pillow_turns_but_keeps_unturned_is_refused(out_dir):
    # A palette TIFF with Orientation 5: Pillow 13 transposes its pixels but keeps the stored
    # size, so no order of them is the stored one; header 5×7, pixels 7×5 before. Found by a
    # second long run of test_image_reader_survives_mutated_seeds[tiff]; now one line.
    path = CRASHES / "tiff-palette-orientation-5.tif"
    with pytest.raises(InputError, match=r"a P TIFF with Orientation 5, which Pillow decodes turned in a way that "
                                         r"cannot be undone \(7×5 for 5×7\); save it without the Orientation tag"):
        read_input(path)
    assert check_image(path, out_dir) == "error"


def test_pipeline_kernel_starting_with_a_tilde_of_no_user_is_one_line(tmp_path, out_dir):
    # "~x3: 0,1,0 …" as a kernel item: Path.expanduser() raised RuntimeError("Could not determine
    # home directory.") for the user "x3: 0,1,0 …", a traceback. Found by the hour-long run of
    # test_pipeline_reader_survives_mutated_seeds; now the item is looked for as written.
    path = CRASHES / "pipeline-kernel-tilde-unknown-user.yaml"
    with pytest.raises(KernelError, match=r"layers\[0\]\.kernels: '~x3: 0,1,0 0,1,0 0,1,0': no kernel file .* "
                                          r"and no built-in kernel"):
        load_pipeline(path)
    image = tmp_path / "small.npy"
    np.save(image, np.ones((9, 11, 3), np.float32))
    assert check_pipeline(path, image, out_dir) == "error"
