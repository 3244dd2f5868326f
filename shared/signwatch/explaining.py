"""The explainer core: from a violation (or one image) to saliency maps, panels and a report.

For each sample behind a violation it fetches the request bytes (inline or claim check), computes
the maps of the whole batch in one forward/backward (FullGrad by default), renders an overlay
(jet, red = most relevant) beside the input. When the store knows the input's original
(``originals/{sha256 of the adversarial input}.png``, written by the demo and the attack tools),
the panel is the reference's: the adversarial image and its map for its predicted class beside the
original and its own map for its own predicted class, then original | adversarial | difference -
and writes under ``{prefix}/{violation_id}/``: one PNG per sample, ``report.json`` and
``index.html``. Keys depend only on the violation and event ids, so a replay rewrites the same
objects. Maps whose saliency mass lies mostly outside the sign are flagged, as the reference did
("the model looks away from the sign").
"""

from __future__ import annotations

import hashlib
import html
import io
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from signwatch.attacks.report import difference_image
from signwatch.events import ExplanationEvent, ViolationEvent, ViolationSample
from signwatch.imaging import ImageError, decode_image
from signwatch.model import ModelSpec, preprocess
from signwatch.ports.store import ObjectStore
from signwatch.saliency import fullgrad, gradcam, input_x_gradient
from signwatch.saliency.gradients import TargetLike
from signwatch.saliency.render import overlay, side_by_side, stacked

METHODS = ("fullgrad", "input_x_gradient", "gradcam")
LOOKS_AWAY_SHARE = 0.5


def load_sample(sample: ViolationSample, store: ObjectStore) -> bytes:
    """The request bytes behind a violation sample (a store reference), integrity-checked."""
    raw = store.get(sample.ref)
    if hashlib.sha256(raw).hexdigest() != sample.sha256:
        raise ValueError("sample bytes do not match the violation's sha256")
    return raw


def original_key(sha256: str) -> str:
    return f"originals/{sha256}.png"


def sign_mask(size: int, roi: tuple[int, int, int, int] | None = None, image_size: int | None = None) -> np.ndarray:
    """Where the sign is, as a (size, size) bool mask.

    With a region of interest (GTSRB's Roi.X1..Y2, in the coordinates of an ``image_size`` image)
    it is that box; without one it is the central disc that GTSRB-style crops put the sign in
    (the sign fills 50-95% of the crop, so a disc of 0.45 x side around the centre).
    """
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if roi is not None:
        scale = size / float(image_size or size)
        x1, y1, x2, y2 = (v * scale for v in roi)
        return (xx >= x1) & (xx <= x2 + scale) & (yy >= y1) & (yy <= y2 + scale)
    c = size / 2
    return (xx - c) ** 2 + (yy - c) ** 2 <= (0.45 * size) ** 2


def outside_share(saliency: np.ndarray, mask: np.ndarray) -> float:
    total = float(saliency.sum())
    return float(saliency[~mask].sum()) / total if total > 0 else 0.0


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


@dataclass
class MapResult:
    predicted_class: int
    label: str
    probability: float
    completeness_rel_error: float | None
    outside_sign_share: float
    looks_away: bool
    panel: Image.Image
    # With a known original: its own prediction, explained by its own map (the reference's comparison).
    original_predicted_class: int | None = None
    original_label: str | None = None
    original_probability: float | None = None
    original_outside_sign_share: float | None = None


@dataclass
class _Explained:
    """One image's map for one class, ready to draw."""

    shown: np.ndarray  # uint8 (size, size, 3)
    saliency: np.ndarray  # (size, size)
    target: int
    predicted: int
    probability: float
    error: float | None


@dataclass
class Explainer:
    model: torch.nn.Module
    spec: ModelSpec
    store: ObjectStore
    prefix: str = "explanations"
    method: str = "fullgrad"

    def _maps(self, images: list[np.ndarray], method: str, target: TargetLike) -> list[_Explained]:
        """Maps for a batch in one forward/backward (FullGrad's forward also gives the probabilities)."""
        size = self.spec.input_size
        batch = preprocess(images, self.spec)
        errors: list[float | None] = [None] * len(images)
        if method == "fullgrad":
            # Approximate families (hardswish, SiLU, squeeze-excitation) miss completeness by design:
            # warn only beyond the bound measured for the family (docs/architectures.md).
            result = fullgrad(self.model, batch, target, warn_above=self.spec.arch.fullgrad_warn_above)
            logits, tgt = result.logits.detach(), result.target
            maps, errors = result.maps, [float(e) for e in result.completeness_rel_error]
        else:
            with torch.no_grad():
                logits = self.model(batch)
            tgt = logits.argmax(1) if target is None else torch.as_tensor(target).expand(len(images))
            if method == "gradcam":  # the registry's layer; an explicit layer is cloned, so
                # in-place ops after it (DenseNet's ReLU after ``features``) leave it intact
                maps = gradcam(self.model, batch, tgt, layer=self.spec.arch.gradcam_layer(self.model))
            else:
                maps = input_x_gradient(self.model, batch, tgt)
        probs = torch.softmax(logits, 1)
        predicted = probs.argmax(1)
        return [_Explained(shown=_resized(image, size), saliency=maps[i, 0].detach().cpu().numpy(),
                           target=int(tgt[i]), predicted=int(predicted[i]),
                           probability=float(probs[i, predicted[i]]), error=errors[i])
                for i, image in enumerate(images)]

    def model_facts(self) -> dict:
        """What a report says about the explained model: whether FullGrad is exact for it, and the
        completeness error above which a map is suspect (float32 rounding where exact, else the
        family's measured approximation)."""
        arch = self.spec.arch
        return {"architecture": arch.name, "family": arch.family, "version": self.spec.version,
                "fullgrad": "exact" if arch.fullgrad_exact else "approximate",
                "fullgrad_warn_above": arch.fullgrad_warn_above}

    def _map_title(self, method: str, e: _Explained) -> str:
        name = self.spec.class_names[e.target]
        return f"{method} {e.target}: {name}" + (f" {e.probability:.0%}" if e.target == e.predicted else "")

    def explain_images(self, images: list[np.ndarray], originals: list[np.ndarray | None] | None = None,
                       method: str | None = None, target: int | None = None) -> list[MapResult]:
        """Maps for a batch in one forward/backward, with their panels and the looks-away flag.

        Where the original of an (adversarial) image is known, the panel is the reference's: the
        adversarial image with its map for its predicted class beside the original with its own map
        for its own predicted class, and below them original | adversarial | difference. ``target``
        (a class) applies to the inputs; an original is always explained for its own prediction.
        """
        method = method or self.method
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
        originals = list(originals) if originals else [None] * len(images)
        if len(originals) != len(images):
            raise ValueError(f"{len(originals)} originals for {len(images)} images")
        known = [i for i, o in enumerate(originals) if o is not None]
        batch_target: TargetLike = None
        if target is not None:
            own = [None] * len(known)
            if known:
                with torch.no_grad():
                    own = self.model(preprocess([originals[i] for i in known], self.spec)).argmax(1).tolist()
            batch_target = [target] * len(images) + own
        # Inputs and known originals in one batch: one forward/backward for both kinds of map.
        explained = self._maps(list(images) + [originals[i] for i in known], method, batch_target)
        of_original = {i: explained[len(images) + k] for k, i in enumerate(known)}
        mask = sign_mask(self.spec.input_size)
        out = []
        for i in range(len(images)):
            e = explained[i]
            share = outside_share(e.saliency, mask)
            o = of_original.get(i)
            if o is None:
                panel = side_by_side([("input", Image.fromarray(e.shown)),
                                      (self._map_title(method, e), overlay(e.shown, e.saliency))])
            else:
                diff, scale = difference_image(o.shown, e.shown)
                panel = stacked([
                    side_by_side([
                        (f"adversarial: {e.predicted} {self.spec.class_names[e.predicted]}", Image.fromarray(e.shown)),
                        (self._map_title(method, e), overlay(e.shown, e.saliency)),
                        (f"original: {o.predicted} {self.spec.class_names[o.predicted]}", Image.fromarray(o.shown)),
                        (self._map_title(method, o), overlay(o.shown, o.saliency)),
                    ]),
                    side_by_side([("original", Image.fromarray(o.shown)), ("adversarial", Image.fromarray(e.shown)),
                                  (f"difference x{scale:.0f}", Image.fromarray(diff))], resample=Image.NEAREST),
                ])
            out.append(MapResult(
                predicted_class=e.predicted, label=self.spec.class_names[e.predicted], probability=e.probability,
                completeness_rel_error=e.error, outside_sign_share=round(share, 4),
                looks_away=share > LOOKS_AWAY_SHARE, panel=panel,
                original_predicted_class=None if o is None else o.predicted,
                original_label=None if o is None else self.spec.class_names[o.predicted],
                original_probability=None if o is None else o.probability,
                original_outside_sign_share=None if o is None else round(outside_share(o.saliency, mask), 4),
            ))
        return out

    def _original(self, sha256: str) -> np.ndarray | None:
        key = original_key(sha256)
        try:
            return decode_image(self.store.get(key), "image/png") if self.store.exists(key) else None
        except (ImageError, KeyError):
            return None

    def explain(self, violation: ViolationEvent) -> ExplanationEvent:
        base = f"{self.prefix}/{violation.violation_id}"
        images, originals, samples, skipped = [], [], [], []
        for sample in violation.samples:
            try:
                images.append(decode_image(load_sample(sample, self.store), sample.content_type))
                originals.append(self._original(sample.sha256))
                samples.append(sample)
            except (ImageError, ValueError, KeyError) as exc:
                skipped.append({"event_id": sample.event_id, "reason": str(exc)})
        written, rows = [], []
        results = self.explain_images(images, originals) if images else []
        for sample, original, result in zip(samples, originals, results):
            key = f"{base}/{sample.event_id}.png"
            self.store.put(key, _png(result.panel), "image/png")
            written.append(key)
            row = {k: v for k, v in asdict(result).items() if k != "panel"}
            rows.append(row | {"event_id": sample.event_id, "key": key,
                               "original_known": original is not None})
        report_key, index_key = f"{base}/report.json", f"{base}/index.html"
        report = {
            "violation_id": violation.violation_id, "endpoint": violation.endpoint,
            "time": violation.time.isoformat(),  # the dashboard lists the latest first
            "check": violation.check.model_dump(), "method": self.method,
            "model": self.model_facts(),
            "looks_away_count": sum(r["looks_away"] for r in rows),
            "samples": rows, "skipped": skipped,
        }
        self.store.put(report_key, json.dumps(report, indent=2).encode(), "application/json")
        self.store.put(index_key, _index_html(violation, rows, report["model"]).encode(), "text/html")
        return ExplanationEvent(violation_id=violation.violation_id, method=self.method,
                                objects=written + [report_key, index_key], report=report_key)


def _completeness(row: dict, model: dict) -> str:
    error = row.get("completeness_rel_error")
    if error is None:
        return ""
    how = "exact" if model["fullgrad"] == "exact" else "approximate"
    suspect = " - above the architecture's bound" if error > model["fullgrad_warn_above"] else ""
    return (f"; FullGrad completeness error {error:.1e} ({how} for {html.escape(model['architecture'])}"
            f"{suspect})")


def _index_html(violation: ViolationEvent, rows: list[dict], model: dict) -> str:
    figures = "\n".join(
        f'<figure><img src="{html.escape(r["key"].rsplit("/", 1)[1])}" alt="{html.escape(r["label"])}">'
        f"<figcaption>{html.escape(r['event_id'])}: class {r['predicted_class']} "
        f"({html.escape(r['label'])}), p={r['probability']:.2f}; "
        f"{r['outside_sign_share']:.0%} of the saliency outside the sign"
        f"{' - the model looks away from the sign' if r['looks_away'] else ''}"
        f"{_completeness(r, model)}</figcaption></figure>"
        for r in rows
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>signwatch violation {html.escape(violation.violation_id)}</title>"
        "<style>body{font-family:sans-serif}figure{display:inline-block;margin:8px}</style></head><body>"
        f"<h1>{html.escape(violation.check.description)}</h1>"
        f"<p>{violation.count} of {violation.total} predictions in the last "
        f"{violation.window_seconds} s on endpoint {html.escape(violation.endpoint)}. "
        "Red marks the pixels most relevant to the prediction.</p>"
        f"{figures}</body></html>\n"
    )
