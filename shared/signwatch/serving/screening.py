"""Screening inside the inference batch (``Settings.screening_in_inference``, off by default).

With it on, the forward worker runs its batch and the batch's squeezed copies through the served
forward at once (``signwatch.screening.signals.measure``: (1 + S) x B images) and answers from the
probabilities of the unsqueezed copies, so what screening adds is the S squeezed copies and the
arithmetic of the score, not a second forward of the images. Each answer carries the score
``Screener.screen`` would give the image, and its event the screening (``InferenceScreening``,
event v4), so the explainer need not screen it again.

The calibration is the one the explainer would use (``signwatch.screening.stored.load``: the
store's ``baselines/{endpoint}/screening.json``, else the shipped one when it was made for the
served model), read once at start. Without one the service refuses to start
(``ScreeningUnavailable``): the operator asked for a score on every answer, and an answer that
silently lacks it, or one scored against another model's margins, is worse than a clear refusal.
A new calibration takes effect at the next start (the explainer re-reads it; here the response's
meaning should not change under a running client).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from signwatch.classifier import Classification
from signwatch.events import InferenceScreening
from signwatch.screening import Screener
from signwatch.screening.detector import raw_signal
from signwatch.screening.stored import StoredCalibration, load

SCORE_DIGITS = 6  # as the explainer's ScreeningEvent rounds it


class ScreeningUnavailable(RuntimeError):
    """In-inference screening was asked for but no calibration fits the served model."""


@dataclass(frozen=True)
class ScreenedClassification(Classification):
    """A ``Classification`` with the image's screening."""

    screening: InferenceScreening


@dataclass
class InlineScreening:
    """Scores each batch of the forward worker against one calibration."""

    screener: Screener
    stored: StoredCalibration
    registry: CollectorRegistry | None = None

    def __post_init__(self) -> None:
        cal = self.stored.calibration
        if (cal.signal, tuple(cal.squeezers)) != (self.screener.signal, tuple(self.screener.squeezers)):
            raise ValueError(f"the screener measures {self.screener.signal} over {self.screener.squeezers}; the "
                             f"calibration is for {cal.signal} over {cal.squeezers}")
        self.screened = Counter(
            "signwatch_inference_screened_total", "Images screened in the inference batch "
            "(SIGNWATCH_SCREENING_IN_INFERENCE), by outcome: clean or flagged", ["outcome"],
            registry=self.registry) if self.registry is not None else None

    @classmethod
    def for_model(cls, classifier, store, prefix: str, registry: CollectorRegistry | None = None) -> InlineScreening:
        """The screening of ``classifier``'s model (its served forward) with the calibration under
        ``prefix`` or the shipped one; ``ScreeningUnavailable`` saying why when none fits."""
        spec = classifier.spec
        stored, status = load(store, prefix, spec.version)
        if stored is None:
            raise ScreeningUnavailable(
                f"SIGNWATCH_SCREENING_IN_INFERENCE is on, but no screening calibration fits model {spec.version}: "
                f"{status}. Store one (signwatch baseline suggest ... --upload), or turn the setting off "
                "(the explainer then screens events off the serving path)")
        cal = stored.calibration
        screener = Screener(classifier.model, spec, signal=cal.signal, squeezers=tuple(cal.squeezers),
                            forward=classifier.forward, device=classifier.device)
        return cls(screener, stored, registry)

    @property
    def calibration(self):
        return self.stored.calibration

    def classify(self, classifier, requests: list[tuple[np.ndarray, str]]) -> list[ScreenedClassification]:
        """``classifier.classify`` with each image screened: one forward of the batch and its squeezed
        copies, the answer taken from the unsqueezed copies' probabilities. While the debugger
        records (its eager forward, hooks on), the answer is its recorded forward and screening
        runs its own forward beside it: its copies must not become recorded steps."""
        images = [image for image, _ in requests]
        signals = self.screener.measure(images)
        if classifier.debugger is not None and classifier.debugger.enabled:
            answers = classifier.classify(requests)
        else:
            probs = signals.probabilities
            rows = probs.cpu().numpy()
            answers = [Classification(p, r) for p, r in zip(classifier.top_predictions(signals.logits), rows)]
        return [ScreenedClassification(a.predictions, a.probabilities, s)
                for a, s in zip(answers, self.score(signals))]

    def score(self, signals) -> list[InferenceScreening]:
        """Each image's screening, as ``Screener.screen`` scores and flags it."""
        cal = self.calibration
        raw = raw_signal(signals, cal.signal).cpu().numpy()
        scores = cal.score(raw)
        flagged = cal.flag(scores)
        normalised = (raw - np.asarray(cal.centers)[:, None]) / np.asarray(cal.scales)[:, None]
        which = normalised.argmax(axis=0)
        if self.screened is not None:
            n_flagged = int(flagged.sum())
            self.screened.labels("flagged").inc(n_flagged)
            self.screened.labels("clean").inc(len(scores) - n_flagged)
        where = self.stored.where[-128:]
        return [InferenceScreening(score=round(float(s), SCORE_DIGITS), flagged=bool(f), threshold=cal.threshold,
                                   fpr=cal.fpr, squeezer=cal.squeezers[int(w)], signal=cal.signal,
                                   calibration_id=where)
                for s, f, w in zip(scores, flagged, which)]


__all__ = ["InlineScreening", "ScreenedClassification", "ScreeningUnavailable"]
