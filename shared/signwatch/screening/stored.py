"""The screening calibration stored with the baseline: ``screening.json`` beside
``statistics.json`` and ``constraints.json`` (the store's ``baselines/{endpoint}/``, or a folder),
and the one shipped with the shipped model (``models/signwatch-resnet18.baseline/screening.json``).

``signwatch baseline suggest`` writes it when its reference data are images (rendered, GTSRB, a
labelled folder); the explainer's screening loop reads it where the monitor reads the baseline.
A calibration belongs to one model: its scores are that model's margins, so one made for another
model version is refused (and said why), never used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from signwatch.screening.calibration import ScreeningCalibration

SCREENING = "screening.json"
# signwatch.monitoring.baseline.SHIPPED, not imported: that module would come with numpy-heavy
# monitoring code into every screening import
SHIPPED = Path(__file__).resolve().parents[3] / "models" / "signwatch-resnet18.baseline" / SCREENING
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredCalibration:
    calibration: ScreeningCalibration
    source: str  # "store" or "shipped"
    where: str   # its store key or file


def store_key(prefix: str) -> str:
    return f"{prefix}/{SCREENING}"


def to_bytes(calibration: ScreeningCalibration) -> bytes:
    return (json.dumps(calibration.to_json(), indent=1) + "\n").encode()


def write_folder(folder: Path, calibration: ScreeningCalibration) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SCREENING
    path.write_bytes(to_bytes(calibration))
    return path


def write_store(store, prefix: str, calibration: ScreeningCalibration) -> str:
    return store.put(store_key(prefix), to_bytes(calibration), "application/json")


def fits(calibration: ScreeningCalibration, model_version: str) -> bool:
    """Made for this model (a calibration that names no model is taken as the served one's)."""
    return not calibration.model_version or calibration.model_version == model_version


def load(store, prefix: str, model_version: str) -> tuple[StoredCalibration | None, str]:
    """(the calibration for ``model_version``, a status line): the store's under ``prefix``, else
    the shipped one when it was made for this model; None (and why) when neither fits."""
    key = store_key(prefix)
    if store.exists(key):
        try:
            calibration = ScreeningCalibration.from_json(json.loads(store.get(key)))
        except (ValueError, KeyError, TypeError) as exc:
            return None, f"the screening calibration at {key} is not usable: {exc}"
        if fits(calibration, model_version):
            return StoredCalibration(calibration, "store", key), f"calibration from {key}"
        stored_for = calibration.model_version
        why = f"the screening calibration at {key} was made for model {stored_for}, not {model_version}"
    else:
        why = f"no screening calibration at {key}"
    if SHIPPED.exists():
        calibration = ScreeningCalibration.from_json(json.loads(SHIPPED.read_text()))
        if fits(calibration, model_version) and calibration.model_version:
            return StoredCalibration(calibration, "shipped", str(SHIPPED)), f"{why}; the shipped one fits"
    return None, f"{why} (signwatch baseline suggest ... --upload writes one): screening nothing"


__all__ = ["SCREENING", "SHIPPED", "StoredCalibration", "fits", "load", "store_key", "to_bytes", "write_folder",
           "write_store"]
