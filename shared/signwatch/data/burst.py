"""Frames of one sign as a camera on a passing car sends them: one scene, many slightly different crops.

A car passing a sign sends many frames of that one sign within seconds (issue 17). Each frame here
is a crop of one rendered scene, resized to the crop size a classifier takes: across the burst the
sign drifts a few pixels and grows, and each frame adds a small shake and a brightness of its own. The monitor's tests and benchmark use them
to check that such a burst counts as one observation (``signwatch.monitoring.tracks``).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from signwatch.data.render import render_scene

MARGIN = 1.25  # the scene is rendered this much larger than a frame, so that every crop lies inside it


def passing_frames(class_id: int, n: int, seed: int = 0, size: int = 64, shift_px: float = 3.0,
                   scale: float = 0.1, brightness: float = 0.15, jitter_px: float = 0.5) -> np.ndarray:
    """``n`` frames (uint8, (n, size, size, 3)) of one rendered scene of sign ``class_id``, as the
    car nears it: across the burst the sign drifts ``shift_px`` pixels each way along a random
    direction and grows from ``1 - scale`` to ``1 + scale``; each frame adds a shake of its own (up
    to ``jitter_px`` pixels, 1% of scale) and a brightness of its own (``1 +- brightness``: exposure
    and flicker), drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    big = int(round(size * MARGIN))
    scene, _ = render_scene(class_id, rng, big)
    picture = Image.fromarray(scene)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction)
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        u = 2 * i / max(1, n - 1) - 1  # -1 .. 1 across the burst
        side = size * (1 + scale * u) * rng.uniform(0.99, 1.01)
        # scene pixels are about frame pixels (the crop is about ``size`` of them)
        cx, cy = big / 2 + direction * shift_px * u + rng.uniform(-jitter_px, jitter_px, 2)
        crop = picture.resize((size, size), Image.Resampling.BILINEAR,
                              box=(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
        lit = np.asarray(crop, dtype=np.float32) * rng.uniform(1 - brightness, 1 + brightness)
        frames[i] = np.clip(np.round(lit), 0, 255).astype(np.uint8)
    return frames
