"""A trial written in smdebug's own on-disk layout, so that ``smdebug.trials.create_trial`` reads it.

    {out}/events/{step:012d}/{step:012d}_{worker}.tfevents     TFRecord-framed Event protobufs,
                                                               one Summary tensor value each
    {out}/index/{step // 1000:09d}/{step:012d}_{worker}.json   where each tensor lies in its event file
    {out}/collections/000000000/{worker}_collections.json     collections and num_workers
    {out}/training_job_end.ts                                  written last: the trial is complete

Names are smdebug's (``ResNet_bn1.bias``, ``layer1.0.bn1_output_0``, ``ResNet_input_0``,
``gradient/...``), every step is a PREDICT step whose mode step is its step, one worker per replica.
The layout follows smdebug 1.0.34 (smdebug/core/locations.py, tfevent/, tfrecord/record_writer.py,
index_reader.py, collection_manager.py).

The protobuf messages are encoded here by hand (four small messages) rather than with smdebug,
whose last release needs numpy < 2 and protobuf 3.20, or with generated protobuf classes, which
would need TensorFlow's .proto files in the project.
"""

from __future__ import annotations

import json
import struct
from datetime import datetime
from typing import Callable

import numpy as np
from tqdm import tqdm

from signwatch.ports.store import ObjectStore

from .layout import smdebug_name
from .modes import ModeKeys
from .trial import Trial, open_location

__all__ = ["export_smdebug", "encode_tensor_event", "tfrecord", "masked_crc32c"]

END_OF_JOB_FILE = "training_job_end.ts"
# smdebug writes, and by default checks, this constant instead of the payload's CRC (write_checksum=False).
CHECKSUM_MAGIC_BYTES = b"0x12345678"
INDEX_FILES_PER_PREFIX = 1000

# TensorFlow's DataType numbers (types.proto) for the dtypes smdebug reads back faithfully.
_DTYPES = {
    np.dtype(np.float16): 19, np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3,
    np.dtype(np.uint8): 4, np.dtype(np.int64): 9, np.dtype(np.bool_): 10,
}


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli). Pure Python is enough: only 8-byte record headers are summed."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    x = crc32c(data)
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


_MAGIC_FOOTER = struct.pack("<I", masked_crc32c(CHECKSUM_MAGIC_BYTES))


def tfrecord(payload: bytes) -> bytes:
    """One TFRecord: uint64 length, its masked CRC, the payload, smdebug's constant footer."""
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", masked_crc32c(header)) + payload + _MAGIC_FOOTER


# ------------------------------------------------------------------------------ protobuf wire format

def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1  # int64 as protobuf encodes it: ten bytes, two's complement
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""  # proto3 leaves defaults out


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value if value else b""


def _field_double(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", value) if value else b""


def _tensor_proto(array: np.ndarray, tag: str) -> bytes:
    dtype = _DTYPES.get(array.dtype)
    if dtype is None:
        raise TypeError(f"tensor {tag!r}: dtype {array.dtype} has no smdebug equivalent")
    dims = b"".join(
        _field_bytes(2, _field_varint(1, int(d)) + _field_bytes(2, f"{tag}_{d}".encode())) for d in array.shape
    )
    content = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    # dtype (1), tensor_shape (2; present even when empty, as smdebug writes it), tensor_content (4)
    return _field_varint(1, dtype) + _varint(2 << 3 | 2) + _varint(len(dims)) + dims + _field_bytes(4, content)


def encode_tensor_event(name: str, array: np.ndarray, step: int, wall_time: float,
                        mode: ModeKeys = ModeKeys.PREDICT, mode_step: int | None = None) -> bytes:
    """An Event{wall_time, step, summary: Summary{value: [Value{tag, metadata, tensor}]}} as smdebug writes it."""
    mode_step = step if mode_step is None else mode_step
    plugins = b"".join(
        _field_bytes(1, _field_bytes(1, plugin.encode()) + _field_bytes(2, content.encode()))
        for plugin, content in (("mode_step", str(mode_step)), ("mode", str(mode.value)))
    )
    value = _field_bytes(1, name.encode()) + _field_bytes(8, _tensor_proto(array, name)) + _field_bytes(9, plugins)
    return _field_double(1, wall_time) + _field_varint(2, step) + _field_bytes(5, _field_bytes(1, value))


# -------------------------------------------------------------------------------------- layout

def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix else key


def event_file_key(step: int, worker: str) -> str:
    return f"events/{step:012d}/{step:012d}_{worker}.tfevents"


def index_file_key(step: int, worker: str) -> str:
    return f"index/{step // INDEX_FILES_PER_PREFIX:09d}/{step:012d}_{worker}.json"


def _wall_time(meta: dict) -> float:
    try:
        return datetime.fromisoformat(meta["time"].replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return 0.0


def _collections(names: list[str], include_regex: list[str], num_workers: int) -> bytes:
    def collection(name: str, regex: list[str], tensors: list[str]) -> dict:
        return {"name": name, "include_regex": regex, "tensor_names": tensors, "save_histogram": False}

    return json.dumps({
        "collections": {
            "all": collection("all", [".*"], names),
            "debugger": collection("debugger", include_regex, names),  # what the recording included
        },
        "_meta": {"num_workers": num_workers},
    }).encode()


def export_smdebug(trial: Trial, out: ObjectStore | str, prefix: str = "", *,
                   progress: bool = False, on_step: Callable[[int, str], None] | None = None,
                   settings=None) -> dict:
    """Write every step of every worker of ``trial`` to ``out`` (a store and key prefix, or a folder,
    file:// or s3:// URI; S3 credentials from ``settings``, as ``create_trial``) in smdebug's layout.
    Returns a summary: steps, workers, tensors, bytes."""
    if isinstance(out, str):
        out, prefix = open_location(out, must_exist=False, settings=settings)
    steps = trial.steps()
    if not steps:
        raise ValueError(f"nothing to export: {trial.uri} has no recorded steps")
    pairs = [(s, w) for s in steps for w in trial.workers(s)]
    workers = sorted({w for _, w in pairs})
    names: set[str] = set()
    regexes: set[str] = set()
    total_bytes = tensors = 0
    for step, worker in tqdm(pairs, desc="export smdebug", unit="step", disable=not progress):
        meta = trial.step_meta(step, worker)
        root = meta.get("model_class") or "Model"
        regexes.add(meta.get("include_regex", ".*"))
        wall_time = _wall_time(meta)
        events, payload, offset = [], [], 0
        for own, array in sorted(trial.step_tensors(step, worker).items()):
            name = smdebug_name(own, root)
            if array.size == 0:
                continue  # smdebug writes no empty tensors
            record = tfrecord(encode_tensor_event(name, np.asarray(array), step, wall_time))
            events.append(record)
            payload.append({"tensorname": name, "start_idx": offset, "length": len(record)})
            offset += len(record)
            names.add(name)
        event_key = event_file_key(step, worker)
        blob = b"".join(events)
        out.put(_join(prefix, event_key), blob, "application/octet-stream")
        index = {"meta": {"mode": ModeKeys.PREDICT.name, "mode_step": step, "event_file_name": event_key},
                 "tensor_payload": payload, "shape_payload": []}
        # The index after its event file: smdebug waits for an indexed event file that is missing.
        out.put(_join(prefix, index_file_key(step, worker)), json.dumps(index).encode(), "application/json")
        total_bytes += len(blob)
        tensors += len(payload)
        if on_step is not None:
            on_step(step, worker)
    collections = _collections(sorted(names), sorted(regexes), len(workers))
    for worker in workers:
        out.put(_join(prefix, f"collections/000000000/{worker}_collections.json"), collections, "application/json")
    out.put(_join(prefix, END_OF_JOB_FILE), b"", "application/octet-stream")
    return {"location": out.uri(prefix) if prefix else str(getattr(out, "root", "")),
            "steps": len(steps), "workers": workers, "tensors": tensors, "event_bytes": total_bytes}
