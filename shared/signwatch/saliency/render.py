"""Rendering saliency maps for people: jet overlays and titled side-by-side panels (PNG-ready PIL images).

The jet colour map is computed with numpy so that serving an explanation does not pull in matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["jet", "heatmap", "overlay", "side_by_side", "stacked"]

PANEL_SIZE = 192


def jet(values: np.ndarray) -> np.ndarray:
    """Matplotlib's 'jet' for values in [0, 1]: 0 dark blue, 0.5 green-yellow, 1 dark red; (..., 3) floats."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # where red, green, blue peak on a 0..4 scale
    return np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)


def _as_numpy(array: object) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, without importing torch for PIL/numpy callers
        array = array.detach().float().cpu().numpy()
    return np.asarray(array)


def _saliency_2d(saliency: object, size: tuple[int, int]) -> np.ndarray:
    """Squeeze to (H, W), resize to ``size`` = (width, height) if needed, normalise to [0, 1]."""
    s = np.squeeze(_as_numpy(saliency)).astype(np.float32)
    if s.ndim != 2:
        raise ValueError(f"saliency must be one (H, W) map, got shape {s.shape}")
    s = np.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)
    if (s.shape[1], s.shape[0]) != size:
        s = np.asarray(Image.fromarray(s).resize(size, Image.BILINEAR))
    lo, hi = float(s.min()), float(s.max())
    return (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)


def _rgb(image: object) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    img = _as_numpy(image)
    if img.dtype != np.uint8:
        raise TypeError(f"image must be uint8 (H, W, C), got {img.dtype}; de-normalise it first")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img[..., :3]


def heatmap(saliency: object, size: tuple[int, int] | None = None) -> Image.Image:
    """The map alone in jet colours; ``size`` = (width, height), default the map's own size."""
    s = np.squeeze(_as_numpy(saliency))
    s = _saliency_2d(s, size or (s.shape[-1], s.shape[-2]))
    return Image.fromarray((jet(s) * 255.0 + 0.5).astype(np.uint8))


def overlay(image_uint8_hwc: object, saliency_hw_float: object, alpha: float = 0.5) -> Image.Image:
    """Blend a jet-coloured saliency map (red = most relevant) over the image, at the image's size."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    img = _rgb(image_uint8_hwc).astype(np.float32)
    s = _saliency_2d(saliency_hw_float, (img.shape[1], img.shape[0]))
    blended = (1.0 - alpha) * img + alpha * jet(s) * 255.0
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: only the fixed bitmap font
        return ImageFont.load_default()


def side_by_side(
    panels: Sequence[tuple[str, Image.Image]],
    panel_size: int = PANEL_SIZE,
    resample: int = Image.BILINEAR,
    padding: int = 6,
) -> Image.Image:
    """Panels in a row, each scaled to ``panel_size`` px high (64 px signs are unreadable as they are),
    with its title above."""
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    font = _font(max(10, panel_size // 14))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_height = probe.textbbox((0, 0), "Ag", font=font)[3] + 2

    scaled = []
    for title, img in panels:
        img = img.convert("RGB")
        width = max(1, round(img.width * panel_size / img.height))
        scaled.append((str(title), img.resize((width, panel_size), resample)))

    total_width = sum(img.width for _, img in scaled) + padding * (len(scaled) + 1)
    canvas = Image.new("RGB", (total_width, panel_size + text_height + 3 * padding), "white")
    draw = ImageDraw.Draw(canvas)
    x = padding
    for title, img in scaled:
        if draw.textlength(title, font=font) > img.width:
            while title and draw.textlength(title + "...", font=font) > img.width:
                title = title[:-1]
            title += "..."
        text_x = x + (img.width - draw.textlength(title, font=font)) / 2
        draw.text((text_x, padding), title, fill="black", font=font)
        canvas.paste(img, (x, 2 * padding + text_height))
        x += img.width + padding
    return canvas


def stacked(rows: Sequence[Image.Image], padding: int = 6, rule: bool = True) -> Image.Image:
    """Rows (e.g. from ``side_by_side``) one below the other, centred, with a thin rule between them."""
    if not rows:
        raise ValueError("stacked needs at least one row")
    width = max(r.width for r in rows)
    height = sum(r.height for r in rows) + padding * (len(rows) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for k, row in enumerate(rows):
        if k and rule:
            draw.line([(padding, y - padding // 2 - 1), (width - padding, y - padding // 2 - 1)], fill=(200, 200, 200))
        canvas.paste(row.convert("RGB"), ((width - row.width) // 2, y))
        y += row.height + padding
    return canvas
