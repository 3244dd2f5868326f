"""The scheduled job's map and reduce (``capture_counts``, ``job_workers``) give exactly what the
whole-list job gave (``tests/unit/job_before_streaming.py``): the window's counts and sums to the
last bit, the violations, statistics.json, the estimate, the folded frames; in one process, on a
pool of processes, and with files read in pieces that cut lines in two."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from signwatch.capture import capture_record
from signwatch.data.classes import CLASS_NAMES
from signwatch.imaging import encode_png
from signwatch.monitoring import baseline as bl
from signwatch.monitoring import capture_counts
from signwatch.monitoring.capture_counts import count_lines, finish, merge, text_lines
from signwatch.monitoring.job import run_job
from signwatch.monitoring.job_workers import StoreSource, count_range, task_groups
from signwatch.monitoring.tracks import Tracks
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.store_file import FileStore
from tests.unit import job_before_streaming as before
from tests.unit.helpers import inference_event

NAMES = tuple(CLASS_NAMES)
T0 = datetime(2026, 12, 1, 9, 58, tzinfo=timezone.utc)


def _record(t: datetime | None, predictions: list[dict], image: bytes, custom: str | None = None) -> dict:
    metadata = {"eventId": f"e{t}"}
    if t is not None:
        metadata["inferenceTime"] = t.strftime("%Y-%m-%dT%H:%M:%SZ")
    if custom is not None:
        metadata["customAttributes"] = custom
    return {"captureData": {
        "endpointInput": {"observedContentType": "image/png", "mode": "INPUT",
                          "data": base64.b64encode(image).decode(), "encoding": "BASE64"},
        "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                           "data": json.dumps({"predictions": predictions}), "encoding": "JSON"}},
        "eventMetadata": metadata, "eventVersion": "0"}


def _capture_files(seed: int = 0, n_files: int = 9, per_file: int = 60) -> dict[str, bytes]:
    """Files in three hour folders, their records' times interleaved across files (as several
    partitions write them), some frames of one object (the same image or track name) seconds
    apart, and every kind of line the job cannot read."""
    rng = np.random.default_rng(seed)
    signs = [encode_png(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(12)]
    files = {}
    for i in range(n_files):
        hour = T0 + timedelta(hours=i % 3)
        lines = []
        for j in range(per_file):
            t = hour + timedelta(seconds=int(rng.integers(0, 3600)))
            c = int(rng.choice([14, 1, 2, 3, int(rng.integers(0, 43))]))
            top = float(rng.uniform(0.2, 1.0))
            preds = [{"class_id": c, "label": "x", "probability": top},
                     {"class_id": (c + 1) % 43, "label": "y", "probability": float(rng.uniform(0, 1 - top))}]
            kind = rng.random()
            if kind < 0.04:
                lines.append("not json {")
            elif kind < 0.06:
                lines.append(json.dumps({"captureData": {"endpointInput": {}}}))
            elif kind < 0.08:
                lines.append(json.dumps(_record(t, [], signs[0])))  # no predictions
            elif kind < 0.10:
                preds[0]["class_id"] = int(rng.choice([43, 57, -1]))  # another model's class
                lines.append(json.dumps(_record(t, preds, signs[1])))
            elif kind < 0.12:
                lines.append(json.dumps(_record(None, preds, signs[2])))  # no time
            elif kind < 0.14:
                lines.append("")
            else:
                sign = int(rng.integers(0, len(signs)))
                custom = f"track=cam{sign % 3}" if rng.random() < 0.2 else None
                lines.append(json.dumps(_record(t, preds, signs[sign], custom)))
                if rng.random() < 0.3:  # the same sign again seconds later, in the same or the next file
                    lines.append(json.dumps(_record(t + timedelta(seconds=int(rng.integers(0, 4))), preds,
                                                    signs[sign], custom)))
        newline = "\r\n" if i == 4 else "\n"
        files[f"datacapture/ep/AllTraffic/{hour:%Y/%m/%d/%H}/part-{i:03d}.jsonl"] = \
            (newline.join(lines) + newline).encode()
    event = inference_event(class_id=14, probability=0.97, time=T0 + timedelta(minutes=5))
    files["datacapture/ep/AllTraffic/2026/12/01/09/z-capture.jsonl"] = \
        (json.dumps(capture_record(event, encode_png(np.zeros((8, 8, 3), np.uint8)))) + "\n").encode()
    return dict(sorted(files.items()))


def _tracks(capacity: int = 1024) -> Tracks:
    return Tracks(MemoryState(), "ep", 5.0, 10, 60.0, capacity)


def _same(old, new) -> None:
    w, violations, statistics, estimate, folded = old
    assert new.total == w.total and new.unreadable == w.unreadable and new.folded == folded
    assert new.predicted_classes == {int(c): int(n) for c, n in enumerate(w.class_counts) if n}
    assert new.violations == violations
    assert new.statistics == statistics  # exact: quantiles, means and standard deviations to the last bit
    assert new.estimated_accuracy == estimate


@pytest.mark.parametrize("window", [None, "fold", "small capacity"])
@pytest.mark.parametrize("range_", [(None, None), (T0 + timedelta(minutes=30), T0 + timedelta(hours=2))])
def test_the_map_and_reduce_count_as_the_whole_list_did(window, range_):
    files = _capture_files()
    baseline = bl.load(*bl.shipped_files(), n_classes=len(NAMES))
    capacity = 8 if window == "small capacity" else 1024

    def tracks():
        return _tracks(capacity) if window else None

    old = before.run_job(list(files.values()), baseline, NAMES, *range_, tracks=tracks())
    new = run_job(list(files.values()), baseline, NAMES, *range_, tracks=tracks())
    _same(old, new)
    assert new.files == len(files)
    if window:
        assert old[4] > 0  # frames were folded: the comparison covers folding


def test_the_window_sums_match_to_the_bit():
    files = list(_capture_files(seed=3).values())
    w_old = before.run_job(files, None, NAMES)[0]
    counted = finish(merge(count_lines(text_lines([f])) for f in files), len(NAMES))
    from signwatch.monitoring.job import counted_window

    w_new = counted_window(counted, len(NAMES))
    assert w_new.confidence_sum == w_old.confidence_sum and w_new.low_confidence == w_old.low_confidence
    for field in ("class_counts", "confidence_counts", "margin_counts"):
        assert np.array_equal(getattr(w_new, field), getattr(w_old, field))
    assert (w_new.total, w_new.unreadable) == (w_old.total, w_old.unreadable)


def test_a_baseline_suggested_from_capture_is_the_same():
    files = list(_capture_files(seed=5).values())
    features, bad = before.features_from_capture(files)
    features, outside = before.split_by_class(features, len(NAMES))
    old = bl.suggest(features, len(NAMES), source="s", model_version="m")
    counted = finish(merge(count_lines(text_lines([f])) for f in files), len(NAMES))
    new = bl.suggest_from_values(counted.class_id, counted.confidence, counted.margin, int(counted.low.sum()),
                                 len(NAMES), source="s", model_version="m")
    assert new == old and counted.unreadable == bad + outside and counted.outside == outside


@pytest.mark.parametrize("workers", [1, 2])
def test_files_read_in_pieces_from_the_store_on_a_pool_count_the_same(tmp_path, monkeypatch, workers):
    files = _capture_files(seed=7)
    store = FileStore(tmp_path / "store")
    for key, data in files.items():
        store.put(key, data)
    monkeypatch.setattr(capture_counts, "READ_CHUNK", 1000)  # lines cut in two, CRLF cut between \r and \n
    start, end = T0, T0 + timedelta(hours=3)
    old = before.run_job(list(files.values()), None, NAMES, start, end, tracks=_tracks())
    partial = count_range(StoreSource((tmp_path / "store").as_uri()), list(files), start, end, hashes=True,
                          workers=workers)
    from signwatch.monitoring.job import run_counted

    _same(old, run_counted(finish(partial, len(NAMES), _tracks()), None, NAMES))


def test_lines_split_as_the_whole_text_splits_them():
    data = "a\r\nb\rc\u2028d\n\n\ufffd\xe9x\n".encode() + b"\xe2\x82\n\xffz"
    want = data.decode("utf-8", errors="replace").splitlines()
    for size in (1, 2, 3, 5, len(data)):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        assert list(text_lines(chunks)) == want


def test_tasks_are_runs_of_consecutive_files():
    keys = [f"k{i:04d}" for i in range(1000)]
    groups = task_groups(keys, 4)
    assert [k for g in groups for k in g] == keys and max(map(len, groups)) <= 64 and len(groups) >= 16
    assert task_groups(keys[:3], 8) == [["k0000"], ["k0001"], ["k0002"]]


def _old_fold_mask(p, tracks: Tracks) -> np.ndarray:
    """The fold as the job did it before (``Tracks.decide`` and ``remember`` over batches of 256)."""
    from types import SimpleNamespace

    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    keep = []
    hashes = p.image_hash.tolist()
    for i in range(0, len(p), 256):
        frames = [(SimpleNamespace(time=epoch + timedelta(microseconds=int(p.time_us[r])),
                                   custom_attributes=f"track={p.names[r]}" if r in p.names else None,
                                   image_hash=f"{hashes[r]:016x}" if hashes[r] else None), int(p.class_id[r]))
                  for r in range(i, min(i + 256, len(p)))]
        keep += [not d.folded for d in tracks.decide(frames, read_state=False)]
        tracks.remember(write_state=False)
    return np.array(keep)


@pytest.mark.parametrize("capacity,scan", [(4, 32), (64, 0), (1024, 32), (1024, 10**6)])
def test_the_fold_decides_as_tracks_decide_does(capacity, scan, monkeypatch):
    """Bursts of near-duplicate frames at sub-millisecond times, named tracks, frames with nothing to
    match by and a whole batch of them, over many batches: the same frames folded (a class's frames
    matched by a loop, and by Hamming distances first)."""
    monkeypatch.setattr(capture_counts, "SCAN", scan)
    rng = np.random.default_rng(capacity)
    n = 3000
    us = np.sort(rng.integers(0, 120_000_000, n)) + 1_796_000_000_000_000 + rng.integers(0, 1000, n)
    us.sort()
    objects = rng.integers(1, 2**63, 25, dtype=np.uint64)
    which = rng.integers(0, len(objects), n)
    flips = np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64)
    hashes = objects[which] ^ np.where(rng.random(n) < 0.5, flips, np.uint64(0))
    hashes[rng.random(n) < 0.1] = 0  # an older producer's frame: by name only, or nothing to match by
    hashes[512:768] = 0  # a batch with neither a hash nor a name
    names = {r: f"cam{int(which[r]) % 4}" for r in range(n) if rng.random() < 0.2 and not 512 <= r < 768}
    p = capture_counts.Partial(0, 1, us.astype(np.int64), (which % 3).astype(np.int64), np.ones(n), np.ones(n),
                               np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, bool),
                               hashes.astype(np.uint64), names)
    tracks = Tracks(MemoryState(), "ep", 5.0, 10, 20.0, capacity)
    tracks._local.extend(["bad entry", f"{int(objects[0]):016x}|{us[0] / 1e6 - 1:.3f}|{us[0] / 1e6 - 1:.3f}|0|"])
    want = _old_fold_mask(p, Tracks(MemoryState(), "ep", 5.0, 10, 20.0, capacity))
    want_pre = _old_fold_mask(p, tracks)
    got_pre = capture_counts.fold_mask(p, Tracks(MemoryState(), "ep", 5.0, 10, 20.0, capacity))
    assert (~want).sum() > 100  # frames were folded, by name and by hash
    assert np.array_equal(got_pre, want)
    fresh = Tracks(MemoryState(), "ep", 5.0, 10, 20.0, capacity)
    fresh._local.extend(["bad entry", f"{int(objects[0]):016x}|{us[0] / 1e6 - 1:.3f}|{us[0] / 1e6 - 1:.3f}|0|"])
    assert np.array_equal(capture_counts.fold_mask(p, fresh), want_pre)


def test_lines_read_as_bytes_count_as_the_text_lines_do():
    """What the map reads in place as bytes, what it reads as text (CR, line separators beyond ASCII,
    broken UTF-8, NaN, numbers past 64 bits, lone surrogates), in pieces of every size: the same."""
    good = _record(T0, [{"class_id": 3, "label": "x", "probability": 0.75}], b"img")
    lines = [json.dumps(good), json.dumps(good) + "\r", json.dumps(good) + "\r" + json.dumps(good),
             json.dumps(good) + "\f" + json.dumps(good), json.dumps(good, ensure_ascii=False).replace("img", "\u2028"),
             json.dumps(_record(T0, [{"class_id": 3, "label": "x\u2028y\x85", "probability": 0.5}], b"i"),
                        ensure_ascii=False),
             json.dumps(_record(T0, [{"class_id": 4, "label": "\ud800", "probability": 0.5}], b"i")),
             json.dumps(_record(T0, [{"class_id": 5, "label": "x", "probability": float("nan")}], b"i")),
             json.dumps(_record(T0, [{"class_id": 2**70, "label": "x", "probability": 0.9}], b"i")),
             json.dumps(_record(T0, [{"class_id": 1e400, "label": "x", "probability": 0.9}], b"i")),
             json.dumps(_record(T0, [{"class_id": 2, "label": "x", "probability": 12345678901234567890123}], b"i")),
             "   ", "\u3000", "", "[" * 5000 + "]" * 5000, json.dumps({"captureData": []}), "null", "7"]
    data = "\n".join(lines).encode().replace(b"\xe2\x80\xa8\"}]", b"\xff\"}]") + b"\n" + json.dumps(good).encode()
    columns = ("time_us", "class_id", "confidence", "margin", "confidence_bin", "margin_bin", "low")
    want = count_lines(text_lines([data]))
    assert len(want) == 13 and want.unreadable == 5
    for size in (1, 7, 100, 1000, len(data)):
        got = capture_counts.count_chunks([data[i:i + size] for i in range(0, len(data), size)])
        assert got.unreadable == want.unreadable
        for column in columns:
            assert np.array_equal(getattr(got, column), getattr(want, column), equal_nan=column != "class_id")


def _hashed(record: dict, image_hash: str | None) -> dict:
    if image_hash is not None:
        record["eventMetadata"]["imageHash"] = image_hash
    return record


def test_the_recorded_hash_is_used_and_an_older_capture_is_decoded(monkeypatch):
    """Records that carry the serving core's hash are folded by it, no image decoded; those that do
    not (an older capture, or a malformed hash) by the hash of their decoded image; the same counts."""
    from signwatch.imaging import perceptual_hash
    from signwatch.monitoring import reference

    rng = np.random.default_rng(11)
    pixels = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    pngs, hashes = [encode_png(x) for x in pixels], [perceptual_hash(x) for x in pixels]
    preds = [{"class_id": 14, "label": "x", "probability": 0.9}, {"class_id": 1, "label": "y", "probability": 0.05}]
    lines = []
    for i in range(300):
        k = int(rng.integers(0, 6))
        recorded = hashes[k] if i % 3 else (None if i % 2 else "NOT-A-HASH")
        lines.append(json.dumps(_hashed(_record(T0 + timedelta(seconds=i // 4), preds, pngs[k]), recorded)))
    files = [("\n".join(lines[:150]) + "\n").encode(), ("\n".join(lines[150:]) + "\n").encode()]
    old = before.run_job(files, None, NAMES, tracks=_tracks())
    decoded = []
    real = reference.decoded_hash
    monkeypatch.setattr(capture_counts, "decoded_hash", lambda record: decoded.append(1) or real(record))
    new = run_job(files, None, NAMES, tracks=_tracks())
    _same(old, new)
    assert new.folded > 100 and len(decoded) == 100  # only the records without a (valid) hash decoded
    decoded.clear()
    all_recorded = [("\n".join(json.dumps(_hashed(json.loads(x), hashes[0])) for x in lines) + "\n").encode()]
    run_job(all_recorded, None, NAMES, tracks=_tracks())
    assert not decoded
    # the recorded hash is the one the job takes of the pixels
    record = json.loads(lines[1])
    assert reference.recorded_hash(record) == reference.decoded_hash(record)
