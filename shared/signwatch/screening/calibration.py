"""Thresholds from data: the screening score's calibration on clean reference images.

The score combines one signal ("margin_drop" or Xu et al.'s "softmax_l1") over several
squeezers. Each squeezer's raw value is put on a common scale first, measured on the clean
reference images: 0 at their median, 1 at their 99th percentile; the score is the largest of
these. Then the threshold is the clean scores' ``1 - fpr`` quantile, so that at most ``fpr`` of
the reference reads as an attack. The whole calibration is a small JSON-able dataclass, to be
stored with the monitor's baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

SIGNALS = ("margin_drop", "softmax_l1")
DEFAULT_FPR = 0.01
SCALE_QUANTILE = 0.99  # the unit of each squeezer's scale (its clean 99th percentile above the median)
FORMAT = 1


def threshold_for_fpr(clean_scores: np.ndarray | Sequence[float], fpr: float = DEFAULT_FPR) -> float:
    """The threshold above which at most ``fpr`` of ``clean_scores`` lie (a score is flagged when
    it is strictly greater). ``numpy.quantile(..., 1 - fpr, method="higher")``: an actual clean
    score, so the share above it never exceeds ``fpr``; ties at the top make it smaller."""
    scores = np.asarray(clean_scores, dtype=np.float64).ravel()
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1); got {fpr!r}")
    if len(scores) == 0 or not np.isfinite(scores).all():
        raise ValueError("need at least one finite clean score")
    return float(np.quantile(scores, 1 - fpr, method="higher"))


@dataclass(frozen=True)
class ScreeningCalibration:
    """How a measurement becomes a score, and the score's threshold (JSON: ``to_json``)."""

    signal: str  # one of SIGNALS
    squeezers: tuple[str, ...]
    centers: tuple[float, ...]  # per squeezer: median on the clean reference
    scales: tuple[float, ...]  # per squeezer: 99th percentile minus median there
    threshold: float
    fpr: float  # the false positive rate the threshold was chosen for
    reference_count: int
    model_version: str = ""
    format: int = FORMAT

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(SIGNALS)}; got {self.signal!r}")
        if not self.squeezers or not len(self.squeezers) == len(self.centers) == len(self.scales):
            raise ValueError("a calibration needs a center and a scale for each of its squeezers")

    def score(self, raw: np.ndarray) -> np.ndarray:
        """(S, B) raw values of ``signal`` for ``squeezers`` (in that order) -> (B,) scores."""
        raw = np.asarray(raw, dtype=np.float64)
        centers = np.asarray(self.centers)[:, None]
        scales = np.asarray(self.scales)[:, None]
        return ((raw - centers) / scales).max(axis=0)

    def flag(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def to_json(self) -> dict:
        return asdict(self) | {"squeezers": list(self.squeezers), "centers": list(self.centers),
                               "scales": list(self.scales)}

    @classmethod
    def from_json(cls, data: dict) -> "ScreeningCalibration":
        if data.get("format", FORMAT) != FORMAT:
            raise ValueError(f"screening calibration format {data.get('format')!r}; this signwatch reads {FORMAT}")
        return cls(signal=str(data["signal"]), squeezers=tuple(data["squeezers"]),
                   centers=tuple(float(v) for v in data["centers"]), scales=tuple(float(v) for v in data["scales"]),
                   threshold=float(data["threshold"]), fpr=float(data["fpr"]),
                   reference_count=int(data["reference_count"]), model_version=str(data.get("model_version", "")))


def calibrate(raw: np.ndarray, signal: str, squeezers: Sequence[str], fpr: float = DEFAULT_FPR,
              model_version: str = "") -> ScreeningCalibration:
    """The calibration for clean reference images, from their (S, B) raw values of ``signal``."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[0] != len(squeezers) or raw.shape[1] < 2:
        raise ValueError(f"need (squeezers, images) raw values with at least 2 images; got {raw.shape}")
    centers = np.median(raw, axis=1)
    # A squeezer that never moves the clean images (a constant signal) still gets a usable unit.
    scales = np.maximum(np.quantile(raw, SCALE_QUANTILE, axis=1) - centers, 1e-6)
    partial = ScreeningCalibration(signal, tuple(squeezers), tuple(map(float, centers)), tuple(map(float, scales)),
                                   threshold=0.0, fpr=fpr, reference_count=raw.shape[1], model_version=model_version)
    threshold = threshold_for_fpr(partial.score(raw), fpr)
    return ScreeningCalibration(**{**partial.__dict__, "threshold": threshold})


__all__ = ["DEFAULT_FPR", "SIGNALS", "ScreeningCalibration", "calibrate", "threshold_for_fpr"]
