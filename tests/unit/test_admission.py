"""The body budget: bytes count as they arrive, slow uploads take one of a few slots."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from signwatch.serving import ServingError
from signwatch.serving.admission import BodyBudget


def test_a_body_holds_what_arrived_and_the_budget_refuses_beyond_it():
    budget = BodyBudget(max_bytes=1000, max_slow=1)
    slow, fast = budget.ticket(), budget.ticket()
    slow.hold(10)  # declared 6 MB, sent 10 bytes: holds 10
    fast.hold(990)
    with pytest.raises(ServingError) as refused:
        budget.ticket().hold(1)
    assert refused.value.kind == "busy"
    fast.release()
    assert budget.held == 10
    budget.ticket().hold(990)


def test_slow_uploads_take_a_slot_and_one_more_is_cut_off_with_408():
    registry = CollectorRegistry()
    budget = BodyBudget(max_bytes=1 << 20, max_slow=2, registry=registry)
    first, second, third = budget.ticket(), budget.ticket(), budget.ticket()
    first.become_slow(1.0)
    second.become_slow(1.0)
    with pytest.raises(ServingError) as cut:
        third.become_slow(1.0)
    assert (cut.value.kind, cut.value.reason) == ("input", "body_timeout")
    assert b"signwatch_inference_slow_uploads 2.0" in generate_latest(registry)
    first.release()
    first.release()  # idempotent
    assert budget.slow == 1
    third.become_slow(1.0)
    assert budget.slow == 2
