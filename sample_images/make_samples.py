"""Regenerate the synthetic sample images in this folder (deterministic: no randomness, no downloads).

The photographs (astronaut.png, coffee.png, chelsea.png) are not made here: they are copies
of scikit-image's test images, with their sources and licences in LICENSES.md.

Run from the repository root::

    python sample_images/make_samples.py

Every picture has clear vertical and horizontal lines and edges, so the built-in kernels
(vertical-line, horizontal-line, sobel-x, sobel-y, edge) each show something different.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def building(height: int = 240, width: int = 320) -> np.ndarray:
    """RGB uint8: a gradient sky, a sun, two buildings with window grids, a road."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky_top, sky_bottom = np.array([40, 90, 170]), np.array([190, 215, 240])
    t = (y / (height - 1))[..., None]
    image = (sky_top * (1 - t) + sky_bottom * t).astype(np.float32)
    sun = (x - 255) ** 2 + (y - 50) ** 2 < 22**2
    image[sun] = (250, 220, 120)
    ground = y >= 200
    image[ground] = (70, 70, 75)
    road_marks = ground & (np.abs(y - 220) < 2) & ((x // 20) % 2 == 0)
    image[road_marks] = (240, 240, 240)
    for left, right, top, colour in ((30, 130, 60, (150, 110, 90)), (160, 230, 100, (120, 125, 140))):
        body = (x >= left) & (x < right) & (y >= top) & (y < 200)
        image[body] = colour
        # 10×14 windows on a 20×24 grid inside the facade: strong vertical and horizontal edges.
        wx, wy = (x - left - 6) % 20, (y - top - 8) % 24
        # Only whole windows: each starts far enough from the facade's right side and the ground.
        windows = body & (wx < 10) & (wy < 14) & (x - wx + 10 <= right - 6) & (y - wy + 14 <= 190)
        image[windows] = (245, 225, 140)
    door = (x >= 70) & (x < 90) & (y >= 170) & (y < 200)
    image[door] = (60, 40, 30)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def checker_circle(height: int = 200, width: int = 200) -> np.ndarray:
    """RGBA uint8: a 25-pixel checkerboard with a red disc, transparent outside a frame."""
    y, x = np.mgrid[0:height, 0:width]
    checks = ((x // 25 + y // 25) % 2).astype(np.uint8) * 200 + 30
    image = np.stack([checks, checks, checks, np.full_like(checks, 255)], axis=-1)
    disc = (x - width / 2 + 0.5) ** 2 + (y - height / 2 + 0.5) ** 2 < 60**2
    image[disc] = (220, 40, 40, 255)
    frame = (x < 10) | (x >= width - 10) | (y < 10) | (y >= height - 10)
    image[frame, 3] = 0
    return image


def lines(height: int = 160, width: int = 240) -> np.ndarray:
    """Gray uint8: vertical lines of widths 1–4 on the left, horizontal ones on the right."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.full((height, width), 20, np.uint8)
    for index, thickness in enumerate((1, 2, 3, 4)):
        column = 20 + 25 * index
        image[15:height - 15, column:column + thickness] = 235
        row = 20 + 35 * index
        image[row:row + thickness, 130:width - 15] = 235
    image[(x >= 120) & (x < 122)] = 120  # a mid-grey divider
    return image


def gradient16(height: int = 128, width: int = 192) -> np.ndarray:
    """Gray uint16: a horizontal ramp over the full 16-bit range with a raised square."""
    y, x = np.mgrid[0:height, 0:width]
    ramp = np.rint(x / (width - 1) * 65535).astype(np.uint16)
    square = (np.abs(x - width / 2 + 0.5) < 32) & (np.abs(y - height / 2 + 0.5) < 32)
    # 12001 above the ramp (odd, so 16-bit precision matters in the values).
    return np.where(square, np.minimum(ramp.astype(np.int64) + 12001, 65535), ramp).astype(np.uint16)


def vertical_line_8x8() -> np.ndarray:
    """The seeds' 8×8 input: a vertical line in columns 3 and 4."""
    image = np.zeros((8, 8), np.int64)
    image[:, 3:5] = 1
    return image


def main() -> None:
    save = {"compress_level": 9, "optimize": True}
    Image.fromarray(building()).save(HERE / "building.png", **save)
    Image.fromarray(checker_circle()).save(HERE / "checker-circle-rgba.png", **save)
    Image.fromarray(lines()).save(HERE / "lines-gray.png", **save)
    Image.fromarray(gradient16()).save(HERE / "gradient-16bit.png", compress_level=9)
    np.savetxt(HERE / "vertical-line-8x8.csv", vertical_line_8x8(), fmt="%d", delimiter=",")
    (HERE / "bump-1d.csv").write_text("0,0,0,1,1,0,0,0\n")


if __name__ == "__main__":
    main()
