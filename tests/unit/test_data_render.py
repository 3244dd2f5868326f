"""Rendering: determinism, batching, splits, sizes, variants, the data set object."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from signwatch.data import (
    NUM_CLASSES,
    SyntheticGTSRB,
    render_array,
    render_batch,
    render_example,
    render_record,
    render_sign,
)
from signwatch.data.render import iter_chunks


def test_render_sign_is_deterministic_for_a_seed():
    a = render_sign(14, np.random.default_rng(7))
    b = render_sign(14, np.random.default_rng(7))
    c = render_sign(14, np.random.default_rng(8))
    assert isinstance(a, Image.Image) and a.mode == "RGB" and a.size == (64, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_examples_are_deterministic_and_classes_cycle():
    img1, c1 = render_example(45, seed=3)
    img2, c2 = render_example(45, seed=3)
    assert c1 == c2 == 45 % NUM_CLASSES
    assert np.array_equal(np.asarray(img1), np.asarray(img2))
    assert not np.array_equal(np.asarray(img1), np.asarray(render_example(45, seed=4)[0]))


def test_batching_does_not_change_pixels():
    ids = [i % NUM_CLASSES for i in range(10)]
    whole = render_batch(ids, seed=5)
    parts = np.concatenate([render_batch(ids[:3], seed=5), render_batch(ids[3:], seed=5, start=3)])
    assert whole.shape == (10, 64, 64, 3) and whole.dtype == np.uint8
    assert np.array_equal(whole, parts)
    images, labels = render_array(10, seed=5, progress=False)
    assert np.array_equal(images, whole) and labels.tolist() == ids
    assert np.array_equal(np.asarray(render_example(7, seed=5)[0]), whole[7])
    tail, tail_labels = render_array(4, seed=5, start=6, progress=False)
    assert np.array_equal(tail, whole[6:]) and tail_labels.tolist() == ids[6:]


def test_workers_do_not_change_pixels():
    one, l1 = render_array(60, seed=9, split="val", size=32, progress=False, workers=1)
    chunks = list(iter_chunks(60, seed=9, split="val", size=32, workers=2, chunk=16))
    assert [first for first, *_ in chunks] == [0, 16, 32, 48]
    assert np.array_equal(np.concatenate([c[1] for c in chunks]), one)
    assert np.array_equal(np.concatenate([c[2] for c in chunks]), l1)
    assert np.bincount(l1, minlength=NUM_CLASSES).min() >= 60 // NUM_CLASSES


def test_splits_never_share_images():
    imgs = {s: render_array(20, seed=1, split=s, progress=False)[0] for s in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not any(np.array_equal(x, y) for x in imgs[a] for y in imgs[b])


@pytest.mark.parametrize("size", [64, 128])
def test_every_class_renders(size):
    for c in range(NUM_CLASSES):
        img, label, (x1, y1, x2, y2) = render_record(c, seed=2, size=size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8 and label == c
        assert img.std() > 3, f"class {c} rendered flat"
        assert 0 <= x1 < x2 < size and 0 <= y1 < y2 < size
        side = max(x2 - x1 + 1, y2 - y1 + 1) / size
        assert 0.4 <= side <= 1.0, f"class {c}: sign spans {side:.2f} of the picture"


def _stats(variant: str, n: int = 43):
    images, _ = render_array(n, seed=11, split="test", variant=variant, progress=False)
    f = images.astype(np.float32) / 255
    luma = f.mean(axis=3).reshape(n, -1)
    q25, q75 = np.percentile(luma, [25, 75], axis=1)
    contrast = (q75 - q25).mean()  # inter-quartile range: blind to a few glare or snowflake pixels
    saturation = (f.max(axis=3) - f.min(axis=3)).mean()
    return images, luma.mean(), contrast, saturation


def test_variants_shift_the_pictures_as_designed():
    clean, c_mean, c_contrast, c_sat = _stats("clean")
    snow, s_mean, s_contrast, s_sat = _stats("snow")
    night, n_mean, n_contrast, _ = _stats("night")
    fog, f_mean, f_contrast, f_sat = _stats("fog")
    for other in (snow, night, fog):
        assert (np.abs(other.astype(int) - clean).mean(axis=(1, 2, 3)) > 5).all()
    assert n_mean < 0.6 * c_mean  # night: dark
    assert n_contrast < c_contrast
    assert f_contrast < 0.6 * c_contrast and f_sat < 0.6 * c_sat  # fog: flat and grey
    assert f_mean > c_mean
    assert s_mean > c_mean + 0.05 and s_sat < c_sat  # snow: whitened


def test_variants_keep_the_scene_of_the_clean_image():
    for index in range(0, 43, 7):
        _, label, roi = render_record(index, seed=4, variant="clean")
        for variant in ("snow", "night", "fog"):
            _, v_label, v_roi = render_record(index, seed=4, variant=variant)
            assert (v_label, v_roi) == (label, roi)


@pytest.mark.parametrize(
    "call",
    [
        lambda: render_sign(43, np.random.default_rng(0)),
        lambda: render_sign(0, np.random.default_rng(0), variant="rain"),
        lambda: render_sign(0, np.random.default_rng(0), size=8),
        lambda: render_example(0, seed=-1),
        lambda: render_example(-1),
        lambda: render_example(0, split="holdout"),
        lambda: render_array(3, workers=0, progress=False),
    ],
)
def test_bad_arguments_are_refused(call):
    with pytest.raises(ValueError):
        call()


def test_synthetic_dataset_behaves_like_a_torchvision_dataset():
    ds = SyntheticGTSRB(86, seed=1, size=32, transform=lambda im: np.asarray(im), target_transform=lambda t: t + 100)
    assert len(ds) == 86
    image, target = ds[44]
    assert image.shape == (32, 32, 3) and target == 100 + 44 % NUM_CLASSES
    assert np.array_equal(ds[-1][0], ds[85][0])
    with pytest.raises(IndexError):
        ds[86]
    ds.set_epoch(1)
    again, target_again = ds[44]
    assert target_again == 100 + (86 + 44) % NUM_CLASSES and not np.array_equal(again, image)
    plain = SyntheticGTSRB(5, size=32)
    assert isinstance(plain[0][0], Image.Image)
