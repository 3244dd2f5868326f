"""Screening: an adversarial score for each image, from the served model as it is.

- ``Screener``: scores a batch of images as served (one extra forward per squeezer), flags it
  against a ``ScreeningCalibration`` and returns the squeezed copy for the triptych
  (``signwatch.screening.detector``).
- ``calibrate``, ``threshold_for_fpr``, ``ScreeningCalibration``: the threshold chosen on clean
  reference images for a stated false positive rate, JSON-able (``signwatch.screening.calibration``).
- ``squeezer``: the squeezers by name (``signwatch.screening.squeezers``).
- ``adaptive_pgd``: the attacker who knows the detector (``signwatch.screening.adaptive``).

Measured figures and limits: docs/attacks.md, "Screening".
"""

from signwatch.screening.calibration import DEFAULT_FPR, ScreeningCalibration, calibrate, threshold_for_fpr
from signwatch.screening.detector import (
    DEFAULT_SIGNAL,
    DEFAULT_SQUEEZERS,
    XU_SQUEEZERS,
    Screener,
    ScreeningResult,
)
from signwatch.screening.squeezers import squeezer

__all__ = ["DEFAULT_FPR", "DEFAULT_SIGNAL", "DEFAULT_SQUEEZERS", "XU_SQUEEZERS", "ScreeningCalibration",
           "Screener", "ScreeningResult", "calibrate", "squeezer", "threshold_for_fpr"]
