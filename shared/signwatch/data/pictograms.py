"""Vector pictograms for the sign faces, drawn with PIL primitives in unit coordinates.

A `Pen` maps a unit box ([-1, 1] on both axes, y pointing down) onto a region of a (supersampled)
canvas, optionally mirrored left-right, so that one drawing serves a mirrored pair of classes
(19/20, 33/34, 36/37, 38/39). Every function here draws black-on-white (or white-on-blue)
silhouettes the way the German signs show them; colours come in as arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

Point = tuple[float, float]
Color = tuple[int, int, int]


class Pen:
    """Draws in unit coordinates: canvas point = (cx + sx * x * k, cy + y * k)."""

    def __init__(
        self, draw: ImageDraw.ImageDraw, cx: float, cy: float, k: float, flip: bool = False, bold: float = 1.0
    ):
        self.draw, self.cx, self.cy, self.k, self.bold = draw, cx, cy, k, bold
        self.sx = -1.0 if flip else 1.0

    def p(self, x: float, y: float) -> Point:
        return (self.cx + self.sx * x * self.k, self.cy + y * self.k)

    def w(self, width: float) -> int:
        """A stroke width in pixels (strokes are scaled by `bold`, shapes are not)."""
        return max(1, int(round(width * self.k * self.bold)))

    def poly(self, pts: Sequence[Point], fill: Color) -> None:
        self.draw.polygon([self.p(x, y) for x, y in pts], fill=fill)

    def line(self, pts: Sequence[Point], width: float, fill: Color, round_ends: bool = False) -> None:
        self.draw.line([self.p(x, y) for x, y in pts], fill=fill, width=self.w(width), joint="curve")
        if round_ends:
            for x, y in (pts[0], pts[-1]):
                self.circle(x, y, width * self.bold / 2, fill)

    def circle(self, x: float, y: float, r: float, fill: Color) -> None:
        self.ellipse(x - r, y - r, x + r, y + r, fill)

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, fill: Color) -> None:
        (ax, ay), (bx, by) = self.p(x0, y0), self.p(x1, y1)
        self.draw.ellipse((min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)), fill=fill)

    def ring(self, x: float, y: float, r: float, width: float, fill: Color) -> None:
        (ax, ay), (bx, by) = self.p(x - r, y - r), self.p(x + r, y + r)
        box = (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
        self.draw.ellipse(box, outline=fill, width=self.w(width))

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: Color, radius: float = 0.0) -> None:
        (ax, ay), (bx, by) = self.p(x0, y0), self.p(x1, y1)
        box = (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
        self.draw.rounded_rectangle(box, radius=radius * self.k, fill=fill)

    def arrow(self, pts: Sequence[Point], width: float, head_len: float, head_w: float, fill: Color) -> None:
        """A thick polyline ending in a triangular head whose base sits on the last point."""
        self.line(pts, width, fill)
        head_w *= min(self.bold, 1.15)
        (x0, y0), (x1, y1) = pts[-2], pts[-1]
        d = math.hypot(x1 - x0, y1 - y0) or 1.0
        ux, uy = (x1 - x0) / d, (y1 - y0) / d
        px, py = -uy, ux
        self.poly(
            [
                (x1 + px * head_w / 2, y1 + py * head_w / 2),
                (x1 + ux * head_len, y1 + uy * head_len),
                (x1 - px * head_w / 2, y1 - py * head_w / 2),
            ],
            fill,
        )


def bezier(p0: Point, p1: Point, p2: Point, p3: Point, n: int = 16) -> list[Point]:
    """Points along a cubic Bezier curve, both ends included."""
    out = []
    for i in range(n + 1):
        t = i / n
        a, b, c, d = (1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t * t * (1 - t), t**3
        out.append((a * p0[0] + b * p1[0] + c * p2[0] + d * p3[0], a * p0[1] + b * p1[1] + c * p2[1] + d * p3[1]))
    return out


def arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int = 16) -> list[Point]:
    """Points on a circle from angle a0 to a1 (degrees, image coordinates: clockwise on screen)."""
    return [
        (
            cx + r * math.cos(math.radians(a0 + (a1 - a0) * i / n)),
            cy + r * math.sin(math.radians(a0 + (a1 - a0) * i / n)),
        )
        for i in range(n + 1)
    ]


@lru_cache(maxsize=64)
def text_mask(text: str, stroke: int) -> Image.Image:
    """`text` in PIL's built-in (Aileron) font at a large size, emboldened, cropped tight (mode L)."""
    font = ImageFont.load_default(size=200)
    im = Image.new("L", (200 * len(text) + 100, 320), 0)
    ImageDraw.Draw(im).text((50, 30), text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    return im.crop(im.getbbox())


def paste_text(
    canvas: Image.Image,
    text: str,
    cx: float,
    cy: float,
    height: float,
    max_width: float,
    fill: Color,
    condense: float = 0.85,
    stroke: int = 12,
) -> None:
    """Writes `text` centred on (cx, cy), `height` px tall, narrowed to fit `max_width`."""
    mask = text_mask(text, stroke)
    width = min(max_width, mask.width * height / mask.height * condense)
    w, h = max(1, int(round(width))), max(1, int(round(height)))
    mask = mask.resize((w, h), Image.Resampling.LANCZOS)
    canvas.paste(fill, (int(round(cx - w / 2)), int(round(cy - h / 2))), mask)


# ----------------------------------------------------------------------------------- vehicles
def car_rear(pen: Pen, x: float, y: float, s: float, body: Color, window: Color) -> None:
    """A car seen from behind, centred on (x, y), `s` wide (the cars of the no-passing signs)."""

    def q(px: float, py: float) -> Point:
        return (x + px * s, y + py * s)

    pen.poly([q(-0.34, -0.5), q(0.34, -0.5), q(0.47, -0.02), q(-0.47, -0.02)], body)
    pen.rect(*q(-0.5, -0.08), *q(0.5, 0.42), body, radius=0.08 * s)
    pen.poly([q(-0.26, -0.4), q(0.26, -0.4), q(0.35, -0.08), q(-0.35, -0.08)], window)
    pen.rect(*q(-0.46, 0.3), *q(-0.24, 0.62), body, radius=0.04 * s)
    pen.rect(*q(0.24, 0.3), *q(0.46, 0.62), body, radius=0.04 * s)


def truck_front(pen: Pen, x: float, y: float, s: float, body: Color, window: Color) -> None:
    """A lorry seen from the front: taller and boxier than `car_rear` (signs 10 and 42)."""

    def q(px: float, py: float) -> Point:
        return (x + px * s, y + py * s)

    pen.rect(*q(-0.5, -0.78), *q(0.5, 0.42), body, radius=0.06 * s)
    pen.rect(*q(-0.38, -0.66), *q(0.38, -0.3), window, radius=0.03 * s)
    pen.rect(*q(-0.5, 0.3), *q(-0.26, 0.64), body)
    pen.rect(*q(0.26, 0.3), *q(0.5, 0.64), body)


def truck_side(pen: Pen, color: Color, window: Color) -> None:
    """A lorry from the side, facing left (sign 16)."""
    pen.rect(-0.9, -0.3, -0.48, 0.3, color, radius=0.06)
    pen.rect(-0.82, -0.22, -0.6, 0.0, window)
    pen.rect(-0.5, -0.55, 0.9, 0.3, color, radius=0.03)
    for wx in (-0.66, 0.4, 0.7):
        pen.circle(wx, 0.38, 0.15, color)


# ----------------------------------------------------------------------------------- figures
def walker(pen: Pen, x: float, y: float, s: float, c: Color) -> None:
    """A walking person, feet at y + 0.9 s, `s` the scale (1 = a full-height figure)."""

    def q(px: float, py: float) -> Point:
        return (x + px * s, y + py * s)

    pen.circle(*q(0.08, -0.74), 0.15 * s, c)
    pen.line([q(0.05, -0.52), q(-0.02, 0.12)], 0.24 * s, c, round_ends=True)
    pen.line([q(-0.02, 0.08), q(-0.1, 0.45), q(-0.36, 0.9)], 0.15 * s, c, round_ends=True)
    pen.line([q(-0.02, 0.08), q(0.2, 0.45), q(0.34, 0.9)], 0.15 * s, c, round_ends=True)
    pen.line([q(0.02, -0.42), q(-0.24, -0.1), q(-0.34, 0.12)], 0.11 * s, c, round_ends=True)
    pen.line([q(0.06, -0.42), q(0.26, -0.12), q(0.38, 0.06)], 0.11 * s, c, round_ends=True)


def worker(pen: Pen, c: Color) -> None:
    """A road worker digging into a heap (sign 25)."""
    pen.poly([*arc(0.62, 0.92, 0.42, 180, 360, 12)], c)  # heap
    pen.circle(-0.3, -0.62, 0.15, c)
    pen.line([(-0.22, -0.42), (0.02, 0.15)], 0.26, c, round_ends=True)  # torso, leaning
    pen.line([(0.02, 0.12), (-0.22, 0.45), (-0.45, 0.9)], 0.15, c, round_ends=True)
    pen.line([(0.02, 0.12), (0.2, 0.5), (0.12, 0.9)], 0.15, c, round_ends=True)
    pen.line([(-0.16, -0.3), (0.12, -0.1), (0.3, 0.05)], 0.1, c, round_ends=True)  # arms
    pen.line([(-0.05, -0.3), (0.46, 0.56)], 0.07, c)  # shovel handle
    pen.poly([(0.38, 0.5), (0.56, 0.42), (0.68, 0.64), (0.5, 0.72)], c)  # blade


def bicycle(pen: Pen, c: Color) -> None:
    """A bicycle with a rider, facing left (sign 29)."""
    for wx in (-0.52, 0.52):
        pen.ring(wx, 0.45, 0.38, 0.09, c)
    pen.line([(-0.52, 0.45), (-0.28, -0.02), (0.3, -0.02), (0.52, 0.45)], 0.08, c)
    pen.line([(0.3, -0.02), (0.0, 0.45), (-0.28, -0.02)], 0.08, c)
    pen.line([(-0.28, -0.02), (-0.36, -0.22), (-0.5, -0.2)], 0.07, c)  # handlebar
    pen.circle(-0.05, -0.8, 0.14, c)  # rider
    pen.line([(-0.05, -0.6), (0.16, -0.1)], 0.2, c, round_ends=True)
    pen.line([(-0.02, -0.5), (-0.38, -0.24)], 0.09, c, round_ends=True)
    pen.line([(0.16, -0.1), (0.0, 0.2), (0.02, 0.45)], 0.1, c, round_ends=True)


def deer(pen: Pen, c: Color) -> None:
    """A deer leaping to the right (sign 31)."""
    pen.line([(-0.45, 0.32), (0.28, -0.08)], 0.4, c, round_ends=True)  # body
    pen.line([(0.22, -0.05), (0.44, -0.46)], 0.2, c, round_ends=True)  # neck
    pen.poly([(0.36, -0.58), (0.56, -0.64), (0.82, -0.5), (0.78, -0.42), (0.5, -0.38)], c)  # head
    pen.line([(0.44, -0.6), (0.34, -0.95)], 0.06, c)  # antlers
    pen.line([(0.39, -0.78), (0.22, -0.88)], 0.05, c)
    pen.line([(0.5, -0.62), (0.58, -0.92)], 0.05, c)
    pen.line([(0.25, 0.0), (0.58, 0.08), (0.82, -0.08)], 0.09, c)  # front legs
    pen.line([(0.2, 0.06), (0.44, 0.3), (0.66, 0.28)], 0.09, c)
    pen.line([(-0.5, 0.34), (-0.7, 0.64), (-0.92, 0.72)], 0.1, c)  # hind legs
    pen.line([(-0.42, 0.42), (-0.5, 0.72), (-0.68, 0.92)], 0.1, c)
    pen.line([(-0.58, 0.22), (-0.72, 0.12)], 0.08, c)  # tail


# ----------------------------------------------------------------------------------- triangles
def triangle_pictogram(class_id: int, pen: Pen, black: Color, colors: dict[str, Color]) -> None:
    """The black pictogram of a warning (triangle) sign, classes 11 and 18..31."""
    c = black
    if class_id == 11:  # right of way: a broad upright bar crossed by a thin one
        pen.poly([(-0.11, -0.95), (0.11, -0.95), (0.2, 0.95), (-0.2, 0.95)], c)
        pen.rect(-0.62, -0.22, 0.62, -0.04, c)
    elif class_id == 18:  # "!"
        pen.poly([(-0.17, -0.95), (0.17, -0.95), (0.1, 0.38), (-0.1, 0.38)], c)
        pen.circle(0.0, 0.72, 0.16, c)
    elif class_id in (19, 20):  # bent arrow; pen is flipped for 20
        pts = [(0.28, 0.95), (0.28, 0.25)] + bezier((0.28, 0.25), (0.28, -0.25), (0.0, -0.42), (-0.32, -0.46), 10)
        pen.arrow(pts, 0.24, 0.36, 0.6, c)
    elif class_id == 21:  # double curve, first to the left
        pts = [(0.22, 0.95), (0.22, 0.7)] + bezier((0.22, 0.7), (0.22, 0.3), (-0.35, 0.4), (-0.35, 0.0), 10)
        pts += bezier((-0.35, 0.0), (-0.35, -0.4), (0.2, -0.2), (0.2, -0.55), 10)[1:]
        pen.arrow(pts, 0.2, 0.32, 0.52, c)
    elif class_id == 22:  # two bumps on a road
        pen.rect(-0.95, 0.45, 0.95, 0.72, c)
        for bx in (-0.46, 0.46):
            pen.poly(arc(bx, 0.5, 0.42, 180, 360, 14), c)
    elif class_id == 23:  # skidding car
        car_rear(pen, 0.05, -0.45, 0.9, c, colors["white"])
        for tx in (-0.28, 0.22):
            pts = bezier((tx, 0.22), (tx - 0.35, 0.42), (tx + 0.3, 0.6), (tx - 0.12, 0.95), 12)
            pen.line(pts, 0.09, c)
    elif class_id == 24:  # road narrows on the right
        pen.line([(-0.45, -0.95), (-0.45, 0.95)], 0.18, c)
        pen.line([(0.45, 0.95), (0.45, 0.3), (0.08, -0.25), (0.08, -0.95)], 0.18, c)
    elif class_id == 25:
        worker(pen, c)
    elif class_id == 26:  # traffic light, red / amber / green
        pen.rect(-0.36, -1.02, 0.36, 1.0, c, radius=0.12)
        for ly, key in ((-0.64, "red"), (-0.01, "amber"), (0.62, "green")):
            pen.circle(0.0, ly, 0.25, colors[key])
    elif class_id == 27:
        walker(pen, 0.0, 0.0, 1.0, c)
    elif class_id == 28:  # two children
        walker(pen, -0.3, 0.0, 1.0, c)
        walker(pen, 0.36, 0.22, 0.75, c)
        pen.line([(-0.0, 0.06), (0.12, 0.14)], 0.08, c)
    elif class_id == 29:
        bicycle(pen, c)
    elif class_id == 30:  # snowflake
        for a in (90, 30, -30):
            ca, sa = math.cos(math.radians(a)), math.sin(math.radians(a))
            pen.line([(-0.9 * ca, -0.9 * sa), (0.9 * ca, 0.9 * sa)], 0.11, c)
            for sgn in (-1, 1):
                bx, by = 0.55 * ca * sgn, 0.55 * sa * sgn
                for da in (40, -40):
                    ra = math.radians(a + (180 if sgn > 0 else 0) + da)
                    pen.line([(bx, by), (bx - 0.3 * math.cos(ra), by - 0.3 * math.sin(ra))], 0.08, c)
    elif class_id == 31:
        deer(pen, c)
    else:
        raise ValueError(f"class {class_id} has no triangle pictogram")


# ----------------------------------------------------------------------------------- blue signs
def blue_arrows(class_id: int, pen: Pen, c: Color) -> None:
    """The white arrows of the mandatory (blue) signs 33..40; the pen is flipped for 34, 37, 39."""
    w, hl, hw = 0.24, 0.36, 0.66
    if class_id in (33, 34):  # up, then bend right
        pts = [(-0.26, 0.75), (-0.26, 0.1)] + arc(0.1, 0.1, 0.36, 180, 270, 10)
        pen.arrow(pts + [(0.22, -0.26)], w, hl, hw, c)
    elif class_id == 35:
        pen.arrow([(0.0, 0.78), (0.0, -0.3)], w + 0.02, hl + 0.04, hw + 0.04, c)
    elif class_id in (36, 37):  # straight, with a branch to the right
        pen.arrow([(-0.2, 0.8), (-0.2, -0.34)], w - 0.02, hl - 0.04, hw - 0.08, c)
        pts = [(-0.2, 0.42)] + arc(0.12, 0.42, 0.32, 180, 270, 8)
        pen.arrow(pts + [(0.3, 0.1)], w - 0.04, hl - 0.08, hw - 0.12, c)
    elif class_id in (38, 39):  # diagonally down to the right
        pen.arrow([(-0.5, -0.5), (0.2, 0.2)], w, hl, hw, c)
    elif class_id == 40:  # three arrows circling anticlockwise
        for i in range(3):
            a0 = -30 + 120 * i
            pen.arrow(arc(0.0, 0.0, 0.5, a0, a0 - 72, 10), 0.17, 0.26, 0.44, c)
    else:
        raise ValueError(f"class {class_id} has no blue-sign arrow")


DrawFn = Callable[[int, Pen, Color], None]
