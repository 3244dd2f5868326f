"""How a road camera sees a sign: backgrounds, pose, sign wear, occlusion, light and the camera.

Everything works on channel-first float32 arrays in [0, 1] of shape (3, N, N) (the sign layer is
premultiplied (4, N, N); channel-first keeps numpy's inner loops long, which makes a 64 px picture
several times quicker than (N, N, 3)), and every random choice comes from the generator passed
in, so that a scene is a pure function of its seed. The renderer (`signwatch.data.render`) calls
these in a fixed order; only `camera` returns the usual uint8 (N, N, 3).
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from signwatch.data.signs import Template

F32 = np.float32


@lru_cache(maxsize=16)
def grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), each (n, n) float32, in pixels."""
    c = np.arange(n, dtype=F32) + F32(0.5)
    return np.meshgrid(c, c)


def to_image(a: np.ndarray) -> Image.Image:
    """float [0, 1] (3, n, n) or (n, n) -> PIL image (RGB or L)."""
    u8 = (np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if u8.ndim == 3:
        u8 = u8.transpose(1, 2, 0)
    return Image.frombytes("RGB" if u8.ndim == 3 else "L", (u8.shape[1], u8.shape[0]), np.ascontiguousarray(u8))


_TO_FLOAT = np.arange(256, dtype=F32) / F32(255)


def from_image(im: Image.Image) -> np.ndarray:
    """PIL image -> float32 array in [0, 1], channel-first ((c, n, n); (n, n) for mode L)."""
    a = np.asarray(im)
    if a.ndim == 3:
        a = a.transpose(2, 0, 1)
    return a.astype(F32, order="C") * F32(1 / 255)


def gamma(a: np.ndarray, g: float) -> np.ndarray:
    """a ** g for a in [0, 1], through a 256-entry table (4x faster than the power on 64x64)."""
    lut = _TO_FLOAT ** F32(g)
    return np.take(lut, (np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8))


@lru_cache(maxsize=64)
def _upsampler(n: int, cells: int) -> np.ndarray:
    """(n, cells) Catmull-Rom interpolation matrix from a cells-grid to n pixel centres."""
    u = (np.arange(n) + 0.5) * cells / n - 0.5
    i0 = np.floor(u).astype(int)
    t = u - i0
    w = np.stack(
        [
            (-(t**3) + 2 * t**2 - t) / 2,
            (3 * t**3 - 5 * t**2 + 2) / 2,
            (-3 * t**3 + 4 * t**2 + t) / 2,
            (t**3 - t**2) / 2,
        ],
        1,
    )
    m = np.zeros((n, cells), dtype=F32)
    for k in range(4):
        np.add.at(m, (np.arange(n), np.clip(i0 + k - 1, 0, cells - 1)), w[:, k])
    return m


def value_noise(rng: np.random.Generator, n: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth random field in about [0, 1], (channels, n, n): a random cells x cells grid, upsampled."""
    w = _upsampler(n, cells)
    return w @ rng.random((channels, cells, cells), dtype=F32) @ w.T


@lru_cache(maxsize=8)
def _noise_bank(n: int) -> np.ndarray:
    """A fixed (2n, 2n, 3) field of sensor noise (grain shared by the channels, plus some chroma);
    each picture takes a window of it at a random offset and sign."""
    bank = np.random.default_rng(0x5EED).standard_normal((4, 2 * n, 2 * n), dtype=F32)
    return bank[3:] + F32(0.4) * bank[:3]


def sensor_noise(rng: np.random.Generator, n: int, sd: float) -> np.ndarray:
    """(3, n, n) zero-mean noise of standard deviation about `sd`."""
    ox, oy = rng.integers(0, n, 2)
    sign = F32(1 if rng.random() < 0.5 else -1)
    return _noise_bank(n)[:, oy : oy + n, ox : ox + n] * (sign * F32(sd / 1.08))


def _color(rng: np.random.Generator, base, spread: float = 0.08) -> np.ndarray:
    """A colour near `base`, shaped (3, 1, 1) to broadcast over a channel-first picture."""
    return np.clip(np.asarray(base, dtype=F32) + rng.uniform(-spread, spread, 3).astype(F32), 0, 1).reshape(3, 1, 1)


# ----------------------------------------------------------------------------------- pose
@dataclass(frozen=True)
class Pose:
    fill: float  # the sign's larger side / image side
    angle: float  # degrees, in-plane rotation
    aspect: float  # horizontal squeeze from looking at the sign from aside
    shear: float
    persp: tuple[float, float]  # perspective terms, in units of the sign's half-size
    center: tuple[float, float]  # pixels


def sample_pose(rng: np.random.Generator, n: int) -> Pose:
    fill = 0.5 + 0.45 * float(rng.beta(2.2, 1.8))
    angle = float(np.clip(rng.normal(0.0, 5.0), -15.0, 15.0))
    aspect = float(1.0 - min(abs(rng.normal(0.0, 0.08)), 0.22))
    shear = float(np.clip(rng.normal(0.0, 0.04), -0.1, 0.1))
    persp = tuple(float(v) for v in np.clip(rng.normal(0.0, 0.05, 2), -0.12, 0.12))
    room = (1.0 - fill) / 2 * n
    center = tuple(float(n / 2 + np.clip(rng.normal(0.0, 0.5), -1, 1) * room) for _ in range(2))
    return Pose(fill, angle, aspect, shear, persp, center)  # type: ignore[arg-type]


def homography(pose: Pose, bbox: tuple[float, float, float, float], n: int) -> np.ndarray:
    """3x3 matrix taking template pixel coordinates to output pixel coordinates."""
    x0, y0, x1, y1 = bbox
    half = max(x1 - x0, y1 - y0) / 2
    norm = np.array([[1 / half, 0, -(x0 + x1) / 2 / half], [0, 1 / half, -(y0 + y1) / 2 / half], [0, 0, 1]])
    squeeze = np.array([[pose.aspect, pose.shear, 0], [0, 1, 0], [0, 0, 1]])
    persp = np.array([[1, 0, 0], [0, 1, 0], [pose.persp[0], pose.persp[1], 1]])
    a = math.radians(pose.angle)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    d = pose.fill * n / 2
    out = np.array([[d, 0, pose.center[0]], [0, d, pose.center[1]], [0, 0, 1]])
    return out @ rot @ persp @ squeeze @ norm


def fit(pose: Pose, template: Template, n: int) -> tuple[Pose, np.ndarray]:
    """The pose moved (and if need be shrunk) so that the whole warped sign stays in the picture,
    with the homography that goes with it."""
    for _ in range(2):
        h = homography(pose, template.bbox, n)
        p = template.hull @ h[:, :2].T + h[:, 2]
        p = p[:, :2] / p[:, 2:]
        lo, hi = p.min(axis=0), p.max(axis=0)
        span = float((hi - lo).max())
        if span > n - 1:
            pose = dataclasses.replace(pose, fill=pose.fill * (n - 1) / span)
            continue
        shift = np.maximum(0.5 - lo, 0) - np.maximum(hi - (n - 0.5), 0)
        if not shift.any():
            return pose, h
        pose = dataclasses.replace(pose, center=(pose.center[0] + float(shift[0]), pose.center[1] + float(shift[1])))
    return pose, homography(pose, template.bbox, n)


def warp(template: Template, h: np.ndarray, n: int) -> np.ndarray:
    """The template seen through `h`: premultiplied (4, n, n) float32."""
    inv = np.linalg.inv(h)
    inv = inv / inv[2, 2]
    im = template.image.transform(
        (n, n), Image.Transform.PERSPECTIVE, tuple(inv.flatten()[:8]), Image.Resampling.BILINEAR
    )
    return from_image(im)


def roi(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x1, y1, x2, y2), inclusive, of the pixels at least half covered by the sign."""
    ys, xs = np.nonzero(alpha >= 0.5)
    if len(xs) == 0:
        n = alpha.shape[0]
        return (0, 0, n - 1, n - 1)
    return (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


# ----------------------------------------------------------------------------------- background
def background(rng: np.random.Generator, n: int, pose: Pose) -> np.ndarray:
    """Sky, foliage, buildings, road or a plain wall, with clutter and the sign's own post."""
    _, yy = grid(n)
    t = yy * F32(1 / n)
    kind = int(np.searchsorted([0.24, 0.5, 0.68, 0.88], rng.random()))
    if kind == 0:  # sky: blue or overcast gradient with clouds
        top = _color(rng, (0.42, 0.58, 0.86) if rng.random() < 0.6 else (0.72, 0.75, 0.8), 0.1)
        bottom = np.clip(top + F32(rng.uniform(0.05, 0.25)), 0, 1)
        bg = top + (bottom - top) * t
        bg = bg + (value_noise(rng, n, int(rng.integers(3, 7))) - 0.5) * F32(rng.uniform(0.0, 0.35))
    elif kind == 1:  # foliage: green / olive / brown, several octaves
        base = _color(rng, ((0.2, 0.32, 0.14), (0.34, 0.36, 0.2), (0.36, 0.28, 0.18))[rng.integers(3)], 0.08)
        tex = (
            value_noise(rng, n, 4, 3) * F32(0.45)
            + value_noise(rng, n, 9, 3) * F32(0.35)
            + value_noise(rng, n, 18) * F32(0.2)
        )
        bg = base * (F32(0.45) + tex * F32(rng.uniform(0.8, 1.5)))
    elif kind == 2:  # buildings: a wall with some texture (windows come with the clutter)
        wall = _color(rng, ((0.6, 0.58, 0.55), (0.62, 0.45, 0.36), (0.45, 0.45, 0.48))[rng.integers(3)], 0.1)
        bg = wall * (F32(0.85) + value_noise(rng, n, 12) * F32(0.3))
    elif kind == 3:  # road scene: sky or trees above a horizon, asphalt below
        h = rng.uniform(0.35, 0.8)
        up = _color(rng, (0.6, 0.68, 0.8) if rng.random() < 0.5 else (0.25, 0.33, 0.2), 0.1)
        low = _color(rng, (0.38, 0.38, 0.4), 0.08)
        bg = np.where(t > h, low, up) + (value_noise(rng, n, 10) - 0.5) * F32(0.18)
    else:  # plain, as many GTSRB crops are
        bg = _color(rng, rng.uniform(0.15, 0.85, 3), 0.0) + (value_noise(rng, n, 6) - 0.5) * F32(0.12)
    clutter = int(rng.poisson(1.2))
    post = rng.random() < 0.6
    if not clutter and not post:
        return bg
    labels = Image.new("L", (n, n), 0)  # shape k is drawn as value k + 1, then coloured from a table
    draw = ImageDraw.Draw(labels)
    table = [(0.0, 0.0, 0.0)]
    for k in range(clutter):  # poles, branches, boxes, blobs
        rgb, sat = rng.uniform(0.08, 0.92, 3).tolist(), float(rng.uniform(0.2, 0.7))
        grey = sum(rgb) / 3
        table.append(tuple(grey + (v - grey) * sat for v in rgb))
        x, y, s = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(0.05, 0.5) * n
        shape = rng.integers(4)
        if shape == 0:
            draw.rectangle((x, 0, x + rng.uniform(0.03, 0.12) * n, n), fill=k + 1)
        elif shape == 1:
            draw.line(
                (x, y, x + rng.normal(0, s), y + rng.normal(0, s)),
                fill=k + 1,
                width=max(1, int(rng.uniform(0.01, 0.05) * n)),
            )
        elif shape == 2:
            draw.rectangle((x, y, x + s, y + s * rng.uniform(0.3, 1.5)), fill=k + 1)
        else:
            draw.ellipse((x, y, x + s, y + s * rng.uniform(0.5, 1.5)), fill=k + 1)
    if post:  # the sign's own post
        w = max(1.0, pose.fill * n * rng.uniform(0.05, 0.1))
        g = rng.uniform(0.35, 0.75)
        table.append((g, g, g * 1.05))
        cx, cy = pose.center
        draw.rectangle((cx - w / 2, cy, cx + w / 2, n), fill=len(table) - 1)
    lab = np.asarray(labels)
    colours = np.take(np.asarray(table, dtype=F32).T, lab, axis=1)
    return np.where(lab > 0, colours, bg)


# ----------------------------------------------------------------------------------- the sign
def wear(rng: np.random.Generator, sign: np.ndarray) -> np.ndarray:
    """Fading, uneven lighting, dirt and a specular glint on the (premultiplied) sign layer."""
    n = sign.shape[1]
    rgb, a = sign[:3], sign[3:]
    if rng.random() < 0.5:  # faded / washed-out paint
        f = F32(rng.uniform(0.0, 0.35))
        rgb = rgb * (1 - f) + a * _color(rng, (0.75, 0.75, 0.75), 0.1) * f
    xx, yy = grid(n)
    th = rng.uniform(0, 2 * math.pi)
    ramp = ((xx - n / 2) * math.cos(th) + (yy - n / 2) * math.sin(th)) / n
    rgb = rgb * (F32(1) + F32(rng.uniform(0.0, 0.6)) * ramp)
    if rng.random() < 0.2:  # dirt
        rgb = rgb * (F32(1) - F32(rng.uniform(0.1, 0.4)) * value_noise(rng, n, int(rng.integers(4, 12))))
    if rng.random() < 0.15:  # glint
        gx, gy, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(0.1, 0.3) * n
        blob = np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / F32(2 * r * r))
        rgb = rgb + a * blob * F32(rng.uniform(0.2, 0.5))
    return np.concatenate([rgb, a], axis=0)


def occlude(rng: np.random.Generator, img: np.ndarray, pose: Pose) -> np.ndarray:
    """Sometimes a branch, a pole or an object edge covers part of the sign."""
    if rng.random() >= 0.12:
        return img
    n = img.shape[1]
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = pose.center
    r = pose.fill * n / 2
    kind = rng.integers(3)
    a = rng.uniform(0, 2 * math.pi)
    ex, ey = cx + r * math.cos(a), cy + r * math.sin(a)  # a point on the sign's rim
    if kind == 0:  # leaves
        for _ in range(int(rng.integers(4, 10))):
            lx, ly, s = ex + rng.normal(0, r * 0.3), ey + rng.normal(0, r * 0.3), rng.uniform(0.08, 0.2) * r
            draw.ellipse((lx - s, ly - s * 0.6, lx + s, ly + s * 0.6), fill=255)
        col = _color(rng, (0.2, 0.32, 0.12), 0.1)
    elif kind == 1:  # a pole in front
        w = rng.uniform(0.1, 0.22) * r
        x = cx + rng.uniform(-0.8, 0.8) * r
        draw.polygon(
            [(x - w, 0), (x + w, 0), (x + w + rng.normal(0, 0.2 * r), n), (x - w + rng.normal(0, 0.2 * r), n)], fill=255
        )
        col = _color(rng, (0.45, 0.45, 0.45), 0.2)
    else:  # something's edge coming in from a side
        depth = rng.uniform(0.15, 0.45) * r
        side = rng.integers(4)
        box = [
            (0, 0, cx - r + depth, n),
            (cx + r - depth, 0, n, n),
            (0, 0, n, cy - r + depth),
            (0, cy + r - depth, n, n),
        ][side]
        draw.rectangle(box, fill=255)
        col = _color(rng, rng.uniform(0.1, 0.8, 3), 0.0)
    m = from_image(mask.filter(ImageFilter.GaussianBlur(0.4 * n / 64)))
    shade = F32(0.7) + F32(0.3) * value_noise(rng, n, 6)
    return img * (1 - m) + col * shade * m


# ----------------------------------------------------------------------------------- light, camera
def lighting(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Exposure, colour cast, saturation, gamma, contrast and the odd cast shadow."""
    n = img.shape[1]
    gain = float(np.clip(math.exp(rng.normal(-0.1, 0.33)), 0.3, 1.35))
    cast = np.exp(rng.normal(0.0, 0.06, 3)).astype(F32).reshape(3, 1, 1)
    img = img * (F32(gain) * cast)
    grey = img.mean(axis=0)
    img = grey + (img - grey) * F32(rng.uniform(0.6, 1.25))
    img = gamma(img, math.exp(rng.normal(0.0, 0.2)))
    mean = img.mean()
    img = mean + (img - mean) * F32(rng.uniform(0.6, 1.25))
    if rng.random() < 0.15:  # a soft-edged shadow over part of the picture
        xx, yy = grid(n)
        th = rng.uniform(0, 2 * math.pi)
        d = ((xx - n / 2) * math.cos(th) + (yy - n / 2) * math.sin(th)) / n - rng.uniform(-0.3, 0.3)
        m = np.clip(0.5 + d / max(rng.uniform(0.02, 0.15), 1e-3), 0, 1)
        img = img * (1 - m * F32(rng.uniform(0.3, 0.6)))
    return img


@dataclass(frozen=True)
class Camera:
    lowres: float  # scale of the native capture (1 = none)
    blur: float  # Gaussian radius, pixels at this size
    motion: tuple[float, float]  # motion blur vector, pixels
    noise: float
    jpeg: int  # quality; 0 = none


def sample_camera(rng: np.random.Generator, n: int) -> Camera:
    k = n / 64
    lowres = float(rng.uniform(0.3, 0.85)) if rng.random() < 0.35 else 1.0
    blur = float(rng.uniform(0.0, 1.0) * k) if rng.random() < 0.7 else 0.0
    motion = (0.0, 0.0)
    if rng.random() < 0.1:
        a, length = rng.uniform(0, math.pi), rng.uniform(1.5, 4.0) * k
        motion = (float(length * math.cos(a)), float(length * math.sin(a)))
    noise = float(rng.uniform(0.0, 0.035))
    jpeg = int(rng.integers(30, 95)) if rng.random() < 0.4 else 0
    return Camera(lowres, blur, motion, noise, jpeg)


def _resample_1d(src: int, dst: int) -> np.ndarray:
    """(dst, src) matrix resizing a line of `src` pixels to `dst`: area average when shrinking,
    linear interpolation (pixel centres aligned, edges clamped) when enlarging."""
    if dst <= src:
        edges = np.linspace(0, src, dst + 1)
        i = np.arange(src)
        m = np.clip(np.minimum(edges[1:, None], i + 1) - np.maximum(edges[:-1, None], i), 0, None)
    else:
        u = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
        i0 = np.minimum(np.floor(u).astype(int), max(src - 2, 0))
        t = u - i0
        m = np.zeros((dst, src))
        m[np.arange(dst), i0] += 1 - t
        m[np.arange(dst), np.minimum(i0 + 1, src - 1)] += t
    return m / m.sum(axis=1, keepdims=True)


@lru_cache(maxsize=1024)
def optics(n: int, native: int, blur: float) -> np.ndarray:
    """(n, n) matrix K of the camera's optics along one axis: capture at `native` pixels, scale
    back to n, then Gaussian defocus of standard deviation `blur` px. A picture goes through it
    as K @ channel @ K.T, a matrix product instead of three PIL passes."""
    k = np.eye(n)
    if native < n:
        k = _small_gemms(_resample_1d(n, native), left=_resample_1d(native, n))
    if blur > 0:
        x = np.arange(n)
        d2 = (x[:, None] - x[None, :]) ** 2 / (2 * blur * blur)
        g = np.where(d2 < 30, np.exp(-np.minimum(d2, 30)), 0.0)  # no denormals: they make products ~1000x slower
        k = _small_gemms(k, left=g / g.sum(axis=1, keepdims=True))
    k[np.abs(k) < 1e-7] = 0.0
    return k.astype(F32)


def _small_gemms(x: np.ndarray, left: np.ndarray | None = None, right: np.ndarray | None = None) -> np.ndarray:
    """left @ x or x @ right (x: (m, k) or (c, m, k)), cut into products small enough (m*n*k <=
    2**18) that OpenBLAS runs each on the calling thread: its threads would only fight the
    rendering processes for the same cores (and, when the machine is busy, spin-wait)."""
    if left is not None:
        m, inner, n = left.shape[0], left.shape[1], x.shape[-1]
    else:
        m, inner, n = x.shape[-2], x.shape[-1], right.shape[1]
    rows = max(1, (1 << 18) // (inner * n))
    if rows >= m:
        return left @ x if left is not None else x @ right
    out = np.empty(x.shape[:-2] + (m, n), dtype=np.result_type(x, left if left is not None else right))
    for i in range(0, m, rows):
        if left is not None:
            out[..., i : i + rows, :] = left[i : i + rows] @ x
        else:
            out[..., i : i + rows, :] = x[..., i : i + rows, :] @ right
    return out


def camera(rng: np.random.Generator, img: np.ndarray, cam: Camera) -> np.ndarray:
    """Native resolution, defocus, motion blur, sensor noise and JPEG; returns uint8 (n, n, 3)."""
    n = img.shape[1]
    step = max(1, n // 32)  # quantised, so that a few hundred optics matrices serve every picture
    native = max(12, int(round(n * cam.lowres / step)) * step) if cam.lowres < 1.0 else n
    blur = round(cam.blur * 10) / 10 if cam.blur > 0.15 else 0.0
    if native < n or blur > 0:
        k = optics(n, native, blur)
        img = _small_gemms(_small_gemms(img, left=k), right=np.ascontiguousarray(k.T))
    if cam.motion != (0.0, 0.0):
        steps = max(2, int(math.hypot(*cam.motion)) + 1)
        acc = np.zeros_like(img)
        for i in range(steps):
            f = i / (steps - 1) - 0.5
            dx, dy = int(round(cam.motion[0] * f)), int(round(cam.motion[1] * f))
            acc += np.roll(img, (dy, dx), axis=(1, 2))
        img = acc / F32(steps)
    if cam.noise > 0:
        img = img + sensor_noise(rng, n, cam.noise)
    out = np.ascontiguousarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))
    if cam.jpeg:
        buf = io.BytesIO()
        Image.frombytes("RGB", (n, n), out).save(buf, "JPEG", quality=cam.jpeg)
        buf.seek(0)
        with Image.open(buf) as im:
            out = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    return out
