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
- a join of two streams that arrive in any order (``join``: ground-truth labels and the
  predictions they name), each pair counted once, atomically with the entries it consumes.
Every key expires (``ttl_s``) so that the store never grows without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


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


@dataclass(frozen=True)
class JoinKeys:
    """Where one endpoint's label join lives. ``days``: the entries by day, the newest (where new
    entries go) first, each hash expiring ``day_ttl_s`` after its last write; ``day_stats`` their
    counters, in the same order; ``pairs``: the counts of the pairs matched now (one time bucket);
    ``recent``: a capped list of the newest pairs, newest first.

    ``shard_chars``: a day is split into hashes by the first characters of the entry's field
    (``{day}:{field[:n]}``, the field kept without them), so that each hash stays small enough
    for Redis's compact encoding (listpack, up to 128 entries: ~30 bytes an entry against ~80
    in a large hash; measured, benchmarks/quality.py); 0: one hash a day."""

    days: tuple[str, ...]
    day_stats: tuple[str, ...]
    day_ttl_s: int
    pairs: str
    pairs_ttl_s: int
    recent: str
    recent_max: int
    shard_chars: int = 0


@dataclass(frozen=True)
class JoinItem:
    """One side of a pair. ``field``: the id's digest. ``value``: a prediction's ``"class,bin"``
    or a label's ``"class"``. ``alias``: a prediction's second id (the client's inference id),
    by which a label may name it too. ``note``: kept with the pair in ``recent`` when this item
completes it (a prediction's event id; a label's id as the client gave it)."""

    side: Literal["prediction", "label"]
    field: str
    value: str
    alias: str | None = None
    note: str = ""


# What ``join`` did with an item: a prediction now waits for its label ("pending") or a label for
# its prediction ("waiting"); the pair was counted ("matched"); a label for a prediction already
# labelled or a label given twice ("duplicate"); a prediction recorded before ("seen": a replay).
JOIN_OUTCOMES = ("pending", "waiting", "matched", "duplicate", "seen")


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

    def join(self, keys: JoinKeys, items: list[JoinItem]) -> list[str]:
        """Each item in order (in one round trip where the adapter can), each atomically: look its id (then, for a label naming an alias,
        the prediction's own id) up in every day; a prediction meeting its waiting label, or a
        label meeting its pending prediction, is a pair: its entry becomes a done mark (a later
        label for it is a duplicate), ``pairs`` gets ``"{true},{predicted}"`` and ``"n{bin}"``
        (and ``"c{bin}"`` when right) incremented, ``recent`` the pair ``"true,pred,bin,note"``;
        else the item is written to the newest day. Counters in ``day_stats``:
        ``predictions_pending`` and ``labels_waiting`` of the day their entries are in, and
        ``matched`` and ``duplicates`` of the newest day. A prediction whose two ids both have a
        label waiting pairs with the one by its event id; the other counts as a duplicate.
        Returns one of ``JOIN_OUTCOMES`` per item."""

    def delete(self, *keys: str) -> None: ...

    def failovers(self) -> int:
        """How often the store has moved to another server (a replica promoted) since it was
        opened. Replication is asynchronous: the new server may lack the old one's last writes,
        and what depends on them is rebuilt (``monitoring.windows.Windows.lost``). 0 for a store
        that cannot fail over."""

    def ping(self) -> bool: ...

    def close(self) -> None: ...
