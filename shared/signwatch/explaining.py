"""The explainer core: from a violation to saliency maps, panels and a report in the store.

For each sample behind a violation it fetches the request bytes (inline or claim check),
computes FullGrad maps for the whole batch in one forward/backward, renders an overlay
(jet, red = most relevant) beside the input, and writes under ``{prefix}/{violation_id}/``:
one PNG per sample, ``report.json`` and ``index.html``. Keys depend only on the violation and
event ids, so a replayed violation rewrites the same objects.
"""

from __future__ import annotations

import html
import io
import json
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from signwatch.events import ExplanationEvent, ViolationEvent
from signwatch.imaging import ImageError, decode_image
from signwatch.model import ModelSpec, preprocess
from signwatch.ports.store import ObjectStore
from signwatch.publishing import resolve_input
from signwatch.saliency import fullgrad
from signwatch.saliency.render import overlay, side_by_side


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class SampleExplanation:
    event_id: str
    predicted_class: int
    label: str
    probability: float
    completeness_rel_error: float
    key: str


@dataclass
class Explainer:
    model: torch.nn.Module
    spec: ModelSpec
    store: ObjectStore
    prefix: str = "explanations"
    method: str = "fullgrad"

    def maps(self, images: list[np.ndarray]):
        batch = preprocess(images, self.spec)
        return fullgrad(self.model, batch)

    def explain(self, violation: ViolationEvent) -> ExplanationEvent:
        base = f"{self.prefix}/{violation.violation_id}"
        images, samples, skipped = [], [], []
        for sample in violation.samples:
            try:
                raw = resolve_input(sample.input, self.store)
                images.append(decode_image(raw, sample.input.content_type))
                samples.append(sample)
            except (ImageError, ValueError, KeyError) as exc:
                skipped.append({"event_id": sample.event_id, "reason": str(exc)})
        written: list[str] = []
        explained: list[SampleExplanation] = []
        if images:
            result = self.maps(images)
            size = self.spec.input_size
            for i, (sample, image) in enumerate(zip(samples, images)):
                shown = np.asarray(
                    torch.nn.functional.interpolate(
                        torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(size, size),
                        mode="bilinear", align_corners=False, antialias=True,
                    )[0].permute(1, 2, 0).clamp(0, 255).byte()
                )
                saliency = result.maps[i, 0].detach().cpu().numpy()
                target = int(result.target[i])
                label = self.spec.class_names[target]
                panel = side_by_side([
                    ("input", Image.fromarray(shown)),
                    (f"{self.method}: {target} {label}", overlay(shown, saliency)),
                ])
                key = f"{base}/{sample.event_id}.png"
                self.store.put(key, _png(panel), "image/png")
                written.append(key)
                explained.append(SampleExplanation(
                    sample.event_id, target, label, sample.probability,
                    float(result.completeness_rel_error[i]), key,
                ))
        report_key = f"{base}/report.json"
        report = {
            "violation_id": violation.violation_id,
            "endpoint": violation.endpoint,
            "check": violation.check.model_dump(),
            "method": self.method,
            "samples": [e.__dict__ for e in explained],
            "skipped": skipped,
        }
        self.store.put(report_key, json.dumps(report, indent=2).encode(), "application/json")
        index_key = f"{base}/index.html"
        self.store.put(index_key, _index_html(violation, explained).encode(), "text/html")
        written += [report_key, index_key]
        return ExplanationEvent(violation_id=violation.violation_id, method=self.method,
                                objects=written, report=report_key)


def _index_html(violation: ViolationEvent, explained: list[SampleExplanation]) -> str:
    rows = "\n".join(
        f'<figure><img src="{html.escape(e.key.rsplit("/", 1)[1])}" alt="{html.escape(e.label)}">'
        f"<figcaption>{html.escape(e.event_id)}: class {e.predicted_class} "
        f"({html.escape(e.label)}), p={e.probability:.2f}</figcaption></figure>"
        for e in explained
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>signwatch violation {html.escape(violation.violation_id)}</title></head><body>"
        f"<h1>{html.escape(violation.check.description)}</h1>"
        f"<p>{violation.count} of {violation.total} predictions in the last "
        f"{violation.window_seconds} s on endpoint {html.escape(violation.endpoint)}.</p>"
        f"{rows}</body></html>\n"
    )
