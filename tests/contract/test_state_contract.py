from __future__ import annotations

import json

from signwatch.ports.state import Increment, OutboxEntry, Push
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
