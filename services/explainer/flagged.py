"""The screening loop's flagged requests: listed for the dashboard, with their triptych.

After a batch is screened and its scores acknowledged, every flagged event is listed
(``signwatch.flagged``: a capped newest-first list in the state store, once per event id). Up to
``screening_explain_max_per_minute`` of them (a sliding minute, per replica) also get their
triptych - input, squeezed copy, difference, and FullGrad maps of both
(``signwatch.screening.triptych``) - in one FullGrad forward/backward per batch; the rest are
listed without images (``missing: "budget"``), so a flood of attacked traffic costs the loop a
bounded amount of saliency and storage. A rendering that fails (a bug, not the store) is logged
and its entries listed without images; the store or the state store being away raises, and the
loop retries the batch (the list takes each event once).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timezone

import numpy as np
import torch

from signwatch.events import ScreeningEvent
from signwatch.flagged import FlaggedEntry, push_entries
from signwatch.model import ModelSpec
from signwatch.ports.state import StateStore
from signwatch.screening.detector import to_uint8
from signwatch.screening.triptych import TriptychWriter, render_triptychs

log = logging.getLogger(__name__)
MINUTE_S = 60.0


class ExplainBudget:
    """At most ``per_minute`` takes in any 60 s (sliding); 0 takes nothing."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self._taken: deque[float] = deque()

    def take(self) -> bool:
        now = self.clock()
        while self._taken and now - self._taken[0] >= MINUTE_S:
            self._taken.popleft()
        if len(self._taken) >= self.per_minute:
            return False
        self._taken.append(now)
        return True


def _label(class_id: int, names: tuple[str, ...]) -> str:
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)


@dataclass
class FlaggedRecorder:
    model: torch.nn.Module
    spec: ModelSpec
    state: StateStore
    writer: TriptychWriter
    budget: ExplainBudget
    max_listed: int

    def entry(self, event: ScreeningEvent) -> FlaggedEntry:
        return FlaggedEntry(
            event_id=event.event_id, endpoint=event.endpoint,
            time=event.inference_time.astimezone(timezone.utc).isoformat(), score=event.score,
            threshold=event.threshold, fpr=event.fpr, signal=event.signal, squeezer=event.squeezer,
            predicted_class=event.predicted_class, label=_label(event.predicted_class, self.spec.class_names),
            probability=round(event.probability, 6), model_version=event.model_version,
            screened_at=event.time.astimezone(timezone.utc).isoformat())

    def record(self, events: list[ScreeningEvent], pixels: torch.Tensor, squeezed: np.ndarray) -> tuple[int, int]:
        """``events``: the flagged ones; ``pixels`` (B, 3, H, W) in [0, 1] and ``squeezed`` (B, H, W, 3)
        uint8, theirs as screened. Returns how many were newly listed with the triptych and without."""
        if not events:
            return 0, 0
        first = {e.event_id: i for i, e in reversed(list(enumerate(events)))}  # an event twice in a batch: once
        if len(first) < len(events):
            keep = sorted(first.values())
            events, pixels, squeezed = [events[i] for i in keep], pixels[keep], squeezed[keep]
        entries = [self.entry(e) for e in events]
        chosen = [i for i in range(len(events)) if self.budget.take()]
        for i in set(range(len(events))) - set(chosen):
            entries[i] = replace(entries[i], missing="budget")
        if chosen:
            try:
                triptychs = render_triptychs(self.model, self.spec, to_uint8(pixels[chosen]), squeezed[chosen])
            except Exception:  # noqa: BLE001 - the scores are out; a drawing bug must not stop screening
                log.exception("screening: triptychs of %d flagged requests not drawn; listed without", len(chosen))
                triptychs = None
                for i in chosen:
                    entries[i] = replace(entries[i], missing="error")
            if triptychs is not None:
                for i, triptych in zip(chosen, triptychs):
                    entries[i] = self.writer.write(entries[i], triptych, events[i].inference_time.astimezone(
                        timezone.utc), self.spec.class_names)
        new = push_entries(self.state, self.writer.store, entries, self.max_listed)  # a replay's: none
        drawn = sum(e.missing is None for e in new)
        return drawn, len(new) - drawn


__all__ = ["ExplainBudget", "FlaggedRecorder"]
