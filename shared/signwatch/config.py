"""Settings for every service, read once by a composition root and passed in.

All variables carry the ``SIGNWATCH_`` prefix. When the bus, store and state URLs are left
unset and a local stack was started with ``signwatch stack up`` in the working directory, the
stack's endpoints are used; otherwise everything runs embedded in memory and a local folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from signwatch.events import MAX_NAME, MAX_PREDICTIONS, NAME_PATTERN


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIGNWATCH_", extra="ignore")

    # Ports, chosen by URL scheme (see signwatch.ports).
    bus_url: str | None = Field(None, description="kafka://host:port[?linger_ms=200] or memory://")
    store_url: str | None = Field(None, description="s3://bucket?endpoint=URL or file:///path")
    state_url: str | None = Field(None, description="redis://host:port/db, rediss://..., "
                                  "redis+sentinel://host:port[,host:port]/mastername[/db] or memory://")
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_ca_bundle: Path | None = Field(
        None, description="CA certificates (PEM) that sign an https S3 endpoint's certificate (a private CA)")

    # Transport security (docs/operations.md, Transport security). Each secret may instead be read from
    # a file named by its *_FILE variable (a mounted Kubernetes secret): SIGNWATCH_KAFKA_SASL_PASSWORD_FILE.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka transport: PLAINTEXT, SSL (TLS, optionally mutual), SASL_SSL (TLS + user and "
        "password) or SASL_PLAINTEXT; the bus URL's ?security_protocol= overrides it")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism for SASL_SSL / SASL_PLAINTEXT")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = Field(None, description="or SIGNWATCH_KAFKA_SASL_PASSWORD_FILE")
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_ca_file: Path | None = Field(None, description="CA certificates (PEM) the brokers' certificates chain to")
    kafka_ssl_cert_file: Path | None = Field(None, description="client certificate (PEM), for mutual TLS")
    kafka_ssl_key_file: Path | None = Field(None, description="client key (PEM), for mutual TLS")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="the client key's password, if encrypted "
                                                     "(or SIGNWATCH_KAFKA_SSL_KEY_PASSWORD_FILE)")
    kafka_ssl_key_password_file: Path | None = None
    redis_username: str | None = Field(None, description="Redis ACL user (a user in the state URL wins)")
    redis_password: SecretStr | None = Field(None, description="Redis password (a password in the state URL wins; "
                                             "or SIGNWATCH_REDIS_PASSWORD_FILE)")
    redis_password_file: Path | None = None
    redis_ssl_ca_file: Path | None = Field(None, description="CA certificates (PEM) for a rediss:// state URL")
    redis_ssl_cert_file: Path | None = Field(None, description="client certificate (PEM) for rediss://, if asked")
    redis_ssl_key_file: Path | None = Field(None, description="client key (PEM) for rediss://, if asked")
    s3_access_key_file: Path | None = None
    s3_secret_key_file: Path | None = None

    @field_validator("bus_url", "store_url", "state_url")
    @classmethod
    def _port_url(cls, url: str | None, info) -> str | None:
        """A scheme no adapter serves, or an option it would ignore, stops the service at start."""
        from signwatch.ports import check_url

        if url is not None:
            check_url(info.field_name.removesuffix("_url"), url)
        return url

    @model_validator(mode="after")
    def _secrets_from_files(self):
        """``SIGNWATCH_X_FILE`` names a file holding secret X (a mounted Kubernetes secret): read once, here."""
        for name in SECRET_FILES:
            path = getattr(self, f"{name}_file")
            if path is None:
                continue
            if getattr(self, name) is not None:
                raise ValueError(f"set {name} or {name}_file, not both")
            try:
                value = Path(path).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{name}_file {path}: {exc.strerror}") from None
            setattr(self, name, SecretStr(value))
        return self

    # Topics.
    inference_topic: str = "signwatch.inference"
    violations_topic: str = "signwatch.violations"
    baselines_topic: str = Field(
        "signwatch.baselines", description="the monitor's baseline events: a baseline learned from an endpoint's "
        "first traffic took over (docs/monitoring.md, Baselines at the right time)")
    explanations_topic: str = "signwatch.explanations"
    ground_truth_topic: str = Field(
        "signwatch.ground-truth", description="ground-truth labels, one SageMaker ground-truth record a message "
        "(key: the inference or event id it names); POST /ground-truth and label files in the store feed it too")
    screening_topic: str = Field(
        "signwatch.screening", description="adversarial scores, one per screened inference event (key: its event "
        "id); the explainer publishes them, the monitor counts the flagged share (docs/attacks.md, Screening)")
    topic_partitions: int = Field(3, ge=1)

    # Endpoint identity, as SageMaker names it; parts of store and state keys, so plain names (the
    # events' own rule: a name the consumers would refuse is refused here, at start).
    endpoint: str = Field("signwatch", max_length=MAX_NAME, pattern=NAME_PATTERN)
    variant: str = Field("AllTraffic", max_length=MAX_NAME, pattern=NAME_PATTERN)

    # Inference service.
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    model_path: str | None = Field(
        None, description="the model: signwatch safetensors (manifest beside them), a SageMaker model.tar.gz, a "
        ".pth state dict or a bare safetensors (imported at start), as a local path or s3://bucket/key[?endpoint=URL] "
        "fetched once into model_cache_dir; shipped ones by default")
    model_cache_dir: Path = Field(Path.home() / ".cache" / "signwatch" / "models",
                                  description="where weights fetched from S3 (and imported ones) are kept, by sha256")
    # How a model_path that is not signwatch's own safetensors + manifest (a SageMaker model.tar.gz,
    # a .pth state dict, a bare safetensors) is imported at start (docs/your-model.md).
    model_architecture: str | None = Field(
        None, description="torchvision architecture of an imported model (inferred from its weights when unset)")
    model_num_classes: int | None = Field(None, ge=2, description="class count of an imported model (inferred)")
    model_input_size: int | None = Field(
        None, ge=8, le=1024, description="input size of an imported model (default: its family's, 224 px)")
    model_labels: str | None = Field(
        None, description="labels of an imported model: a file (path, file:// or s3://), one per line or JSON")
    model_mean: tuple[float, float, float] | None = Field(None, description="imported model's normalisation mean")
    model_std: tuple[float, float, float] | None = Field(None, description="imported model's normalisation std")
    model_version: str | None = Field(None, max_length=128, description="version of an imported model")
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
    # Fair admission (docs/operations.md): what one slow client may hold, so that it cannot starve the rest.
    header_timeout_s: float = Field(
        10.0, gt=0, description="time to receive a request's headers, from its connection or its first byte; "
        "then the connection is closed (every service)")
    slow_body_after_s: float = Field(
        1.0, gt=0, description="a body still arriving after this long is a slow upload")
    max_slow_uploads: int = Field(
        16, ge=0, description="slow uploads read at once; one more is cut off with 408 (fast bodies never wait)")
    screening_in_inference: bool = Field(
        False, description="screen every image inside the inference batch (one forward of the batch and its "
        "squeezed copies): each answer gains adversarial_score and flagged, and its event the screening (v4). "
        "Needs the screening calibration for the served model (baselines/{endpoint}/screening.json, else the "
        "shipped one when it fits): without one the service refuses to start. Off: the explainer screens "
        "events off the serving path (screening_enabled), at no cost to inference")
    publish_events: bool = Field(True, description="False: serve without publishing (capture off)")
    event_buffer_events: int = Field(20_000, ge=1, description="events waiting for the bus, at most")
    event_buffer_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="bytes of those, at most")
    top_k: int = Field(5, ge=1, le=MAX_PREDICTIONS,
                       description="classes in each answer, at most the model's class count")
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
    monitor_resolve_after_seconds: float = Field(
        120.0, ge=0, description="an incident ends once every check was clear this long, and for ...")
    monitor_resolve_after_predictions: int = Field(
        100, ge=0, le=1_000_000, description="... as long as the traffic takes to bring this many predictions "
        "(hysteresis that scales with the traffic: 2,000 s at 0.05 requests a second)")
    monitor_sequential: bool = Field(
        True, description="run the sequential checks beside the window checks: evidence per prediction, no "
        "window to fill, detection at any rate (docs/monitoring.md, Sequential checks)")
    monitor_samples_per_class: int = Field(8, ge=1, le=64)
    monitor_baseline_prefix: str | None = Field(None, description="store prefix (default baselines/{endpoint})")
    monitor_baseline_reload_seconds: float = Field(30.0, gt=0, description="how often the baseline is re-read")
    monitor_learn_baseline_seconds: float = Field(
        10_800, ge=0, description="with no baseline uploaded for the endpoint, learn one from its first traffic for "
        "at least this long (and monitor_learn_baseline_min_count predictions), then write it to the store and take it "
        "over; 0: never learn (docs/monitoring.md, Baselines at the right time)")
    monitor_learn_baseline_min_count: int = Field(
        1000, ge=100, description="predictions a learned baseline needs at least, beside monitor_learn_baseline_seconds")
    monitor_shipped_class_checks: bool = Field(
        False, description="let the shipped baseline (rendered signs, uniform classes) judge the class shares of real "
        "traffic; by default it judges only confidence, margin and low confidence")
    monitor_model_reload_seconds: float = Field(
        30.0, gt=0, description="how often the served model's published manifest (models/{endpoint}/manifest.json) "
        "is re-read when SIGNWATCH_MODEL_PATH is unset")
    monitor_group: str = Field("signwatch-monitor", description="the monitor service's consumer group")
    monitor_outbox_grace_seconds: int = Field(
        15, ge=1, description="a claimed violation not published within this long is re-published by any "
        "replica's sweep (keep it above the 10 s publish timeout)")
    monitor_track_window_seconds: float = Field(
        5.0, ge=0, description="frames of one object (image hashes within monitor_track_max_distance, or one "
        "named track=...) seen within this long of the track's last frame count as one observation; 0: off")
    monitor_track_max_distance: int = Field(
        10, ge=0, le=32, description="Hamming distance of two 64-bit image hashes that still shows one object")
    monitor_track_max_age_seconds: float = Field(
        60.0, gt=0, description="a track is counted again once it is this old (a camera that stays on one sign)")
    monitor_track_capacity: int = Field(
        1024, ge=16, le=100_000, description="frames the track list shared by the replicas holds per endpoint")
    monitor_ground_truth: bool = Field(
        True, description="join ground-truth labels with the predictions the capture keeps (same sampling) and "
        "judge model quality (docs/monitoring.md, Model quality from labels)")
    ground_truth_retention_seconds: int = Field(
        7 * 86_400, ge=3600, le=90 * 86_400, description="how long a prediction waits for its label, and a label "
        "for its prediction (at most a day more); each pending prediction holds a few tens of bytes in Redis")
    ground_truth_shard_chars: int = Field(
        3, ge=0, le=4, description="a day's pending predictions are split into 16^n Redis hashes by their id's "
        "digest, so that each stays in Redis's compact encoding (~30 bytes an entry, ~80 in a large hash) while it "
        "holds at most hash-max-listpack-entries (128 by default): 3 suits up to ~500,000 captured predictions a day "
        "per endpoint; more traffic wants 4, or the server's limit raised")
    ground_truth_prefix: str = Field(
        "groundtruth", description="store prefix of label files, SageMaker's layout: {prefix}/{endpoint}/yyyy/mm/dd/hh/")
    ground_truth_poll_seconds: float = Field(
        30.0, gt=0, description="how often the monitor looks for new label files under ground_truth_prefix")
    monitor_quality_window_seconds: int = Field(
        3600, ge=60, description="model quality over the labels matched in this long")
    monitor_quality_last_labels: int = Field(
        1000, ge=50, le=100_000, description="... and over the last N labelled predictions")
    monitor_quality_min_labels: int = Field(
        200, ge=1, description="labelled predictions a model-quality check needs to judge (SageMaker gives no "
        "deviation below 200)")
    monitor_test_exit_after_claim: str | None = Field(
        None, description="tests only: the first replica (of the endpoint) to claim an incident naming this check "
        "exits (os._exit) right after the claim, before publishing its violation: the crash the outbox recovers from")

    # Explainer service.
    explanations_prefix: str = "explanations"
    dashboard_url: str = Field(
        "", pattern=r"^(https?://[^\s\"{}]+)?$", description="where people open the explainer's dashboard (behind "
        "the authenticating ingress), e.g. https://signwatch.example.com: an alert on an open violation links its "
        "explanation, {dashboard_url}/dashboard/violations/{violation_id}/ (docs/operations.md, Alerts); empty: "
        "the link is that path alone")
    explainer_method: str = Field("fullgrad", pattern="^(fullgrad|input_x_gradient|gradcam)$")
    explain_workers: int = Field(1, ge=1, description="POST /explain computations run at once (their own threads)")
    screening_enabled: bool = Field(
        True, description="the explainer screens inference events for adversarial images (an adversarial score per "
        "event on screening_topic); it needs the screening calibration stored with the baseline (screening.json)")
    screening_sample_rate: float = Field(
        1.0, ge=0, le=1, description="share of inference events the explainer screens (by event id, so every "
        "replica picks the same ones); the rest are counted as sampled out")
    screening_batch_size: int = Field(64, ge=1, le=1024, description="inference events screened in one forward")
    screening_group: str = Field("signwatch-explainer-screening",
                                 description="the explainer's screening loop's consumer group")
    screening_explain_max_per_minute: int = Field(
        30, ge=0, le=6000, description="flagged requests a screening replica draws the triptych of (input, squeezed "
        "copy, difference, FullGrad maps of both: one saliency forward/backward per batch) in any minute; the rest "
        "are listed on the dashboard without images; 0: list only")
    screening_flagged_max: int = Field(
        200, ge=1, le=5000, description="flagged requests the dashboard's list keeps per endpoint (newest first, in "
        "the state store, ~1 KB each); the triptych objects of an entry pushed off the list are deleted")
    screening_flagged_prefix: str = Field(
        "screening", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="store prefix of the flagged requests' triptychs: {prefix}/{endpoint}/yyyy/mm/dd/{event_id}/")
    explain_max_pending: int = Field(
        2, ge=1, description="POST /explain calls admitted at once (running or waiting); more are answered 429")
    explainer_port: int = Field(8081, ge=0, le=65535, description="explainer HTTP: /explain, health")
    capture_port: int = Field(8082, ge=0, le=65535, description="capture health and metrics")
    monitor_port: int = Field(8083, ge=0, le=65535, description="monitor health and metrics")

    # Consumers.
    poll_timeout_ms: int = Field(500, ge=1)


# Secrets that may come from a file (``{name}_file``) instead of the variable itself.
SECRET_FILES = ("kafka_sasl_password", "kafka_ssl_key_password", "redis_password", "s3_access_key", "s3_secret_key")


class SettingsError(ValueError):
    """The environment's SIGNWATCH_ settings are not valid; the message names each problem."""


def settings_for_command(**overrides) -> Settings:
    """What a command line runs with: the environment (with ``overrides`` not None) and a local
    stack started here; a ``SettingsError`` in one line rather than pydantic's report."""
    from pydantic import ValidationError

    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError("invalid SIGNWATCH_ settings: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    return with_local_stack(settings)


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
