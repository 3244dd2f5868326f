"""What `status` reports. ``StackStatus.model_dump()`` is the JSON of ``signwatch stack status --json``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class KafkaStatus(BaseModel):
    bootstrap: str
    up: bool
    pid: int | None = Field(default=None, exclude=True)


class RedisStatus(BaseModel):
    url: str
    up: bool
    pid: int | None = Field(default=None, exclude=True)


class S3Status(BaseModel):
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    up: bool
    pid: int | None = Field(default=None, exclude=True)


class StackStatus(BaseModel):
    """Endpoints of the stack and whether each answers now.

    ``pid`` (the process this stack started, if it runs) is kept out of the JSON.
    """

    kafka: KafkaStatus
    redis: RedisStatus
    s3: S3Status

    @property
    def all_up(self) -> bool:
        return self.kafka.up and self.redis.up and self.s3.up

    def pids(self) -> dict[str, int | None]:
        return {"kafka": self.kafka.pid, "redis": self.redis.pid, "s3": self.s3.pid}
