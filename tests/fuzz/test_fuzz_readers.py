"""Every reader, fed mutated seeds (issue 16): one line naming the file, or a correct result.

Seeds are ``tests/fuzz/corpus/`` (written by ``make_corpus.py``); mutations are format-aware
(PNG chunks with valid CRCs, TIFF IFD entries, .npy header dicts, YAML/JSON/CSV tokens) and
generic (truncation, bit flips, extreme header fields). The checks are in ``checks.py``.
"""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from checks import check_image, check_kernel, check_pipeline, check_table
from conftest import TALLY
from fuzzlib import FUZZ, mutate, seeds

IMAGE_FORMATS = {
    "png": (".png",),
    "jpeg": (".jpg",),
    "tiff": (".tif",),
    "bmp-gif-webp": (".bmp", ".gif", ".webp"),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "out").mkdir()
    return folder


@pytest.mark.parametrize("fmt", sorted(IMAGE_FORMATS))
def test_image_reader_survives_mutated_seeds(fmt, workdir):
    corpus = seeds("images", IMAGE_FORMATS[fmt])

    @FUZZ
    @given(seed=st.sampled_from(corpus), rng=st.randoms(use_true_random=False))
    def case(seed, rng):
        path = workdir / f"case{seed.suffix}"
        path.write_bytes(mutate(rng, seed))
        TALLY[f"image/{fmt}"][check_image(path, workdir / "out")] += 1

    case()


def test_array_readers_survive_mutated_seeds(workdir):
    corpus = seeds("arrays")

    @FUZZ
    @given(seed=st.sampled_from(corpus), rng=st.randoms(use_true_random=False))
    def case(seed, rng):
        path = workdir / f"case{seed.suffix}"
        path.write_bytes(mutate(rng, seed))
        if seed.suffix == ".npy":
            TALLY["array/npy"][check_image(path, workdir / "out")] += 1
        else:
            TALLY["array/csv-txt"][check_table(path)] += 1
            TALLY["array/csv-txt"][check_image(path, workdir / "out")] += 0

    case()


@pytest.mark.parametrize("syntax", ["yaml", "json", "mat", "npy", "magick"])
def test_kernel_readers_survive_mutated_seeds(syntax, workdir):
    suffixes = {"yaml": (".yaml",), "json": (".json",), "mat": (".mat",), "npy": (".npy",),
                "magick": (".magick",)}[syntax]
    corpus = seeds("kernels", suffixes)

    @FUZZ
    @given(seed=st.sampled_from(corpus), rng=st.randoms(use_true_random=False))
    def case(seed, rng):
        blob = mutate(rng, seed)
        if syntax == "magick":
            text = blob.decode("utf-8", "replace").replace("\x00", "")
            if not text.strip():
                return
            TALLY["kernel/magick"][check_kernel(text, "kernel")] += 1
            return
        path = workdir / f"kernel{seed.suffix}"
        path.write_bytes(blob)
        TALLY[f"kernel/{syntax}"][check_kernel(str(path), str(path))] += 1

    case()


# Documents built from the schema with wrong-type, nested, NaN/Inf and huge values.
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["hwio", "oihw", "wio", "oiw", "hwc", "hw", "w"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=20)
MATRIX = st.lists(st.lists(st.one_of(st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True)),
                           min_size=1, max_size=4), min_size=1, max_size=4)
ENTRY = st.fixed_dictionaries({}, optional={
    "name": st.one_of(st.text(max_size=300), VALUES), "description": VALUES,
    "weights": st.one_of(MATRIX, VALUES), "bias": st.one_of(st.floats(), VALUES),
    "scale": st.one_of(st.floats(), VALUES), "normalize": st.one_of(st.booleans(), VALUES),
    "layout": VALUES})
DOCUMENTS = st.one_of(ENTRY, st.builds(lambda top, filters: {**top, "filters": filters}, ENTRY,
                                       st.one_of(st.lists(ENTRY, max_size=4), VALUES)), VALUES)


@pytest.mark.parametrize("syntax", ["yaml", "json"])
def test_kernel_documents_of_any_shape(syntax, workdir):
    @FUZZ
    @given(document=DOCUMENTS)
    def case(document):
        path = workdir / f"doc.{syntax}"
        if syntax == "json":
            path.write_text(json.dumps(document))  # NaN/Infinity as JavaScript writes them
        else:
            path.write_text(yaml.safe_dump(document, allow_unicode=True))
        TALLY[f"kernel/{syntax}-schema"][check_kernel(str(path), str(path))] += 1

    case()


def test_pipeline_reader_survives_mutated_seeds(workdir):
    corpus = seeds("pipelines")
    image = workdir / "small.npy"
    import numpy as np

    np.save(image, np.arange(9 * 11 * 3, dtype=np.float32).reshape(9, 11, 3) / 50)

    @FUZZ
    @given(seed=st.sampled_from(corpus), rng=st.randoms(use_true_random=False))
    def case(seed, rng):
        path = workdir / f"pipeline{seed.suffix}"
        path.write_bytes(mutate(rng, seed))
        TALLY["pipeline"][check_pipeline(path, image, workdir / "out")] += 1

    case()


NAME_BYTES = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"/", b"_").replace(b"\x00", b"_"))


def test_any_file_name_bytes_end_in_one_line_or_a_result(workdir):
    """Names that are not UTF-8 (or are control characters, spaces, dashes) reach every message."""
    import os

    corpus = seeds("images", (".png", ".jpg")) + seeds("arrays", (".npy", ".csv"))

    @FUZZ
    @given(seed=st.sampled_from(corpus), raw=NAME_BYTES, rng=st.randoms(use_true_random=False),
           mutated=st.booleans())
    def case(seed, raw, rng, mutated):
        if raw in (b".", b"..") or len(raw) + len(seed.suffix) > 200:
            return
        folder = workdir / "names"
        folder.mkdir(exist_ok=True)
        for stale in folder.iterdir():
            stale.unlink()
        path = folder / (os.fsdecode(raw) + seed.suffix)
        path.write_bytes(mutate(rng, seed) if mutated else seed.read_bytes())
        TALLY["names/non-utf8"][check_image(path, workdir / "out")] += 1

    case()
