"""Measuring an attack and writing what it produced.

``AttackReport.measure`` compares clean and adversarial images through the model; ``save_attack``
writes, for every image, ``NNNNN_original.png``, ``NNNNN_adversarial.png``, ``NNNNN_difference.png``
and ``NNNNN_triptych.png`` (original | adversarial | difference, with the predicted class and its
confidence), plus ``adversarial.npy`` (uint8, N x H x W x 3, ready to send to the service),
``labels.json`` and ``report.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from signwatch.attacks.methods import predict_probabilities
from signwatch.model import ModelSpec

PANEL_SIZE = 192  # px: 64 px signs are unreadable at their own size
UNKNOWN_LABEL = -1


def _mean(values: torch.Tensor) -> float | None:
    return float(values.float().mean()) if len(values) else None


@dataclass
class AttackReport:
    """Summary figures of one attack run (norms in [0, 1] pixel units) and one record per image.

    ``success_rate``: share of all images the model now assigns to the target.
    ``success_rate_on_correct``: the same among images the model classified correctly before the
    attack and whose true class is not already the target (the design's bar: >= 95% for targeted
    PGD at 8/255 with the trained model); ``None`` when labels are unknown or no image qualifies.
    """

    method: str
    target: int
    target_name: str
    eps: float | None
    steps: int
    count: int
    success_rate: float
    success_rate_on_correct: float | None
    correct_count: int | None
    clean_accuracy: float | None
    mean_linf: float
    max_linf: float
    mean_l2: float
    mean_target_confidence: float
    mean_original_confidence: float
    mean_original_target_confidence: float
    model_version: str
    out: str | None = None
    images: list[dict] = field(default_factory=list)

    @classmethod
    def measure(
        cls,
        model: torch.nn.Module,
        spec: ModelSpec,
        clean01: torch.Tensor,
        adversarial01: torch.Tensor,
        labels: Sequence[int] | np.ndarray | torch.Tensor | None,
        target: int,
        method: str,
        eps: float | None,
        steps: int,
    ) -> "AttackReport":
        """Run the model on both sets of images and compute the figures.

        ``labels`` are the true classes (``-1`` or ``None`` for unknown)."""
        n = len(clean01)
        if adversarial01.shape != clean01.shape:
            raise ValueError(f"clean {tuple(clean01.shape)} and adversarial {tuple(adversarial01.shape)} differ")
        y = (torch.full((n,), UNKNOWN_LABEL, dtype=torch.long) if labels is None
             else torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1))
        if len(y) != n:
            raise ValueError(f"{len(y)} labels for {n} images")
        p_clean = predict_probabilities(model, spec, clean01).cpu()
        p_adv = predict_probabilities(model, spec, adversarial01).cpu()
        pred_clean, pred_adv = p_clean.argmax(1), p_adv.argmax(1)
        conf_clean = p_clean.max(1).values if n else torch.zeros(0)
        conf_adv = p_adv.max(1).values if n else torch.zeros(0)
        delta = (adversarial01 - clean01).detach().cpu().flatten(1)
        linf = delta.abs().amax(1) if n else torch.zeros(0)
        l2 = delta.norm(dim=1)
        success = pred_adv == target
        known = y >= 0
        correct = known & (pred_clean == y)
        eligible = correct & (y != target)
        names = spec.class_names
        records = []
        for i in range(n):
            records.append({
                "index": i,
                "label": int(y[i]) if known[i] else None,
                "original_class": int(pred_clean[i]),
                "original_name": names[int(pred_clean[i])],
                "original_confidence": float(conf_clean[i]),
                "adversarial_class": int(pred_adv[i]),
                "adversarial_name": names[int(pred_adv[i])],
                "adversarial_confidence": float(conf_adv[i]),
                "target_confidence": float(p_adv[i, target]),
                "linf": float(linf[i]),
                "l2": float(l2[i]),
                "success": bool(success[i]),
            })
        return cls(
            method=method,
            target=int(target),
            target_name=names[int(target)],
            eps=None if eps is None else float(eps),
            steps=int(steps),
            count=n,
            success_rate=_mean(success) or 0.0,
            success_rate_on_correct=_mean(success[eligible]) if bool(eligible.any()) else None,
            correct_count=int(correct.sum()) if bool(known.all()) and n else None,
            clean_accuracy=_mean(correct[known]) if bool(known.all()) and n else None,
            mean_linf=_mean(linf) or 0.0,
            max_linf=float(linf.max()) if n else 0.0,
            mean_l2=_mean(l2) or 0.0,
            mean_target_confidence=_mean(p_adv[:, target]) or 0.0,
            mean_original_confidence=_mean(conf_clean) or 0.0,
            mean_original_target_confidence=_mean(p_clean[:, target]) or 0.0,
            model_version=spec.version,
            images=records,
        )

    def summary(self) -> dict:
        """The figures without the per-image records (what ``--json`` prints)."""
        return {k: v for k, v in asdict(self).items() if k != "images"}

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """A few readable lines for the terminal."""

        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.1f}%"

        eps = "n/a (minimal L2)" if self.eps is None else f"{self.eps:.4f} ({self.eps * 255:.1f}/255)"
        lines = [
            f"{self.method} -> class {self.target} ({self.target_name}) on {self.count} images, "
            f"eps {eps}, {self.steps} step(s), model {self.model_version}",
            f"  success rate:            {pct(self.success_rate)}",
            f"  success on correct:      {pct(self.success_rate_on_correct)}"
            + ("" if self.correct_count is None else
               f"  (clean accuracy {pct(self.clean_accuracy)}, {self.correct_count} correct)"),
            f"  perturbation:            mean Linf {self.mean_linf:.4f} ({self.mean_linf * 255:.2f}/255), "
            f"max Linf {self.max_linf:.4f}, mean L2 {self.mean_l2:.4f}",
            f"  target confidence:       {self.mean_original_target_confidence:.3f} before, "
            f"{self.mean_target_confidence:.3f} after",
            f"  original confidence:     {self.mean_original_confidence:.3f}",
        ]
        if self.out:
            lines.append(f"  written to:              {self.out}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# images


def to_uint8(images01: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3)."""
    return (images01.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def difference_image(clean: np.ndarray, adversarial: np.ndarray) -> tuple[np.ndarray, float]:
    """The perturbation made visible: grey (128) is no change, and the largest |delta| of the image
    maps to black or white. Returns the uint8 (H, W, 3) image and the amplification factor."""
    delta = adversarial.astype(np.float32) - clean.astype(np.float32)
    peak = float(np.abs(delta).max())
    if peak == 0:
        return np.full(clean.shape, 128, dtype=np.uint8), 1.0
    scale = 127.5 / peak
    return np.clip(np.round(127.5 + delta * scale), 0, 255).astype(np.uint8), scale


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: only the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def triptych(
    panels: Sequence[tuple[np.ndarray, Sequence[str]]],
    panel_size: int = PANEL_SIZE,
    padding: int = 8,
) -> Image.Image:
    """Images side by side, each scaled to ``panel_size`` (nearest neighbour: pixels stay pixels,
    so the perturbation is not smoothed away), each with up to a few title lines above."""
    font = _font(max(11, panel_size // 14))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = probe.textbbox((0, 0), "Ag", font=font)[3] + 3
    n_lines = max((len(t) for _, t in panels), default=0)
    width = len(panels) * panel_size + (len(panels) + 1) * padding
    top = padding + n_lines * line_height + padding // 2
    canvas = Image.new("RGB", (width, top + panel_size + padding), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (image, titles) in enumerate(panels):
        x = padding + k * (panel_size + padding)
        for j, title in enumerate(titles):
            text = _fit(draw, str(title), font, panel_size)
            tx = x + (panel_size - draw.textlength(text, font=font)) / 2
            draw.text((tx, padding + j * line_height), text, fill="black", font=font)
        panel = Image.fromarray(image).convert("RGB").resize((panel_size, panel_size), Image.Resampling.NEAREST)
        canvas.paste(panel, (x, top))
    return canvas


def triptych_for(clean: np.ndarray, adversarial: np.ndarray, record: dict, panel_size: int = PANEL_SIZE) -> Image.Image:
    diff, scale = difference_image(clean, adversarial)
    label = record.get("label")
    return triptych([
        (clean, ["original" + ("" if label is None else f" (true {label})"),
                 f"{record['original_class']} {record['original_name']}",
                 f"confidence {100 * record['original_confidence']:.1f}%"]),
        (adversarial, ["adversarial",
                       f"{record['adversarial_class']} {record['adversarial_name']}",
                       f"confidence {100 * record['adversarial_confidence']:.1f}%"]),
        (diff, [f"difference x{scale:.0f}",
                f"Linf {record['linf'] * 255:.1f}/255  L2 {record['l2']:.3f}",
                "grey = unchanged"]),
    ], panel_size)


def save_attack(
    out: str | Path,
    clean01: torch.Tensor,
    adversarial01: torch.Tensor,
    report: AttackReport,
    images: bool = True,
    progress: bool = False,
) -> Path:
    """Write the attack's outputs into ``out`` (created if needed) and set ``report.out``.

    ``adversarial.npy``: uint8 (N, H, W, 3). ``labels.json``: the true labels (``null`` where
    unknown), the target, the classes before and after. ``report.json``: ``report`` in full.
    With ``images`` also the four PNGs per image under ``images/``.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean, adversarial = to_uint8(clean01), to_uint8(adversarial01)
    np.save(out / "adversarial.npy", adversarial, allow_pickle=False)
    report.out = str(out)
    records = report.images
    (out / "labels.json").write_text(json.dumps({
        "images": "adversarial.npy",
        "shape": list(adversarial.shape),
        "target": report.target,
        "method": report.method,
        "labels": [r["label"] for r in records],
        "original_class": [r["original_class"] for r in records],
        "adversarial_class": [r["adversarial_class"] for r in records],
    }, indent=1) + "\n")
    if images:
        folder = out / "images"
        folder.mkdir(exist_ok=True)
        for i in tqdm(range(len(clean)), desc="save", unit="img", disable=not progress, dynamic_ncols=True):
            stem = folder / f"{i:05d}"
            Image.fromarray(clean[i]).save(f"{stem}_original.png")
            Image.fromarray(adversarial[i]).save(f"{stem}_adversarial.png")
            Image.fromarray(difference_image(clean[i], adversarial[i])[0]).save(f"{stem}_difference.png")
            triptych_for(clean[i], adversarial[i], records[i]).save(f"{stem}_triptych.png")
            records[i]["files"] = {kind: f"images/{i:05d}_{kind}.png"
                                   for kind in ("original", "adversarial", "difference", "triptych")}
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=1, allow_nan=False) + "\n")
    return out
