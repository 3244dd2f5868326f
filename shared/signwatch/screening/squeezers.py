"""Feature squeezers (Xu, Evans and Qi, NDSS 2018): cheap transforms that remove detail an
adversarial perturbation needs while a natural image keeps its class.

Each squeezer maps a batch (B, 3, H, W) in [0, 1] to one of the same shape, vectorised over the
batch, image by image (no statistic crosses images, so a score never depends on its batch).
Squeezers are named by strings (``"bits:5"``, ``"median:2"``, ``"median:3"``, ``"shift:1"``, ``"down:2"``) so
that a threshold file can say which ones it was measured with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SqueezeFn = Callable[[torch.Tensor], torch.Tensor]


def reduce_bit_depth(x01: torch.Tensor, bits: int) -> torch.Tensor:
    """Round every channel to ``2**bits`` levels (Xu et al.'s ``round(x * (2^b - 1)) / (2^b - 1)``)."""
    levels = 2**bits - 1
    return torch.round(x01 * levels) / levels


def median_filter(x01: torch.Tensor, size: int) -> torch.Tensor:
    """Median over a ``size`` x ``size`` window per channel, edges padded by repeating the border.

    Matches ``scipy.ndimage.median_filter(size=...)`` as Xu et al. used it: for an even window the
    upper of the two middle values (rank ``size*size // 2``), the window reaching up and left of
    the pixel; the border repeated, which is scipy's "reflect" for one pixel of padding.
    """
    b, c, h, w = x01.shape
    before = size // 2  # scipy centres the window on index size // 2
    after = size - 1 - before
    padded = F.pad(x01, (before, after, before, after), mode="replicate")
    windows = F.unfold(padded, kernel_size=size).view(b, c, size * size, h * w)
    return windows.sort(dim=2).values[:, :, (size * size) // 2].view(b, c, h, w)


def shift(x01: torch.Tensor, pixels: int) -> torch.Tensor:
    """The image moved ``pixels`` right and down, the border repeated: a fixed small transform
    (deterministic, so scores are reproducible) under which a natural image keeps its class."""
    padded = F.pad(x01, (pixels, 0, pixels, 0), mode="replicate")
    return padded[:, :, : x01.shape[2], : x01.shape[3]]


def downsample(x01: torch.Tensor, factor: int) -> torch.Tensor:
    """Averaged over ``factor`` x ``factor`` blocks, then scaled back up bilinearly: the detail
    finer than the blocks is gone (sizes not divisible by ``factor`` lose their last rows)."""
    h, w = x01.shape[2:]
    small = F.avg_pool2d(x01, factor, ceil_mode=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class Squeezer:
    name: str  # "bits:5", "median:2", ...
    fn: SqueezeFn

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        return self.fn(x01)


_KINDS: dict[str, tuple[Callable[[torch.Tensor, int], torch.Tensor], range]] = {
    "bits": (reduce_bit_depth, range(1, 8)),
    "median": (median_filter, range(2, 6)),
    "shift": (shift, range(1, 5)),
    "down": (downsample, range(2, 5)),
}


def squeezer(name: str) -> Squeezer:
    """The squeezer a name describes; ``ValueError`` naming the choices when it describes none."""
    kind, _, arg = name.partition(":")
    if kind not in _KINDS or not arg.isdigit() or int(arg) not in _KINDS[kind][1]:
        choices = ", ".join(f"{k}:{r.start}..{r.stop - 1}" for k, (_, r) in _KINDS.items())
        raise ValueError(f"unknown squeezer {name!r}; choose from {choices}")
    fn, value = _KINDS[kind][0], int(arg)
    return Squeezer(name, lambda x01: fn(x01, value))


__all__ = ["Squeezer", "downsample", "median_filter", "reduce_bit_depth", "shift", "squeezer"]
