from __future__ import annotations

import json

from signwatch.ports.state import Increment, Push
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
