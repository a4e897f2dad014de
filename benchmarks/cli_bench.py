"""Whole-command timings of ``convcli`` next to libvips, ImageMagick and its own floor.

The input is a 1080p photograph: a mosaic of the photographs in ``sample_images/`` at
their own resolution (``benchmarks/photos.py``). Cases (issues 4 and 15):

1. ``convcli apply photo.png -k edge --padding same -o out/`` (one 3×3 kernel, PNG out)
   against ``vips conv photo.png out.png edge.mat`` and ImageMagick's ``convert IN
   -morphology Convolve 3x3:… OUT`` (whole process each; PNG compression level 1 for
   all). convcli is timed twice: the default (a 2-D kernel summed over the channels, one
   gray map) and ``--depthwise`` (one RGB picture, the work the peers do).
2. ``convcli apply`` with a 64-filter 3×3 bank (64 gray PNG maps) against its floor:
   decoding the PNG + the convolution + the fastest parallel PNG encode of the 64 maps
   (convcli's encoder at level 1, ISA-L, on all cores), each measured in this process.
3. Start-up: ``convcli --help`` and ``convcli shape …`` against
   ``python -c "import click, numpy"``.

Medians of ``--repeat`` runs (commands alternate, so drift hits both sides alike), of the
wall time and of the CPU time (user + system, all threads): on a machine shared with other
jobs the wall time includes the waits for a core, the CPU time much less. The
package's bytecode is written first, as an install does (see :func:`compile_package`).
Run: ``python benchmarks/cli_bench.py`` (writes ``benchmarks/CLI.md``).
"""

from __future__ import annotations

import argparse
import os
import resource
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
from batch_bench import find_imagemagick, find_vips, imagemagick_version  # noqa: E402
from photos import save_photo  # noqa: E402

EDGE = "3x3: -1,-1,-1 -1,8,-1 -1,-1,-1"
EDGE_MAT = "3 3 1 0\n-1 -1 -1\n-1 8 -1\n-1 -1 -1\n"  # libvips' matrix file: W H scale offset, rows


def convcli_command() -> list[str]:
    exe = shutil.which("convcli", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "convcli"]


def wall(command: list[str]) -> float:
    return run_timed(command)[0]


def run_timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def medians(commands: dict[str, list[str]], repeat: int, cpu: dict[str, float] | None = None) -> dict[str, float]:
    """Median wall seconds of each command, run in turn (A B A B …) after one warm-up each.

    ``cpu``, when given, receives each command's median CPU seconds: on a machine shared
    with other jobs the wall time includes waiting for a core, the CPU time much less so.
    """
    for command in commands.values():
        wall(command)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            times[name].append(run_timed(command))
    if cpu is not None:
        cpu.update({name: statistics.median(c for _, c in values) for name, values in times.items()})
    return {name: statistics.median(w for w, _ in values) for name, values in times.items()}


def in_process_floor(photo: Path, bank: np.ndarray) -> dict[str, object]:
    """The floor's parts as callables: decode, convolution, and PNG encodes of the maps (1 and all threads)."""
    import convcli
    from convcli.io import encode_png, read_input, to_display

    def decode():  # convcli's reader: libspng for an RGB PNG
        return read_input(photo, keep_integers=True).array

    x = decode().astype(np.float32)
    maps = convcli.conv2d(x, bank, padding="same")
    gray = [to_display(maps[:, :, f], normalize="minmax", bits=8) for f in range(maps.shape[2])]

    def encode(threads: int):
        def one(image):
            return encode_png(image, bits=8, compress_level=1)
        if threads == 1:
            return [one(g) for g in gray]
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, gray))

    cores = os.cpu_count() or 1
    return {
        "decode": decode,
        "convolution": lambda: convcli.conv2d(x, bank, padding="same"),
        "encode (level 1, 1 thread)": lambda: encode(1),
        f"encode (level 1, {cores} threads)": lambda: encode(cores),
    }


def timed(func) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of one call."""
    started, cpu = time.perf_counter(), time.process_time()
    func()
    return time.perf_counter() - started, time.process_time() - cpu


def compile_package() -> None:
    """Write convcli's bytecode, as ``pip install`` does, so every timed start-up loads it.

    An editable install (or ``PYTHONDONTWRITEBYTECODE=1``) would otherwise compile the
    package's modules at every start: about 90 ms that no installed copy pays.
    """
    import convcli

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(convcli.__file__).parent)],
                   check=True, stdout=subprocess.DEVNULL)


#: Issues 4 and 15's command-line targets: (case, the most the ratio may be).
TARGETS = {"one 3×3 kernel vs vips conv": 0.5, "one 3×3 kernel vs ImageMagick": 0.5, "64 filters vs floor": 1.2,
           "start-up vs import click, numpy": 1.5}


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
    vips = find_vips()
    verdicts: list[str] = []

    def verdict(case: str, ratio: float, detail: str) -> None:
        limit = TARGETS[case]
        verdicts.append(f"- {case}: {detail} = {ratio:.2f}× (target ≤ {limit}×): {'met' if ratio <= limit else 'missed'}")

    load = os.getloadavg()[0]
    lines = [f"Machine: {os.cpu_count()} cores shared with other jobs (load average {load:.1f} at the start), "
             f"Python {sys.version.split()[0]}; medians of {repeat} rounds, the commands of a table "
             "alternating within each round.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo = tmp / "photo.png"
        save_photo(photo)
        out = tmp / "out"
        out.mkdir()
        (tmp / "edge.mat").write_text(EDGE_MAT)

        # 1. One 3x3 kernel, whole process.
        commands = {
            "convcli apply -k edge (gray map)": convcli + ["apply", str(photo), "-k", "edge", "--padding", "same",
                                                           "-o", str(out), "-q"],
            "convcli apply -k edge --depthwise (RGB)": convcli + ["apply", str(photo), "-k", "edge", "--depthwise",
                                                                  "--padding", "same", "-o", str(out / "dw"), "-q"],
        }
        if vips:
            for precision in ("float", "integer"):
                commands[f"vips conv --precision {precision}"] = [
                    vips, "conv", str(photo), str(out / f"vips-{precision}.png[compression=1]"), str(tmp / "edge.mat"),
                    "--precision", precision]
        if magick:
            commands["ImageMagick convert -morphology Convolve"] = magick + [
                str(photo), "-define", "png:compression-level=1", "-morphology", "Convolve", EDGE,
                str(out / "im.png")]
        one_cpu: dict[str, float] = {}
        one = medians(commands, repeat, one_cpu)
        lines += ["## One 3×3 kernel on a 1080p photograph (RGB PNG), PNG out (whole process)", "",
                  "| command | median s | ratio to vips conv (fastest) | ratio to ImageMagick | median CPU s |",
                  "|---|---:|---:|---:|---:|"]
        reference = one.get("ImageMagick convert -morphology Convolve")
        vips_times = [seconds for name, seconds in one.items() if name.startswith("vips")]
        vips_best = min(vips_times) if vips_times else None
        for name, seconds in one.items():
            to_vips = f"{seconds / vips_best:.2f}×" if vips_best else "—"
            to_magick = f"{seconds / reference:.2f}×" if reference else "—"
            lines.append(f"| {name} | {seconds:.3f} | {to_vips} | {to_magick} | {one_cpu[name]:.3f} |")
        gray = one["convcli apply -k edge (gray map)"]
        if vips:
            lines += ["", f"libvips: {subprocess.run([vips, '--version'], capture_output=True, text=True).stdout.strip()}."]
            verdict("one 3×3 kernel vs vips conv", gray / vips_best,
                    f"convcli {gray:.3f} s vs vips conv {vips_best:.3f} s")
        else:
            lines += ["", "vips not found (`apt-get install libvips-tools`); its rows are skipped."]
        if magick:
            lines += ["", f"ImageMagick: {imagemagick_version(magick)}."]
            verdict("one 3×3 kernel vs ImageMagick", gray / reference,
                    f"convcli {gray:.3f} s vs ImageMagick {reference:.3f} s")
        else:
            lines += ["", "ImageMagick not found (`apt-get install imagemagick`); its row is skipped."]

        # 2. A 64-filter bank against its floor.
        rng = np.random.default_rng(64)
        bank = rng.standard_normal((3, 3, 3, 64)).astype(np.float32)
        bank_file = tmp / "bank64.npy"
        np.save(bank_file, bank)
        command = convcli + ["apply", str(photo), "-k", str(bank_file), "--padding", "same", "-o", str(out / "bank"),
                             "-q"]
        parts = in_process_floor(photo, bank)
        wall(command)
        for func in parts.values():
            func()
        rounds: dict[str, list[tuple[float, float]]] = {"convcli": [], **{name: [] for name in parts}}
        for _ in range(repeat):  # the whole command and the floor's parts alternate
            rounds["convcli"].append(run_timed(command))
            for name, func in parts.items():
                rounds[name].append(timed(func))
        whole = rounds.pop("convcli")
        many, many_cpu = statistics.median(w for w, _ in whole), statistics.median(c for _, c in whole)
        floor = {name: statistics.median(w for w, _ in values) for name, values in rounds.items()}
        floor_cpu = {name: statistics.median(c for _, c in values) for name, values in rounds.items()}
        encode_best = min(v for k, v in floor.items() if k.startswith("encode"))
        floor_total = floor["decode"] + floor["convolution"] + encode_best
        cpu_total = floor_cpu["decode"] + floor_cpu["convolution"] + min(
            v for k, v in floor_cpu.items() if k.startswith("encode"))
        lines += ["", "## 64 filters 3×3 on the 1080p photograph, 64 PNG maps out", "",
                  "| part | median s | median CPU s |", "|---|---:|---:|"]
        lines += [f"| {name} (in process) | {seconds:.3f} | {floor_cpu[name]:.3f} |" for name, seconds in floor.items()]
        lines += [f"| floor = decode + convolution + fastest encode | {floor_total:.3f} | {cpu_total:.3f} |",
                  f"| `convcli apply` whole process | {many:.3f} | {many_cpu:.3f} |",
                  f"| ratio convcli / floor | {many / floor_total:.2f}× | {many_cpu / cpu_total:.2f}× |"]
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
