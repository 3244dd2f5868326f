"""The raw signals behind the adversarial score, for a batch of images at the model's input size.

One forward runs the batch and every squeezed copy of it together ((1 + S) * B images), so the
cost is one extra forward per squeezer per batch and the model is never changed: the forward is
any callable from a normalised batch to logits (the served frozen graph, or the eager model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from signwatch.model import ModelSpec, normalize
from signwatch.screening.squeezers import Squeezer

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Signals:
    """Per image: the softmax on the input and on each squeezed copy, and the squeezed copies."""

    logits: torch.Tensor  # (B, classes), on the input
    probabilities: torch.Tensor  # (B, classes), on the input
    squeezed_logits: torch.Tensor  # (S, B, classes)
    squeezed_probabilities: torch.Tensor  # (S, B, classes)
    squeezed: torch.Tensor  # (S, B, 3, H, W) in [0, 1]

    @property
    def distances(self) -> torch.Tensor:
        """(S, B): L1 distance between the softmax on the input and on each squeezed copy (0..2)."""
        return (self.squeezed_probabilities - self.probabilities[None]).abs().sum(dim=2)

    @property
    def margin_drops(self) -> torch.Tensor:
        """(S, B): how much the input's top class loses of its logit margin on each squeezed copy.

        The margin on the input is top-1 minus top-2 logit; on a copy it is the same class's logit
        minus the largest other logit there (negative when the copy's answer changed). An
        adversarial image sits just past a boundary or far past it with an over-optimised margin;
        either way a small squeeze takes much of that margin away, while a natural image, even in
        snow or fog, keeps it. Logits rather than softmax: a high-confidence attack (PGD at
        16/255) moves the softmax of its squeezed copy very little (both read Stop at 0.99+), so
        Xu et al.'s L1 misses it, while the margin in logits still falls by several units.
        """
        top = self.logits.argmax(dim=1)
        rows = torch.arange(len(top), device=top.device)
        others = self.logits.clone()
        others[rows, top] = float("-inf")
        margin = self.logits[rows, top] - others.max(dim=1).values
        squeezed = self.squeezed_logits
        own = squeezed[:, rows, top]
        squeezed_others = squeezed.clone()
        squeezed_others[:, rows, top] = float("-inf")
        return margin[None] - (own - squeezed_others.max(dim=2).values)

    @property
    def margin(self) -> torch.Tensor:
        """(B,): top-1 minus top-2 logit on the input."""
        top2 = self.logits.topk(2, dim=1).values
        return top2[:, 0] - top2[:, 1]


def measure(forward: Forward, spec: ModelSpec, x01: torch.Tensor, squeezers: Sequence[Squeezer]) -> Signals:
    """The signals for ``x01`` (B, 3, H, W) in [0, 1], from one forward of the batch and its copies."""
    b = x01.shape[0]
    with torch.inference_mode():
        squeezed = torch.stack([s(x01) for s in squeezers]) if squeezers else x01.new_zeros((0, *x01.shape))
        batch = torch.cat([x01, squeezed.flatten(0, 1)])
        # The layout the inference core feeds the served model (signwatch.classifier).
        batch = normalize(batch, spec).contiguous(memory_format=torch.channels_last)
        logits = forward(batch).float()
        probs = torch.softmax(logits, dim=1)
    return Signals(logits=logits[:b], probabilities=probs[:b],
                   squeezed_logits=logits[b:].view(len(squeezers), b, -1),
                   squeezed_probabilities=probs[b:].view(len(squeezers), b, -1), squeezed=squeezed)


__all__ = ["Forward", "Signals", "measure"]
