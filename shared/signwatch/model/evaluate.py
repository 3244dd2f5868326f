"""Evaluating the classifier: accuracy, per-class accuracy, calibration, confusion matrix,
on the clean test set and each drift variant (what the monitor should notice)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from signwatch.data.render import render_array
from signwatch.model.core import ModelSpec
from signwatch.model.train import pick_device, predict_logits

VARIANTS = ("clean", "snow", "night", "fog")


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (confidence > lo) & (confidence <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (labels, predicted), 1)
    return m


def confusion_png(matrix: np.ndarray, path: Path, title: str, cell: int = 10) -> Path:
    """Rows = true class, columns = predicted; darker = more. Row-normalised so rare errors show."""
    n = matrix.shape[0]
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    margin = 24
    img = Image.new("RGB", (n * cell + margin + 4, n * cell + margin + 18), "white")
    draw = ImageDraw.Draw(img)
    draw.text((margin, 2), title, fill="black")
    for i in range(n):
        if i % 5 == 0:
            draw.text((2, margin + 14 + i * cell - 2), str(i), fill="gray")
            draw.text((margin + i * cell, 12), str(i), fill="gray")
        for j in range(n):
            v = rows[i, j]
            if v > 0:
                shade = int(255 * (1 - v) ** 0.6)
                color = (shade, shade, 255) if i == j else (255, shade, shade)
                x0, y0 = margin + j * cell, margin + 14 + i * cell
                draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=color)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def evaluate(model: torch.nn.Module, spec: ModelSpec, count: int = 2000, seed: int = 99,
             variants=VARIANTS, out_dir: Path | None = None, device: str | None = None,
             workers: int = 2) -> dict:
    dev = pick_device(device)
    model = model.to(dev).eval()
    results = {}
    for variant in variants:
        images, labels = render_array(count, seed=seed, split="test", size=spec.input_size,
                                      variant=variant, workers=workers, progress=True)
        probs = torch.softmax(predict_logits(model, images, spec, dev), 1).numpy()
        predicted, confidence = probs.argmax(1), probs.max(1)
        correct = predicted == labels
        matrix = confusion_matrix(labels, predicted, spec.num_classes)
        per_class = (np.diag(matrix) / np.maximum(matrix.sum(1), 1)).round(4)
        results[variant] = {
            "accuracy": round(float(correct.mean()), 4),
            "mean_confidence": round(float(confidence.mean()), 4),
            "ece": round(expected_calibration_error(confidence, correct), 4),
            "count": int(count),
            "per_class_accuracy": {str(i): float(a) for i, a in enumerate(per_class)},
        }
        if out_dir is not None:
            png = confusion_png(matrix, Path(out_dir) / f"confusion-{variant}.png",
                                f"{variant}: accuracy {correct.mean():.3f}")
            results[variant]["confusion_matrix_png"] = str(png)
    return results
