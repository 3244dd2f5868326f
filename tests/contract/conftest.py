"""Each port's contract suite runs once per adapter: the in-process one and the real one."""

from __future__ import annotations

import pytest

from signwatch.ports import open_bus, open_state, open_store


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.stack)])
def bus(request, unique):
    if request.param == "memory":
        adapter = open_bus(f"memory://contract-{unique}")
    else:
        stack = request.getfixturevalue("stack")
        adapter = open_bus(f"kafka://{stack['kafka']['bootstrap']}")
    yield adapter
    adapter.close()


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.stack)])
def store(request, tmp_path):
    if request.param == "file":
        return open_store(tmp_path.as_uri())
    stack = request.getfixturevalue("stack")["s3"]
    return open_store(f"s3://{stack['bucket']}?endpoint={stack['endpoint']}",
                      access_key=stack["access_key"], secret_key=stack["secret_key"])


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.stack)])
def state(request):
    if request.param == "memory":
        adapter = open_state("memory://")
    else:
        adapter = open_state(request.getfixturevalue("stack")["redis"]["url"])
    yield adapter
    adapter.close()
