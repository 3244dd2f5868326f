from __future__ import annotations

import pytest

from signwatch.ports.store import ObjectNotFound


def test_put_get_list_delete(store, unique):
    base = f"contract/{unique}"
    uri = store.put(f"{base}/a/1.json", b'{"x": 1}', "application/json")
    store.put(f"{base}/a/2.json", b"two")
    store.put(f"{base}/b/3.bin", b"\x00\x01")
    assert uri.endswith(f"{base}/a/1.json")
    assert store.get(f"{base}/a/1.json") == b'{"x": 1}'
    assert store.list(f"{base}/a/") == [f"{base}/a/1.json", f"{base}/a/2.json"]
    assert store.list(base) == sorted([f"{base}/a/1.json", f"{base}/a/2.json", f"{base}/b/3.bin"])
    assert store.exists(f"{base}/b/3.bin")
    store.delete(f"{base}/b/3.bin")
    assert not store.exists(f"{base}/b/3.bin")
    assert store.ping()


def test_put_replaces(store, unique):
    key = f"contract/{unique}/same.jsonl"
    store.put(key, b"old")
    store.put(key, b"new")
    assert store.get(key) == b"new"
    assert store.list(f"contract/{unique}/") == [key]


def test_missing_object_raises_object_not_found(store, unique):
    with pytest.raises(ObjectNotFound):
        store.get(f"contract/{unique}/missing")


@pytest.mark.parametrize("key", ["", "/abs", "../escape", "a/../../b", "a\\b"])
def test_keys_that_could_escape_are_refused(store, key):
    with pytest.raises(ValueError):
        store.put(key, b"x")
