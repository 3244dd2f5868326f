"""`up`, `down`, `status` and `stack_env`: the public face of the development stack."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import kafka, process, redis_server, seaweed
from .errors import StackError
from .models import KafkaStatus, RedisStatus, S3Status, StackStatus
from .paths import StackConfig, StackPaths, read_state, write_state

Echo = Callable[[str], None]

KAFKA_TIMEOUT_S = 120.0
REDIS_TIMEOUT_S = 30.0
S3_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
SERVICES = (kafka.SERVICE, redis_server.SERVICE, seaweed.SERVICE)
DISPLAY = {kafka.SERVICE: "kafka", redis_server.SERVICE: "redis", seaweed.SERVICE: "s3 (seaweedfs)"}


def _print(message: str) -> None:
    print(message, flush=True)


@contextlib.contextmanager
def _locked(paths: StackPaths) -> Iterator[None]:
    """One `up`/`down` at a time per stack folder."""
    paths.stack.mkdir(parents=True, exist_ok=True)
    with open(paths.lock_file, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _resolve_config(paths: StackPaths, config: StackConfig | None) -> StackConfig:
    """Explicit config, else what the running stack uses, else environment/defaults."""
    if config is not None:
        return config
    return read_state(paths) or StackConfig.from_env()


def up(
    root: Path | str | None = None,
    config: StackConfig | None = None,
    *,
    echo: Echo | None = _print,
    kafka_timeout: float = KAFKA_TIMEOUT_S,
) -> StackStatus:
    """Install what is missing, start what is not running, wait until all three answer.

    Running it again while the stack is up starts nothing. Raises StackError with a readable
    message when something cannot be installed or does not come up.
    """
    paths = StackPaths.of(root)
    say: Echo = echo or (lambda _m: None)
    with _locked(paths):
        try:
            return _up_locked(paths, config, say, kafka_timeout)
        except BaseException:
            if not any(process.running(paths.pid_file(name)) for name in SERVICES):
                paths.state_file.unlink(missing_ok=True)  # nothing runs: no stack to point services at
            raise


def _up_locked(paths: StackPaths, config: StackConfig | None, say: Echo, kafka_timeout: float) -> StackStatus:
    running = {name: process.running(paths.pid_file(name)) for name in SERVICES}
    recorded = read_state(paths)
    if config is None:
        config = recorded if (recorded and any(running.values())) else StackConfig.from_env()
    elif recorded and any(running.values()) and recorded != config:
        raise StackError(
            f"the stack under {paths.stack} is running with other settings ({recorded.model_dump()}); "
            "run `signwatch stack down` first"
        )
    write_state(paths, config)
    started: dict[str, process.ProcessRecord] = {}
    t0 = time.monotonic()

    # 1. install (cached after the first run)
    if running[redis_server.SERVICE] is None:
        redis_bin = redis_server.install(say)
    if running[kafka.SERVICE] is None:
        kafka.check_java(kafka.java_binary())
        kafka.install(paths, say)
    if running[seaweed.SERVICE] is None:
        seaweed.weed_binary()
    # fail before starting anything when a port is taken by someone else
    for name, check in ((redis_server.SERVICE, redis_server.check_ports), (seaweed.SERVICE, seaweed.check_ports),
                        (kafka.SERVICE, kafka.check_ports)):
        if running[name] is None:
            check(config)

    # 2. start what is not running (Redis and SeaweedFS first, Kafka's JVM warms up during their waits),
    # 3. wait until each answers. If anything fails, stop what this call started: all or nothing.
    try:
        if running[redis_server.SERVICE] is None:
            say(f"redis: starting on {config.host}:{config.redis_port}")
            started[redis_server.SERVICE] = redis_server.start(paths, config, redis_bin)
        if running[seaweed.SERVICE] is None:
            say(f"s3: starting SeaweedFS on {config.s3_endpoint}")
            started[seaweed.SERVICE] = seaweed.start(paths, config)
        if running[kafka.SERVICE] is None:
            say(f"kafka: starting Apache Kafka {kafka.kafka_version(paths)} (KRaft) on {config.kafka_bootstrap}")
            started[kafka.SERVICE] = kafka.start(paths, config, say)
        for name, record in running.items():
            if record is not None:
                say(f"{DISPLAY[name]}: already running (pid {record.pid})")

        creds = seaweed.credentials(paths, create=True)
        assert creds is not None
        _wait(paths, started, redis_server.SERVICE, "redis", lambda: redis_server.probe(config),
              REDIS_TIMEOUT_S, paths.redis_log, say)
        _wait(paths, started, seaweed.SERVICE, "s3 (seaweedfs)", lambda: seaweed.probe(config, creds),
              S3_TIMEOUT_S, paths.seaweed_log, say)
        _wait(paths, started, seaweed.SERVICE, f"s3 bucket {config.bucket!r}",
              lambda: seaweed.ensure_bucket(config, creds), S3_TIMEOUT_S, paths.seaweed_log, say)
        _wait(paths, started, kafka.SERVICE, "kafka", lambda: kafka.probe(config),
              kafka_timeout, paths.kafka_log, say)
    except BaseException:
        if started:
            say(f"stopping what this call started: {', '.join(DISPLAY[n] for n in started)}")
            _stop_records(started.values())
            _remove_pid_files(paths, started)
        raise

    result = status(paths.root)
    if started:
        say(f"stack up in {time.monotonic() - t0:.1f} s")
    say(format_endpoints(result))
    return result


def _wait(
    paths: StackPaths, started: dict[str, process.ProcessRecord], name: str, what: str,
    probe: Callable[[], bool], timeout: float, log_file: Path, say: Echo,
) -> None:
    record = started.get(name) or process.running(paths.pid_file(name))
    alive = (lambda: process.is_ours(record)) if record is not None else None
    t0 = time.monotonic()
    process.wait_until(what, probe, timeout=timeout, alive=alive, log_file=log_file, echo=say)
    if name in started:
        say(f"{what}: ready after {time.monotonic() - t0:.1f} s")


def _stop_records(records) -> None:
    for record in records:
        process.stop(record, timeout=STOP_TIMEOUT_S)


def _remove_pid_files(paths: StackPaths, started: dict[str, process.ProcessRecord]) -> None:
    for name in started:
        paths.pid_file(name).unlink(missing_ok=True)


def down(root: Path | str | None = None, *, echo: Echo | None = _print) -> list[str]:
    """Stop the servers `up` started under root (and nothing else). Returns the names stopped."""
    paths = StackPaths.of(root)
    say: Echo = echo or (lambda _m: None)
    if not paths.stack.is_dir():
        say("stack: nothing to stop")
        return []
    stopped: list[str] = []
    with _locked(paths):
        # Kafka first: it is the slowest to shut down and may still talk to nobody else
        for name in (kafka.SERVICE, seaweed.SERVICE, redis_server.SERVICE):
            pid_file = paths.pid_file(name)
            record = process.ProcessRecord.load(pid_file)
            if record is None:
                pid_file.unlink(missing_ok=True)
                continue
            if not process.is_ours(record):
                say(f"{DISPLAY[name]}: pid {record.pid} is no longer ours, not touching it")
                pid_file.unlink(missing_ok=True)
                continue
            t0 = time.monotonic()
            process.stop(record, timeout=STOP_TIMEOUT_S)
            pid_file.unlink(missing_ok=True)
            stopped.append(name)
            say(f"{DISPLAY[name]}: stopped (pid {record.pid}, {time.monotonic() - t0:.1f} s)")
        paths.state_file.unlink(missing_ok=True)
    if not stopped:
        say("stack: nothing was running")
    return stopped


def status(root: Path | str | None = None) -> StackStatus:
    """Endpoints of the stack under root and whether each answers now (no side effects)."""
    paths = StackPaths.of(root)
    config = _resolve_config(paths, None)
    creds = seaweed.credentials(paths)
    pids = {}
    for name in SERVICES:
        record = process.ProcessRecord.load(paths.pid_file(name))
        pids[name] = record.pid if record is not None and process.is_ours(record) else None
    return StackStatus(
        kafka=KafkaStatus(bootstrap=config.kafka_bootstrap, up=kafka.probe(config), pid=pids[kafka.SERVICE]),
        redis=RedisStatus(url=config.redis_url, up=redis_server.probe(config), pid=pids[redis_server.SERVICE]),
        s3=S3Status(
            endpoint=config.s3_endpoint,
            access_key=creds.access_key if creds else "",
            secret_key=creds.secret_key if creds else "",
            bucket=config.bucket,
            up=seaweed.probe(config, creds),
            pid=pids[seaweed.SERVICE],
        ),
    )


def stack_env(root: Path | str | None = None) -> dict[str, str]:
    """Environment variables that point a signwatch service at the stack started under root.

    Empty when no stack was started there (no `up` since the last `down`).
    """
    paths = StackPaths.of(root)
    config = read_state(paths)
    creds = seaweed.credentials(paths)
    if config is None or creds is None:
        return {}
    return {
        "SIGNWATCH_BUS_URL": f"kafka://{config.kafka_bootstrap}",
        "SIGNWATCH_STATE_URL": config.redis_url,
        "SIGNWATCH_STORE_URL": f"s3://{config.bucket}?endpoint={config.s3_endpoint}",
        "SIGNWATCH_S3_ACCESS_KEY": creds.access_key,
        "SIGNWATCH_S3_SECRET_KEY": creds.secret_key,
    }


def format_endpoints(st: StackStatus) -> str:
    def mark(ok: bool) -> str:
        return "up" if ok else "DOWN"

    def pid(p: int | None) -> str:
        return f"pid {p}" if p else "-"

    rows = [
        ("service", "state", "process", "endpoint"),
        ("kafka", mark(st.kafka.up), pid(st.kafka.pid), st.kafka.bootstrap),
        ("redis", mark(st.redis.up), pid(st.redis.pid), st.redis.url),
        ("s3", mark(st.s3.up), pid(st.s3.pid), f"{st.s3.endpoint} (bucket {st.s3.bucket})"),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if st.s3.access_key:
        lines.append(f"s3 access key: {st.s3.access_key}  (secret in .stack/credentials.json)")
    return "\n".join(lines)
