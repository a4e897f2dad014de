"""The row-band TIFF reader (issue 16): mutated TIFFs read band by band under a tiny --memory-limit.

The other fuzzers' inputs are smaller than any real memory limit, so they are decoded whole
and :class:`convcli.io.tiff.TiffRegionReader` never sees them. Here each mutated tiled or
striped TIFF seed is run twice through ``apply`` (identity depthwise 1×1 kernel, ``.npy``):
whole, and under a memory limit of a few KiB with bands of as few rows as the plan allows
(as ``tests/test_streaming.py`` forces streaming on small images). The property: each run
ends in one line naming the file with exit 1 or 2, or writes exactly the pixels of the
whole-image run; a streamed run never succeeds where the whole run failed.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from checks import cli_case
from conftest import TALLY
from fuzzlib import FUZZ, MAX_PIXELS, mutate, seeds, streams_with_ccore_bands

from convcli import streaming

#: The seeds the region reader takes (tiled, or striped with interleaved samples), each with
#: memory limits (bytes) under which its clean file streams in bands: below them one band is
#: refused, above them it runs whole (measured with bands of as few rows as possible).
#: Tiled seeds are listed twice: several tiles a row, compressed or not, are the reader's hard part.
STREAMING_LIMITS = {
    "tiled.tif": (3072, 4096, 6144), "tiled-deflate.tif": (6144, 8192, 12288),
    "bigtiff.tif": (160, 256), "float32.tif": (160, 256), "gray8.tif": (256, 384),
    "float-rgb.tif": (768, 1024), "lzw.tif": (768, 1024), "rgb16.tif": (768, 1024),
}
TILED = ("tiled.tif", "tiled-deflate.tif")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-stream")


def _run(path, out, *extra) -> tuple[int, np.ndarray | None, str]:
    for stale in out.glob("*") if out.exists() else ():
        stale.unlink()
    status, stderr = cli_case(["apply", str(path), "-k", "1x1: 1", "--depthwise", "--format", "npy", "-o", str(out),
                          "-q", "-j", "1", "--max-pixels", str(MAX_PIXELS), *extra], str(path), statuses=(0, 1, 2))
    written = sorted(out.glob("*.npy")) if out.exists() else []
    if status != 0:
        assert not list(out.glob("*")) if out.exists() else True, f"a failed input left {list(out.glob('*'))}"
        return status, None, stderr
    assert len(written) == 1, written
    return status, np.load(written[0]), stderr


@streams_with_ccore_bands
def test_tiff_region_reader_survives_mutated_seeds_streamed(workdir):
    corpus = [p for p in seeds("images", (".tif",)) if p.name in STREAMING_LIMITS]
    corpus += [p for p in corpus if p.name in TILED]
    streamed: list[int] = []
    real_stream = streaming.stream_input

    def spy(*args, **kwargs):
        streamed.append(1)
        return real_stream(*args, **kwargs)

    @settings(FUZZ, max_examples=FUZZ.max_examples * 3)  # cheap cases: 360 in the ci profile, ~5 s
    @given(seed=st.sampled_from(corpus), rng=st.randoms(use_true_random=False), data=st.data())
    def case(seed, rng, data):
        limit = data.draw(st.sampled_from(STREAMING_LIMITS[seed.name]), label="limit")
        path = workdir / "case.tif"
        path.write_bytes(mutate(rng, seed))
        status, whole, why = _run(path, workdir / "whole")
        streamed.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(streaming, "BAND_TARGET_BYTES", 1)  # bands of as few rows as the plan allows
            patch.setattr(streaming, "stream_input", spy)
            _, banded, _ = _run(path, workdir / "banded", "--memory-limit", str(limit))
        kind = "streamed" if streamed else "whole"
        if banded is not None:
            assert whole is not None, f"streamed under {limit} bytes, but the whole run failed: {why}"
            np.testing.assert_array_equal(banded, whole, err_msg=f"{kind} under {limit} bytes")
        TALLY[f"tiff-region/{kind}"]["ok" if banded is not None else "error"] += 1

    case()
    counts = TALLY["tiff-region/streamed"]
    assert sum(counts.values()) >= 100 and counts["ok"] >= 30, dict(counts)  # the limits did make it stream
