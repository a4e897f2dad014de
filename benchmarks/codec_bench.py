"""PNG codec candidates, measured on feature maps and photographs: deflate back-ends and decoders.

Deflate: the Sub-filtered scanlines convcli writes at its fast levels, of (a) the Sobel-x
map of a 1080p photograph (``photos.mosaic``), gray 8-bit after ``--normalize minmax``,
and (b) the RGB photograph itself, compressed whole by zlib (level 1, RLE strategy: what
convcli used before), zlib-ng, ISA-L (``isal``, levels 0–3) and libdeflate (``deflate``).

Decoders: Pillow (through convcli's reader), pyspng (libspng) and imagecodecs on every PNG
kind convcli reads: 8/16-bit gray, RGB, RGBA, 16-bit RGB, gray+alpha, palette, interlaced.
A decoder's time counts only where its pixels equal Pillow's.

Each round runs every candidate once, in turn; the tables give medians of the rounds.
Run: ``python benchmarks/codec_bench.py`` (writes ``benchmarks/CODECS.md``).
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from photos import mosaic  # noqa: E402


def sub_filtered(pixels: np.ndarray) -> bytes:
    """PNG scanlines with the Sub filter on every row (convcli's fast levels)."""
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1)
    bpp = 1 if pixels.ndim == 2 else pixels.shape[2]
    out = np.empty((height, rows.shape[1] + 1), np.uint8)
    out[:, 0] = 1
    out[:, 1:1 + bpp] = rows[:, :bpp]
    np.subtract(rows[:, bpp:], rows[:, :-bpp], out=out[:, 1 + bpp:])
    return out.tobytes()


def deflaters() -> dict[str, object]:
    """name → function(bytes) → zlib stream, for every library importable here."""
    out: dict[str, object] = {
        "zlib 1 (RLE)": lambda d: _zlib(zlib, d, 1, zlib.Z_RLE),
        "zlib 1": lambda d: zlib.compress(d, 1),
        "zlib 6": lambda d: zlib.compress(d, 6),
    }
    try:
        from zlib_ng import zlib_ng
        out["zlib-ng 1"] = lambda d: zlib_ng.compress(d, 1)
    except ImportError:
        pass
    try:
        from isal import isal_zlib
        for level in range(4):
            out[f"isal {level}"] = (lambda lv: lambda d: isal_zlib.compress(d, lv))(level)
    except ImportError:
        pass
    try:
        import deflate
        for level in (1, 2, 4, 6):
            out[f"libdeflate {level}"] = (lambda lv: lambda d: deflate.zlib_compress(d, lv))(level)
    except ImportError:
        pass
    return out


def _zlib(module, data: bytes, level: int, strategy: int) -> bytes:
    compressor = module.compressobj(level, module.DEFLATED, 15, 9, strategy)
    return compressor.compress(data) + compressor.flush()


def rounds(candidates: dict[str, object], data, repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for name, run in candidates.items():  # warm-up
        run(data)
    for _ in range(repeat):
        for name, run in candidates.items():
            started = time.perf_counter()
            run(data)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def deflate_table(repeat: int) -> list[str]:
    import convcli
    from convcli.io import to_display

    photo = mosaic()
    edges = convcli.apply_layer(photo.astype(np.float32), convcli.load_kernels("sobel-x"), padding="same")
    gray = to_display(edges[:, :, 0], normalize="minmax", bits=8)
    lines: list[str] = []
    for label, pixels in (("Sobel-x map of the 1080p photograph, gray 8-bit", gray),
                          ("the 1080p photograph, RGB 8-bit", photo)):
        data = sub_filtered(pixels)
        candidates = deflaters()
        for name, run in candidates.items():  # every stream must inflate to the data
            assert zlib.decompress(run(data)) == data, name
        medians = rounds(candidates, data, repeat)
        base = medians["zlib 1 (RLE)"]
        lines += [f"### {label} ({len(data) / 1e6:.1f} MB of scanlines)", "",
                  "| deflate | ms | × zlib 1 RLE | size kB |", "|---|---:|---:|---:|"]
        for name, seconds in medians.items():
            size = len(candidates[name](data))
            lines.append(f"| {name} | {seconds * 1e3:.1f} | {seconds / base:.2f} | {size / 1e3:.0f} |")
        lines.append("")
    return lines


def png_kinds() -> dict[str, bytes]:
    """One PNG of each kind convcli reads, from the photograph (1080p; Pillow writes them)."""
    from PIL import Image

    photo = mosaic()
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    alpha = (np.arange(photo.shape[1], dtype=np.uint32)[None, :] * 255 // photo.shape[1]).astype(np.uint8)
    alpha = np.broadcast_to(alpha, gray.shape)
    kinds = {
        "gray 8": Image.fromarray(gray),
        "gray 16": Image.fromarray((gray.astype(np.uint16) * 257).astype(np.uint16)),
        "RGB 8": Image.fromarray(photo),
        "RGBA 8": Image.fromarray(np.dstack([photo, alpha])),
        "gray+alpha 8": Image.fromarray(np.dstack([gray, alpha]), "LA"),
        "palette": Image.fromarray(photo).quantize(256),
    }
    out = {}
    for name, image in kinds.items():
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=6)
        out[name] = buffer.getvalue()
    from convcli.io import encode_png
    out["RGB 16 (convcli's encoder)"] = encode_png(photo.astype(np.uint16) * 257)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "PNG", interlace=1)  # Pillow ≥ 11.? writes Adam7 on request
    if b"IHDR" in buffer.getvalue()[:40] and buffer.getvalue()[28] == 1:
        out["RGB 8 interlaced"] = buffer.getvalue()
    else:
        import subprocess
        proc = subprocess.run(["convert", "png:-", "-interlace", "PNG", "png:-"], input=out["RGB 8"],
                              capture_output=True)
        if proc.returncode == 0 and proc.stdout[28] == 1:
            out["RGB 8 interlaced"] = proc.stdout
    return out


def decoders() -> dict[str, object]:
    from convcli.io.pillow import _read_image

    from convcli.io import read_input

    out: dict[str, object] = {
        "Pillow (convcli's route)": lambda b: _read_image("<bytes>", None, b, max_pixels=None).array,
        "convcli's reader now": lambda b: read_input(b, keep_integers=True).array,
    }
    try:
        import pyspng
        out["pyspng"] = lambda b: pyspng.load(b)
    except ImportError:
        pass
    try:
        imagecodecs = importlib.import_module("imagecodecs")
        out["imagecodecs"] = lambda b: imagecodecs.png_decode(b)
    except ImportError:
        pass
    return out


def decode_table(repeat: int) -> list[str]:
    kinds = png_kinds()
    candidates = decoders()
    lines = ["| PNG kind | size kB | " + " | ".join(f"{n} ms" for n in candidates) + " |",
             "|---|---:|" + "---:|" * len(candidates)]
    for kind, blob in kinds.items():
        reference = candidates["Pillow (convcli's route)"](blob)
        same = {}
        for name, run in candidates.items():
            try:
                got = np.asarray(run(blob))
            except Exception as err:  # noqa: BLE001 - a decoder that cannot read the kind
                same[name] = f"fails ({type(err).__name__})"
                continue
            if got.ndim == 2:
                got = got[:, :, None]
            if got.shape[2] == reference.shape[2] + 1 and got.dtype == np.uint16:
                got = got[:, :, :-1]  # pyspng 0.1 gives 16-bit gray/RGB with an opaque alpha added
            same[name] = "" if got.shape == reference.shape and np.array_equal(got, reference) else "differs"
        working = {n: c for n, c in candidates.items() if same[n] in ("", "differs")}
        medians = rounds(working, blob, repeat)
        cells = []
        for name in candidates:
            cells.append(same[name] if name not in medians else
                         f"{medians[name] * 1e3:.1f}" + (" (pixels differ)" if same[name] else ""))
        lines.append(f"| {kind} | {len(blob) / 1e3:.0f} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    versions = []
    for module in ("PIL", "isal", "deflate", "zlib_ng", "pyspng", "imagecodecs"):
        try:
            versions.append(f"{module} {importlib.import_module(module).__version__}")
        except (ImportError, AttributeError):
            pass
    load = os.getloadavg()[0]
    lines = [f"Machine: {os.cpu_count()} cores (shared with other jobs, load {load:.1f} at the start), Python "
             f"{sys.version.split()[0]}, zlib {zlib.ZLIB_RUNTIME_VERSION}; {', '.join(versions)}. "
             f"Medians of {args.repeat} alternating rounds, one thread.", "", "## Deflate", ""]
    lines += deflate_table(args.repeat)
    lines += ["## Decoding a 1080p PNG to a numpy array", "",
              "Pillow's column is convcli's Pillow route (16-bit colour decoded twice, high and low",
              "bytes; see `convcli/io/pillow.py`). pyspng's 16-bit gray and RGB come with an opaque alpha",
              "channel added, dropped before comparing. \"convcli's reader now\" is `read_input`, which",
              "takes libspng's route for the kinds where it wins (`convcli/io/spng.py`).", ""]
    lines += decode_table(args.repeat)
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        (HERE / "CODECS.md").write_text("# PNG codecs (`python benchmarks/codec_bench.py`)\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
