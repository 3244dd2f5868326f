"""The 43 sign faces, drawn supersampled and cached as premultiplied-alpha templates.

`draw_sign(class_id, px)` gives an anti-aliased RGBA picture of a sign, `px` pixels square, the
sign filling it edge to edge. `sign_template(class_id, style, level)` gives the same as a
premultiplied "RGBa" image at one of the pyramid sizes in `LEVELS`, cached per process, which is
what the scene renderer warps into place (so each warp shrinks by at most ~1.4x and stays sharp).
A handful of `NUM_STYLES` styles vary colours, ring and stroke widths a little, as real sign
makers and ageing do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from signwatch.data.classes import SHAPES, SPEED_LIMITS, check_class_id
from signwatch.data.pictograms import (
    Color,
    Pen,
    blue_arrows,
    car_rear,
    paste_text,
    triangle_pictogram,
    truck_front,
    truck_side,
)

NUM_STYLES = 4
LEVELS: tuple[int, ...] = (24, 34, 48, 68, 96, 136, 192, 272)


@dataclass(frozen=True)
class SignStyle:
    red: Color
    blue: Color
    yellow: Color
    white: Color
    black: Color
    grey: Color
    amber: Color
    green: Color
    ring: float  # width multiplier of red rings and borders
    stroke: int  # emboldening of digits, in text-mask pixels
    content: float  # scale multiplier of numbers and pictograms


@lru_cache(maxsize=None)
def sign_style(style: int) -> SignStyle:
    """Style `style` (0..NUM_STYLES-1); style 0 is the nominal one."""
    rng = np.random.default_rng([7, style])

    def j(base: Color, spread: int) -> Color:
        if style == 0:
            return base
        return tuple(int(np.clip(b + rng.integers(-spread, spread + 1), 0, 255)) for b in base)  # type: ignore[return-value]

    return SignStyle(
        red=j((200, 28, 38), 14),
        blue=j((18, 78, 168), 14),
        yellow=j((246, 188, 20), 12),
        white=j((242, 242, 238), 6),
        black=j((22, 22, 24), 10),
        grey=j((118, 118, 118), 14),
        amber=j((250, 176, 0), 10),
        green=j((0, 160, 80), 12),
        ring=1.0 if style == 0 else float(rng.uniform(0.9, 1.1)),
        stroke=12 if style == 0 else int(rng.integers(9, 15)),
        content=1.0 if style == 0 else float(rng.uniform(0.95, 1.04)),
    )


def _rounded_polygon(draw: ImageDraw.ImageDraw, core: list[tuple[float, float]], rho: float, fill) -> None:
    """The polygon `core` grown by `rho` in every direction (rounded corners)."""
    draw.polygon(core, fill=fill)
    if rho <= 0:
        return
    for i, (x, y) in enumerate(core):
        nx, ny = core[(i + 1) % len(core)]
        draw.line([(x, y), (nx, ny)], fill=fill, width=max(1, int(round(2 * rho))))
        draw.ellipse((x - rho, y - rho, x + rho, y + rho), fill=fill)


def _triangle(rgb: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, S: int, st: SignStyle, inverted: bool):
    """White triangle with white rim and red border; returns (centroid x, y, apothem)."""
    f = 0.36  # outer corner radius / apothem
    a0 = 0.49 * S / (math.sqrt(3) * (1 - f) + f)
    rim, border = 0.045 * a0, 0.22 * a0 * st.ring
    rho0 = f * a0
    ac = a0 - rho0
    sgn = -1 if inverted else 1
    cx, cy = S / 2, S / 2 + sgn * (a0 - rho0) / 2
    core = [
        (cx + 2 * ac * math.sin(math.radians(t)), cy - sgn * 2 * ac * math.cos(math.radians(t))) for t in (0, 120, 240)
    ]
    _rounded_polygon(mask, core, rho0, 255)
    _rounded_polygon(rgb, core, rho0, st.white)
    _rounded_polygon(rgb, core, rho0 - rim, st.red)
    _rounded_polygon(rgb, core, rho0 - rim - border, st.white)
    return cx, cy, a0


def _stripes(pen: Pen, color: Color, n: int = 5, gap: float = 0.12, width: float = 0.05) -> None:
    """The diagonal band (lower left to upper right) of the end-of-restriction signs."""
    for i in range(n):
        o = (i - (n - 1) / 2) * gap * math.sqrt(2)
        pen.line([(-1.2 + o / 2, 1.2 + o / 2), (1.2 + o / 2, -1.2 + o / 2)], width, color)


def draw_sign(class_id: int, px: int = 128, style: int = 0, supersample: int = 4) -> Image.Image:
    """The face of sign `class_id` as an anti-aliased RGBA image, `px` square (transparent around)."""
    class_id = check_class_id(class_id)
    st = sign_style(style)
    S = px * supersample
    rgb_im = Image.new("RGB", (S, S), st.white)
    mask_im = Image.new("L", (S, S), 0)
    rgb, mask = ImageDraw.Draw(rgb_im), ImageDraw.Draw(mask_im)
    c, R = S / 2, 0.49 * S
    shape = SHAPES[class_id]
    disc = (c - R, c - R, c + R, c + R)

    def circle(r: float, fill) -> None:
        rgb.ellipse((c - r, c - r, c + r, c + r), fill=fill)

    if shape == "circle":
        mask.ellipse(disc, fill=255)
        pen = Pen(rgb, c, c, R * st.content)
        if class_id in (33, 34, 35, 36, 37, 38, 39, 40):
            circle(R, st.white)
            circle(R * 0.965, st.blue)
            blue_arrows(class_id, Pen(rgb, c, c, R * st.content, flip=class_id in (34, 37, 39)), st.white)
        elif class_id == 17:
            circle(R, st.white)
            circle(R * 0.965, st.red)
            pen.rect(-0.68, -0.17, 0.68, 0.17, st.white)
        elif class_id in (6, 32, 41, 42):  # end of a restriction: grey content, diagonal stripes
            circle(R, st.grey)
            circle(R * 0.975, st.white)
            content = st.grey if class_id != 32 else st.black
            if class_id == 6:
                paste_text(rgb_im, "80", c, c, 0.76 * R * st.content, 1.25 * R, st.grey, stroke=st.stroke)
            elif class_id == 41:
                car_rear(pen, -0.35, -0.02, 0.6, st.grey, st.white)
                car_rear(pen, 0.35, -0.02, 0.6, st.grey, st.white)
            elif class_id == 42:
                truck_front(pen, -0.34, 0.04, 0.54, st.grey, st.white)
                car_rear(pen, 0.38, 0.0, 0.5, st.grey, st.white)
            _stripes(pen, content if class_id == 32 else st.black)
        else:  # prohibition: white disc, red ring
            circle(R, st.white)
            circle(R * 0.965, st.red)
            circle(R * (0.965 - 0.17 * st.ring), st.white)
            if class_id in SPEED_LIMITS:
                paste_text(
                    rgb_im,
                    str(SPEED_LIMITS[class_id]),
                    c,
                    c,
                    0.76 * R * st.content,
                    1.3 * R,
                    st.black,
                    stroke=st.stroke,
                )
            elif class_id == 9:
                car_rear(pen, -0.35, -0.02, 0.6, st.red, st.white)
                car_rear(pen, 0.35, -0.02, 0.6, st.black, st.white)
            elif class_id == 10:
                truck_front(pen, -0.32, 0.04, 0.52, st.red, st.white)
                car_rear(pen, 0.36, 0.0, 0.48, st.black, st.white)
            elif class_id == 16:
                truck_side(Pen(rgb, c, c - 0.02 * R, R * 0.68 * st.content), st.black, st.white)
            # 15: empty
    elif shape in ("triangle", "inverted_triangle"):
        cx, cy, a0 = _triangle(rgb, mask, S, st, inverted=shape == "inverted_triangle")
        if shape == "triangle":
            pen = Pen(rgb, cx, cy + 0.06 * a0, 0.64 * a0 * st.content, flip=class_id == 20, bold=1.3)
            colors = {"white": st.white, "red": st.red, "amber": st.amber, "green": st.green}
            triangle_pictogram(class_id, pen, st.black, colors)
    elif shape == "octagon":
        A = 0.49 * S
        ro = A / math.cos(math.radians(22.5))
        corners = [(math.cos(math.radians(22.5 + 45 * k)), math.sin(math.radians(22.5 + 45 * k))) for k in range(8)]
        mask.polygon([(c + ro * x, c + ro * y) for x, y in corners], fill=255)
        rgb.polygon([(c + ro * x, c + ro * y) for x, y in corners], fill=st.white)
        rgb.polygon([(c + 0.94 * ro * x, c + 0.94 * ro * y) for x, y in corners], fill=st.red)
        paste_text(rgb_im, "STOP", c, c, 0.56 * A * st.content, 1.56 * A, st.white, condense=0.82, stroke=st.stroke - 2)
    elif shape == "diamond":
        r = 0.49 * S
        for q, target, fill in (
            (r, mask, 255),
            (r, rgb, st.black),
            (0.97 * r, rgb, st.white),
            (0.62 * r, rgb, st.yellow),
        ):
            target.polygon([(c, c - q), (c + q, c), (c, c + q), (c - q, c)], fill=fill)
    out = Image.merge("RGBA", (*rgb_im.split(), mask_im))
    return out if supersample == 1 else out.reduce(supersample)


@dataclass(frozen=True)
class Template:
    """A sign face at one pyramid level: premultiplied pixels plus where the sign is in them."""

    image: Image.Image  # mode "RGBa", level x level
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 (exclusive) of alpha >= 50%
    level: int
    hull: np.ndarray  # (32, 2) points on the outline's convex hull, to keep warped signs in frame


def pick_level(target_px: float) -> int:
    """The smallest pyramid level at least `target_px` (the largest level beyond that)."""
    for lv in LEVELS:
        if lv >= target_px:
            return lv
    return LEVELS[-1]


@lru_cache(maxsize=4096)
def sign_template(class_id: int, style: int, level: int) -> Template:
    ss = 4 if level <= 68 else 3 if level <= 96 else 2
    image = draw_sign(class_id, level * ss, style, supersample=1).convert("RGBa").reduce(ss)  # premultiplied box filter
    alpha = np.asarray(image.getchannel(3)) >= 128
    rows = np.nonzero(alpha.any(axis=1))[0]
    first, last = alpha[rows].argmax(axis=1), level - 1 - alpha[rows, ::-1].argmax(axis=1)
    xs, ys = np.concatenate([first, last]), np.concatenate([rows, rows])  # each row's extremes
    bbox = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    pts = np.stack([xs + 0.5, ys + 0.5], axis=1).astype(np.float64)
    angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    hull = pts[np.argmax(pts @ np.stack([np.cos(angles), np.sin(angles)]), axis=0)]
    return Template(image=image, bbox=bbox, level=level, hull=hull)
