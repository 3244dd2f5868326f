"""Reference predictions for a baseline: the model over images (rendered, GTSRB, or a labelled
folder of the user's own), or captured records (counted by ``monitoring.capture_counts``)."""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from signwatch.monitoring.features import Features, features_of


def predict_top(model, spec, images: np.ndarray, k: int = 5, batch_size: int = 128,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (class ids, probabilities) of the model for uint8 images, in batches."""
    import torch  # here, not above: the scheduled job's workers read record_time and never load torch
    from tqdm.auto import tqdm

    from signwatch.model import preprocess

    ids, probs = [], []
    with torch.inference_mode():
        for i in tqdm(range(0, len(images), batch_size), desc="predict", unit="batch", disable=not progress):
            p = torch.softmax(model(preprocess(images[i:i + batch_size], spec)), 1)
            top = p.topk(k, 1)
            ids.append(top.indices.numpy())
            probs.append(top.values.numpy())
    return np.concatenate(ids), np.concatenate(probs)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".webp")


class LabelledFolderError(ValueError):
    """The folder is not one sub-folder of images per label of the model."""


class _LazyImages(Sequence):
    """Images decoded when a batch asks for them (a folder may hold more than fits in memory)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._read(f) for f in self.files[i]]
        return self._read(self.files[i])

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                return np.array(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise LabelledFolderError(f"{path} is not a readable image: {exc}") from None


def images_from_folders(folder: Path, class_names: tuple[str, ...], limit: int | None = None
                        ) -> tuple[Sequence[np.ndarray], np.ndarray]:
    """(images, class ids) from ``folder/<label>/*.png`` (or ``folder/<class id>/...``), the
    labels being the model's; at most ``limit`` images, spread evenly over the sorted files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LabelledFolderError(f"--images {folder} is not a folder")
    by_name = {name: i for i, name in enumerate(class_names)}
    files, ids, unknown = [], [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        c = by_name.get(sub.name)
        if c is None and sub.name.isdigit() and int(sub.name) < len(class_names):
            c = int(sub.name)
        if c is None:
            unknown.append(sub.name)
            continue
        found = sorted(f for f in sub.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        files += found
        ids += [c] * len(found)
    if unknown:
        raise LabelledFolderError(f"sub-folders of {folder} that name no class of the model: {unknown[:8]} "
                                  f"(name each by a label, e.g. {class_names[0]!r}, or a class id 0.."
                                  f"{len(class_names) - 1})")
    if not files:
        raise LabelledFolderError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in sub-folders of {folder}")
    if limit is not None and len(files) > limit:
        keep = np.linspace(0, len(files) - 1, limit).round().astype(int)
        files, ids = [files[i] for i in keep], [ids[i] for i in keep]
    return _LazyImages(files), np.array(ids)


def features_from_top(ids: np.ndarray, probs: np.ndarray) -> list[Features]:
    return [features_of([{"class_id": int(c), "probability": float(p)} for c, p in zip(ri, rp)])
            for ri, rp in zip(ids, probs)]


def record_time(record: dict) -> datetime | None:
    try:
        return datetime.fromisoformat(record["eventMetadata"]["inferenceTime"].replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


RECORDED_HASH = re.compile(r"[0-9a-f]{16}")  # as ``events.ImageHash``


def recorded_hash(record: dict) -> str | None:
    """The perceptual hash the serving core took of the record's image (``eventMetadata.imageHash``,
    written by ``capture.capture_record`` since the events carry it), or None: an older capture."""
    meta = record.get("eventMetadata")
    found = meta.get("imageHash") if isinstance(meta, dict) else None
    return found if isinstance(found, str) and RECORDED_HASH.fullmatch(found) else None


def decoded_hash(record: dict) -> str | None:
    """The perceptual hash of a captured record's image, decoded as the serving core decoded it
    (an input that is not one image, a batch or a tensor, gets none and is never folded). The
    decoded pixels are dropped on return."""
    from signwatch.imaging import ImageError, decode_images, perceptual_hash

    try:
        data = record["captureData"]["endpointInput"]
        images = decode_images(base64.b64decode(data["data"]), data.get("observedContentType"))
    except (ImageError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return perceptual_hash(images[0]) if len(images) == 1 else None


def image_hash_of(record: dict) -> str | None:
    """The record's perceptual hash: as recorded where the capture carries it (no image decoded),
    else taken of the decoded image (the same function, ``imaging.perceptual_hash``)."""
    return recorded_hash(record) or decoded_hash(record)
