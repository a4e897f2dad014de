#!/usr/bin/env python3
"""Coverage-guided fuzzing of one reader with atheris (libFuzzer), for long local runs.

Not part of the test suite (CI runs the hypothesis fuzzers in this folder); the property
checked on each input is the same: ``checks.check_image`` / ``check_table`` /
``check_kernel`` / ``check_pipeline`` — a correct result or one line naming the file, never a
traceback, a hang or a crash. libFuzzer starts from the matching files of the committed seed
corpus (copied into a scratch corpus folder, where it adds the inputs that reach new code)::

    pip install atheris
    python tests/fuzz/atheris_fuzz.py png -max_total_time=3600
    python tests/fuzz/atheris_fuzz.py tiff -runs=100000 -max_len=65536

READER is one of the keys of :data:`READERS`. A failing input is written by libFuzzer as
``crash-…`` in the working folder; make it a named test in ``test_regressions.py``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: reader → (corpus group, seed suffixes, suffix of the case file, check)
READERS = {
    "png": ("images", (".png",), ".png", "image"),
    "jpeg": ("images", (".jpg",), ".jpg", "image"),
    "tiff": ("images", (".tif",), ".tif", "image"),
    "bmp": ("images", (".bmp",), ".bmp", "image"),
    "gif": ("images", (".gif",), ".gif", "image"),
    "webp": ("images", (".webp",), ".webp", "image"),
    "npy": ("arrays", (".npy",), ".npy", "image"),
    "csv": ("arrays", (".csv", ".txt"), ".csv", "table"),
    "kernel-yaml": ("kernels", (".yaml",), ".yaml", "kernel"),
    "kernel-json": ("kernels", (".json",), ".json", "kernel"),
    "kernel-mat": ("kernels", (".mat",), ".mat", "kernel"),
    "kernel-npy": ("kernels", (".npy",), ".npy", "kernel"),
    "pipeline": ("pipelines", (".yaml",), ".yaml", "pipeline"),
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in READERS:
        print(f"usage: {Path(argv[0]).name} READER [libFuzzer options]; READER: {', '.join(READERS)}",
              file=sys.stderr)
        return 2
    import atheris

    reader, options = argv[1], argv[2:]
    group, suffixes, suffix, kind = READERS[reader]
    work = Path(tempfile.mkdtemp(prefix=f"convcli-atheris-{reader}-"))
    corpus = work / "corpus"
    corpus.mkdir()
    for seed in sorted((HERE / "corpus" / group).iterdir()):
        if seed.suffix in suffixes:
            shutil.copy(seed, corpus / seed.name)
    out_dir = work / "out"
    out_dir.mkdir()
    case = work / f"case{suffix}"
    image = HERE / "corpus" / "images" / "rgb8.png"

    with atheris.instrument_imports(include=["convcli"]):
        import checks
        # convcli imports its readers where used: import them here, so they are instrumented too.
        import convcli.apply  # noqa: F401
        import convcli.batch  # noqa: F401
        import convcli.io.npy  # noqa: F401
        import convcli.io.pillow  # noqa: F401
        import convcli.io.png  # noqa: F401
        import convcli.io.read  # noqa: F401
        import convcli.io.text  # noqa: F401
        import convcli.io.tiff  # noqa: F401
        import convcli.kernels  # noqa: F401
        import convcli.pipeline  # noqa: F401

    def one_input(data: bytes) -> None:
        case.write_bytes(data)
        if kind == "image":
            checks.check_image(case, out_dir)
        elif kind == "table":
            checks.check_table(case)
        elif kind == "kernel":
            checks.check_kernel(str(case), str(case))
        else:
            checks.check_pipeline(case, image, out_dir)

    atheris.Setup([argv[0], *options, str(corpus)], one_input)
    try:
        atheris.Fuzz()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
