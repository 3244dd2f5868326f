"""The flagged requests of an endpoint: a bounded, newest-first list the dashboard reads.

The explainer's screening loop adds one entry per flagged inference event (``FlaggedEntry``,
JSON) to a capped list in the state store (``flagged_list_key``), exactly once per event id
(``StateStore.apply_once``: a replayed batch adds nothing), newest first; the list holds
``screening_flagged_max`` entries at most and expires ``LIST_TTL_S`` after the last push, so
the page never lists the object store and nothing here grows without bound. An entry names the
objects of its triptych (``triptych_base``), or none when it was listed without them (over the
explain budget, or its rendering failed): torch-free, so the dashboard reads it without the model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime

from signwatch.ports.state import Push, StateStore
from signwatch.ports.store import ObjectStore

log = logging.getLogger(__name__)
LIST_TTL_S = 30 * 86_400  # an endpoint with nothing flagged for a month starts a new list
TOKEN_TTL_S = 86_400  # a replay comes within minutes; a day of tokens is a few MB at most
IMAGES = ("input", "squeezed", "difference", "input_fullgrad", "squeezed_fullgrad")  # the page's order


def flagged_list_key(endpoint: str) -> str:
    return f"signwatch:screening:flagged:{endpoint}"


def _token(endpoint: str, event_id: str) -> str:
    return f"signwatch:screening:listed:{endpoint}:{event_id}"


def triptych_base(prefix: str, endpoint: str, when: datetime, event_id: str) -> str:
    """Where one flagged request's objects live: ``{prefix}/{endpoint}/yyyy/mm/dd/{event_id}``
    (by the inference event's day, so a replay writes the same keys; a lifecycle rule can expire
    the prefix by day)."""
    return f"{prefix.rstrip('/')}/{endpoint}/{when:%Y/%m/%d}/{event_id}"


@dataclass(frozen=True)
class FlaggedEntry:
    """One flagged request as the dashboard lists it. ``images``: role (``IMAGES``) -> store key,
    empty when listed without its triptych (``missing`` says why: "budget" or "error")."""

    event_id: str
    endpoint: str
    time: str  # the inference event's time, ISO 8601: the list is ordered by it
    score: float
    threshold: float
    fpr: float
    signal: str
    squeezer: str
    predicted_class: int
    label: str
    probability: float
    model_version: str
    screened_at: str = ""
    squeezed_class: int | None = None  # what the model reads on the squeezed copy
    squeezed_label: str | None = None
    difference_scale: float | None = None  # the difference image is |squeezed - input| times this
    difference_max: int | None = None  # the largest |squeezed - input| of a channel, in 0..255
    images: dict[str, str] = field(default_factory=dict)
    record: str | None = None  # the entry's JSON beside the images
    missing: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "FlaggedEntry":
        data = json.loads(text)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def push_entries(state: StateStore, store: ObjectStore | None, entries: list[FlaggedEntry],
                 max_len: int) -> list[FlaggedEntry]:
    """Add each entry once (the oldest first, so the newest ends on top); returns those that were new.

    Entries pushed off the end of the list take their objects with them (deleted from ``store``),
    so the triptychs kept are those the list names. Replicas pushing at once may each see only
    part of what fell off: objects left that way are what a lifecycle rule on the prefix is for.
    """
    if not entries:
        return []
    key = flagged_list_key(entries[0].endpoint)
    ordered = sorted(entries, key=lambda e: e.time)
    before = state.get_list(key) if store is not None else []
    applied = state.apply_many([(_token(e.endpoint, e.event_id), TOKEN_TTL_S, [],
                                 [Push(key, e.to_json(), max_len, LIST_TTL_S)]) for e in ordered])
    if store is not None and any(applied):
        kept = set(state.get_list(key))
        for gone in (v for v in before if v not in kept):
            _delete_objects(store, gone)
    return [e for e, new in zip(ordered, applied) if new]


def _delete_objects(store: ObjectStore, value: str) -> None:
    try:
        entry = FlaggedEntry.from_json(value)
    except (ValueError, TypeError):
        return
    for k in [*entry.images.values(), *([entry.record] if entry.record else [])]:
        try:
            store.delete(k)
        except Exception as exc:  # noqa: BLE001 - a leftover object is the lifecycle rule's, not a failed batch
            log.debug("flagged object %s not deleted: %s", k, exc)


def read_entries(state: StateStore, endpoint: str, limit: int | None = None) -> list[FlaggedEntry]:
    """The endpoint's flagged requests, newest (inference time) first, each event once."""
    out, seen = [], set()
    for value in state.get_list(flagged_list_key(endpoint)):
        try:
            entry = FlaggedEntry.from_json(value)
        except (ValueError, TypeError) as exc:  # a foreign or older entry: skipped, not fatal
            log.debug("flagged entry unreadable: %s", exc)
            continue
        if entry.event_id not in seen and entry.endpoint == endpoint:
            seen.add(entry.event_id)
            out.append(entry)
    out.sort(key=lambda e: e.time, reverse=True)
    return out[:limit] if limit is not None else out


__all__ = ["IMAGES", "FlaggedEntry", "flagged_list_key", "push_entries", "read_entries", "triptych_base"]
