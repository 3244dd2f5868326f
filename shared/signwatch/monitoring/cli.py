"""``signwatch baseline suggest`` and ``signwatch monitor job`` (with ``monitor batch``, its old name).

    signwatch baseline suggest --out models/signwatch-resnet18.baseline     # rendered clean images
    signwatch baseline suggest --gtsrb /data/GTSRB --upload                  # into the store
    signwatch baseline suggest --capture datacapture/signwatch --start 2026-12-01T00:00 --end ...
    signwatch baseline suggest --images reference/ --upload                  # one sub-folder per label
    signwatch monitor job --capture s3://signwatch/datacapture/signwatch --start ... --end ...
    signwatch monitor job --capture datacapture/signwatch --schedule hourly

Exit status of a job run: 0 no violation, 2 violations found (a scheduler can alert), 1 nothing
to check, 2 also for a usage error (with a one-line message).

The model's facts (class count, labels, version) come from its manifest: ``--weights``, else
``SIGNWATCH_MODEL_PATH``, else the manifest the inference service published in the store
(``models/{endpoint}/manifest.json``); never from defaults. Rendered and GTSRB reference images
fit a model whose labels are the GTSRB classes only; any other model's baseline comes from its
captured traffic (``--capture``) or a labelled folder (``--images``).
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
    from signwatch.config import SettingsError, settings_for_command

    try:
        return settings_for_command()
    except SettingsError as exc:
        raise _fail(str(exc))


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


def _configured_store(settings):
    from signwatch.runtime import open_ports

    return open_ports(settings).store


def _model_facts(settings, weights: Optional[Path] = None):
    """The served model's facts: ``--weights``' manifest, else SIGNWATCH_MODEL_PATH's, else the
    one published in the store; a one-line error when there is none."""
    from signwatch.model.core import load_spec
    from signwatch.model.published import served_spec

    try:
        return load_spec(weights) if weights is not None else served_spec(settings, _configured_store(settings))
    except LookupError as exc:
        raise _fail(str(exc), 1)
    except Exception as exc:  # noqa: BLE001 - a manifest not usable, a store away: one line, not a traceback
        raise _fail(f"cannot read the model's manifest: {type(exc).__name__}: {exc}", 1)


def _load_model(settings, weights: Optional[Path]):
    """The model to run over reference images: ``--weights``, else the served one."""
    from signwatch.model import load_model
    from signwatch.model.remote import resolve_model_path

    try:
        return load_model(weights if weights is not None else resolve_model_path(settings))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise _fail(f"cannot load model: {exc}", 1)


def _baseline_prefix(settings) -> str:
    from signwatch.monitoring import baseline as bl

    return settings.monitor_baseline_prefix or bl.store_prefix(settings.endpoint)


def _overrides(settings) -> dict:
    from signwatch.monitoring import MonitorConfig

    return MonitorConfig.from_settings(settings).overrides


def _baseline(store, settings, spec):
    """(baseline, whether it judges class shares): the store's baseline for this model; the
    shipped one for the shipped GTSRB classes (never judging class shares of real traffic unless
    ``monitor_shipped_class_checks``, as the streaming monitor); else None (the drift checks are
    skipped, said on stderr); a one-line error when it does not fit."""
    from signwatch.monitoring import baseline as bl
    from signwatch.monitoring.learning import is_shipped

    prefix = _baseline_prefix(settings)
    files = bl.read_store(store, prefix)
    if files is None:
        if not bl.for_shipped_classes(spec.class_names):
            typer.echo(f"note: no baseline at {prefix} for model {spec.version} ({spec.num_classes} classes): the "
                       f"drift checks are skipped, over-prediction and completeness run ({bl.SUGGEST_HINT})", err=True)
            return None, False
        files = bl.shipped_files()
    shipped = is_shipped(files) and bl.for_shipped_classes(spec.class_names)
    if shipped and not settings.monitor_shipped_class_checks:
        typer.echo(f"note: no baseline of this endpoint's traffic at {prefix}: the shipped one judges confidence, "
                   f"margin and low confidence, not class shares ({bl.SUGGEST_HINT})", err=True)
    try:
        baseline = bl.load(*files, n_classes=spec.num_classes, overrides=_overrides(settings))
    except ValueError as exc:
        raise _fail(f"the baseline at {prefix}: {exc}", 1)
    return baseline, not shipped or settings.monitor_shipped_class_checks


@baseline_app.command("suggest")
def suggest_cmd(
    out: Path = typer.Option(Path("baseline"), help="folder for statistics.json and constraints.json"),
    upload: bool = typer.Option(False, help="also write them to the store, where the monitor loads them"),
    count: int = typer.Option(4300, min=100, max=200_000,
                              help="rendered clean images (with --images: at most this many)"),
    seed: int = typer.Option(2026, help="seed of the rendered reference set"),
    split: str = typer.Option("val", help="split of the rendered reference set"),
    gtsrb: Optional[Path] = typer.Option(None, help="a GTSRB folder instead of rendered images"),
    images: Optional[Path] = typer.Option(None, help="a folder with one sub-folder of images per label (its "
                                                      "name or class id) instead of rendered images"),
    capture: Optional[str] = typer.Option(None, help="captured records (prefix or s3:// URL) instead"),
    start: Optional[str] = typer.Option(None, help="with --capture: first inference time (ISO 8601)"),
    end: Optional[str] = typer.Option(None, help="with --capture: end of the range (exclusive)"),
    weights: Optional[Path] = typer.Option(None, help="safetensors weights with their manifest (default: the "
                                                       "served model: SIGNWATCH_MODEL_PATH, else the shipped one; "
                                                       "with --capture, else the manifest published in the store)"),
) -> None:
    """Run the model over reference data and write SageMaker-shaped statistics.json + constraints.json."""
    from signwatch.monitoring import baseline as bl
    from signwatch.monitoring.job import keys_in_range, split_by_class
    from signwatch.monitoring.reference import (
        LabelledFolderError, features_from_capture, features_from_top, images_from_folders, predict_top,
    )

    settings = _settings()
    chosen = [name for name, v in (("--capture", capture), ("--gtsrb", gtsrb), ("--images", images)) if v is not None]
    if len(chosen) > 1:
        raise _fail(f"choose one source of reference data, not {' and '.join(chosen)}")
    t0, t1 = _time(start, "start"), _time(end, "end")
    labels = None
    unreadable = 0
    if capture is not None:
        spec = _model_facts(settings, weights)  # the class count of the model that made the records
        store, prefix = _store_and_prefix(capture, settings)
        keys = keys_in_range(store.list(prefix), t0, t1)
        features, bad = features_from_capture([store.get(k) for k in keys], t0, t1)
        features, outside = split_by_class(features, spec.num_classes)
        unreadable = bad + outside
        if outside:
            typer.echo(f"note: {outside} captured predictions name a class outside model {spec.version}'s "
                       f"0..{spec.num_classes - 1} (another model's?): left out", err=True)
        source = f"capture {capture} [{start}, {end})"
    else:
        model, spec = _load_model(settings, weights)
        if images is not None:
            try:
                pictures, labels = images_from_folders(images, spec.class_names, limit=count)
            except LabelledFolderError as exc:
                raise _fail(str(exc), 1)
            source = f"images {images}"
        elif not bl.for_shipped_classes(spec.class_names):
            raise _fail(f"{'--gtsrb' if gtsrb is not None else 'rendered'} images are GTSRB traffic signs, and model "
                        f"{spec.version} has other classes ({spec.num_classes}): suggest its baseline from its "
                        f"captured traffic (--capture PREFIX --start ... --end ...) or a labelled folder (--images)")
        elif gtsrb is not None:
            from signwatch.data.gtsrb import GTSRBFormatError, load_gtsrb

            try:
                pictures, labels = load_gtsrb(gtsrb, size=spec.input_size, limit=count, progress=True)
            except (GTSRBFormatError, OSError) as exc:
                raise _fail(f"not a usable GTSRB copy: {exc}", 1)
            source = f"gtsrb {gtsrb}"
        else:
            from signwatch.data.render import render_array

            try:
                pictures, labels = render_array(count, seed=seed, split=split, size=spec.input_size)
            except ValueError as exc:
                raise _fail(str(exc))
            source = f"rendered clean, split {split}, seed {seed}, {count} images"
        try:
            features = features_from_top(*predict_top(model, spec, pictures, k=min(5, spec.num_classes),
                                                       progress=True))
        except LabelledFolderError as exc:  # an image of --images that cannot be read
            raise _fail(str(exc), 1)
        labels = [int(v) for v in labels]
    source += f", model {spec.version}"
    try:
        statistics, constraints = bl.suggest(features, spec.num_classes, labels=labels, source=source,
                                             model_version=spec.version)
    except ValueError as exc:
        raise _fail(str(exc), 1)
    bl.write_folder(out, statistics, constraints)
    result = {"out": str(out), "item_count": len(features), "baseline_id": bl.baseline_id(statistics, constraints),
              "labelled_accuracy": statistics["signwatch"].get("labelled_accuracy"),
              "model_version": spec.version, "num_classes": spec.num_classes}
    if capture is not None:
        result["unreadable"] = unreadable
    if upload:
        store = _configured_store(settings)
        _check_served(store, settings, spec)
        result["uploaded"] = bl.write_store(store, _baseline_prefix(settings), statistics, constraints)
    typer.echo(json.dumps(result, indent=2))


def _check_served(store, settings, spec) -> None:
    """Refuse to upload a baseline for other classes than the endpoint's published model has."""
    from signwatch.model.published import published_key, read_published

    try:
        served = read_published(store, settings.endpoint)
    except ValueError:
        return  # a manifest not usable: the monitor says so; the baseline itself is fine
    if served is not None and served.num_classes != spec.num_classes:
        raise _fail(f"endpoint {settings.endpoint!r} serves model {served.version} with {served.num_classes} classes "
                    f"({published_key(settings.endpoint)}); this baseline is for {spec.num_classes} "
                    f"(model {spec.version}): not uploaded", 1)


def _print_counts(result, class_names) -> None:
    typer.echo(f"{result.total} predictions, {result.unreadable} unreadable records, {result.files} files")
    for c, n in sorted(result.predicted_classes.items(), key=lambda kv: -kv[1]):
        typer.echo(f"  class {c:>2} ({class_names[c]}): {n} ({n / max(1, result.total):.2%})")
    for v in result.violations:
        typer.echo(f"VIOLATION {v['constraint_check_type']} {v['feature_name']}: {v['description']}")


def _check(store, settings, keys, t0=None, t1=None, runs_per_day=24):
    """(the run's result, the model's facts): the model is asked for at each run (it may change)."""
    from signwatch.monitoring import baseline as bl
    from signwatch.monitoring.job import run_job

    spec = _model_facts(settings)
    from signwatch.monitoring.tracks import Tracks
    from signwatch.ports.state_memory import MemoryState

    baseline, judge_classes = _baseline(store, settings, spec)
    tracks = Tracks(MemoryState(), settings.endpoint, settings.monitor_track_window_seconds,
                    settings.monitor_track_max_distance, settings.monitor_track_max_age_seconds,
                    settings.monitor_track_capacity)  # the run's own: frames of one object count once
    result = run_job([store.get(k) for k in keys], baseline, spec.class_names, t0, t1, runs_per_day,
                     model_version=spec.version, thresholds=bl.Thresholds().merged(_overrides(settings)),
                     judge_classes=judge_classes, tracks=tracks)
    return result, spec


def _facts(result, spec) -> dict:
    return {"model_version": spec.version, "num_classes": spec.num_classes, "baseline_id": result.baseline_id,
            "drift_checks": "ran" if result.baseline_id else "skipped: no baseline for this model"}


def _run_once(store, prefix, output, t0, t1, settings, runs_per_day, as_json) -> int:
    from signwatch.monitoring.job import keys_in_range, run_folder, write_run

    keys = keys_in_range(store.list(prefix), t0, t1)
    if not keys:
        typer.echo(f"error: no capture files under {prefix!r} in the range", err=True)
        return 1
    result, spec = _check(store, settings, keys, t0, t1, runs_per_day)
    folder = run_folder(output, t1 or datetime.now(timezone.utc))
    written = write_run(store, folder, result)
    summary = {"total": result.total, "unreadable": result.unreadable, "folded": result.folded,
               "predicted_classes": result.predicted_classes,
               "violations": result.violations, "estimated_accuracy": result.estimated_accuracy,
               "files": result.files, "folder": folder, "written": written} | _facts(result, spec)
    typer.echo(json.dumps(summary, indent=2)) if as_json else _print_counts(result, spec.class_names)
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
    settings = _settings()
    store, prefix = _store_and_prefix(capture, settings)
    output = output or f"monitoring/{settings.endpoint}/schedule"
    if schedule is None:
        t0, t1 = _time(start, "start"), _time(end, "end")
        if t0 and t1 and t1 <= t0:
            raise _fail("--end must come after --start")
        raise typer.Exit(_run_once(store, prefix, output, t0, t1, settings, 24, as_json))
    fire = _next_fire(schedule, datetime.now(timezone.utc))
    period = _next_fire(schedule, fire) - fire
    runs_per_day = max(1, round(timedelta(days=1) / period))
    typer.echo(f"scheduled ({schedule}): next run at {fire.isoformat()}", err=True)
    try:
        while True:
            time.sleep(max(0.0, (fire - datetime.now(timezone.utc)).total_seconds()))
            try:
                _run_once(store, prefix, output, fire - period, fire, settings, runs_per_day, as_json)
            except typer.Exit:
                pass  # said on stderr (no manifest, a baseline that does not fit): the next run tries again
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
    from signwatch.monitoring.job import keys_in_range
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
    result, spec = _check(store, settings, keys)
    uri = store.put(output, json.dumps({"violations": result.violations}, indent=2).encode(), "application/json")
    typer.echo(json.dumps({"violations": result.violations, "predicted_classes": result.predicted_classes,
                           "total": result.total, "unreadable": result.unreadable, "files": len(keys),
                           "estimated_accuracy": result.estimated_accuracy, "report": uri} | _facts(result, spec),
                          indent=2))
    raise typer.Exit(2 if result.violations else 0)
