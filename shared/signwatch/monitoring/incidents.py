"""Incidents: one violation per incident, however many checks fail and however many replicas run.

Checks of one incident group (``registry.Check.incident``: the model's behaviour, or the data's
readability) that fail together are one incident. The first failing evaluation *claims* the
incident by writing its record only if it is absent, atomic in the state store: exactly one
replica wins and publishes the violation, which names every check failing then; checks that
fail later join the record (and the resolution names them all), they raise nothing new.

Hysteresis: the incident stays open while any check of its group fails *or is not yet clear*
(its statistic well below the line it crossed, ``registry``), and resolves only after all were
clear for ``hold``: at least ``resolve_after_s`` and the time the traffic takes to bring
``min_predictions`` new predictions (2,000 s for 100 at 0.05 requests a second), so a shift that
hovers around a threshold stays one incident. The resolution is claimed the same way and deletes
the record in the same step; a later failure opens a new incident. Each claim writes its
violation into the outbox in the same atomic step (``signwatch.monitoring.outbox``): a claimer
that dies before the bus acknowledged the violation leaves it there for any replica to publish.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from signwatch.events import ViolationEvent
from signwatch.monitoring.outbox import Outbox
from signwatch.ports.state import Push, StateStore

RECORD_TTL_S = 7 * 86_400
MAX_HOLD_S = 86_400  # a trickle of traffic never keeps an incident open for more than a day of calm


@dataclass
class Incidents:
    state: StateStore
    endpoint: str
    resolve_after_s: float = 120.0
    outbox_grace_s: int = 15
    min_predictions: int = 100

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.state, self.endpoint, self.outbox_grace_s)

    def key(self, group: str) -> str:
        return f"signwatch:incident:{self.endpoint}:{group}"

    def get(self, group: str) -> dict | None:
        raw = self.state.get_value(self.key(group))
        return json.loads(raw) if raw else None

    def claim(self, group: str, checks: list[str], violation: ViolationEvent, now: float, iso_now: str) -> bool:
        """Open the incident with ``violation`` (into the outbox with the claim); True if this call did."""
        # description and class_id: what an alert on the open incident says (every replica's
        # ``signwatch_violation_open`` gauge reads the records, not the replica that published)
        record = {"group": group, "checks": list(checks), "violation_id": violation.violation_id,
                  "since": iso_now, "since_ts": now, "last_unclear": now,
                  "description": violation.check.description, "class_id": violation.class_id}
        return self.state.claim(self.key(group), json.dumps(record), RECORD_TTL_S, self.outbox.entry(violation))

    def hold(self, rate_per_s: float) -> float:
        """How long every check must stay clear: ``resolve_after_s``, or the time the traffic takes
        to bring ``min_predictions`` predictions when that is longer."""
        if rate_per_s <= 0:
            return MAX_HOLD_S
        return min(MAX_HOLD_S, max(self.resolve_after_s, self.min_predictions / rate_per_s))

    def refresh(self, record: dict, now: float, joining: list[str]) -> None:
        """The evidence persists (``now``); ``joining``: checks failing that the record lacks."""
        new = [c for c in joining if c not in record["checks"]]
        if new or now - record["last_unclear"] >= 1.0:  # at most one write a second, but every join
            record = record | {"last_unclear": now, "checks": record["checks"] + new}
            self.state.set_value(self.key(record["group"]), json.dumps(record), RECORD_TTL_S)

    def due_to_resolve(self, record: dict, now: float, rate_per_s: float) -> bool:
        return now - record["last_unclear"] >= self.hold(rate_per_s)

    def resolve(self, record: dict, resolved: ViolationEvent) -> bool:
        """End the incident with ``resolved`` (into the outbox, the record deleted, in one step);
        True if this call did."""
        token = f"{self.key(record['group'])}:resolved:{record['violation_id']}"
        if not self.state.claim(token, "1", RECORD_TTL_S, self.outbox.entry(resolved),
                                delete=(self.key(record["group"]),)):
            return False
        self.state.apply_once(token + ":log", RECORD_TTL_S, [], [
            Push(self.resolved_key, json.dumps(record), 20, RECORD_TTL_S)])
        return True

    @property
    def resolved_key(self) -> str:
        return f"signwatch:resolved:{self.endpoint}"

    def open_records(self, groups) -> list[dict]:
        """The records of the incidents open now, among ``groups``."""
        return [record for group in groups if (record := self.get(group)) is not None]

    def recently_resolved(self) -> list[dict]:
        return [json.loads(r) for r in self.state.get_list(self.resolved_key)]
