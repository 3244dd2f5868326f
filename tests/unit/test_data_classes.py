"""The class table and the drawn sign faces."""

from __future__ import annotations

import numpy as np
import pytest
from signwatch.data.classes import CLASS_NAMES, MIRROR_PAIRS, NUM_CLASSES, SHAPES, STOP, class_name
from signwatch.data.signs import LEVELS, NUM_STYLES, draw_sign, sign_template


def test_class_table_matches_gtsrb():
    assert NUM_CLASSES == 43 == len(CLASS_NAMES) == len(set(CLASS_NAMES))
    assert STOP == 14 and CLASS_NAMES[STOP] == "Stop"
    assert CLASS_NAMES[0] == "Speed limit (20km/h)"
    assert CLASS_NAMES[6] == "End of speed limit (80km/h)"
    assert CLASS_NAMES[10] == "No passing for vehicles over 3.5 metric tons"
    assert CLASS_NAMES[30] == "Beware of ice/snow"
    assert CLASS_NAMES[42] == "End of no passing by vehicles over 3.5 metric tons"
    assert class_name(np.int64(17)) == "No entry"
    for bad in (-1, 43, 1.5, "3", True):
        with pytest.raises(ValueError):
            class_name(bad)


def _faces(px: int = 32) -> np.ndarray:
    """All 43 faces (style 0) composited on mid grey, float (43, px, px, 3)."""
    out = []
    for c in range(NUM_CLASSES):
        a = np.asarray(draw_sign(c, px), dtype=np.float32) / 255
        out.append(a[..., :3] * a[..., 3:] + 0.5 * (1 - a[..., 3:]))
    return np.stack(out)


def test_faces_have_the_right_shape_and_colours():
    faces = _faces(48)
    red = lambda f: ((f[..., 0] > 0.6) & (f[..., 1] < 0.3) & (f[..., 2] < 0.3)).mean()  # noqa: E731
    blue = lambda f: ((f[..., 2] > 0.5) & (f[..., 0] < 0.25)).mean()  # noqa: E731
    yellow = lambda f: ((f[..., 0] > 0.8) & (f[..., 1] > 0.6) & (f[..., 2] < 0.3)).mean()  # noqa: E731
    for c in range(33, 41):
        assert blue(faces[c]) > 0.4, c
    for c in (14, 17):
        assert red(faces[c]) > 0.35, c
    assert yellow(faces[12]) > 0.1
    for c in (6, 32, 41, 42):  # end signs: no red, no blue
        assert red(faces[c]) < 0.01 and blue(faces[c]) < 0.01, c
    for c in (*range(0, 6), 7, 8, 9, 10, 15, 16, 11, 13, *range(18, 32)):
        assert 0.08 < red(faces[c]) < 0.45, c
    assert {SHAPES[c] for c in range(NUM_CLASSES)} == {"circle", "triangle", "inverted_triangle", "octagon", "diamond"}


def test_every_pair_of_classes_is_distinguishable():
    faces = _faces(32).reshape(NUM_CLASSES, -1)
    d = np.sqrt(((faces[:, None] - faces[None]) ** 2).mean(axis=2))
    np.fill_diagonal(d, np.inf)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    assert d.min() > 0.03, f"classes {i} and {j} look alike (RMS difference {d.min():.3f})"


@pytest.mark.parametrize("a,b", MIRROR_PAIRS)
def test_mirror_pairs_are_mirror_images(a, b):
    fa, fb = (np.asarray(draw_sign(c, 48), dtype=np.float32) / 255 for c in (a, b))
    assert np.abs(fa[:, ::-1] - fb).mean() < 0.02  # mirrored: nearly the same picture
    assert np.abs(fa - fb).mean() > 0.02  # as drawn: different


def test_templates_are_premultiplied_and_cached():
    t = sign_template(14, NUM_STYLES - 1, LEVELS[2])
    assert t.image.mode == "RGBa" and t.image.size == (LEVELS[2], LEVELS[2])
    x0, y0, x1, y1 = t.bbox
    assert 0 <= x0 < x1 <= LEVELS[2] and 0 <= y0 < y1 <= LEVELS[2]
    assert (x1 - x0) > 0.9 * LEVELS[2]
    assert sign_template(14, NUM_STYLES - 1, LEVELS[2]) is t
