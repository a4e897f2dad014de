"""Whole-command timings of ``convcli`` next to ImageMagick and next to its own floor.

Cases (issue 4's command-line targets):

1. ``convcli apply`` on a 1080p RGB PNG with one 3×3 kernel, PNG out, against
   ImageMagick's ``convert IN -morphology Convolve 3x3:… OUT`` (whole process each).
   convcli is timed twice: the default (a 2-D kernel summed over the channels, one gray
   map) and ``--depthwise`` (one RGB picture, the same work ImageMagick does).
2. ``convcli apply`` with a 64-filter 3×3 bank (64 gray PNG maps) against its floor:
   decoding the PNG + the convolution + the fastest parallel PNG encode of the 64 maps
   (zlib level 1 on all cores), each measured in this process.
3. Start-up: ``convcli --help`` and ``convcli shape …`` against
   ``python -c "import click, numpy"``.

Medians of ``--repeat`` runs (commands alternate, so drift hits both sides alike). The
package's bytecode is written first, as an install does (see :func:`compile_package`).
Run: ``python benchmarks/cli_bench.py`` (writes ``benchmarks/CLI.md``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from batch_bench import find_imagemagick, imagemagick_version  # noqa: E402

EDGE = "3x3: -1,-1,-1 -1,8,-1 -1,-1,-1"


def convcli_command() -> list[str]:
    exe = shutil.which("convcli", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "convcli"]


def make_photo(path: Path, height: int = 1080, width: int = 1920) -> None:
    from PIL import Image

    rng = np.random.default_rng(1080)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([np.sin(xx / 97.0), np.cos(yy / 61.0), np.sin((xx + yy) / 143.0)], axis=2)
    block = ((xx // 120).astype(int) + (yy // 120).astype(int)) % 2
    pixels = 110 + 70 * base + 40 * block[:, :, None] + rng.normal(0, 4, (height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, compress_level=6)


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def medians(commands: dict[str, list[str]], repeat: int) -> dict[str, float]:
    """Median wall seconds of each command, run in turn (A B A B …) after one warm-up each."""
    for command in commands.values():
        wall(command)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            times[name].append(wall(command))
    return {name: statistics.median(values) for name, values in times.items()}


def in_process_floor(photo: Path, bank: np.ndarray, repeat: int) -> dict[str, float]:
    """Decode + convolution + fastest parallel PNG encode of the maps, each a median in this process."""
    from PIL import Image

    import convcli
    from convcli.io import encode_png, to_display

    def decode():
        with Image.open(photo) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32)

    x = decode()
    maps = convcli.conv2d(x, bank, padding="same")
    gray = [to_display(maps[:, :, f], normalize="minmax", bits=8) for f in range(maps.shape[2])]

    def encode(level: int, threads: int):
        def one(image):
            return encode_png(image, bits=8, compress_level=level)
        if threads == 1:
            return [one(g) for g in gray]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, gray))

    def median_of(func) -> float:
        func()
        values = []
        for _ in range(repeat):
            started = time.perf_counter()
            func()
            values.append(time.perf_counter() - started)
        return statistics.median(values)

    cores = os.cpu_count() or 1
    return {
        "decode": median_of(decode),
        "convolution": median_of(lambda: convcli.conv2d(x, bank, padding="same")),
        "encode (level 1, 1 thread)": median_of(lambda: encode(1, 1)),
        f"encode (level 1, {cores} threads)": median_of(lambda: encode(1, cores)),
    }


def compile_package() -> None:
    """Write convcli's bytecode, as ``pip install`` does, so every timed start-up loads it.

    An editable install (or ``PYTHONDONTWRITEBYTECODE=1``) would otherwise compile the
    package's modules at every start: about 90 ms that no installed copy pays.
    """
    import convcli

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(convcli.__file__).parent)],
                   check=True, stdout=subprocess.DEVNULL)


#: Issue 4's command-line targets: (case, the most the ratio may be).
TARGETS = {"one 3×3 kernel vs ImageMagick": 0.5, "64 filters vs floor": 1.2, "start-up vs import click, numpy": 1.5}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; do not rewrite benchmarks/CLI.md")
    args = parser.parse_args(argv)
    text, verdicts = report(args.repeat)
    print(text)
    print("\n".join(verdicts))
    if not args.no_write:
        write(text, verdicts)
    return 0


def write(text: str, verdicts: list[str]) -> None:
    (HERE / "CLI.md").write_text("# Command-line timings (`python benchmarks/cli_bench.py`)\n\n" + text
                                 + "\n## Targets\n\n" + "\n".join(verdicts) + "\n")


def report(repeat: int) -> tuple[str, list[str]]:
    """Run the three cases; returns the Markdown tables and one verdict line per target."""
    convcli = convcli_command()
    compile_package()
    magick = find_imagemagick()
    verdicts: list[str] = []

    def verdict(case: str, ratio: float, detail: str) -> None:
        limit = TARGETS[case]
        verdicts.append(f"- {case}: {detail} = {ratio:.2f}× (target ≤ {limit}×): {'met' if ratio <= limit else 'missed'}")

    lines = [f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; medians of {repeat} runs.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo = tmp / "photo.png"
        make_photo(photo)
        out = tmp / "out"
        out.mkdir()

        # 1. One 3x3 kernel, whole process.
        commands = {
            "convcli apply -k edge (gray map)": convcli + ["apply", str(photo), "-k", "edge", "-o", str(out), "-q"],
            "convcli apply -k edge --depthwise (RGB)": convcli + ["apply", str(photo), "-k", "edge", "--depthwise",
                                                                  "-o", str(out / "dw"), "-q"],
        }
        if magick:
            commands["ImageMagick convert -morphology Convolve"] = magick + [
                str(photo), "-define", "png:compression-level=1", "-morphology", "Convolve", EDGE,
                str(out / "im.png")]
        one = medians(commands, repeat)
        lines += ["## One 3×3 kernel on a 1080p RGB PNG, PNG out (whole process)", "",
                  "| command | median s | ratio to ImageMagick |", "|---|---:|---:|"]
        reference = one.get("ImageMagick convert -morphology Convolve")
        for name, seconds in one.items():
            ratio = f"{seconds / reference:.2f}×" if reference else "—"
            lines.append(f"| {name} | {seconds:.3f} | {ratio} |")
        if magick:
            lines += ["", f"ImageMagick: {imagemagick_version(magick)}."]
            gray = one["convcli apply -k edge (gray map)"]
            verdict("one 3×3 kernel vs ImageMagick", gray / reference,
                    f"convcli {gray:.3f} s vs ImageMagick {reference:.3f} s")
        else:
            lines += ["", "ImageMagick not found (`apt-get install imagemagick`); its row is skipped."]

        # 2. A 64-filter bank against its floor.
        rng = np.random.default_rng(64)
        bank = rng.standard_normal((3, 3, 3, 64)).astype(np.float32)
        bank_file = tmp / "bank64.npy"
        np.save(bank_file, bank)
        many = medians({"convcli": convcli + ["apply", str(photo), "-k", str(bank_file), "--padding", "same",
                                              "-o", str(out / "bank"), "-q"]}, repeat)["convcli"]
        floor = in_process_floor(photo, bank, repeat)
        encode_best = min(v for k, v in floor.items() if k.startswith("encode"))
        floor_total = floor["decode"] + floor["convolution"] + encode_best
        lines += ["", "## 64 filters 3×3 on a 1080p RGB PNG, 64 PNG maps out", "",
                  "| part | median s |", "|---|---:|"]
        lines += [f"| {name} (in process) | {seconds:.3f} |" for name, seconds in floor.items()]
        lines += [f"| floor = decode + convolution + fastest encode | {floor_total:.3f} |",
                  f"| `convcli apply` whole process | {many:.3f} |",
                  f"| ratio convcli / floor | {many / floor_total:.2f}× |"]
        verdict("64 filters vs floor", many / floor_total, f"convcli {many:.3f} s vs floor {floor_total:.3f} s")

        # 3. Start-up.
        start = medians({
            "python -c 'import click, numpy'": [sys.executable, "-c", "import click, numpy"],
            "convcli --help": convcli + ["--help"],
            "convcli shape --input 725x1280x3 --filters 32 --kernel-size 4":
                convcli + ["shape", "--input", "725x1280x3", "--filters", "32", "--kernel-size", "4"],
        }, max(repeat, 10))
        base = start["python -c 'import click, numpy'"]
        lines += ["", "## Start-up", "", "| command | median s | ratio to import click, numpy |", "|---|---:|---:|"]
        lines += [f"| {name} | {seconds:.3f} | {seconds / base:.2f}× |" for name, seconds in start.items()]
        slowest = max(seconds for name, seconds in start.items() if name.startswith("convcli"))
        verdict("start-up vs import click, numpy", slowest / base,
                f"slowest of --help and shape {slowest:.3f} s vs {base:.3f} s")
    return "\n".join(lines) + "\n", verdicts


if __name__ == "__main__":
    raise SystemExit(main())
