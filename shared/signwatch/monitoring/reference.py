"""Reference predictions for a baseline: the model over images, or captured records."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import torch

from signwatch.capture import read_capture_lines
from signwatch.monitoring.features import Features, features_of


def predict_top(model, spec, images: np.ndarray, k: int = 5, batch_size: int = 128,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (class ids, probabilities) of the model for uint8 images, in batches."""
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


def features_from_top(ids: np.ndarray, probs: np.ndarray) -> list[Features]:
    return [features_of([{"class_id": int(c), "probability": float(p)} for c, p in zip(ri, rp)])
            for ri, rp in zip(ids, probs)]


def record_time(record: dict) -> datetime | None:
    try:
        return datetime.fromisoformat(record["eventMetadata"]["inferenceTime"].replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def features_from_capture(files: list[bytes], start: datetime | None = None, end: datetime | None = None
                          ) -> tuple[list[Features], int]:
    """Features of the captured records in [start, end), and how many records could not be read."""
    out, unreadable = [], 0
    for data in files:
        records, bad = read_capture_lines(data)
        unreadable += bad
        for record in records:
            t = record_time(record)
            if t is not None and ((start and t < start) or (end and t >= end)):
                continue
            try:
                out.append(features_of(json.loads(record["captureData"]["endpointOutput"]["data"])["predictions"]))
            except (ValueError, KeyError, TypeError, IndexError):
                unreadable += 1
    return out, unreadable
