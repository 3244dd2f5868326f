from __future__ import annotations

import json

import pytest

from signwatch.ports.state import Increment, JoinItem, JoinKeys, OutboxEntry, Push
from tests.conftest import wait_until


def test_apply_once_applies_exactly_once(state, unique):
    key, lst = f"t:{unique}:counts", f"t:{unique}:list"
    changes = ([Increment(key, "total", 1, 60), Increment(key, "class:14", 2, 60)],
               [Push(lst, json.dumps({"n": 1}), 3, 60)])
    assert state.apply_once(f"t:{unique}:token", 60, *changes) is True
    assert state.apply_once(f"t:{unique}:token", 60, *changes) is False
    assert state.get_counts([key, f"t:{unique}:none"]) == [{"total": 1, "class:14": 2}, {}]
    assert state.get_list(lst) == [json.dumps({"n": 1})]


def test_lists_are_capped_newest_first(state, unique):
    lst = f"t:{unique}:list"
    for i in range(5):
        state.apply_once(f"t:{unique}:{i}", 60, [], [Push(lst, str(i), 3, 60)])
    assert state.get_list(lst) == ["4", "3", "2"]


def test_set_once_and_delete(state, unique):
    flag = f"t:{unique}:flag"
    assert state.set_once(flag, 60)
    assert not state.set_once(flag, 60)
    state.delete(flag)
    assert state.set_once(flag, 60)
    assert state.ping()


def test_keys_expire(state, unique):
    flag = f"t:{unique}:short"
    assert state.set_once(flag, 1)
    wait_until(lambda: state.set_once(flag, 1), timeout_s=5, interval_s=0.1, what="expiry")


def test_values_are_claimed_once_and_read_back(state, unique):
    key = f"t:{unique}:episode"
    assert state.get_value(key) is None
    assert state.set_value(key, "first", 60, if_absent=True)
    assert not state.set_value(key, "second", 60, if_absent=True), "a claim is taken once"
    assert state.get_value(key) == "first"
    assert state.set_value(key, "updated", 60)
    assert state.get_value(key) == "updated"
    state.delete(key)
    assert state.get_value(key) is None


def test_apply_many_is_apply_once_for_each_in_one_call(state, unique):
    key = f"t:{unique}:many"
    batch = [(f"t:{unique}:tok{i % 3}", 60, [Increment(key, "n", 1, 60)], [Push(f"t:{unique}:l", str(i), 5, 60)])
             for i in range(5)]
    assert state.apply_many(batch) == [True, True, True, False, False]
    assert state.get_counts([key]) == [{"n": 3}]
    assert state.get_list(f"t:{unique}:l") == ["2", "1", "0"]
    assert state.apply_many([]) == []


def test_a_claim_writes_its_outbox_entry_and_lease_in_one_step(state, unique):
    box, lease, old = f"t:{unique}:outbox", f"t:{unique}:lease", f"t:{unique}:old"
    entry = OutboxEntry(box, "v1:open", '{"violation_id": "v1"}', 60, lease, 60)
    assert state.set_value(old, "record", 60)
    assert state.claim(f"t:{unique}:claim", "record", 60, entry, delete=(old,))
    assert state.get_value(f"t:{unique}:claim") == "record" and state.get_value(old) is None
    assert state.outbox(box) == {"v1:open": '{"violation_id": "v1"}'}
    assert not state.set_once(lease, 60), "the claimer holds the entry's lease"
    other = OutboxEntry(box, "v2:open", "{}", 60, f"t:{unique}:lease2", 60)
    assert not state.claim(f"t:{unique}:claim", "again", 60, other), "a claim is taken once"
    assert state.outbox(box) == {"v1:open": '{"violation_id": "v1"}'}, "a lost claim writes no entry"
    assert state.set_once(f"t:{unique}:lease2", 60), "nor a lease"
    state.outbox_done(box, "v1:open")
    state.outbox_done(box, "v1:open")  # done twice: harmless
    assert state.outbox(box) == {} and state.outbox(f"t:{unique}:none") == {}


def test_an_outbox_lease_runs_out(state, unique):
    lease = f"t:{unique}:lease"
    entry = OutboxEntry(f"t:{unique}:outbox", "e", "x", 60, lease, 1)
    assert state.claim(f"t:{unique}:claim", "1", 60, entry)
    wait_until(lambda: state.set_once(lease, 60), timeout_s=5, interval_s=0.1, what="the lease to run out")
    assert state.outbox(f"t:{unique}:outbox") == {"e": "x"}, "the entry stays until done"


def _join_keys(unique: str, days: int = 3, shard_chars: int = 0) -> JoinKeys:
    return JoinKeys(days=tuple(f"t:{unique}:gt:day{d}" for d in range(days)),
                    day_stats=tuple(f"t:{unique}:gt:stats{d}" for d in range(days)), day_ttl_s=60,
                    pairs=f"t:{unique}:gt:pairs", pairs_ttl_s=60, recent=f"t:{unique}:gt:recent", recent_max=3,
                    shard_chars=shard_chars)


def _stats(state, keys: JoinKeys) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in state.get_counts(list(keys.day_stats)):
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    return {k: v for k, v in total.items() if v}


@pytest.mark.parametrize("shard_chars", [0, 1])
def test_join_counts_each_pair_once_in_either_order(state, unique, shard_chars):
    keys = _join_keys(unique, shard_chars=shard_chars)
    pred = lambda f, v, alias=None: JoinItem("prediction", f, v, alias, note=f"ev-{f}")  # noqa: E731
    label = lambda f, v: JoinItem("label", f, v, note=f"id-{f}")  # noqa: E731
    # prediction first, then its label; a label first (by the client's id), then its prediction
    assert state.join(keys, [pred("a", "14,9"), pred("b", "3,2", alias="inf-b"), label("inf-c", "5")]) == [
        "pending", "pending", "waiting"]
    assert state.join(keys, [label("a", "14"), label("inf-b", "1"), pred("c", "5,7", alias="inf-c")]) == [
        "matched", "matched", "matched"]
    # a label again (by either id), a replayed prediction, a label for an unknown id
    assert state.join(keys, [label("a", "2"), label("b", "1"), pred("a", "14,9"), label("zz", "4")]) == [
        "duplicate", "duplicate", "seen", "waiting"]
    [pairs] = state.get_counts([keys.pairs])
    assert pairs == {"14,14": 1, "1,3": 1, "5,5": 1, "n9": 1, "c9": 1, "n2": 1, "n7": 1, "c7": 1}
    assert state.get_list(keys.recent) == ["5,5,7,ev-c", "1,3,2,id-inf-b", "14,14,9,id-a"]
    assert _stats(state, keys) == {"matched": 3, "duplicates": 2, "labels_waiting": 1}


@pytest.mark.parametrize("shard_chars", [0, 1])
def test_a_prediction_labelled_by_both_its_ids_before_it_came_is_one_pair_and_one_duplicate(state, unique, shard_chars):
    keys = _join_keys(unique, shard_chars=shard_chars)
    assert state.join(keys, [JoinItem("label", "inf-a", "5"), JoinItem("label", "a", "5")]) == ["waiting", "waiting"]
    assert state.join(keys, [JoinItem("prediction", "a", "5,7", alias="inf-a")]) == ["matched"]
    assert state.join(keys, [JoinItem("label", "inf-a", "5")]) == ["duplicate"]
    assert _stats(state, keys) == {"matched": 1, "duplicates": 2}  # no label left waiting


def test_join_finds_entries_of_older_days_and_counts_them_there(state, unique):
    keys = _join_keys(unique)
    older = JoinKeys(days=keys.days[1:] + keys.days[:1], day_stats=keys.day_stats[1:] + keys.day_stats[:1],
                     day_ttl_s=60, pairs=keys.pairs, pairs_ttl_s=60, recent=keys.recent, recent_max=3)
    assert state.join(older, [JoinItem("prediction", "x", "7,4"), JoinItem("prediction", "y", "7,4")]) == [
        "pending", "pending"]  # written to day 1, which is "today" for ``older``
    assert state.join(keys, [JoinItem("label", "x", "8")]) == ["matched"]
    counts = state.get_counts(list(keys.day_stats))
    assert counts[1] == {"predictions_pending": 1} and counts[0] == {"matched": 1}
    assert state.get_counts([keys.pairs]) == [{"8,7": 1, "n4": 1}]
