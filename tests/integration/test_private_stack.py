"""The tests' private stack starts beside the shared one: every listener of its own, both answer."""

from __future__ import annotations

import pytest

from signwatch.stack import status
from signwatch.stack.seaweed import GRPC_OFFSET, extra_ports
from tests.conftest import PROJECT

pytestmark = pytest.mark.stack


def test_private_stack_runs_beside_the_shared_stack(stack, private_stack):
    root, config = private_stack
    mine = status(root)
    assert mine.all_up, mine.model_dump()
    assert mine.kafka.bootstrap == "127.0.0.1:19092"
    assert mine.redis.url == "redis://127.0.0.1:16379/0"
    assert mine.s3.endpoint == "http://127.0.0.1:18433"
    assert all(pid is not None for pid in mine.pids().values())  # this session started them

    shared = status(PROJECT)
    assert shared.all_up, "the shared stack must keep answering while the private one runs"
    assert set(mine.pids().values()).isdisjoint(shared.pids().values())

    from signwatch.stack.paths import StackConfig

    default_ports = {p for port in extra_ports(StackConfig()).values() for p in (port, port + GRPC_OFFSET)}
    private_ports = {p for port in extra_ports(config).values() for p in (port, port + GRPC_OFFSET)}
    assert default_ports.isdisjoint(private_ports)
