"""Rendering look-alike GTSRB images: one sign, a batch, an indexed data set, an array.

Determinism: image `index` of a data set is a pure function of (seed, split, index) and the
variant: its generator is `np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split],
index]))`, so images never depend on how they were batched or on how many workers rendered them,
and the splits never share an image. Its class is `index % 43`, so any 43 consecutive indices
hold each class once. The variants (snow, night, fog) draw their weather from a separate stream,
so image `index` of a variant shows the clean image `index` (same sign, pose, background) with
the weather on top.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from signwatch.data import scene, variants
from signwatch.data.classes import NUM_CLASSES, check_class_id
from signwatch.data.signs import NUM_STYLES, pick_level, sign_template
from signwatch.data.variants import check_variant

#: Bumped whenever a change to the drawing or the scene changes pixels: put it into the names of
#: caches of rendered arrays, so that a stale cache is never mistaken for the current data.
RENDER_VERSION = 1

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_CODES: dict[str, int] = {"train": 1, "val": 2, "test": 3}
MIN_SIZE, MAX_SIZE = 16, 512

Roi = tuple[int, int, int, int]


def check_split(split: str) -> str:
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    return split


def check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer in {MIN_SIZE}..{MAX_SIZE}; got {size!r}")
    return int(size)


def check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


def render_scene(
    class_id: int, rng: np.random.Generator, size: int = 64, variant: str = "clean"
) -> tuple[np.ndarray, Roi]:
    """One picture of sign `class_id` as (uint8 (size, size, 3), ROI (x1, y1, x2, y2) inclusive)."""
    class_id, size, variant = check_class_id(class_id), check_size(size), check_variant(variant)
    weather = np.random.default_rng(int(rng.integers(0, 2**63)))  # drawn for every variant alike
    style = int(rng.integers(NUM_STYLES))
    pose = scene.sample_pose(rng, size)
    template = sign_template(class_id, style, pick_level(pose.fill * size / 0.98))
    pose, h = scene.fit(pose, template, size)
    sign = scene.warp(template, h, size)
    alpha = sign[3]
    box = scene.roi(alpha)
    bg = variants.on_background(variant, weather, scene.background(rng, size, pose))
    sign = variants.on_sign(variant, weather, scene.wear(rng, sign), pose)
    img = sign[:3] + bg * (1 - sign[3])
    img = scene.occlude(rng, img, pose)
    img = scene.lighting(rng, img)
    img = variants.on_scene(variant, weather, img, alpha, pose)
    cam = variants.on_camera(variant, weather, scene.sample_camera(rng, size), size)
    return scene.camera(rng, img, cam), box


def render_sign(class_id: int, rng: np.random.Generator, size: int = 64, variant: str = "clean") -> Image.Image:
    """One RGB picture of sign `class_id` as a road camera would crop it (GTSRB style)."""
    return Image.fromarray(render_scene(class_id, rng, size, variant)[0])


def example_rng(index: int, seed: int = 0, split: str = "train") -> np.random.Generator:
    """The generator of image `index` of data set (`seed`, `split`)."""
    if index < 0:
        raise ValueError(f"index must be non-negative; got {index}")
    return np.random.default_rng(
        np.random.SeedSequence([check_seed(seed), SPLIT_CODES[check_split(split)], int(index)])
    )


def example_class(index: int) -> int:
    """The class of image `index` in every rendered data set: classes cycle 0..42."""
    return int(index) % NUM_CLASSES


def render_record(
    index: int, seed: int = 0, size: int = 64, variant: str = "clean", split: str = "train"
) -> tuple[np.ndarray, int, Roi]:
    """Image `index` of a data set as (uint8 array, class id, ROI)."""
    class_id = example_class(index)
    img, box = render_scene(class_id, example_rng(index, seed, split), size, variant)
    return img, class_id, box


def render_example(
    index: int, seed: int = 0, size: int = 64, variant: str = "clean", split: str = "train"
) -> tuple[Image.Image, int]:
    """Image `index` of data set (`seed`, `split`, `variant`) as (PIL RGB image, class id)."""
    img, class_id, _ = render_record(index, seed, size, variant, split)
    return Image.fromarray(img), class_id


def render_batch(
    class_ids: Sequence[int] | np.ndarray,
    seed: int = 0,
    size: int = 64,
    variant: str = "clean",
    split: str = "train",
    start: int = 0,
) -> np.ndarray:
    """Pictures of the given classes, uint8 (N, size, size, 3); picture i uses the generator of index
    `start + i`, so a batch cut into pieces (with matching `start`) renders the same pixels."""
    ids = [check_class_id(c) for c in np.asarray(class_ids).reshape(-1).tolist()]
    out = np.empty((len(ids), check_size(size), size, 3), dtype=np.uint8)
    for i, c in enumerate(ids):
        out[i] = render_scene(c, example_rng(start + i, seed, split), size, variant)[0]
    return out


def _render_chunk(args: tuple[int, int, int, int, str, str]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    first, count, seed, size, variant, split = args
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    rois = np.empty((count, 4), dtype=np.int32)
    for i in range(count):
        images[i], labels[i], rois[i] = render_record(first + i, seed, size, variant, split)
    return first, images, labels, rois


def iter_chunks(
    count: int,
    seed: int = 0,
    split: str = "train",
    size: int = 64,
    variant: str = "clean",
    workers: int = 1,
    start: int = 0,
    chunk: int = 128,
) -> Iterable[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Renders indices start..start+count-1 in chunks, in order, as (first index, images, labels, rois)."""
    check_seed(seed), check_split(split), check_size(size), check_variant(variant)
    if count < 0 or start < 0:
        raise ValueError("count and start must be non-negative")
    if workers < 1:
        raise ValueError(f"workers must be at least 1; got {workers}")
    jobs = [(start + i, min(chunk, count - i), seed, size, variant, split) for i in range(0, count, chunk)]
    if workers == 1 or len(jobs) <= 1:
        yield from map(_render_chunk, jobs)
        return
    with multiprocessing.get_context().Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(_render_chunk, jobs)


def render_array(
    count: int,
    seed: int = 0,
    split: str = "train",
    size: int = 64,
    variant: str = "clean",
    progress: bool = True,
    workers: int = 1,
    start: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images start..start+count-1 of a data set: (uint8 (count, size, size, 3), int64 (count,) labels).
    `workers` > 1 renders in that many processes; the pixels are the same either way."""
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    bar = _progress(count, f"render {split}/{variant}", progress)
    for first, imgs, labs, _ in iter_chunks(count, seed, split, size, variant, workers, start):
        images[first - start : first - start + len(imgs)] = imgs
        labels[first - start : first - start + len(labs)] = labs
        bar.update(len(imgs))
    bar.close()
    return images, labels


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


class SyntheticGTSRB:
    """An on-the-fly data set shaped like torchvision's `GTSRB`: item i is (PIL image, class id).

    Works as a `torch.utils.data.Dataset` (it only needs `__len__` and `__getitem__`). For fresh
    training pictures every epoch call `set_epoch(e)`: item i then renders index `e * length + i`.
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        split: str = "train",
        size: int = 64,
        variant: str = "clean",
        transform: Callable[[Image.Image], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
    ):
        if length < 0:
            raise ValueError("length must be non-negative")
        self.length, self.seed, self.split = length, check_seed(seed), check_split(split)
        self.size, self.variant = check_size(size), check_variant(variant)
        self.transform, self.target_transform = transform, target_transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        if not -self.length <= i < self.length:
            raise IndexError(i)
        i %= self.length
        image, target = render_example(self.epoch * self.length + i, self.seed, self.size, self.variant, self.split)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target
