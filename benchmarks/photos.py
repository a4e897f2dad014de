"""Benchmark inputs made of the real photographs in ``sample_images/`` (no downloads, deterministic).

The bundled photographs are at most 600 pixels wide, so a 1080p "photograph" is a mosaic:
1920×1080 filled with 480×360 crops of the photographs at their own resolution (no
upscaling, which would smooth them and flatter every codec). A batch is made of 512×512
crops of that mosaic at seeded offsets, mirrored in turn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "coffee", "chelsea")


def _photo(name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(REPO / "sample_images" / f"{name}.png") as image:
        return np.asarray(image.convert("RGB"))


def mosaic(height: int = 1080, width: int = 1920, tile: tuple[int, int] = (360, 480)) -> np.ndarray:
    """RGB uint8 height×width: tiles of the sample photographs, each a crop at native resolution."""
    rng = np.random.default_rng(1080)
    photos = [_photo(name) for name in PHOTOS]
    out = np.empty((height, width, 3), np.uint8)
    th, tw = tile
    k = 0
    for top in range(0, height, th):
        for left in range(0, width, tw):
            photo = photos[k % len(photos)]
            k += 1
            h, w = min(th, height - top), min(tw, width - left)
            ph, pw = photo.shape[:2]
            if ph < h or pw < w:  # chelsea (451×300) is smaller than a tile: take it whole, twice
                photo = np.concatenate([photo, photo[::-1]], axis=0)[:max(h, ph)]
                photo = np.concatenate([photo, photo[:, ::-1]], axis=1)
                ph, pw = photo.shape[:2]
            y, x = rng.integers(0, ph - h + 1), rng.integers(0, pw - w + 1)
            out[top:top + h, left:left + w] = photo[y:y + h, x:x + w]
    return out


def save_photo(path: Path, height: int = 1080, width: int = 1920) -> None:
    """The mosaic as an RGB PNG (Pillow, level 6: as photographs are usually stored)."""
    from PIL import Image

    Image.fromarray(mosaic(height, width)).save(path, compress_level=6)


def save_batch(folder: Path, count: int, size: int = 512) -> None:
    """``count`` RGB PNGs of size×size: crops of the mosaic at seeded offsets, every other one mirrored."""
    from PIL import Image

    big = mosaic()
    rng = np.random.default_rng(2024)
    for i in range(count):
        y, x = rng.integers(0, big.shape[0] - size + 1), rng.integers(0, big.shape[1] - size + 1)
        crop = big[y:y + size, x:x + size]
        Image.fromarray(crop[:, ::-1] if i % 2 else crop).save(folder / f"img{i:04d}.png", compress_level=6)
