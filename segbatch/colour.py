"""Turning labels and uncertainty into pictures a person can read (panels, overlays, thumbnails)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

NODATA_COLOUR = (0, 0, 0)
# Anchors of a perceptually ordered dark-to-bright heat map (after matplotlib's "inferno").
_HEAT = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], dtype=np.float32)


def colourise(labels: np.ndarray, palette: Sequence[Sequence[int]], nodata: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 in the model's palette; nodata (255) and unknown ids are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[nodata] = NODATA_COLOUR
    return lut[labels.astype(np.uint8)]


def heatmap(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) non-negative values -> (H, W, 3) uint8, 0 dark to `vmax` bright; NaN (nodata) is black."""
    t = np.clip(np.nan_to_num(values.astype(np.float32) / max(vmax, 1e-12), nan=0.0), 0.0, 1.0) * (len(_HEAT) - 1)
    lo = np.floor(t).astype(np.int64).clip(0, len(_HEAT) - 2)
    frac = (t - lo)[..., None]
    out = _HEAT[lo] * (1 - frac) + _HEAT[lo + 1] * frac
    out[np.isnan(values)] = NODATA_COLOUR
    return cast(np.ndarray, out.round().astype(np.uint8))


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Mix an (H, W, 3) uint8 overlay into an image of the same size."""
    return (image.astype(np.float32) * (1 - alpha) + overlay.astype(np.float32) * alpha).round().astype(np.uint8)


LEGEND_BACKGROUND = (24, 24, 24)
LEGEND_TEXT = (235, 235, 235)
_SWATCH_EDGE = (150, 150, 150)


def legend_font_px(height: int) -> int:
    """The legend's text size for panels `height` pixels tall: 10 px (readable on the smallest frames) up to 28 px."""
    return min(28, max(10, height // 24))


def legend_strip(
    width: int,
    names: Sequence[str],
    palette: Sequence[Sequence[int]],
    vmax: float,
    heat_label: str,
    bar_left: int = 0,
    font_px: int = 10,
) -> np.ndarray:
    """A strip to put under the panels: each class's colour and name, flowing across `width`; below, the heat map's colour bar.

    The colour bar runs from `bar_left` (the heat map panel's left edge) to the
    right edge, titled `heat_label`, with its scale from 0 to `vmax` (values
    above `vmax` show in the top colour). Text is Pillow's default font at
    `font_px`. Returns (H, width, 3) uint8.
    """
    from PIL import Image, ImageDraw

    font = _font(font_px)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = max(int(probe.textbbox((0, 0), "Ag", font=font)[3]), font_px)
    pad = gap = max(2, font_px // 3)
    row_h = text_h + pad

    # the classes: swatch, name; rows wrap at the strip's width
    entries: list[tuple[int, int, int, str]] = []  # x, row, class id, text
    x, row = pad, 0
    for cls, name in enumerate(names[: len(palette)]):
        text = _fit(probe, name, font, width - 2 * pad - font_px - gap)
        w = font_px + gap + int(probe.textlength(text, font=font))
        if x > pad and x + w > width - pad:
            x, row = pad, row + 1
        entries.append((x, row, cls, text))
        x += w + 2 * gap
    classes_h = (row + 1) * row_h if entries else 0

    # the colour bar: title, then the bar, on one row when the title fits beside it; the scale below the bar
    title_w = int(probe.textlength(heat_label, font=font))
    bar_h = max(6, font_px * 2 // 3)
    x0 = max(bar_left + pad, pad + title_w + gap)
    beside = width - pad - x0 >= 4 * font_px
    if not beside:
        x0 = pad
    x1 = width - pad
    bar_top = classes_h + pad + (0 if beside else row_h)
    height = bar_top + bar_h + 2 + row_h
    height += height % 2  # video encoders want even sizes

    img = Image.new("RGB", (width, height), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(img)
    for x, row, cls, text in entries:
        top = pad + row * row_h
        draw.rectangle((x, top, x + font_px - 1, top + font_px - 1), fill=tuple(int(v) for v in palette[cls]), outline=_SWATCH_EDGE)
        draw.text((x + font_px + gap, top + (font_px - text_h) // 2), text, fill=LEGEND_TEXT, font=font)
    if beside:
        draw.text((x0 - gap - title_w, bar_top + (bar_h - text_h) // 2), heat_label, fill=LEGEND_TEXT, font=font)
    else:
        draw.text((pad, bar_top - row_h), heat_label, fill=LEGEND_TEXT, font=font)
    ramp = heatmap(np.linspace(0.0, 1.0, max(x1 - x0, 1), dtype=np.float32)[None, :], 1.0)
    img.paste(Image.fromarray(np.repeat(ramp, bar_h, axis=0)), (x0, bar_top))
    low, high = "0", f"{vmax:.2g}"
    draw.text((x0, bar_top + bar_h + 2), low, fill=LEGEND_TEXT, font=font)
    draw.text((x1 - probe.textlength(high, font=font), bar_top + bar_h + 2), high, fill=LEGEND_TEXT, font=font)
    return np.asarray(img, dtype=np.uint8)


def _font(px: int) -> Any:
    """Pillow's default font at `px` (its bitmap font, of fixed size, where Pillow lacks FreeType)."""
    from PIL import ImageFont, features

    return ImageFont.load_default(px) if features.check("freetype2") else ImageFont.load_default()


def _fit(draw: Any, text: str, font: Any, room: int) -> str:
    """`text`, shortened with an ellipsis until it fits `room` pixels."""
    if draw.textlength(text, font=font) <= room:
        return text
    while text and draw.textlength(text + "...", font=font) > room:
        text = text[:-1]
    return text + "..."
