"""The development stack: real Kafka, Redis and S3 (SeaweedFS) servers on loopback.

    from signwatch.stack import up, down, status, stack_env
    st = up()                      # installs on first use, starts, waits until each answers
    env = stack_env()              # SIGNWATCH_BUS_URL, SIGNWATCH_STATE_URL, SIGNWATCH_STORE_URL, ...
    down()                         # stops only what `up` started

Everything is kept under ``<root>/.stack/`` (root = current directory by default). See docs/stack.md.
"""

from __future__ import annotations

from .errors import StackError
from .manager import down, stack_env, status, up
from .models import KafkaStatus, RedisStatus, S3Status, StackStatus
from .paths import StackConfig, StackPaths

__all__ = [
    "KafkaStatus",
    "RedisStatus",
    "S3Status",
    "StackConfig",
    "StackError",
    "StackPaths",
    "StackStatus",
    "down",
    "stack_env",
    "status",
    "up",
]
