"""The state-store port: small counters and lists that several replicas share.

The monitor needs three things that must hold across restarts and replicas:
- apply a set of counter increments and list pushes *exactly once* per event
  (``apply_once`` keyed by a token such as the event id, atomic in every adapter);
- read counter hashes back (``get_counts``) and capped lists (``get_list``);
- take a flag only if nobody holds it (``set_once``);
- small values (``set_value`` / ``get_value``): an incident's record, claimed atomically by one
  replica (``if_absent=True``), and the snapshot the dashboard reads;
- a claim that records what it must publish in the same atomic step (``claim``: the key, an
  entry in an *outbox* hash and the entry's lease), so that a claimer that dies before publishing
  leaves the message for another to publish (``outbox``, ``outbox_done``), never a bare claim.
Every key expires (``ttl_s``) so that the store never grows without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Increment:
    key: str
    field: str
    amount: int
    ttl_s: int


@dataclass(frozen=True)
class Push:
    key: str
    value: str
    max_len: int
    ttl_s: int


@dataclass(frozen=True)
class OutboxEntry:
    """A message to publish, recorded with a claim: field ``entry_id`` of the hash ``outbox``
    holds ``value`` until ``outbox_done``; the claimer holds ``lease`` for ``lease_s``, so
    another replica publishes the entry only once that ran out (``set_once(lease, ...)``)."""

    outbox: str
    entry_id: str
    value: str
    ttl_s: int
    lease: str
    lease_s: int


class StateStore(Protocol):
    def apply_once(
        self, token: str, token_ttl_s: int, increments: list[Increment], pushes: list[Push]
    ) -> bool:
        """Apply all changes atomically unless ``token`` was applied before; True if applied."""

    def apply_many(self, batch: list[tuple[str, int, list[Increment], list[Push]]]) -> list[bool]:
        """``apply_once`` for each item, in order, in one round trip where the adapter can."""

    def get_counts(self, keys: list[str]) -> list[dict[str, int]]: ...

    def get_list(self, key: str) -> list[str]:
        """Newest first."""

    def set_once(self, key: str, ttl_s: int) -> bool:
        """Set ``key`` if absent (True) or leave it (False)."""

    def set_value(self, key: str, value: str, ttl_s: int, if_absent: bool = False) -> bool:
        """Store ``value``; with ``if_absent`` only when the key is free (atomic). True if stored."""

    def get_value(self, key: str) -> str | None: ...

    def claim(self, key: str, value: str, ttl_s: int, entry: OutboxEntry, delete: tuple[str, ...] = ()) -> bool:
        """Set ``key`` only when it is free and, in the same atomic step, put ``entry`` in its
        outbox, take its lease and delete the keys ``delete``. True if claimed."""

    def outbox(self, key: str) -> dict[str, str]:
        """The entries of the outbox hash ``key`` not yet done, by entry id."""

    def outbox_done(self, key: str, entry_id: str) -> None:
        """The entry was published: remove it from the outbox."""

    def delete(self, *keys: str) -> None: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...
