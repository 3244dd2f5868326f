"""The evidence behind a flagged request: its triptych, drawn for the dashboard.

For each flagged image, at the model's input size as it was screened: the input, the squeezed
copy that moved the model most, their difference (grey is no change; amplified so that the
largest change is black or white, the factor stated), and FullGrad maps of the input and of the
squeezed copy, each for the class the model reads there (jet overlays, red = most relevant, as
the explanation panels are drawn). One FullGrad forward/backward covers the whole batch.

``TriptychWriter.write`` puts the five PNGs and a JSON record under
``{prefix}/{endpoint}/yyyy/mm/dd/{event_id}/`` (``signwatch.flagged.triptych_base``); keys depend
only on the event, so a replay rewrites the same objects.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from signwatch.attacks.report import difference_image
from signwatch.flagged import IMAGES, FlaggedEntry, triptych_base
from signwatch.model import ModelSpec, normalize
from signwatch.ports.store import ObjectStore
from signwatch.saliency import fullgrad
from signwatch.saliency.render import overlay


@dataclass(frozen=True)
class Triptych:
    """One flagged image's pictures (uint8 (H, W, 3) each) and what the model read on each copy."""

    input: np.ndarray
    squeezed: np.ndarray
    difference: np.ndarray
    difference_scale: float
    difference_max: int  # largest |squeezed - input| of a channel, 0..255
    input_fullgrad: np.ndarray
    squeezed_fullgrad: np.ndarray
    input_class: int
    squeezed_class: int


def render_triptychs(model: torch.nn.Module, spec: ModelSpec, inputs: np.ndarray,
                     squeezed: np.ndarray) -> list[Triptych]:
    """Triptychs for (B, H, W, 3) uint8 ``inputs`` and their squeezed copies (same shape)."""
    if inputs.shape != squeezed.shape or inputs.ndim != 4 or inputs.dtype != np.uint8:
        raise ValueError(f"need two (B, H, W, 3) uint8 batches of one shape; got {inputs.shape}, {squeezed.shape}")
    if len(inputs) == 0:
        return []
    both = torch.from_numpy(np.concatenate([inputs, squeezed])).permute(0, 3, 1, 2).float() / 255
    result = fullgrad(model, normalize(both, spec), None, warn_above=spec.arch.fullgrad_warn_above)
    maps = result.maps[:, 0].detach().cpu().numpy()
    classes = result.target.tolist()
    b = len(inputs)
    out = []
    for i in range(b):
        diff, scale = difference_image(inputs[i], squeezed[i])
        peak = int(np.abs(squeezed[i].astype(np.int16) - inputs[i].astype(np.int16)).max())
        out.append(Triptych(
            input=inputs[i], squeezed=squeezed[i], difference=diff, difference_scale=round(float(scale), 3),
            difference_max=peak, input_fullgrad=np.asarray(overlay(inputs[i], maps[i])),
            squeezed_fullgrad=np.asarray(overlay(squeezed[i], maps[b + i])),
            input_class=int(classes[i]), squeezed_class=int(classes[b + i])))
    return out


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class TriptychWriter:
    store: ObjectStore
    prefix: str

    def write(self, entry: FlaggedEntry, triptych: Triptych, when, class_names: tuple[str, ...]) -> FlaggedEntry:
        """The five PNGs and the JSON record of ``entry``; returns the entry naming them."""
        base = triptych_base(self.prefix, entry.endpoint, when, entry.event_id)
        images = {role: f"{base}/{role}.png" for role in IMAGES}
        for role, key in images.items():
            self.store.put(key, png(getattr(triptych, role)), "image/png")
        c = triptych.squeezed_class
        written = replace(entry, images=images, record=f"{base}/flagged.json", squeezed_class=c,
                          squeezed_label=class_names[c] if 0 <= c < len(class_names) else str(c),
                          difference_scale=triptych.difference_scale, difference_max=triptych.difference_max,
                          missing=None)
        record = json.loads(written.to_json()) | {
            "difference": "grey (128) is no change; |squeezed - input| is amplified by difference_scale so that "
                          "the largest change reads black or white",
            "fullgrad": "each map is for the class the model reads on that copy (input: predicted_class, "
                        "squeezed: squeezed_class)"}
        self.store.put(written.record, json.dumps(record, indent=2).encode(), "application/json")
        return written


__all__ = ["Triptych", "TriptychWriter", "png", "render_triptychs"]
