"""The violations outbox: what an incident's claim promised to publish, until it is published.

A replica that claims an incident (or its resolution) writes the violation into the endpoint's
outbox hash in the same atomic step as the claim (``StateStore.claim``), holding the entry's
lease for ``grace_s``. It publishes the violation and marks the entry done. A replica that dies
in between, or whose publish failed, leaves the entry behind: every replica sweeps the outbox
at start and every second, and re-publishes an entry whose lease it can take (its claimer's ran
out, and no other sweeper holds it), then marks it done. The violation id is the same on
re-publish, so consumers take a repeat (a sweeper that died after the acknowledgement and before
marking the entry done) as the same violation. ``grace_s`` must outlast one publish attempt
(``publish_and_wait``'s 10 s) so that a live claimer is not raced.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import ValidationError

from signwatch.events import ViolationEvent
from signwatch.ports.state import OutboxEntry, StateStore

log = logging.getLogger(__name__)
OUTBOX_TTL_S = 7 * 86_400  # as long as the incident records: an entry outlives any outage


def entry_id(violation: ViolationEvent) -> str:
    """An incident's open and resolved events share the violation id: each has its own entry."""
    return f"{violation.violation_id}:{violation.state}"


@dataclass
class Outbox:
    state: StateStore
    endpoint: str
    grace_s: int = 15

    @property
    def key(self) -> str:
        return f"signwatch:outbox:{self.endpoint}"

    def lease_key(self, entry: str) -> str:
        return f"{self.key}:lease:{entry}"

    def entry(self, violation: ViolationEvent) -> OutboxEntry:
        """What ``StateStore.claim`` writes beside the claim of ``violation``'s incident."""
        eid = entry_id(violation)
        return OutboxEntry(self.key, eid, violation.to_bytes().decode(), OUTBOX_TTL_S, self.lease_key(eid),
                           self.grace_s)

    def pending(self) -> list[ViolationEvent]:
        """The violations claimed and not yet marked published, oldest first."""
        out = []
        for eid, raw in self.state.outbox(self.key).items():
            try:
                out.append(ViolationEvent.model_validate_json(raw))
            except ValidationError as exc:  # never publishable: drop it rather than retry it forever
                log.error("outbox entry %s is not a violation (%s): dropped", eid, exc)
                self.state.outbox_done(self.key, eid)
        return sorted(out, key=lambda v: v.time)

    def take(self, violation: ViolationEvent) -> bool:
        """The lease to re-publish ``violation``: only once its claimer's (or another sweeper's) ran out."""
        return self.state.set_once(self.lease_key(entry_id(violation)), self.grace_s)

    def done(self, violation: ViolationEvent) -> None:
        """Published (acknowledged by the bus), or never publishable: the entry goes."""
        eid = entry_id(violation)
        self.state.outbox_done(self.key, eid)
        self.state.delete(self.lease_key(eid))
