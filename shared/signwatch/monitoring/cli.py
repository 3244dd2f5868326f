"""``signwatch baseline suggest`` and ``signwatch monitor job`` (with ``monitor batch``, its old name).

    signwatch baseline suggest --out models/signwatch-resnet18.baseline     # rendered clean images
    signwatch baseline suggest --gtsrb /data/GTSRB --upload                  # into the store
    signwatch baseline suggest --capture datacapture/signwatch --start 2026-12-01T00:00 --end ...
    signwatch monitor job --capture s3://signwatch/datacapture/signwatch --start ... --end ...
    signwatch monitor job --capture datacapture/signwatch --schedule hourly

Exit status of a job run: 0 no violation, 2 violations found (a scheduler can alert), 1 nothing
to check, 2 also for a usage error (with a one-line message).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import typer

baseline_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Baselines for the monitor.")
monitor_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Monitoring jobs.")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings():
    from pydantic import ValidationError

    from signwatch.config import Settings, with_local_stack

    try:
        return with_local_stack(Settings())
    except ValidationError as exc:
        raise _fail("invalid SIGNWATCH_ settings: " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


def _time(value: Optional[str], name: str) -> Optional[datetime]:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(f"--{name} {value!r} is not an ISO 8601 time (e.g. 2026-12-01T13:00:00Z)")
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _store_and_prefix(capture: str, settings):
    """``s3://bucket/prefix[?endpoint=URL]`` or ``file:///folder`` + prefix, or a prefix in the configured store."""
    from signwatch.ports import UnsupportedURL, open_store
    from signwatch.ports.store import check_key

    parsed = urlparse(capture)
    try:
        if parsed.scheme == "s3":
            query = f"?{parsed.query}" if parsed.query else ""
            if not query and settings.store_url and settings.store_url.startswith("s3://"):
                query = "?" + urlparse(settings.store_url).query if urlparse(settings.store_url).query else ""
            store = open_store(f"s3://{parsed.netloc}{query}",
                               settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
                               settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
                               settings.s3_region)
            prefix = parsed.path.lstrip("/")
        elif parsed.scheme:
            raise _fail(f"--capture must be s3://bucket/prefix or a prefix in the configured store, got {capture!r}")
        else:
            from signwatch.runtime import open_ports

            store, prefix = open_ports(settings).store, capture
        if prefix:
            check_key(prefix.rstrip("/"))
    except (UnsupportedURL, ValueError) as exc:
        raise _fail(str(exc))
    return store, prefix


def _baseline(store, settings, class_names):
    from signwatch.monitoring import baseline as bl

    files = bl.read_store(store, settings.monitor_baseline_prefix or bl.store_prefix(settings.endpoint))
    try:
        return bl.load(*(files or bl.shipped_files()), n_classes=len(class_names))
    except ValueError as exc:
        raise _fail(str(exc), 1)


@baseline_app.command("suggest")
def suggest_cmd(
    out: Path = typer.Option(Path("baseline"), help="folder for statistics.json and constraints.json"),
    upload: bool = typer.Option(False, help="also write them to the store, where the monitor loads them"),
    count: int = typer.Option(4300, min=100, max=200_000, help="rendered clean images"),
    seed: int = typer.Option(2026, help="seed of the rendered reference set"),
    split: str = typer.Option("val", help="split of the rendered reference set"),
    gtsrb: Optional[Path] = typer.Option(None, help="a GTSRB folder instead of rendered images"),
    capture: Optional[str] = typer.Option(None, help="captured records (prefix or s3:// URL) instead"),
    start: Optional[str] = typer.Option(None, help="with --capture: first inference time (ISO 8601)"),
    end: Optional[str] = typer.Option(None, help="with --capture: end of the range (exclusive)"),
    weights: Optional[Path] = typer.Option(None, help="safetensors weights (default: shipped)"),
) -> None:
    """Run the model over reference data and write SageMaker-shaped statistics.json + constraints.json."""
    from signwatch.monitoring import baseline as bl
    from signwatch.monitoring.job import keys_in_range
    from signwatch.monitoring.reference import features_from_capture, features_from_top, predict_top

    settings = _settings()
    t0, t1 = _time(start, "start"), _time(end, "end")
    labels = None
    if capture is not None:
        from signwatch.model import ModelSpec

        store, prefix = _store_and_prefix(capture, settings)
        keys = keys_in_range(store.list(prefix), t0, t1)
        features, bad = features_from_capture([store.get(k) for k in keys], t0, t1)
        n_classes, source = ModelSpec().num_classes, f"capture {capture} [{start}, {end})"
    else:
        from signwatch.model import load_model

        try:
            model, spec = load_model(weights)
        except (FileNotFoundError, ValueError) as exc:
            raise _fail(f"cannot load model: {exc}", 1)
        if gtsrb is not None:
            from signwatch.data.gtsrb import GTSRBFormatError, load_gtsrb

            try:
                images, labels = load_gtsrb(gtsrb, size=spec.input_size, limit=count, progress=True)
            except (GTSRBFormatError, OSError) as exc:
                raise _fail(f"not a usable GTSRB copy: {exc}", 1)
            source = f"gtsrb {gtsrb}"
        else:
            from signwatch.data.render import render_array

            try:
                images, labels = render_array(count, seed=seed, split=split, size=spec.input_size)
            except ValueError as exc:
                raise _fail(str(exc))
            source = f"rendered clean, split {split}, seed {seed}, {count} images"
        features = features_from_top(*predict_top(model, spec, images, progress=True))
        labels = labels.tolist()
        n_classes, source = spec.num_classes, source + f", model {spec.version}"
    try:
        statistics, constraints = bl.suggest(features, n_classes, labels=labels, source=source)
    except ValueError as exc:
        raise _fail(str(exc), 1)
    bl.write_folder(out, statistics, constraints)
    result = {"out": str(out), "item_count": len(features), "baseline_id": bl.baseline_id(statistics, constraints),
              "labelled_accuracy": statistics["signwatch"].get("labelled_accuracy")}
    if upload:
        from signwatch.runtime import open_ports

        store = open_ports(settings).store
        result["uploaded"] = bl.write_store(store, settings.monitor_baseline_prefix or bl.store_prefix(settings.endpoint),
                                            statistics, constraints)
    typer.echo(json.dumps(result, indent=2))


def _print_counts(result, class_names) -> None:
    typer.echo(f"{result.total} predictions, {result.unreadable} unreadable records, {result.files} files")
    for c, n in sorted(result.predicted_classes.items(), key=lambda kv: -kv[1]):
        typer.echo(f"  class {c:>2} ({class_names[c]}): {n} ({n / max(1, result.total):.2%})")
    for v in result.violations:
        typer.echo(f"VIOLATION {v['constraint_check_type']} {v['feature_name']}: {v['description']}")


def _run_once(store, prefix, output, t0, t1, settings, class_names, runs_per_day, as_json) -> int:
    from signwatch.monitoring.job import keys_in_range, run_folder, run_job, write_run

    keys = keys_in_range(store.list(prefix), t0, t1)
    if not keys:
        typer.echo(f"error: no capture files under {prefix!r} in the range", err=True)
        return 1
    result = run_job([store.get(k) for k in keys], _baseline(store, settings, class_names), class_names, t0, t1,
                     runs_per_day)
    folder = run_folder(output, t1 or datetime.now(timezone.utc))
    written = write_run(store, folder, result)
    summary = {"total": result.total, "unreadable": result.unreadable, "predicted_classes": result.predicted_classes,
               "violations": result.violations, "estimated_accuracy": result.estimated_accuracy,
               "files": result.files, "folder": folder, "written": written}
    typer.echo(json.dumps(summary, indent=2)) if as_json else _print_counts(result, class_names)
    return 2 if result.violations else 0


def _next_fire(schedule: str, after: datetime) -> datetime:
    from croniter import croniter

    expr = {"hourly": "0 * * * *", "daily": "0 0 * * *"}.get(schedule, schedule)
    if not croniter.is_valid(expr):
        raise _fail(f"--schedule must be hourly, daily or a cron expression, got {schedule!r}")
    return croniter(expr, after).get_next(datetime)


@monitor_app.command("job")
def job_cmd(
    capture: str = typer.Option("datacapture", help="capture prefix in the store, or s3://bucket/prefix"),
    start: Optional[str] = typer.Option(None, help="first inference time of the run (ISO 8601)"),
    end: Optional[str] = typer.Option(None, help="end of the run (exclusive; default now)"),
    output: Optional[str] = typer.Option(None, help="report prefix (default monitoring/{endpoint}/schedule)"),
    schedule: Optional[str] = typer.Option(None, help="hourly, daily or a cron expression: keep running"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object per run"),
) -> None:
    """Check captured records against the baseline; write statistics.json + constraint_violations.json."""
    from signwatch.model import ModelSpec

    settings = _settings()
    class_names = ModelSpec().class_names
    store, prefix = _store_and_prefix(capture, settings)
    output = output or f"monitoring/{settings.endpoint}/schedule"
    if schedule is None:
        t0, t1 = _time(start, "start"), _time(end, "end")
        if t0 and t1 and t1 <= t0:
            raise _fail("--end must come after --start")
        raise typer.Exit(_run_once(store, prefix, output, t0, t1, settings, class_names, 24, as_json))
    fire = _next_fire(schedule, datetime.now(timezone.utc))
    period = _next_fire(schedule, fire) - fire
    runs_per_day = max(1, round(timedelta(days=1) / period))
    typer.echo(f"scheduled ({schedule}): next run at {fire.isoformat()}", err=True)
    try:
        while True:
            time.sleep(max(0.0, (fire - datetime.now(timezone.utc)).total_seconds()))
            _run_once(store, prefix, output, fire - period, fire, settings, class_names, runs_per_day, as_json)
            fire = _next_fire(schedule, fire)
    except KeyboardInterrupt:
        raise typer.Exit(0)


@monitor_app.command("batch")
def batch_cmd(
    prefix: str = typer.Option("datacapture", help="capture prefix in the store"),
    output: str = typer.Option("monitoring/constraint_violations.json", help="store key of the violations report"),
) -> None:
    """The job over every captured file, its report at one key (the older form of ``monitor job``).

    Exit status: 0 no violation, 2 violations found, 1 nothing to check.
    """
    from signwatch.model import ModelSpec
    from signwatch.monitoring.job import keys_in_range, run_job
    from signwatch.ports.store import check_key

    try:
        check_key(output)
    except ValueError as exc:
        raise _fail(str(exc))
    settings = _settings()
    store, prefix = _store_and_prefix(prefix, settings)
    keys = keys_in_range(store.list(prefix), None, None)
    if not keys:
        raise _fail(f"no capture files under {prefix!r}", 1)
    class_names = ModelSpec().class_names
    result = run_job([store.get(k) for k in keys], _baseline(store, settings, class_names), class_names)
    uri = store.put(output, json.dumps({"violations": result.violations}, indent=2).encode(), "application/json")
    typer.echo(json.dumps({"violations": result.violations, "predicted_classes": result.predicted_classes,
                           "total": result.total, "unreadable": result.unreadable, "files": len(keys),
                           "estimated_accuracy": result.estimated_accuracy, "report": uri}, indent=2))
    raise typer.Exit(2 if result.violations else 0)
