"""Settings for every service, read once by a composition root and passed in.

All variables carry the ``SIGNWATCH_`` prefix. When the bus, store and state URLs are left
unset and a local stack was started with ``signwatch stack up`` in the working directory, the
stack's endpoints are used; otherwise everything runs embedded in memory and a local folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIGNWATCH_", extra="ignore")

    # Ports, chosen by URL scheme (see signwatch.ports).
    bus_url: str | None = Field(None, description="kafka://host:port[?linger_ms=200] or memory://")
    store_url: str | None = Field(None, description="s3://bucket?endpoint=URL or file:///path")
    state_url: str | None = Field(None, description="redis://host:port/db or memory://")
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"

    # Topics.
    inference_topic: str = "signwatch.inference"
    violations_topic: str = "signwatch.violations"
    explanations_topic: str = "signwatch.explanations"
    topic_partitions: int = Field(3, ge=1)

    # Endpoint identity, as SageMaker names it.
    endpoint: str = "signwatch"
    variant: str = "AllTraffic"

    # Inference service.
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    model_path: str | None = Field(
        None, description="safetensors weights (manifest beside them): a local path, or "
        "s3://bucket/key.safetensors[?endpoint=URL] fetched once into model_cache_dir; shipped ones by default")
    model_cache_dir: Path = Field(Path.home() / ".cache" / "signwatch" / "models",
                                  description="where weights fetched from S3 are kept, by sha256")
    max_body_bytes: int = Field(6 * 1024 * 1024, ge=1024, description="SageMaker's invocation limit")
    max_image_side: int = Field(4096, ge=8)
    max_image_pixels: int = Field(1024 * 1024, ge=64, description="decoded pixels per image")
    max_batch_images: int = Field(64, ge=1, description="images in one .npy batch request")
    max_batch_size: int = Field(32, ge=1, description="images in one forward pass, at most")
    # Two forwards side by side, one PyTorch thread each: on the 2-core CPU two batch-32 forwards
    # on one thread each give 768 images/s, one forward on two threads 585-667 (its OpenMP threads
    # wait for each other, and for the event loop when it takes a core).
    forward_workers: int = Field(2, ge=1, description="forward passes run at once, each in its own thread "
                                 "(one per core the pod may use)")
    forward_graph: Literal["frozen", "eager"] = Field(
        "frozen", description="the served forward: TorchScript graphs frozen for inference (1.5x the images/s "
        "of eager on the 2-core CPU, see signwatch.model.frozen), or the eager model")
    torch_threads: int | None = Field(
        1, ge=1, description="PyTorch intra-op threads of a `serve inference` (or `all`) process; unset: PyTorch's default")
    access_log: bool = Field(False, description="one log line per HTTP request (uvicorn's access log)")
    max_batch_wait_ms: float = Field(
        5.0, ge=0, description="the longest a free forward worker waits to gather its fair share of requests")
    inference_queue_size: int = Field(512, ge=1, description="images waiting for the model; then 429")
    max_inflight_bytes: int = Field(192 * 1024 * 1024, ge=1024, description="request bodies held at once")
    decode_workers: int = Field(2, ge=1, description="images decoded at once")
    body_timeout_s: float = Field(10.0, gt=0, description="time to receive a whole request body")
    publish_events: bool = Field(True, description="False: serve without publishing (capture off)")
    event_buffer_events: int = Field(20_000, ge=1, description="events waiting for the bus, at most")
    event_buffer_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="bytes of those, at most")
    top_k: int = Field(5, ge=1, le=43)
    inline_input_limit_bytes: int = Field(
        64 * 1024, description="inputs larger than this travel by claim check in the store"
    )
    admin_token: SecretStr | None = Field(None, description="bearer token for /admin endpoints")
    debugger_worker: str | None = Field(
        None, pattern=r"^[A-Za-z0-9.-]{1,100}$",
        description="this replica's worker name in debugger steps (default hostname-pid)")

    # Capture service.
    capture_prefix: str = "datacapture"
    capture_sampling_percentage: float = Field(100.0, ge=0, le=100)
    capture_batch_records: int = Field(100, ge=1)
    capture_flush_seconds: float = Field(5.0, gt=0)
    capture_batch_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="buffered capture bytes, at most")
    capture_group: str = Field("signwatch-capture", description="the capture service's consumer group")

    # Monitor service (docs/monitoring.md). Thresholds default to the baseline's constraints.json;
    # the ones set here override it.
    monitor_share_threshold: float | None = Field(None, gt=0, le=1, description="over-prediction share (0.5)")
    monitor_min_predictions: int | None = Field(None, ge=1, description="min window for over-prediction (20)")
    monitor_min_drift: int | None = Field(None, ge=20, description="min window for the drift tests (100)")
    monitor_alpha_per_day: float | None = Field(None, gt=0, lt=1, description="false-alarm budget a day (0.01)")
    monitor_low_confidence: float | None = Field(None, ge=0, le=1, description="top-3 all below this (0.5)")
    monitor_window_seconds: int = Field(300, ge=10, description="time window")
    monitor_bucket_seconds: int = Field(10, ge=1)
    monitor_count_window: int = Field(200, ge=20, le=10_000, description="the last N predictions")
    monitor_check_every_events: int = Field(50, ge=1)
    monitor_check_interval_seconds: float = Field(1.0, gt=0)
    monitor_resolve_after_seconds: float = Field(120.0, ge=0, description="passing this long ends an episode")
    monitor_samples_per_class: int = Field(8, ge=1, le=64)
    monitor_baseline_prefix: str | None = Field(None, description="store prefix (default baselines/{endpoint})")
    monitor_group: str = Field("signwatch-monitor", description="the monitor service's consumer group")

    # Explainer service.
    explanations_prefix: str = "explanations"
    explainer_method: str = Field("fullgrad", pattern="^(fullgrad|input_x_gradient|gradcam)$")
    explainer_port: int = Field(8081, ge=0, le=65535, description="explainer HTTP: /explain, health")
    capture_port: int = Field(8082, ge=0, le=65535, description="capture health and metrics")
    monitor_port: int = Field(8083, ge=0, le=65535, description="monitor health and metrics")

    # Consumers.
    poll_timeout_ms: int = Field(500, ge=1)


def with_local_stack(settings: Settings, root: Path | None = None) -> Settings:
    """Fill unset port URLs from a stack started by ``signwatch stack up`` under ``root``."""
    from signwatch.stack import stack_env

    env = stack_env(root or Path.cwd())
    if not env:
        return settings
    updates: dict[str, object] = {}
    for field, var in (
        ("bus_url", "SIGNWATCH_BUS_URL"),
        ("store_url", "SIGNWATCH_STORE_URL"),
        ("state_url", "SIGNWATCH_STATE_URL"),
    ):
        if getattr(settings, field) is None and var in env:
            updates[field] = env[var]
    if settings.s3_access_key is None and "SIGNWATCH_S3_ACCESS_KEY" in env:
        updates["s3_access_key"] = SecretStr(env["SIGNWATCH_S3_ACCESS_KEY"])
        updates["s3_secret_key"] = SecretStr(env["SIGNWATCH_S3_SECRET_KEY"])
    return settings.model_copy(update=updates)
