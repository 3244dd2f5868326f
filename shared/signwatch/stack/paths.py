"""Where the development stack keeps its files, and which ports it uses.

Everything lives under ``<root>/.stack/`` (``root`` is the project folder, the current working
directory by default). The folder is git-ignored; deleting it resets the stack completely.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from .errors import StackError

STACK_DIRNAME = ".stack"


@dataclass(frozen=True)
class StackPaths:
    """The files of one stack (one project folder)."""

    root: Path

    @classmethod
    def of(cls, root: Path | str | None = None) -> "StackPaths":
        return cls(Path(root if root is not None else Path.cwd()).resolve())

    @property
    def stack(self) -> Path:
        return self.root / STACK_DIRNAME

    # shared files
    @property
    def state_file(self) -> Path:
        """Ports of the stack started by `up`; present from `up` until `down`."""
        return self.stack / "state.json"

    @property
    def credentials_file(self) -> Path:
        """Generated S3 development credentials (mode 0600, created once, kept by `down`)."""
        return self.stack / "credentials.json"

    @property
    def lock_file(self) -> Path:
        return self.stack / "lock"

    def pid_file(self, service: str) -> Path:
        return self.stack / f"{service}.pid"

    # kafka
    @property
    def kafka(self) -> Path:
        return self.stack / "kafka"

    @property
    def kafka_libs(self) -> Path:
        return self.kafka / "libs"

    @property
    def kafka_data(self) -> Path:
        return self.kafka / "data"

    @property
    def kafka_config(self) -> Path:
        return self.kafka / "server.properties"

    @property
    def kafka_log4j(self) -> Path:
        return self.kafka / "log4j2.properties"

    @property
    def kafka_log(self) -> Path:
        return self.kafka / "server.log"

    # redis
    @property
    def redis(self) -> Path:
        return self.stack / "redis"

    @property
    def redis_log(self) -> Path:
        return self.redis / "redis.log"

    # seaweedfs
    @property
    def seaweed(self) -> Path:
        return self.stack / "seaweed"

    @property
    def seaweed_data(self) -> Path:
        return self.seaweed / "data"

    @property
    def seaweed_identities(self) -> Path:
        return self.seaweed / "s3-identities.json"

    @property
    def seaweed_log(self) -> Path:
        return self.seaweed / "weed.log"


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise StackError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise StackError(f"{name}={raw!r} is not a port number")
    return port


class StackConfig(BaseModel):
    """Ports and names. Defaults can be overridden with SIGNWATCH_STACK_* environment variables."""

    host: str = "127.0.0.1"
    kafka_port: int = Field(9092, gt=0, lt=65536)
    kafka_controller_port: int = Field(9093, gt=0, lt=65536)
    redis_port: int = Field(6379, gt=0, lt=65536)
    s3_port: int = Field(8333, gt=0, lt=65536)
    # SeaweedFS `weed mini` listens on these too (each also + 10000 for gRPC); a second stack beside
    # the first (the tests' private stack) needs its own
    seaweed_master_port: int = Field(9333, gt=0, lt=55536)
    seaweed_volume_port: int = Field(9340, gt=0, lt=55536)
    seaweed_filer_port: int = Field(8888, gt=0, lt=55536)
    seaweed_admin_port: int = Field(23646, gt=0, lt=55536)
    bucket: str = "signwatch"

    @classmethod
    def from_env(cls, **overrides: int | str | None) -> "StackConfig":
        values = {
            "kafka_port": _env_port("SIGNWATCH_STACK_KAFKA_PORT", 9092),
            "kafka_controller_port": _env_port("SIGNWATCH_STACK_KAFKA_CONTROLLER_PORT", 9093),
            "redis_port": _env_port("SIGNWATCH_STACK_REDIS_PORT", 6379),
            "s3_port": _env_port("SIGNWATCH_STACK_S3_PORT", 8333),
            "seaweed_master_port": _env_port("SIGNWATCH_STACK_SEAWEED_MASTER_PORT", 9333),
            "seaweed_volume_port": _env_port("SIGNWATCH_STACK_SEAWEED_VOLUME_PORT", 9340),
            "seaweed_filer_port": _env_port("SIGNWATCH_STACK_SEAWEED_FILER_PORT", 8888),
            "seaweed_admin_port": _env_port("SIGNWATCH_STACK_SEAWEED_ADMIN_PORT", 23646),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    # endpoints
    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"


def read_state(paths: StackPaths) -> StackConfig | None:
    """The configuration `up` recorded, or None when no stack was started under this root."""
    try:
        return StackConfig.model_validate_json(paths.state_file.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None


def write_state(paths: StackPaths, config: StackConfig) -> None:
    paths.stack.mkdir(parents=True, exist_ok=True)
    tmp = paths.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(config.model_dump(), indent=2) + "\n")
    tmp.replace(paths.state_file)


def project_file(paths: StackPaths, relative: str) -> Path:
    """A file of the source tree (e.g. ``deploy/stack/kafka/pom.xml``).

    Looked up under the stack root first, then in the checkout this package was imported from, so
    that ``up(root=tmp_path)`` still finds the pom.
    """
    here = Path(__file__).resolve()
    candidates = [paths.root / relative]
    if len(here.parents) > 3:
        candidates.append(here.parents[3] / relative)  # <checkout>/shared/signwatch/stack/paths.py
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise StackError(
        f"{relative} not found (looked in {', '.join(str(c.parent) for c in candidates)}); "
        "run the stack from a signwatch checkout"
    )
