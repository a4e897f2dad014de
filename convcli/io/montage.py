"""``--montage``: all maps of an input in one labelled PNG grid."""

from __future__ import annotations

from typing import Any, Sequence

from .png import encode_png

_MONTAGE_BACKGROUND = (64, 64, 64)
_MONTAGE_TEXT = (235, 235, 235)
_MONTAGE_PAD = 8
_MONTAGE_MIN_TILE = 96  # small maps (the seeds' 6×6) are enlarged to at least this, pixelated


def montage(maps: Sequence[Any], labels: Sequence[str], *, columns: int | None = None,
            compress_level: int | None = None) -> bytes:
    """A PNG grid of maps, each labelled underneath, on a dark grey background.

    Parameters
    ----------
    maps : sequence of numpy.ndarray
        uint8 tiles, (H, W) gray or (H, W, C) with C = 1, 3 or 4 (alpha is ignored). Tiles
        smaller than 96 pixels are enlarged by the same whole factor, nearest-neighbour,
        so every pixel stays a visible square.
    labels : sequence of str
        One label per map, drawn with Pillow's default font; shortened with "…" if wider
        than 240 pixels or the tile.
    columns : int or None
        Grid width; None: ``ceil(sqrt(len(maps)))``.

    Raises
    ------
    ValueError
        No maps, a label count that differs from the map count, or a tile that is not
        uint8 gray/RGB(A).
    """
    import math

    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    if not maps or len(maps) != len(labels):
        raise ValueError(f"montage: need one label per map, got {len(maps)} maps and {len(labels)} labels")
    tiles = []
    for tile in maps:
        tile = np.asarray(tile)
        if tile.dtype != np.uint8 or tile.ndim not in (2, 3) or (tile.ndim == 3 and tile.shape[2] not in (1, 3, 4)):
            raise ValueError(f"montage: tiles must be uint8 (H, W) or (H, W, 1|3|4), got {tile.dtype} {tile.shape}")
        tiles.append(np.repeat(tile[:, :, :1], 3, axis=2) if tile.ndim == 3 and tile.shape[2] == 1
                     else tile[:, :, :3] if tile.ndim == 3 else np.repeat(tile[:, :, None], 3, axis=2))
    zoom = max(1, math.ceil(_MONTAGE_MIN_TILE / max(max(t.shape[:2]) for t in tiles)))
    if zoom > 1:
        tiles = [np.repeat(np.repeat(t, zoom, axis=0), zoom, axis=1) for t in tiles]
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: bitmap font only
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    tile_w = max(t.shape[1] for t in tiles)
    tile_h = max(t.shape[0] for t in tiles)
    max_label_w = max(tile_w, 240)
    texts = [_fit_label(str(label), font, measure, max_label_w) for label in labels]
    text_w = max(measure.textlength(text, font=font) for text in texts)
    ascent_box = measure.textbbox((0, 0), "Ag…", font=font)
    text_h = ascent_box[3] - ascent_box[1]
    cell_w = int(max(tile_w, math.ceil(text_w)))
    cell_h = tile_h + 4 + text_h
    count = len(tiles)
    cols = columns if columns else math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    pad = _MONTAGE_PAD
    canvas = Image.new("RGB", (cols * cell_w + (cols + 1) * pad, rows * cell_h + (rows + 1) * pad),
                       _MONTAGE_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, (tile, text) in enumerate(zip(tiles, texts)):
        row, col = divmod(index, cols)
        x0 = pad + col * (cell_w + pad)
        y0 = pad + row * (cell_h + pad)
        canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (x0 + (cell_w - tile.shape[1]) // 2, y0))
        width = measure.textlength(text, font=font)
        draw.text((x0 + (cell_w - width) / 2, y0 + tile_h + 4 - ascent_box[1]), text, font=font,
                  fill=_MONTAGE_TEXT)
    pixels = np.asarray(canvas)
    if all(tile.ndim == 2 or tile.shape[2] == 1 for tile in maps):
        pixels = pixels[:, :, 0]  # gray maps on a gray background, gray text: a gray PNG, a third of the data
    return encode_png(pixels, compress_level=compress_level)


def _fit_label(text: str, font: Any, measure: Any, limit: float) -> str:
    if measure.textlength(text, font=font) <= limit:
        return text
    while len(text) > 1 and measure.textlength(text + "…", font=font) > limit:
        text = text[:-1]
    return text + "…"
