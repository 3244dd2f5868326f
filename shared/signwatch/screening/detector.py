"""The screener: an adversarial score for each image of a batch, as served, model unchanged.

    screener = Screener(model, spec)                       # or forward=FrozenForward(...)
    calibration = screener.calibrate(clean_reference_uint8, fpr=0.01)
    result = screener.screen(images_uint8, calibration)    # scores, flagged, squeezed copies

Images are preprocessed as the inference core does (``signwatch.model.core.to_unit_tensor``: any
size, resized to the model's input size), then squeezed at that size. The default detector is
the drop of the logit margin under a one-pixel shift and a 2x down-and-up sampling (chosen by
measurement on the look-alike data: docs/attacks.md, "Screening"); Xu et al.'s feature squeezing
(softmax L1 under bit-depth reduction and median filters) is ``signal="softmax_l1"`` with
``XU_SQUEEZERS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from signwatch.model import ModelSpec
from signwatch.model.core import to_unit_tensor
from signwatch.screening.calibration import DEFAULT_FPR, ScreeningCalibration, calibrate
from signwatch.screening.signals import Forward, Signals, measure
from signwatch.screening.squeezers import squeezer

DEFAULT_SIGNAL = "margin_drop"
DEFAULT_SQUEEZERS = ("shift:1", "down:2")
XU_SQUEEZERS = ("bits:5", "median:2", "median:3")


@dataclass(frozen=True)
class ScreeningResult:
    scores: np.ndarray  # (B,) float64; above calibration.threshold reads as an attack
    flagged: np.ndarray  # (B,) bool
    probabilities: np.ndarray  # (B, classes) float32: the softmax on the input
    squeezed: np.ndarray  # (B, H, W, 3) uint8 at the model's input size: the copy that moved the model most
    squeezer: list[str]  # per image: the squeezer of that copy


def raw_signal(signals: Signals, signal: str) -> torch.Tensor:
    """(S, B) raw values of ``signal`` ("margin_drop" or "softmax_l1")."""
    if signal == "margin_drop":
        return signals.margin_drops
    if signal == "softmax_l1":
        return signals.distances
    raise ValueError(f"unknown signal {signal!r}")


def to_uint8(x01: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8, as the service's images are."""
    return (x01.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Screener:
    """``model`` (eager) or ``forward`` (any callable from a normalised batch to logits, such as the
    served frozen graph) with the model's ``spec``; ``squeezers`` by name."""

    model: torch.nn.Module | None
    spec: ModelSpec
    signal: str = DEFAULT_SIGNAL
    squeezers: tuple[str, ...] = DEFAULT_SQUEEZERS
    forward: Forward | None = None
    device: str | torch.device = "cpu"
    _squeezers: list = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.model is None and self.forward is None:
            raise ValueError("a screener needs the model or its forward")
        if self.signal not in ("margin_drop", "softmax_l1"):
            raise ValueError(f"unknown signal {self.signal!r}")
        self._squeezers = [squeezer(name) for name in self.squeezers]

    def unit(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 HWC images (any size) -> (B, 3, size, size) in [0, 1]; a tensor is taken as such."""
        if isinstance(images, torch.Tensor):
            return images.to(self.device, torch.float32)
        return to_unit_tensor(images, self.spec.input_size).to(self.device)

    def measure(self, images) -> Signals:
        return measure(self.forward or self.model, self.spec, self.unit(images), self._squeezers)

    def raw(self, images) -> np.ndarray:
        """(S, B) raw values of this screener's signal for ``images``."""
        return raw_signal(self.measure(images), self.signal).cpu().numpy()

    def calibrate(self, clean_images, fpr: float = DEFAULT_FPR, batch_size: int = 256) -> ScreeningCalibration:
        """The calibration (scales and threshold at ``fpr``) on clean reference images."""
        raw = np.concatenate([self.raw(clean_images[i:i + batch_size])
                              for i in range(0, len(clean_images), batch_size)], axis=1)
        return calibrate(raw, self.signal, self.squeezers, fpr, model_version=self.spec.version)

    def screen(self, images, calibration: ScreeningCalibration) -> ScreeningResult:
        """Score, flag, and keep the squeezed copy of each image (one batched forward)."""
        if (calibration.signal, tuple(calibration.squeezers)) != (self.signal, tuple(self.squeezers)):
            raise ValueError(f"calibration is for {calibration.signal} over {calibration.squeezers}; "
                             f"this screener measures {self.signal} over {self.squeezers}")
        signals = self.measure(images)
        raw = raw_signal(signals, self.signal).cpu().numpy()
        scores = calibration.score(raw)
        normalised = (raw - np.asarray(calibration.centers)[:, None]) / np.asarray(calibration.scales)[:, None]
        which = normalised.argmax(axis=0)
        rows = np.arange(raw.shape[1])
        squeezed = to_uint8(signals.squeezed[torch.as_tensor(which), torch.as_tensor(rows)])
        return ScreeningResult(scores=scores, flagged=calibration.flag(scores),
                               probabilities=signals.probabilities.cpu().numpy(), squeezed=squeezed,
                               squeezer=[self.squeezers[i] for i in which])


__all__ = ["DEFAULT_SIGNAL", "DEFAULT_SQUEEZERS", "XU_SQUEEZERS", "Screener", "ScreeningResult", "raw_signal",
           "to_uint8"]
