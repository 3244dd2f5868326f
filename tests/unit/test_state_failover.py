"""A state store that failed over may have lost its last writes: the windows count as lost until
rebuilt. The ``redis+sentinel://`` URL and what it refuses."""

from __future__ import annotations

import pytest

from signwatch.monitoring.windows import Windows
from signwatch.ports import UnsupportedURL, check_url, open_state
from signwatch.ports.state_memory import MemoryState
from signwatch.ports.state_redis import SentinelRedisState, parse_sentinel_url


class FailingOver(MemoryState):
    """A memory store that can be told it moved to a replica."""

    def __init__(self) -> None:
        super().__init__()
        self.moved = 0

    def failovers(self) -> int:
        return self.moved


def test_windows_are_lost_after_a_failover_until_rebuilt():
    state = FailingOver()
    state.moved = 2  # failovers before the windows existed do not count
    windows = Windows(state, "ep", n_classes=3)
    windows.mark_alive()
    assert not windows.lost()
    state.moved = 3
    assert windows.lost()
    assert windows.lost(), "lost until rebuilt, not only at the first look"
    windows.mark_alive()  # what Monitor.rebuilt does
    assert not windows.lost()


def test_windows_without_their_marker_are_lost():
    windows = Windows(MemoryState(), "ep", n_classes=3)
    assert windows.lost()
    windows.mark_alive()
    assert not windows.lost() and MemoryState().failovers() == 0


def test_sentinel_urls():
    assert parse_sentinel_url("10.0.0.1:26379,10.0.0.2:26379", "/signwatch/2") == (
        [("10.0.0.1", 26379), ("10.0.0.2", 26379)], "signwatch", 2)
    assert parse_sentinel_url("[::1]:26379", "/signwatch") == ([("::1", 26379)], "signwatch", 0)
    check_url("state", "redis+sentinel://127.0.0.1:26379/signwatch/0")
    for bad in ("redis+sentinel://127.0.0.1:26379", "redis+sentinel://sentinel/signwatch",
                "redis+sentinel://127.0.0.1:26379/signwatch/zero", "redis+sentinel://127.0.0.1:26379/a/0/b",
                "redis+sentinel://127.0.0.1:26379/signwatch?socket_timeout=1"):
        with pytest.raises(UnsupportedURL):
            open_state(bad)


def test_a_sentinel_url_opens_lazily_with_the_password_for_the_master():
    state = open_state("redis+sentinel://:s%40cret@127.0.0.1:1/signwatch/3")  # nothing listens: no error yet
    try:
        assert isinstance(state, SentinelRedisState) and state.failovers() == 0
        options = state._client.connection_pool.connection_kwargs
        assert options["password"] == "s@cret" and options["db"] == 3 and options["socket_timeout"] == 5
        assert not state.ping()  # no Sentinel answers: not ready, no hang
    finally:
        state.close()
