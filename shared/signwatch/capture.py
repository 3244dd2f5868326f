"""Data capture, as SageMaker writes it: sampling, record format and batching kept apart
(as KServe's payload logger keeps store, format and batching apart).

- ``should_sample``: deterministic from the event id, so every replica and every replay agrees.
- ``capture_record``: one SageMaker JSON-lines record for an inference event.
- ``CaptureBatcher``: groups records by hour folder and Kafka partition, flushed by count, bytes
  or age; each file is named by the partition and the first offset it covers, so a rewrite after
  a crash (which restarts at the last committed offset) replaces the file instead of duplicating
  records. The consumer loop commits only after the flush wrote every file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field

from signwatch.events import InferenceEvent, PoisonMessage
from signwatch.ports.bus import Message
from signwatch.ports.store import ObjectNotFound, ObjectStore
from signwatch.publishing import resolve_input


def should_sample(event_id: str, percentage: float) -> bool:
    if percentage >= 100:
        return True
    if percentage <= 0:
        return False
    bucket = int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:8], "big") / 2**64
    return bucket * 100 < percentage


def capture_record(event: InferenceEvent, raw_input: bytes) -> dict:
    """SageMaker's record: the content type the client sent, the response bytes it received, its
    custom attributes; ``inferenceId`` only when the client gave one (as SageMaker writes it);
    ``imageHash`` (signwatch's) when the event carries the image's perceptual hash."""
    response = event.response
    metadata = {"eventId": event.event_id}
    if event.inference_id is not None:
        metadata["inferenceId"] = event.inference_id
    metadata["inferenceTime"] = event.time.strftime("%Y-%m-%dT%H:%M:%SZ")
    if event.custom_attributes is not None:
        metadata["customAttributes"] = event.custom_attributes
    if event.image_hash is not None:
        # Not SageMaker's (its readers ignore keys they do not know): the perceptual hash the serving
        # core took of the decoded pixels, so the scheduled job folds frames without decoding them again.
        metadata["imageHash"] = event.image_hash
    return {
        "captureData": {
            "endpointInput": {
                "observedContentType": event.input.observed_content_type or event.input.content_type,
                "mode": "INPUT",
                "data": base64.b64encode(raw_input).decode(),
                "encoding": "BASE64",
            },
            "endpointOutput": {
                "observedContentType": response.content_type if response else "application/json",
                "mode": "OUTPUT",
                # the bytes the client received (v2 events carry them); v1: the output re-serialised
                "data": response.data if response else event.output.model_dump_json(),
                "encoding": "JSON",
            },
        },
        "eventMetadata": metadata,
        "eventVersion": "0",
    }


def capture_key(prefix: str, event: InferenceEvent, topic: str, partition: int, first_offset: int) -> str:
    t = event.time
    name = f"{topic}-p{partition:03d}-o{first_offset:012d}"
    return f"{prefix}/{event.endpoint}/{event.variant}/{t:%Y/%m/%d/%H}/{name}.jsonl"


@dataclass
class _File:
    first_offset: int
    key_event: InferenceEvent
    lines: list[str] = field(default_factory=list)


@dataclass
class CaptureBatcher:
    store: ObjectStore
    prefix: str = "datacapture"
    sampling_percentage: float = 100.0
    max_records: int = 100
    max_age_s: float = 5.0
    max_bytes: int = 8 * 1024 * 1024  # buffered lines: memory stays bounded whatever the input sizes
    clock: callable = time.monotonic

    def __post_init__(self) -> None:
        self._files: dict[tuple[str, int, str], _File] = {}
        self._buffered = 0
        self._buffered_bytes = 0
        self._opened_at: float | None = None
        self.records_written = 0  # a count, never the keys: the batcher keeps no history

    def add(self, message: Message, event: InferenceEvent) -> None:
        if self._opened_at is None:
            self._opened_at = self.clock()
        hour = f"{event.endpoint}/{event.variant}/{event.time:%Y/%m/%d/%H}"
        group = (message.topic, message.partition, hour)
        # Every consumed offset opens the file, sampled or not: the name depends only on
        # where the batch starts in the partition, which a replay reproduces.
        file = self._files.setdefault(group, _File(message.offset, event))
        if not should_sample(event.event_id, self.sampling_percentage):
            return
        try:
            raw = resolve_input(event.input, self.store)
        except (ObjectNotFound, ValueError) as exc:  # the claim check is gone or its bytes differ
            raise PoisonMessage(f"input of event {event.event_id} cannot be read: {exc}") from exc
        line = json.dumps(capture_record(event, raw), separators=(",", ":"))
        file.lines.append(line)
        self._buffered += 1
        self._buffered_bytes += len(line) + 1

    def due(self) -> bool:
        if self._opened_at is None:
            return False
        return (self._buffered >= self.max_records or self._buffered_bytes >= self.max_bytes
                or self.clock() - self._opened_at >= self.max_age_s)

    def flush(self) -> list[str]:
        keys = []
        for (topic, partition, _hour), file in sorted(self._files.items()):
            if not file.lines:
                continue
            key = capture_key(self.prefix, file.key_event, topic, partition, file.first_offset)
            self.store.put(key, ("\n".join(file.lines) + "\n").encode(), "application/jsonlines")
            keys.append(key)
            self.records_written += len(file.lines)
        self.discard()
        return keys

    def discard(self) -> None:
        """Forget the buffered records (written or not): the consumer loop replays their messages."""
        self._files.clear()
        self._buffered = 0
        self._buffered_bytes = 0
        self._opened_at = None


def read_capture_lines(data: bytes) -> tuple[list[dict], int]:
    """Parse a capture file; returns the records and how many lines could not be read."""
    records, bad = [], 0
    for line in data.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["captureData"]["endpointOutput"]["data"]
            records.append(record)
        except (ValueError, KeyError, TypeError):
            bad += 1
    return records, bad
