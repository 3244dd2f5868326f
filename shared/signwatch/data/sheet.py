"""A contact sheet of the rendered data: every class, a few samples, and each drift variant."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from signwatch.data.classes import NUM_CLASSES
from signwatch.data.render import check_size, render_record
from signwatch.data.variants import VARIANTS, check_variant


def contact_sheet(
    samples: int = 4,
    seed: int = 0,
    size: int = 64,
    variants: Sequence[str] = VARIANTS[1:],
    split: str = "test",
    per_row: int = 22,
) -> Image.Image:
    """A grid with one column per class (in bands of `per_row` classes): `samples` clean pictures,
    then one row per variant. Variant rows show the scene of the first clean row with the
    weather on top (image index c of each set), so each column compares like with like."""
    size = check_size(size)
    variants = [check_variant(v) for v in variants]
    if samples < 1 or per_row < 1:
        raise ValueError("samples and per_row must be at least 1")
    rows = [("clean", r) for r in range(samples)] + [(v, 0) for v in variants]
    label_w, head_h, gap = 56, 16, 4
    bands = (NUM_CLASSES + per_row - 1) // per_row
    band_h = head_h + len(rows) * size
    sheet = Image.new("RGB", (label_w + per_row * size, bands * band_h + (bands - 1) * gap), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    for band in range(bands):
        y0 = band * (band_h + gap)
        for j, (variant, r) in enumerate(rows):
            text = variant if variant != "clean" else f"clean {r + 1}"
            draw.text((4, y0 + head_h + j * size + size // 2 - 6), text, fill=(230, 230, 230), font=font)
        for col, class_id in enumerate(range(band * per_row, min(NUM_CLASSES, (band + 1) * per_row))):
            x = label_w + col * size
            draw.text((x + size // 2 - 6, y0 + 1), str(class_id), fill=(255, 220, 120), font=font)
            for j, (variant, r) in enumerate(rows):
                img, _, _ = render_record(class_id + NUM_CLASSES * r, seed, size, variant, split)
                sheet.paste(Image.fromarray(img), (x, y0 + head_h + j * size))
    return sheet
