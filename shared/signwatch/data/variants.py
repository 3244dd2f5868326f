"""Drift variants: the same scenes in snow, at night and in fog.

Each variant hooks into the renderer at four points (the sign layer, the background, the lit
scene and the camera) and draws its randomness from its own generator, so a variant image shows
the same sign, pose, background and camera as the clean image of the same seed and index, only
with the weather on top. They are meant to push a model trained on clean images off its
distribution (lower accuracy and confidence) while the sign stays recognisable to a person:
- snow: snow stuck on the sign (a cap on its top edge, patches), frost, a whitened scene and
  flakes in the air;
- night: a dark, low-contrast scene, the retro-reflective sign lit a little more than its
  surroundings, sodium or cold tint, headlight and street-lamp glare with bloom, sensor noise;
- fog: contrast crushed towards a grey-white haze that varies over the picture, softer focus.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from signwatch.data.scene import F32, Camera, Pose, from_image, gamma, grid, value_noise

VARIANTS: tuple[str, ...] = ("clean", "snow", "night", "fog")


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}; got {variant!r}")
    return variant


def on_sign(variant: str, rng: np.random.Generator, sign: np.ndarray, pose: Pose) -> np.ndarray:
    """Weather on the sign itself (premultiplied (4, n, n))."""
    if variant != "snow":
        return sign
    n = sign.shape[1]
    rgb, a = sign[:3], sign[3:]
    xx, yy = grid(n)
    r = pose.fill * n / 2
    top = pose.center[1] - r
    depth = r * 2 * rng.uniform(0.05, 0.2)
    edge = top + depth * (0.6 + 0.8 * value_noise(rng, n, 5)[0])
    cap = (yy < edge).astype(F32)
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(0, 4))):  # patches of snow stuck on the face
        px, py = pose.center[0] + rng.uniform(-0.8, 0.8) * r, pose.center[1] + rng.uniform(-0.8, 0.8) * r
        s = rng.uniform(0.06, 0.16) * r * 2
        draw.ellipse(
            (px - s, py - s * rng.uniform(0.4, 0.9), px + s, py + s * rng.uniform(0.4, 0.9)),
            fill=int(rng.integers(160, 256)),
        )
    patches = from_image(mask.filter(ImageFilter.GaussianBlur(max(0.6, 0.02 * n))))
    m = np.clip(cap + patches, 0, 1)
    snow = np.array([0.95, 0.96, 1.0], dtype=F32).reshape(3, 1, 1) * F32(rng.uniform(0.88, 1.0))
    frost = F32(rng.uniform(0.05, 0.25))
    rgb = rgb * (1 - frost) + a * snow * frost
    rgb = rgb * (1 - m) + a * snow * m
    return np.concatenate([rgb, a], axis=0)


def on_background(variant: str, rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    if variant != "snow":
        return bg
    n = bg.shape[1]
    w = np.clip(F32(rng.uniform(0.2, 0.5)) + (value_noise(rng, n, 6) - 0.5) * F32(0.5), 0, 1)
    return bg * (1 - w) + F32(0.93) * w


def on_scene(variant: str, rng: np.random.Generator, img: np.ndarray, alpha: np.ndarray, pose: Pose) -> np.ndarray:
    """Weather over the lit scene; `alpha` is the sign's coverage (n, n)."""
    n = img.shape[1]
    k = n / 64
    if variant == "snow":
        mean = img.mean()
        img = mean + (img - mean) * F32(rng.uniform(0.75, 0.92)) + F32(rng.uniform(0.02, 0.08))
        mask = Image.new("L", (n, n), 0)
        draw = ImageDraw.Draw(mask)
        count = int(rng.poisson(rng.uniform(30, 140) * k * k))
        xs, ys = rng.uniform(0, n, count), rng.uniform(0, n, count)
        sizes = rng.uniform(0.3, 1.1, count) * k * np.where(rng.random(count) < 0.05, 2.2, 1.0)  # some near the lens
        shades = rng.integers(120, 240, count)
        for x, y, s, v in zip(xs.tolist(), ys.tolist(), sizes.tolist(), shades.tolist(), strict=True):
            draw.ellipse((x - s, y - s, x + s, y + s), fill=v)
        m = from_image(mask.filter(ImageFilter.GaussianBlur(0.4 * k)))
        return img * (1 - m) + F32(0.97) * m
    if variant == "night":
        # the retro-reflective sign catches the headlights: it ends up brighter than its surroundings
        img = gamma(img, 1.2)
        lum = img.mean(axis=0)
        a_sum, b_sum = float(alpha.sum()) + 1e-3, float((1 - alpha).sum()) + 1e-3
        sign_mean, bg_mean = float((lum * alpha).sum()) / a_sum, float((lum * (1 - alpha)).sum()) / b_sum
        sign_gain = rng.uniform(0.15, 0.32) / max(sign_mean, 0.1)
        bg_gain = rng.uniform(0.03, 0.12) / max(bg_mean, 0.1)
        gain = F32(bg_gain) + F32(sign_gain - bg_gain) * alpha
        tint = np.array((1.0, 0.8, 0.55) if rng.random() < 0.5 else (0.75, 0.85, 1.0), dtype=F32).reshape(3, 1, 1)
        img = img * gain * tint + F32(rng.uniform(0.01, 0.06))  # veiling glare
        xx, yy = grid(n)
        r_sign = pose.fill * n / 2
        for _ in range(int(rng.integers(1, 3))):  # headlights and street lamps beside the sign, with bloom
            th, dist = rng.uniform(0, 2 * np.pi), r_sign * rng.uniform(1.0, 1.7)
            gx, gy = pose.center[0] + dist * np.cos(th), pose.center[1] + dist * np.sin(th)
            r = rng.uniform(0.03, 0.08) * n
            d2 = ((xx - gx) ** 2 + (yy - gy) ** 2) / F32(r * r)
            glow = np.exp(-d2 / 2) * F32(rng.uniform(0.6, 1.5)) + np.exp(-d2 / 18) * F32(rng.uniform(0.05, 0.25))
            img = img + glow * np.array([1.0, 0.93, 0.8], dtype=F32).reshape(3, 1, 1)
        return img
    if variant == "fog":
        haze = np.array([0.8, 0.82, 0.85], dtype=F32).reshape(3, 1, 1) * F32(rng.uniform(0.85, 1.08))
        t = np.clip(F32(rng.uniform(0.22, 0.45)) + (value_noise(rng, n, 4) - 0.5) * F32(0.2), 0.1, 0.7)
        return img * t + haze * (1 - t)
    return img


def on_camera(variant: str, rng: np.random.Generator, cam: Camera, n: int) -> Camera:
    k = n / 64
    if variant == "night":
        jpeg = int(rng.integers(25, 70)) if cam.jpeg or rng.random() < 0.5 else 0
        return dataclasses.replace(
            cam, noise=cam.noise + float(rng.uniform(0.02, 0.06)), blur=cam.blur + 0.4 * k, jpeg=jpeg
        )
    if variant == "fog":
        return dataclasses.replace(cam, blur=cam.blur + float(rng.uniform(0.4, 1.2)) * k)
    if variant == "snow":
        return dataclasses.replace(cam, blur=cam.blur + float(rng.uniform(0.0, 0.5)) * k)
    return cam


__all__ = ["VARIANTS", "check_variant", "on_background", "on_camera", "on_scene", "on_sign"]
