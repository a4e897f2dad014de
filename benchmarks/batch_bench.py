"""Batch throughput: images per second of ``convcli apply FOLDER -j N`` next to libvips and ImageMagick.

200 RGB photographs of 512×512 (crops of the photographs in ``sample_images/``, see
``benchmarks/photos.py``) go through a 4-filter bank (edge, sobel-x, sobel-y, box-blur;
3×3, valid padding) to 4 gray PNG maps each, with ``-j N``. The peers run once per image
through ``xargs -P N`` (same parallelism), read the image once, convert it to gray and
write the same 4 maps: libvips' command line (``vips colourspace … b-w`` to a ``.v`` file,
then one ``vips conv --precision integer`` per filter: exact for these kernels) and
ImageMagick's ``convert -morphology Convolve`` (only when a real ImageMagick is found:
``convert -version`` must start with ``Version: ImageMagick``).

Every tool writes PNGs at compression level 1 (convcli's default ``--compress-level``;
``[compression=1]`` for libvips, ``-define png:compression-level=1`` for ImageMagick) and
gets the machine's cores divided by N as threads per process (convcli's workers do this
themselves; ``VIPS_CONCURRENCY`` and ``MAGICK_THREAD_LIMIT`` for the peers). Times are
wall-clock for the whole command, start-up included; the tools alternate within each of
``--repeat`` rounds and the table gives medians.

Run: ``python benchmarks/batch_bench.py`` (writes ``benchmarks/BATCH.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from photos import save_batch  # noqa: E402

KERNELS = {
    "edge": "3x3: -1,-1,-1 -1,8,-1 -1,-1,-1",
    "sobel-x": "3x3: -1,0,1 -2,0,2 -1,0,1",
    "sobel-y": "3x3: -1,-2,-1 0,0,0 1,2,1",
    "box-blur": "3x3: 0.111111,0.111111,0.111111 0.111111,0.111111,0.111111 0.111111,0.111111,0.111111",
}


#: The same kernels as libvips matrix files: "W H scale offset", then the rows.
VIPS_MATRICES = {
    "edge": "3 3 1 0\n-1 -1 -1\n-1 8 -1\n-1 -1 -1\n",
    "sobel-x": "3 3 1 0\n-1 0 1\n-2 0 2\n-1 0 1\n",
    "sobel-y": "3 3 1 0\n-1 -2 -1\n0 0 0\n1 2 1\n",
    "box-blur": "3 3 9 0\n1 1 1\n1 1 1\n1 1 1\n",
}


def find_vips() -> str | None:
    """The ``vips`` command-line tool, if installed (``apt-get install libvips-tools``)."""
    return shutil.which("vips")


def find_imagemagick() -> list[str] | None:
    """The command of a real ImageMagick (``magick`` or ``convert``), or None.

    Every directory on PATH is searched, since an earlier ``convert`` may be
    something else; a candidate counts only if its ``-version`` says ImageMagick.
    """
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        for name, prefix in (("magick", []), ("convert", [])):
            path = Path(directory) / name
            if not (path.is_file() and os.access(path, os.X_OK)):
                continue
            try:
                version = subprocess.run([str(path), *prefix, "-version"], capture_output=True, text=True,
                                         timeout=20).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            if version.startswith("Version: ImageMagick"):
                return [str(path)] if name == "convert" else [str(path), "convert"]
    return None


def imagemagick_version(command: list[str]) -> str:
    out = subprocess.run([command[0], "-version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].replace("Version: ", "") if out else "?"


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def run_convcli(images: Path, out: Path, jobs: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, "-m", "convcli", "apply", str(images), "-o", str(out), "-j", str(jobs), "-q"]
    for name in KERNELS:
        args += ["-k", name]
    subprocess.run(args, check=True)


def run_vips(vips: str, images: Path, out: Path, jobs: int, work: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    matrices = work / "matrices"
    matrices.mkdir(exist_ok=True)
    for name, text in VIPS_MATRICES.items():
        (matrices / f"{name}.mat").write_text(text)
    gray = work / "gray"
    gray.mkdir(exist_ok=True)
    script = ('s=$(basename "$0" .png); g="$G/$s.v"; "$VIPS" colourspace "$0" "$g" b-w || exit 1; '
              'for k in ' + " ".join(VIPS_MATRICES) + '; do '
              '"$VIPS" conv "$g" "$O/${s}_$k.png[compression=1]" "$M/$k.mat" --precision integer || exit 1; '
              'done; rm -f "$g"')
    files = "\0".join(str(p) for p in sorted(images.glob("*.png")))
    env = dict(os.environ, VIPS=vips, G=str(gray), O=str(out), M=str(matrices),
               VIPS_CONCURRENCY=str(max(1, (os.cpu_count() or 1) // jobs)))
    subprocess.run(["xargs", "-0", "-P", str(jobs), "-n", "1", "sh", "-c", script], input=files.encode(),
                   check=True, env=env)


def run_imagemagick(command: list[str], images: Path, out: Path, jobs: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    # One ImageMagick process per image: read once, to gray, then each kernel to its own PNG.
    steps = ["-colorspace", "Gray", "-define", "png:compression-level=1", "-write", "mpr:g", "+delete"]
    for name, kernel in KERNELS.items():
        steps += ["mpr:g", "-morphology", "Convolve", kernel, "-write", f"{out}/$(basename \"$0\" .png)_{name}.png",
                  "+delete"]
    steps = steps[:-3] + [steps[-2]]  # the last map is the command's own output file, not a -write
    script = " ".join(shlex.quote(c) for c in command) + ' "$0" ' + " ".join(
        a if a.startswith(f"{out}/") else shlex.quote(a) for a in steps)
    files = "\0".join(str(p) for p in sorted(images.glob("*.png")))
    env = dict(os.environ, MAGICK_THREAD_LIMIT=str(max(1, (os.cpu_count() or 1) // jobs)))
    subprocess.run(["xargs", "-0", "-P", str(jobs), "-n", "1", "sh", "-c", script], input=files.encode(),
                   check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", default="2")
    parser.add_argument("--no-imagemagick", action="store_true", help="skip ImageMagick (the slowest peer)")
    parser.add_argument("--write", default=str(HERE / "BATCH.md"), help="Markdown file for the results.")
    args = parser.parse_args()
    jobs_list = [int(j) for j in args.jobs.split(",")]
    magick = None if args.no_imagemagick else find_imagemagick()
    vips = find_vips()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        images.mkdir()
        save_batch(images, args.count, args.size)
        for _round in range(args.repeat):
            for jobs in jobs_list:
                runs = [("convcli apply -j N", lambda: run_convcli(images, tmp / "convcli", jobs), tmp / "convcli")]
                if vips:
                    runs.append(("libvips `vips conv`, xargs -P N",
                                 lambda: run_vips(vips, images, tmp / "vips", jobs, tmp), tmp / "vips"))
                if magick:
                    runs.append(("ImageMagick convert -morphology Convolve, xargs -P N",
                                 lambda: run_imagemagick(magick, images, tmp / "im", jobs), tmp / "im"))
                for tool, run, out in runs:
                    seconds = timed(run)
                    assert len(list(out.iterdir())) == 4 * args.count, tool
                    results.setdefault((tool, jobs), []).append(seconds)
                    print(f"{tool} -j/-P {jobs}: {seconds:.2f} s, {args.count / seconds:.1f} images/s", flush=True)
    peers = [subprocess.run([vips, "--version"], capture_output=True, text=True).stdout.strip() if vips
             else "libvips not installed: skipped (apt-get install libvips-tools)",
             imagemagick_version(magick) if magick else "ImageMagick skipped or not installed"]
    lines = [
        "# Batch throughput",
        "",
        f"`python benchmarks/batch_bench.py`: {args.count} RGB photographs of {args.size}×{args.size} (PNG crops of",
        "`sample_images/`' photographs), a bank of 4 filters (edge, sobel-x, sobel-y, box-blur; 3×3, valid)",
        "→ 4 gray 8-bit PNG maps per image, PNG compression level 1 everywhere; wall-clock time of",
        f"the whole command, start-up included; the tools alternate in each of {args.repeat} rounds, medians.",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, load average {load:.1f} at the start (shared with other jobs: expect ±20 %).",
        f"Peers: {'; '.join(peers)}.",
        "",
        "| tool | parallel processes | seconds | images/s | convcli's images/s ÷ the tool's |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for (tool, jobs), times in results.items():
        seconds = statistics.median(times)
        ours = statistics.median(results[("convcli apply -j N", jobs)])
        lines.append(f"| {tool} | {jobs} | {seconds:.2f} | {args.count / seconds:.1f} | {seconds / ours:.2f}× |")
    lines += [
        "",
        "Not the same operation in every detail: the peers convert to luma gray first and clamp",
        "each map to 0..255, while convcli correlates every channel and sums them (one map per",
        "filter, as a CNN layer) and stretches each map's min..max to 0..255 (`--normalize minmax`).",
        "The work per image — decode, four 3×3 filters, four PNG encodes — is the same. libvips'",
        "command line runs one process per operation (5 per image), as a shell user would.",
        "",
    ]
    Path(args.write).write_text("\n".join(lines))
    print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
