"""Correlated frames: the frames of one object seen within seconds count as one observation.

A car passing a sign sends many frames of that one sign within seconds; every check assumes
independent predictions, so 200 frames of "Keep right" in 10 s on a quiet endpoint raised five
violations (issue 17). Here a frame is *folded* (not counted in the class, confidence and margin
counts) when it continues a *track*: a frame seen before, of the same object, with the same top-1
class, at most ``window_s`` away in event time, whose track began at most ``max_age_s`` ago (the
frame joins the newest such frame's track: a track follows a sign that grows as the car nears,
frame to frame). Same object means:

- the same named track: the client's ``track=<name>`` in the request's custom attributes (SageMaker's
  ``CustomAttributes`` header, V2's ``parameters.track``); two different names are two objects,
  however alike their images; or else
- near-duplicate images: the Hamming distance of their 64-bit perceptual hashes (the event's
  ``image_hash``, computed where the image was decoded) is at most ``max_distance``.

The first frame of a track is the one counted. Why not the track's majority class, once it ends: the
monitor streams, and counting at the end would delay every observation by the window and need the
counts taken back; and keeping the top-1 class in the track's identity means folding never moves a
count from one class to another: a burst whose frames flip class counts once per class it was
predicted as. So attacked images still count: of different signs, their hashes differ; of one sign,
the frames predicted as the attacker's class form their own track. ``max_age_s`` bounds how long one
object can stay one observation: a camera that keeps looking at one sign counts it again then.

The tracks live in the state store, shared by the replicas: one capped list per endpoint
(``capacity`` entries, newest first, expiring ``window_s`` after the last push), an entry per frame
(``hash|track start|time|class|name``). A batch reads it once and decides each frame against it
and against the batch's earlier frames; the frames' entries are pushed after the batch is counted
(so a crash between the two never leaves a frame folded and uncounted). The list is in counting
order, not event time (a consumer catching up on several partitions counts one partition's recent
frames before another's older ones): every entry is read, none is taken as the end. Two replicas that count
frames of one object at the same instant may each start a track: an object counts at most once per
replica, never once per frame. At more than ``capacity`` frames per ``window_s`` the oldest entries
drop out first: a burst may then count more than once, never a distinct object less.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import numpy as np

from signwatch.events import TRACK_NAME_PATTERN, InferenceEvent
from signwatch.ports.state import Push, StateStore

# A track's name in a request's custom attributes: ``track=cam7-sign12`` (among other ``key=value``
# pairs separated by ``;`` or ``,``). A name that is not a plain name is ignored (the frame is then
# matched by its image hash), so nothing a client sends can break an entry of the list.
TRACK_ATTRIBUTE = "track"
TRACK_NAME = re.compile(TRACK_NAME_PATTERN)
NO_HASH = 0  # the entry's hash when the event carried none (an older producer): matched by name only


def track_name(custom_attributes: str | None) -> str | None:
    """The client's name for the object a frame shows (``track=<name>``), or None."""
    if not custom_attributes or TRACK_ATTRIBUTE not in custom_attributes.lower():
        return None
    for part in re.split(r"[;,]", custom_attributes):
        key, sep, value = part.partition("=")
        if sep and key.strip().lower() == TRACK_ATTRIBUTE:
            value = value.strip()
            return value if TRACK_NAME.match(value) else None
    return None


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8)).reshape(-1, 64).sum(axis=1)


@dataclass
class Decision:
    folded: bool
    by: str | None  # "name" or "hash" when folded


@dataclass
class Tracks:
    state: StateStore
    endpoint: str
    window_s: float = 5.0       # 0: off, every frame counts
    max_distance: int = 10
    max_age_s: float = 60.0
    capacity: int = 1024

    def __post_init__(self) -> None:
        # The entries a rebuild pushed (``decide(..., read_state=False)``): a recount decides
        # against these, not one read of the list per event.
        self._local: deque[str] = deque(maxlen=self.capacity)
        self._pending: list[str] = []  # the entries of the frames ``decide`` saw last

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    @property
    def key(self) -> str:
        return f"signwatch:tracks:{self.endpoint}"

    @property
    def ttl_s(self) -> int:
        return max(1, int(np.ceil(self.window_s)) + 1)

    def decide(self, frames: list[tuple[InferenceEvent, int]], read_state: bool = True) -> list[Decision]:
        """For each (event, top-1 class), in order: is it folded into a track? Nothing is written:
        ``remember`` pushes the frames' entries once they are counted. An event is anything with
        ``time``, ``custom_attributes`` and ``image_hash``: the scheduled job passes captured
        records (``reference.CapturedFrame``)."""
        self._pending = []
        if not self.enabled or not any(e.image_hash or track_name(e.custom_attributes) for e, _ in frames):
            return [Decision(False, None) for _ in frames]  # nothing to match by: no read
        known = self.state.get_list(self.key) if read_state else list(self._local)[::-1]  # newest first
        n = min(len(known), self.capacity) + len(frames)
        hashes = np.zeros(n, dtype=np.uint64)
        start, seen, cls = np.zeros(n), np.full(n, -np.inf), np.full(n, -1, dtype=np.int64)
        name_ids = np.zeros(n, dtype=np.int64)  # 0: no name; else the name's number in ``ids``
        ids: dict[str, int] = {"": 0}
        # Entries older than the batch's frames by more than the window match nothing. They are
        # skipped, not a stop: the list is in counting order, and a consumer that catches up on
        # several partitions counts one partition's recent frames before another's older ones.
        oldest = min(e.time.timestamp() for e, _ in frames) - self.window_s
        m = 0
        for entry in known[: self.capacity]:
            try:
                h, s, t, c, name = entry.split("|", 4)
                hashes[m], start[m], seen[m], cls[m] = int(h, 16), float(s), float(t), int(c)
            except ValueError:
                continue  # not ours, or an older format: skipped
            if seen[m] < oldest:
                continue
            name_ids[m] = ids.setdefault(name, len(ids))
            m += 1
        for a in (hashes, start, seen, cls, name_ids):  # oldest first, as the batch's frames are appended
            a[:m] = a[:m][::-1].copy()
        out = []
        for event, class_id in frames:
            name = track_name(event.custom_attributes) or ""
            h = int(event.image_hash, 16) if event.image_hash else NO_HASH
            if h == NO_HASH and not name:
                out.append(Decision(False, None))  # nothing to match it by (an older producer)
                continue
            t = event.time.timestamp()
            nid = ids.setdefault(name, len(ids))
            near = (cls[:m] == class_id) & (np.abs(t - seen[:m]) <= self.window_s)
            match, by = -1, None
            if nid and near.any():
                same = np.flatnonzero(near & (name_ids[:m] == nid))
                if same.size:
                    match, by = int(same[-1]), "name"
            if match < 0 and h != NO_HASH:
                # Two different names are two objects, however alike their images.
                near &= (hashes[:m] != NO_HASH) & ((name_ids[:m] == 0) | (nid == 0) | (name_ids[:m] == nid))
                idx = np.flatnonzero(near)
                if idx.size:
                    close = idx[_popcount(hashes[idx] ^ np.uint64(h)) <= self.max_distance]
                    if close.size:
                        match, by = int(close[-1]), "hash"  # the newest: oldest first, as appended
            folded = bool(match >= 0 and t - start[match] <= self.max_age_s)
            hashes[m], seen[m], cls[m], name_ids[m] = h, t, class_id, nid
            start[m] = start[match] if folded else t
            self._pending.append(f"{h:016x}|{start[m]:.3f}|{t:.3f}|{class_id}|{name}")
            m += 1
            out.append(Decision(folded, by if folded else None))
        return out

    def remember(self, write_state: bool = True) -> None:
        """Push the entries of the frames ``decide`` saw last (after they were counted)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        if not write_state:
            self._local.extend(pending)
            return
        pushes = [Push(self.key, entry, self.capacity, self.ttl_s) for entry in pending]
        # One atomic step under a throwaway token: the pushes of a batch, capped and expiring.
        self.state.apply_once(f"{self.key}:push:{pending[0]}:{len(pending)}", 1, [], pushes)
