"""The scheduled job's counting as a map and a reduce, so that it streams and scales out.

- map (``count_lines``, ``count_file``): one capture file, read line by line, becomes a
  :class:`Partial`: for each readable record of the range a handful of numbers (time, top-1
  class, confidence, margin, their bins, the low-confidence flag, and, when frames are folded,
  the image's perceptual hash and the client's track name), plus how many records could not be
  read. No record is kept: a line is parsed (orjson, in place where it can), reduced to its numbers
  and dropped. The hash is the one the serving core took (``eventMetadata.imageHash``); only an
  older capture's image is decoded to hash it. Measured at 500,000 records on the shared 2-core
  VM: the map and reduce in one process 1.11x a bare read-and-parse loop (orjson), the fold 0.5 us
  a frame (docs/monitoring.md).
- reduce (``merge``): partials of consecutive files concatenated in file order; associative, so
  a worker may merge the files of its task before sending one partial back.
- ``finish``: the merged frames put in time order (file order within a second, as a stable sort
  of all records did), folded into tracks (``monitoring.tracks``) and split by the model's
  classes: what ``run_job`` counts and what ``baseline suggest --capture`` learns from.

Why columns rather than bin counts alone: the job's ``statistics.json`` holds exact quantiles,
means and sums of the confidences and margins, and folding decides each frame against every
frame seconds before it in event time, across files. Both need the range's frames in time order;
kept as numbers they cost 43 bytes a record (22 MB for 500,000), while a record as read, inline
PNG included, is 10-20 kB. The job's memory is therefore that, plus one line per worker.
"""

from __future__ import annotations

import json
import re
import threading
from array import array
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson

from signwatch.monitoring.features import LOW_CONFIDENCE, bins_of, top_numbers
from signwatch.monitoring.reference import decoded_hash
from signwatch.monitoring.tracks import Tracks, track_name

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
NO_TIME_US = (datetime.min.replace(tzinfo=timezone.utc) - EPOCH) // timedelta(microseconds=1)  # sorts first
FOLD_BATCH = 256  # frames decided together (against the tracks of every frame before them)
READ_CHUNK = 1 << 20


@dataclass
class Partial:
    """The readable records of the range in some consecutive capture files, in file order, as columns."""

    unreadable: int = 0
    files: int = 0
    time_us: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    confidence: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    margin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    confidence_bin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    margin_bin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    low: np.ndarray = field(default_factory=lambda: np.zeros(0, np.bool_))
    image_hash: np.ndarray | None = None  # uint64, 0 for none; None: hashes not taken (folding off)
    names: dict[int, str] = field(default_factory=dict)  # row -> the client's track name, where it gave one

    def __len__(self) -> int:
        return len(self.time_us)


_SEPARATORS = re.compile("\x85|\u2028|\u2029".encode())  # str.splitlines' line ends beyond ASCII, in UTF-8
_MISSING = object()
_INT64 = (-(1 << 63), 1 << 63)
_HEX = "0123456789abcdef"  # RECORDED_HASH's characters


def loads(text):
    """JSON as ``json.loads`` reads it, by orjson (3-4 times faster); what orjson refuses and json
    takes (NaN, numbers past a double, lone surrogates) is read by json."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


class _FileMap:
    """The map over one file's lines: each record reduced to its numbers as it is parsed, into typed
    arrays (8 bytes a number), never a list of records."""

    def __init__(self, start: datetime | None, end: datetime | None, hashes: bool) -> None:
        self.start, self.end, self.hashes = start, end, hashes
        self.time_us, self.class_id = array("q"), array("q")
        self.confidence, self.margin, self.low = array("d"), array("d"), array("B")
        self.image_hash = array("Q") if hashes else None
        self.names: dict[int, str] = {}  # row -> the client's track name, where it gave one
        self.unreadable = 0
        self.files = 1
        self._stamps: dict[str, int | None] = {}  # inferenceTime -> its microseconds; None: outside the range

    def feed(self, chunks: Iterable[bytes]) -> None:
        """A file given in pieces, split at ``\\n`` as ``text_lines`` splits it."""
        self.feed_parts((chunk, len(chunk)) for chunk in chunks)

    def feed_parts(self, parts: Iterable[tuple[bytes | bytearray, int]]) -> None:
        """A file given in pieces, each the first ``size`` bytes of a buffer (``read_parts``: one
        buffer read into again once the next piece is asked for, so nothing of it is kept but
        copies). A line within a piece with neither ``\\r`` nor a line end beyond ASCII (a capture
        file as signwatch writes it) is parsed in place (a memoryview: not copied); a line cut by
        the piece's end is joined, the others are copied."""
        rest: list[bytes] = []
        for chunk, size in parts:
            end = chunk.find(b"\n", 0, size)
            if end < 0:
                if size:
                    rest.append(bytes(memoryview(chunk)[:size]))
                continue
            self.piece(b"".join(rest) + chunk[:end])
            start = end + 1
            # \r is the one ASCII line end valid in JSON (whitespace); beyond ASCII: U+0085, U+2028,
            # U+2029, found by their first byte in UTF-8 (memchr: a longer needle is searched 90 times
            # slower; a piece with other characters of those first bytes only takes the slower path)
            plain = (chunk.find(b"\r", start, size) < 0 and chunk.find(b"\xe2", start, size) < 0
                     and chunk.find(b"\xc2", start, size) < 0)
            view = memoryview(chunk)
            while (end := chunk.find(b"\n", start, size)) >= 0:
                if plain:
                    self.plain(view[start:end])
                else:
                    self.piece(bytes(view[start:end]))
                start = end + 1
            rest = [bytes(view[start:size])] if start < size else []
        if rest:
            self.piece(b"".join(rest))

    def plain(self, line: memoryview) -> None:
        """A line without ``\\r`` or a line end beyond ASCII: one line of the text whatever it holds
        (if it is not UTF-8, orjson refuses it: read as text)."""
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.piece(bytes(line))  # read as text
            return
        self.record(record)

    def piece(self, piece: bytes) -> None:
        """A piece of the file between two ``\n``: parsed as bytes when it is one line of the text as
        ``text_lines`` splits it (no other line end in it, but a last ``\r``), else line by line as text."""
        try:
            record = orjson.loads(piece)
        except orjson.JSONDecodeError:
            pass  # not JSON as bytes (another UTF-8 error, NaN, ...): read as text below
        else:
            # JSON holds no raw control character but in whitespace: only \r and the separators
            # beyond ASCII can end a line in it (find, not count: memchr)
            cr = piece.find(b"\r")
            if (cr < 0 or cr == len(piece) - 1) and (piece.isascii() or not _SEPARATORS.search(piece)):
                self.record(record)
                return
        for line in piece.decode("utf-8", errors="replace").splitlines():
            self.line(line)

    def line(self, line: str) -> None:
        if not line.strip():
            return
        try:
            record = loads(line)
        except (ValueError, RecursionError):
            self.unreadable += 1
            return
        self.record(record)

    def record(self, record) -> None:
        """A record that has no output, or has output the monitor cannot read, counts as unreadable;
        one outside [start, end) is skipped."""
        try:
            output = record["captureData"]["endpointOutput"]["data"]
        except (KeyError, TypeError):
            self.unreadable += 1
            return
        meta = record.get("eventMetadata")
        if meta.__class__ is not dict:
            meta = None
        stamp = meta.get("inferenceTime") if meta is not None else None
        if stamp.__class__ is str:
            time_us = self._stamps.get(stamp, _MISSING)  # a file's records share a handful of seconds
            if time_us is _MISSING:
                time_us = self._stamp(stamp)
            if time_us is None:
                return
        else:
            time_us = NO_TIME_US
        try:
            predictions = loads(output)["predictions"]
            first = second = None
            if predictions.__class__ is list and len(predictions) == 2:
                first, second = predictions
            if first.__class__ is dict and second.__class__ is dict:  # top_numbers' commonest case, inline
                class_id, confidence = first.get("class_id"), first.get("probability")
                other, p2 = second.get("class_id"), second.get("probability")
                if (class_id.__class__ is int and other.__class__ is int and confidence.__class__ is float
                        and p2.__class__ is float):
                    if -p2 < -confidence:
                        class_id, confidence, p2 = other, p2, confidence
                    margin, low = confidence - p2, confidence < LOW_CONFIDENCE and p2 < LOW_CONFIDENCE
                else:
                    class_id, confidence, margin, low = top_numbers(predictions)
            else:
                class_id, confidence, margin, low = top_numbers(predictions)
        except (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError):
            self.unreadable += 1
            return
        if not _INT64[0] <= class_id < _INT64[1]:
            class_id = -1  # outside the model's classes as it is, and an int64
        if self.hashes:
            attributes = meta.get("customAttributes") if meta is not None else None
            name = track_name(attributes) if attributes.__class__ is str else None
            if name:
                self.names[len(self.time_us)] = name
            recorded = meta.get("imageHash") if meta is not None else None
            # RECORDED_HASH.fullmatch, three times faster: 16 characters, none left once hex digits are stripped
            if recorded.__class__ is not str or len(recorded) != 16 or recorded.strip(_HEX):
                recorded = decoded_hash(record)  # an older capture: the image decoded, hashed and dropped
            self.image_hash.append(int(recorded, 16) if recorded else 0)
        self.time_us.append(time_us)
        self.class_id.append(class_id)
        self.confidence.append(confidence)
        self.margin.append(margin)
        self.low.append(low)

    def _stamp(self, stamp: str) -> int | None:
        """``record_time``'s time in microseconds since the epoch; None outside [start, end)."""
        try:
            t = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            t = None
        inside = t is None or not ((self.start and t < self.start) or (self.end and t >= self.end))
        if len(self._stamps) >= 4096:
            self._stamps.clear()
        time_us = self._stamps[stamp] = _time_us(t) if inside else None
        return time_us

    def partial(self) -> Partial:
        def a(values, dtype):
            return np.frombuffer(values, dtype=dtype).copy() if len(values) else np.zeros(0, dtype)

        confidence, margin = a(self.confidence, np.float64), a(self.margin, np.float64)
        return Partial(self.unreadable, self.files, a(self.time_us, np.int64), a(self.class_id, np.int64), confidence, margin,
                       bins_of(confidence), bins_of(margin), a(self.low, np.uint8).astype(np.bool_),
                       a(self.image_hash, np.uint64) if self.image_hash is not None else None, self.names)


def _time_us(t: datetime | None) -> int:
    if t is None:
        return NO_TIME_US
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return (t - EPOCH) // timedelta(microseconds=1)


def text_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of a capture file given in pieces, as ``data.decode("utf-8", "replace").splitlines()``
    gives them for the whole: split at ``\\n`` first (a byte never part of another UTF-8 character),
    then each piece decoded and split as a whole file's text was (``\\r``, ``\\u2028``, ...)."""
    rest = b""
    for chunk in chunks:
        if not chunk:
            continue
        pieces = (rest + chunk).split(b"\n")
        rest = pieces.pop()
        for piece in pieces:
            yield from piece.decode("utf-8", errors="replace").splitlines() or [""]  # "" an empty line
    if rest:
        yield from rest.decode("utf-8", errors="replace").splitlines()


def count_lines(lines: Iterable[str], start: datetime | None = None, end: datetime | None = None,
                hashes: bool = False) -> Partial:
    """The map over one capture file's lines (text): a record that is not JSON, has no output, or has
    output the monitor cannot read counts as unreadable; one outside [start, end) is skipped.
    ``hashes``: the image's perceptual hash (as recorded, else of the decoded image) and the
    client's track name, for folding."""
    mapped = _FileMap(start, end, hashes)
    for line in lines:
        mapped.line(line)
    return mapped.partial()


def count_chunks(chunks: Iterable[bytes], start: datetime | None = None, end: datetime | None = None,
                 hashes: bool = False) -> Partial:
    """``count_lines(text_lines(chunks))``, the same to the last bit, without decoding the text: a
    line is parsed as the bytes it is (what the map costs is mostly this one parse)."""
    mapped = _FileMap(start, end, hashes)
    mapped.feed(chunks)
    return mapped.partial()


def read_chunks(stream, size: int | None = None) -> Iterator[bytes]:
    size = size or READ_CHUNK
    try:
        while chunk := stream.read(size):
            yield chunk
    finally:
        stream.close()


_BUFFERS = threading.local()  # one read buffer per thread (a Dask worker may run tasks in threads)


def read_parts(stream, size: int | None = None) -> Iterator[tuple[bytes | bytearray, int]]:
    """The stream in pieces as (buffer, bytes read), read into one buffer of this thread, reused
    (``readinto``): a new object of a megabyte for every read cost more than the read itself (the
    allocator maps fresh pages and the kernel zeroes them: 4-5 us per 10 kB record against 1.5 us,
    measured on the 2-core VM). A piece is valid until the next is asked for."""
    size = size or READ_CHUNK
    readinto = getattr(stream, "readinto", None)
    if readinto is None:
        yield from ((chunk, len(chunk)) for chunk in read_chunks(stream, size))
        return
    buffer = getattr(_BUFFERS, "buffer", None)
    if buffer is None or len(buffer) != size:
        buffer = _BUFFERS.buffer = bytearray(size)
    try:
        while n := readinto(buffer):
            yield buffer, n
    finally:
        stream.close()


def _feed_object(mapped: _FileMap, store, key: str) -> None:
    """One object of the store, read in pieces where the store can (``open``)."""
    opener = getattr(store, "open", None)
    if opener is not None:
        mapped.feed_parts(read_parts(opener(key)))
    else:
        mapped.feed([store.get(key)])


def count_file(store, key: str, start: datetime | None = None, end: datetime | None = None,
               hashes: bool = False) -> Partial:
    """The map over one object of the store."""
    return count_objects(store, [key], start, end, hashes)


def count_objects(store, keys: Sequence[str], start: datetime | None = None, end: datetime | None = None,
                  hashes: bool = False) -> Partial:
    """The map over consecutive objects of the store: ``merge`` of their ``count_file``, the same,
    in one pass (the columns made once, not per file of 100 records: 0.5 us a record)."""
    if not keys:
        return Partial()
    mapped = _FileMap(start, end, hashes)
    for key in keys:
        _feed_object(mapped, store, key)
    mapped.files = len(keys)
    return mapped.partial()


def merge(partials: Iterable[Partial]) -> Partial:
    """The reduce: partials of consecutive files, in file order, as one."""
    parts = list(partials)
    if not parts:
        return Partial()
    if len(parts) == 1:
        return parts[0]
    hashed = all(p.image_hash is not None for p in parts)
    names, offset = {}, 0
    for p in parts:
        names.update({offset + row: name for row, name in p.names.items()})
        offset += len(p)

    def cat(column: str) -> np.ndarray:
        return np.concatenate([getattr(p, column) for p in parts])

    return Partial(sum(p.unreadable for p in parts), sum(p.files for p in parts), cat("time_us"), cat("class_id"),
                   cat("confidence"), cat("margin"), cat("confidence_bin"), cat("margin_bin"), cat("low"),
                   cat("image_hash") if hashed else None, names)


@dataclass
class Counted:
    """The frames that count, in time order, of the model's classes; what is left out and why."""

    class_id: np.ndarray
    confidence: np.ndarray
    margin: np.ndarray
    confidence_bin: np.ndarray
    margin_bin: np.ndarray
    low: np.ndarray
    unreadable: int   # not JSON, no readable output, or a class outside the model's
    outside: int      # of which: a class id outside [0, n_classes)
    folded: int       # frames of an object counted seconds before
    files: int

    def __len__(self) -> int:
        return len(self.class_id)


def _ms(x: float) -> float:
    """A time as it reads back from a track entry (``Tracks`` writes times to the millisecond)."""
    return float(f"{x:.3f}")


def _entries_of(tracks: Tracks) -> Iterator[tuple[int, int, float, float, int, str]]:
    """The entries ``tracks`` holds already (``remember(write_state=False)``), oldest first, as
    ``decide`` reads them: (push index, hash, start, time, class, name); those it skips left out."""
    local = list(tracks._local)
    for k, entry in enumerate(local):
        try:
            h, start, t, c, name = entry.split("|", 4)
            yield k - len(local), int(h, 16), float(start), float(t), int(c), name
        except ValueError:
            continue


SCAN = 32  # a class's frames in the window up to which a frame is matched by a loop, past it by numpy first


class _Line:
    """The frames of one class still within the window, oldest first (a list from ``lo`` on), and
    their hashes as an array beside them: a frame of a busy class is matched by a vector of
    Hamming distances, then checked one by one only against the few near enough."""

    __slots__ = ("entries", "hashes", "lo")

    def __init__(self) -> None:
        self.entries: list[tuple] = []
        self.hashes = np.zeros(64, np.uint64)
        self.lo = 0

    def append(self, entry: tuple) -> None:
        n = len(self.entries)
        if n == len(self.hashes):  # full: the expired dropped, room doubled
            live = n - self.lo
            hashes = np.zeros(max(64, 2 * live), np.uint64)
            hashes[:live] = self.hashes[self.lo:n]
            self.entries, self.hashes, self.lo, n = self.entries[self.lo:], hashes, 0, live
        self.hashes[n] = entry[1]
        self.entries.append(entry)

    def expire(self, before: float, oldest_seen: int) -> None:
        """Drop the frames older than ``before`` (frames come in time order: never near again) and
        those pushed before ``oldest_seen`` (out of the list's capacity: never seen again)."""
        entries, lo = self.entries, self.lo
        while lo < len(entries) and (entries[lo][0] < oldest_seen or max(entries[lo][3], entries[lo][5]) < before):
            lo += 1
        self.lo = lo

    def newest_first(self, h: int, distance: int) -> list[tuple]:
        """The entries, newest first; past ``SCAN`` of them only those within ``distance`` of ``h``."""
        entries, lo = self.entries, self.lo
        if len(entries) - lo <= SCAN:
            return entries[lo:][::-1]
        close = np.flatnonzero(np.bitwise_count(self.hashes[lo:len(entries)] ^ np.uint64(h)) <= distance)
        return [entries[lo + k] for k in close[::-1].tolist()]


def _near_pairs(class_id: np.ndarray, time_us: np.ndarray, hashes: np.ndarray, window_s: float,
                distance: int) -> tuple[np.ndarray, np.ndarray]:
    """For frames in time order: (which may match an earlier frame by hash, which an later frame may
    match by hash). A superset of what ``fold_mask`` decides: the same class, both hashes set and
    within ``distance``, at most the window apart (a millisecond more: what the list reads back is
    rounded), whatever the list's capacity, the names and the tracks' ages. A frame in neither,
    without a name, can fold nothing and be folded into nothing: its entry is only counted.
    Numpy over the pairs of frames of one class within the window (a pair at a time per offset,
    the frames still with a pair left), not a loop over the frames."""
    n = len(time_us)
    may, needed = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    hashed = np.flatnonzero(hashes != 0)
    if len(hashed) < 2:
        return may, needed
    rows = hashed[np.argsort(class_id[hashed], kind="stable")]  # by class, then in time order
    c, t, h = class_id[rows], time_us[rows], hashes[rows]
    reach = int(window_s * 1_000_000) + 1001
    at = np.arange(1, len(rows))  # positions whose frame at offset d before is still a pair
    d = 1
    while len(at):
        before = at - d
        pair = (c[at] == c[before]) & (t[at] - t[before] <= reach)
        at, before = at[pair], before[pair]  # past a frame out of reach, every earlier one is too
        close = np.bitwise_count(h[at] ^ h[before]) <= distance
        may[rows[at[close]]] = True
        needed[rows[before[close]]] = True
        at = at[before > 0]
        d += 1
    return may, needed


def fold_mask(p: Partial, tracks: Tracks) -> np.ndarray:
    """Which frames of ``p`` (in time order) count: False for those folded into a track.

    The decisions of ``Tracks.decide`` and ``remember(write_state=False)`` over batches of
    ``FOLD_BATCH`` frames, the same to the last frame (tests/unit/test_job_streaming.py holds them
    to the old job, which called those), without numpy over every entry of the list for every frame
    (15 us a frame, as much as reading the record): a frame is matched against the frames of its
    class still within the window (``_Line``), and of its class and track name. What ``decide``
    reads from the list it wrote, entries of frames of earlier batches, it reads with times to the
    millisecond (``_ms``); only the newest ``capacity`` of those are seen; a batch with neither a
    hash nor a track name is not remembered. ``tracks`` itself is left as it was."""
    n = len(p)
    keep = np.ones(n, dtype=bool)
    window, distance, max_age, capacity = tracks.window_s, tracks.max_distance, tracks.max_age_s, tracks.capacity
    all_hashes = p.image_hash if p.image_hash is not None else np.zeros(n, np.uint64)
    named = np.zeros(n, dtype=bool)
    named[list(p.names)] = True
    # entries: (push index, hash, start, time, start as read back, time as read back, name)
    lines: dict[int, _Line] = {}           # by class
    by_name: dict[tuple[int, str], deque] = {}  # by class and track name

    def push(c: int, entry: tuple) -> None:
        line = lines.get(c)
        if line is None:
            line = lines[c] = _Line()
        line.append(entry)
        if entry[6]:
            by_name.setdefault((c, entry[6]), deque()).append(entry)

    prior = 0
    for k, h, start, t, c, name in _entries_of(tracks):
        push(c, (k, h, start, t, start, t, name))
        prior += 1
    # Which frames can take part in a fold at all (most cannot: the loop only counts their entries).
    # With entries from before (a rebuild's), every frame goes through the loop.
    if prior:
        may = needed = np.ones(n, dtype=bool)
    else:
        may, needed = _near_pairs(p.class_id, p.time_us, all_hashes, window, distance)
    involved = may | needed | named
    pushed = 0
    for i in range(0, n, FOLD_BATCH):
        j = min(i + FOLD_BATCH, n)
        if not (all_hashes[i:j].any() or named[i:j].any()):
            continue  # nothing to match by: none folded, none remembered
        # a batch's columns as Python numbers (fast to index), not the whole range's (memory)
        hashes, classes, times = all_hashes[i:j].tolist(), p.class_id[i:j].tolist(), p.time_us[i:j].tolist()
        batch, oldest_seen = pushed, pushed - capacity  # entries pushed before ``oldest_seen`` dropped out
        inside = involved[i:j].tolist()
        for r in range(i, j):
            h = hashes[r - i]
            if not inside[r - i]:
                pushed += h != 0  # an entry no frame could match: counted (capacity), not kept
                continue
            name = p.names.get(r, "")
            if not h and not name:
                continue
            us, c = times[r - i], classes[r - i]
            t = us / 1_000_000  # as ``datetime.timestamp`` gives it
            t_ms = t if us % 1000 == 0 else _ms(t)  # whole milliseconds read back as they are
            match = None
            if name:
                same = by_name.get((c, name))
                while same and (same[0][0] < oldest_seen or max(same[0][3], same[0][5]) < t - window):
                    same.popleft()
                for e in reversed(same or ()):
                    if abs(t - (e[3] if e[0] >= batch else e[5])) <= window:
                        match = e
                        break
            line = lines.get(c)
            if line is not None:
                line.expire(t - window, oldest_seen)
            if match is None and h and line is not None:
                for e in line.newest_first(h, distance):
                    if ((e[1] ^ h).bit_count() <= distance and e[1] and (not e[6] or not name or e[6] == name)
                            and abs(t - (e[3] if e[0] >= batch else e[5])) <= window):  # the rarest first
                        match = e
                        break
            start, start_ms = t, t_ms
            if match is not None:
                match_start = match[2] if match[0] >= batch else match[4]
                if t - match_start <= max_age:
                    keep[r] = False
                    start, start_ms = match_start, match[4]  # read back once: as it is
            push(c, (pushed, h, start, t, start_ms, t_ms, name))
            pushed += 1
    return keep


def finish(p: Partial, n_classes: int, tracks: Tracks | None = None) -> Counted:
    """The merged frames in time order (stable: file order within one time), folded when ``tracks``
    is on, and split by the model's classes."""
    order = np.argsort(p.time_us, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))  # where each row goes
    ordered = Partial(p.unreadable, p.files, p.time_us[order], p.class_id[order], p.confidence[order],
                      p.margin[order], p.confidence_bin[order], p.margin_bin[order], p.low[order],
                      p.image_hash[order] if p.image_hash is not None else None,
                      {int(position[row]): name for row, name in p.names.items()})
    keep = fold_mask(ordered, tracks) if tracks is not None and tracks.enabled else np.ones(len(p), dtype=bool)
    folded = int((~keep).sum())
    inside = (ordered.class_id >= 0) & (ordered.class_id < n_classes)
    outside = int((keep & ~inside).sum())
    keep &= inside
    return Counted(ordered.class_id[keep], ordered.confidence[keep], ordered.margin[keep],
                   ordered.confidence_bin[keep], ordered.margin_bin[keep], ordered.low[keep],
                   p.unreadable + outside, outside, folded, p.files)
