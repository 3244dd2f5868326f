"""``signwatch baseline suggest`` and ``signwatch monitor job`` (with ``monitor batch``, its old name).

    signwatch baseline suggest --out models/signwatch-resnet18.baseline     # rendered clean images
    signwatch baseline suggest --gtsrb /data/GTSRB --upload                  # into the store
    signwatch baseline suggest --capture datacapture/signwatch --start 2026-12-01T00:00 --end ...
    signwatch baseline suggest --images reference/ --upload                  # one sub-folder per label
    signwatch monitor job --capture s3://signwatch/datacapture/signwatch --start ... --end ...
    signwatch monitor job --capture datacapture/signwatch --schedule hourly
    signwatch monitor job ... --ground-truth groundtruth --start-offset -P1D --end-offset -PT1H   # + model quality
    signwatch baseline suggest --quality --dataset s3://bucket/labelled.csv --upload    # model-quality baseline
    signwatch baseline suggest --quality --ground-truth groundtruth --capture datacapture --start ... --end ...

Exit status of a job run: 0 no violation, 2 violations found (a scheduler can alert), 1 nothing
to check, 2 also for a usage error (with a one-line message). With ``--ground-truth`` a run also
merges the labels with the captured predictions and checks the model's quality (accuracy, weighted
F1...) against the model-quality constraints at ``{baseline prefix}/model-quality/``; a quality
violation exits 2 as a drift violation does.

The model's facts (class count, labels, version) come from its manifest: ``--weights``, else
``SIGNWATCH_MODEL_PATH``, else the manifest the inference service published in the store
(``models/{endpoint}/manifest.json``); never from defaults. Rendered and GTSRB reference images
fit a model whose labels are the GTSRB classes only; any other model's baseline comes from its
captured traffic (``--capture``) or a labelled folder (``--images``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
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


def _store_and_prefix(capture: str, settings, option: str = "--capture"):
    """``s3://bucket/prefix[?endpoint=URL]`` or ``file:///folder`` + prefix, or a prefix in the configured store."""
    from signwatch.ports import UnsupportedURL, open_store, s3_location
    from signwatch.ports.security import Credentials
    from signwatch.ports.store import check_key

    parsed = urlparse(capture)
    try:
        if parsed.scheme == "s3":
            store_url, prefix = s3_location(capture, settings.store_url)
            store = open_store(store_url, Credentials.from_settings(settings))
        elif parsed.scheme:
            raise _fail(f"{option} must be s3://bucket/prefix or a prefix in the configured store, got {capture!r}")
        else:
            from signwatch.runtime import open_ports

            store, prefix = open_ports(settings).store, capture
        if prefix:
            check_key(prefix.rstrip("/"))
    except (UnsupportedURL, ValueError) as exc:
        raise _fail(str(exc))
    return store, prefix


def _capture_source(capture: str, settings):
    """The store of ``capture`` as the job's workers open it: its URL and the credentials
    (picklable), never a live client. Called after ``_store_and_prefix`` checked ``capture``."""
    from signwatch.monitoring.job_workers import StoreSource
    from signwatch.ports import s3_location
    from signwatch.ports.security import Credentials
    from signwatch.runtime import embedded_store_url

    if urlparse(capture).scheme == "s3":
        url = s3_location(capture, settings.store_url)[0]
    else:
        url = settings.store_url or embedded_store_url()
    return StoreSource(url, Credentials.from_settings(settings))


@dataclass(frozen=True)
class _Counting:
    """Where the job counts: its capture files' store (as workers open it) and on what."""

    source: object  # job_workers.StoreSource
    workers: Optional[int] = None  # None: every CPU of this machine
    scheduler: Optional[str] = None  # "local" or tcp://host:8786: on Dask


def _workers_option(workers: Optional[int], scheduler: Optional[str]) -> None:
    if workers is not None and workers < 1:
        raise _fail(f"--workers must be 1 or more, got {workers}")
    if scheduler is not None and scheduler != "local" and not urlparse(scheduler).scheme:
        raise _fail(f"--scheduler must be local or a Dask scheduler's address (tcp://host:8786), got {scheduler!r}")


WORKERS_HELP = "processes counting the capture files (default: every CPU); with --scheduler local, Dask workers"
SCHEDULER_HELP = "count on Dask: local (a LocalCluster on this machine) or a scheduler's address (tcp://host:8786)"


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


# rendered references also render their split in these weathers, this many each at most, for the
# label-free estimate's calibration table (docs/monitoring.md, "Which accuracy estimate ships")
CALIBRATION_WEATHER, CALIBRATION_COUNT = ("snow", "night", "fog"), 1000


@baseline_app.command("suggest")
def suggest_cmd(
    out: Optional[Path] = typer.Option(None, help="folder for statistics.json and constraints.json (default "
                                                  "baseline, with --quality baseline/model-quality)"),
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
    quality: bool = typer.Option(False, "--quality", help="a model-quality baseline (accuracy, weighted F1...) from "
                                                          "labelled predictions: --dataset, or --ground-truth with "
                                                          "--capture over --start/--end; uploaded to "
                                                          "{baseline prefix}/model-quality/"),
    dataset: Optional[str] = typer.Option(None, help="with --quality: a CSV (header row) or JSON-lines file or "
                                                       "s3:// URL, a label and a prediction per row"),
    label_column: str = typer.Option("label", help="with --dataset: the column (key) of the true class"),
    prediction_column: str = typer.Option("prediction", help="with --dataset: the column (key) of the model's answer"),
    ground_truth: Optional[str] = typer.Option(None, help="with --quality: ground-truth labels (prefix or s3:// URL, "
                                                            "labels under it at {endpoint}/yyyy/mm/dd/hh/) merged with "
                                                            "the records of --capture (default datacapture)"),
    tolerance: float = typer.Option(0.05, min=0.0, max=1.0,
                                    help="with --quality: each threshold lies this far below the baseline's value"),
    deviations: float = typer.Option(3.0, min=0.0, help="with --quality: and this many of its standard deviations "
                                                        "further (0 and 0: SageMaker's suggestion, any drop alerts)"),
    workers: Optional[int] = typer.Option(None, help=f"with --capture: {WORKERS_HELP}"),
    scheduler: Optional[str] = typer.Option(None, help=f"with --capture: {SCHEDULER_HELP}"),
    screening_fpr: float = typer.Option(0.01, "--screening-fpr", min=0.0001, max=0.5,
                                        help="with reference images: false positive rate of the screening "
                                             "threshold written to screening.json (the explainer's adversarial "
                                             "score, docs/attacks.md, Screening)"),
) -> None:
    """Run the model over reference data and write SageMaker-shaped statistics.json + constraints.json
    (and, from reference images, the screening calibration screening.json)."""
    from signwatch.monitoring import baseline as bl
    from signwatch.monitoring.job import keys_in_range
    from signwatch.monitoring.reference import (
        LabelledFolderError, features_from_top, images_from_folders, predict_top,
    )

    settings = _settings()
    if quality:
        return _suggest_quality(settings, out or Path("baseline") / "model-quality", upload, weights, capture,
                                ground_truth, dataset, start, end, label_column, prediction_column, tolerance,
                                deviations, gtsrb, images)
    quality_only = [name for name, v in (("--dataset", dataset), ("--ground-truth", ground_truth)) if v is not None]
    if quality_only:
        raise _fail(f"{quality_only[0]} makes a model-quality baseline: add --quality")
    out = out or Path("baseline")
    chosen = [name for name, v in (("--capture", capture), ("--gtsrb", gtsrb), ("--images", images)) if v is not None]
    if len(chosen) > 1:
        raise _fail(f"choose one source of reference data, not {' and '.join(chosen)}")
    t0, t1 = _time(start, "start"), _time(end, "end")
    labels = None
    unreadable = 0
    calibration: list = []  # labelled shifted sets, rendered only (see below)
    if capture is not None:
        spec = _model_facts(settings, weights)  # the class count of the model that made the records
        from signwatch.monitoring.capture_counts import finish
        from signwatch.monitoring.job_workers import count_range

        _workers_option(workers, scheduler)
        store, prefix = _store_and_prefix(capture, settings)
        keys = keys_in_range(store.list(prefix), t0, t1)
        counted = finish(count_range(_capture_source(capture, settings), keys, t0, t1, workers=workers,
                                     scheduler=scheduler, store=store), spec.num_classes)
        unreadable, outside = counted.unreadable, counted.outside
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
            # the same split rendered in weather: what the label-free estimate learns under shift
            # (estimate.bin_accuracy; benchmarks/estimators.py measures why)
            weather_count = min(count, CALIBRATION_COUNT)
            for variant in CALIBRATION_WEATHER:
                shifted, shifted_labels = render_array(weather_count, seed=seed, split=split,
                                                       size=spec.input_size, variant=variant)
                calibration.append((features_from_top(*predict_top(model, spec, shifted, k=min(5, spec.num_classes))),
                                    [int(v) for v in shifted_labels]))
            source += f"; estimate calibrated with {', '.join(CALIBRATION_WEATHER)} ({weather_count} each)"
        try:
            features = features_from_top(*predict_top(model, spec, pictures, k=min(5, spec.num_classes),
                                                       progress=True))
        except LabelledFolderError as exc:  # an image of --images that cannot be read
            raise _fail(str(exc), 1)
        labels = [int(v) for v in labels]
    source += f", model {spec.version}"
    try:
        if capture is not None:  # columns, not one object a record: 500,000 records are 22 MB
            statistics, constraints = bl.suggest_from_values(
                counted.class_id, counted.confidence, counted.margin, int(counted.low.sum()), spec.num_classes,
                source=source, model_version=spec.version)
            item_count = len(counted)
        else:
            statistics, constraints = bl.suggest(features, spec.num_classes, labels=labels, source=source,
                                                 model_version=spec.version, calibration=calibration)
            item_count = len(features)
    except ValueError as exc:
        raise _fail(str(exc), 1)
    screening = None
    if capture is None:  # reference images: the screening threshold is chosen on them (captured: counts only)
        try:
            screening = _screening_calibration(model, spec, pictures, screening_fpr)
        except LabelledFolderError as exc:
            raise _fail(str(exc), 1)
    bl.write_folder(out, statistics, constraints)
    result = {"out": str(out), "item_count": item_count, "baseline_id": bl.baseline_id(statistics, constraints),
              "labelled_accuracy": statistics["signwatch"].get("labelled_accuracy"),
              "model_version": spec.version, "num_classes": spec.num_classes}
    if screening is not None:
        from signwatch.screening import stored

        stored.write_folder(out, screening)
        result["screening"] = {"threshold": screening.threshold, "fpr": screening.fpr,
                               "reference_count": screening.reference_count}
    if capture is not None:
        result["unreadable"] = unreadable
    if upload:
        store = _configured_store(settings)
        _check_served(store, settings, spec)
        result["uploaded"] = bl.write_store(store, _baseline_prefix(settings), statistics, constraints)
        if screening is not None:
            result["uploaded"].append(stored.write_store(store, _baseline_prefix(settings), screening))
    typer.echo(json.dumps(result, indent=2))


SCREENING_REFERENCE = 2000  # reference images the screening threshold is chosen on, at most (evenly spread)


def _screening_calibration(model, spec, pictures, fpr: float):
    """The screening calibration on the reference images (3 forwards each: seconds for 2,000)."""
    import numpy as np

    from signwatch.screening import Screener, calibrate

    screener = Screener(model, spec)
    chosen = np.unique(np.linspace(0, len(pictures) - 1, min(len(pictures), SCREENING_REFERENCE)).round().astype(int))
    raw = np.concatenate([screener.raw([pictures[int(i)] for i in chosen[j:j + 128]])  # decoded a batch at a time
                          for j in range(0, len(chosen), 128)], axis=1)
    return calibrate(raw, screener.signal, screener.squeezers, fpr, model_version=spec.version)


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


# --- model quality from labels ------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)  # the start of a run without --start: every record


class _TwoStores:
    """What ``groundtruth.merge`` reads through: labels from one store, captures from another
    (two buckets), told apart by the labels' prefix; only ``list`` and ``get``, all merge needs."""

    def __init__(self, labels, labels_prefix: str, captures):
        self.labels, self.labels_prefix, self.captures = labels, labels_prefix, captures

    def _of(self, key: str):
        return self.labels if key.startswith(self.labels_prefix) else self.captures

    def list(self, prefix: str = "") -> list[str]:
        return self._of(prefix).list(prefix)

    def get(self, key: str) -> bytes:
        return self._of(key).get(key)


@dataclass(frozen=True)
class _LabelSource:
    """Where a run finds labels and the predictions they name, and how far back it looks."""

    view: _TwoStores
    labels_root: str    # labels under {labels_root}/{endpoint}/yyyy/mm/dd/hh/
    captures_root: str  # captures under {captures_root}/{endpoint}/{variant}/yyyy/mm/dd/hh/
    start_offset: Optional[str] = None
    end_offset: Optional[str] = None


def _endpoint_root(prefix: str, endpoint: str, option: str) -> str:
    """The folder above the endpoint's: ``datacapture/ep`` and ``datacapture`` both give
    ``datacapture`` (the merge adds the endpoint, as SageMaker's layout has it)."""
    p = prefix.rstrip("/")
    if p == endpoint or not p:
        raise _fail(f"{option} must name the folder above the endpoint's (e.g. {option} groundtruth for "
                    f"groundtruth/{endpoint}/yyyy/mm/dd/hh/), got {prefix!r}")
    return p[:-len(endpoint) - 1] if p.endswith("/" + endpoint) else p


def _label_source(ground_truth: str, capture: str, settings, start_offset=None, end_offset=None) -> _LabelSource:
    from signwatch.monitoring.groundtruth import parse_duration

    for name, value in (("--start-offset", start_offset), ("--end-offset", end_offset)):
        try:
            parse_duration(value)
        except ValueError as exc:
            raise _fail(f"{name}: {exc}")
    labels_store, labels_prefix = _store_and_prefix(ground_truth, settings, "--ground-truth")
    captures_store, captures_prefix = _store_and_prefix(capture, settings)
    labels_root = _endpoint_root(labels_prefix, settings.endpoint, "--ground-truth")
    captures_root = _endpoint_root(captures_prefix, settings.endpoint, "--capture")
    if labels_root == captures_root:
        raise _fail(f"--ground-truth and --capture name the same folder {labels_root!r}: labels need their own")
    view = _TwoStores(labels_store, f"{labels_root}/{settings.endpoint}/", captures_store)
    return _LabelSource(view, labels_root, captures_root, start_offset, end_offset)


def _merge(source: _LabelSource, settings, spec, t0, t1):
    from signwatch.monitoring import groundtruth as gt

    try:
        return gt.merge(source.view, settings.endpoint, spec.class_names, t0 or EPOCH,
                        t1 or datetime.now(timezone.utc), source.start_offset, source.end_offset,
                        source.labels_root, source.captures_root)
    except ValueError as exc:  # the offsets leave no window
        raise _fail(f"--ground-truth: {exc}")


def _no_pairs_reason(counts) -> str:
    return "no labels" if counts.label_files == 0 else "no label matched a prediction"


def _run_quality(source: _LabelSource, store, folder, t0, t1, settings, spec, baseline) -> dict:
    """Merge the run's labels, write ``{folder}/model_quality/`` and the merged records, check
    the model-quality constraints if there are any: the ``model_quality`` object of the summary."""
    from signwatch.monitoring import groundtruth as gt
    from signwatch.monitoring import quality
    from signwatch.monitoring.checks import estimated_accuracy
    from signwatch.monitoring.job import batch_counts

    merged = _merge(source, settings, spec, t0, t1)
    (a, b), (la, lb) = merged.window.predictions, merged.window.labels
    summary = {"window": {"predictions": [a.isoformat(), b.isoformat()], "labels": [la.isoformat(), lb.isoformat()]},
               "merge": merged.counts.as_dict()}
    if not merged.pairs:
        reason = _no_pairs_reason(merged.counts)
        typer.echo(f"note: model quality skipped: {reason} for the predictions of [{a.isoformat()}, "
                   f"{b.isoformat()}) under {source.labels_root}/{settings.endpoint}/", err=True)
        return summary | {"skipped": reason, "violations": []}
    y_true, y_pred = merged.y()
    statistics = quality.quality_statistics(y_true, y_pred, spec.num_classes, list(spec.class_names))
    metrics = statistics[quality.METRICS_KEY]
    written = {"statistics": store.put(f"{folder}/{quality.RUN_FOLDER}/{quality.STATISTICS_FILE}",
                                       json.dumps(statistics, indent=1).encode(), "application/json")}
    key = quality.constraints_key(_baseline_prefix(settings))
    violations, has_constraints = [], store.exists(key)
    if has_constraints:
        try:
            violations = quality.check_quality(statistics, json.loads(store.get(key)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _fail(f"the model-quality constraints at {key}: {type(exc).__name__}: {exc}", 1)
        written["constraint_violations"] = store.put(
            f"{folder}/{quality.RUN_FOLDER}/{quality.VIOLATIONS_FILE}",
            json.dumps(quality.violations_report(violations), indent=2).encode(), "application/json")
    else:
        typer.echo(f"note: no model-quality constraints at {key}: the metrics are written, not checked "
                   f"(signwatch baseline suggest --quality ... --upload)", err=True)
    # The label-free estimate over the very predictions that have labels, so that the two figures
    # differ only by the estimate's error
    estimate = estimated_accuracy(batch_counts([p.features for p in merged.pairs], spec.num_classes), baseline)
    realised = metrics["accuracy"]["value"]
    return summary | {
        "item_count": len(y_true),
        "metrics": {name: metrics[name]["value"] for name in quality.METRICS},
        "constraints": key if has_constraints else None,
        "violations": violations,
        "estimated_accuracy": estimate, "realised_accuracy": realised,
        "estimate_error": None if estimate is None else estimate - realised,
        "merged": gt.write_merged(store, settings.endpoint, merged),
        "written": written,
    }


def _print_quality(q: dict) -> None:
    if "skipped" in q:
        typer.echo(f"model quality: skipped ({q['skipped']})")
        return
    m = q["metrics"]
    estimate = "n/a" if q["estimated_accuracy"] is None else f"{q['estimated_accuracy']:.4f}"
    typer.echo(f"model quality: {q['item_count']} labelled predictions, accuracy {m['accuracy']:.4f}, "
               f"weighted F1 {m['weighted_f1']:.4f} (label-free estimate {estimate})")
    for v in q["violations"]:
        typer.echo(f"VIOLATION {v['constraint_check_type']} {v['metric_name']}: {v['description']}")


def _read_dataset(dataset: str, settings) -> bytes:
    """The bytes of a local file, a ``file://`` URL or an ``s3://`` object; a one-line error."""
    parsed = urlparse(dataset)
    try:
        if parsed.scheme == "s3":
            store, key = _store_and_prefix(dataset, settings, "--dataset")
            return store.get(key)
        if parsed.scheme == "file":
            return Path(parsed.path).read_bytes()
        if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
            raise _fail(f"--dataset must be a file, a file:// or an s3:// URL, got {dataset!r}")
        return Path(dataset).read_bytes()
    except typer.Exit:
        raise
    except OSError as exc:
        raise _fail(f"cannot read {dataset}: {exc.strerror or exc}", 1)
    except Exception as exc:  # noqa: BLE001 - no such object, a store away: one line, not a traceback
        raise _fail(f"cannot read {dataset}: {type(exc).__name__}: {exc}", 1)


def _suggest_quality(settings, out: Path, upload: bool, weights, capture, ground_truth, dataset, start, end,
                     label_column: str, prediction_column: str, tolerance: float, deviations: float,
                     gtsrb, images) -> None:
    """``baseline suggest --quality``: statistics.json (the metrics) and constraints.json (their
    thresholds) of labelled predictions, SageMaker's model-quality baseline."""
    from signwatch.monitoring import baseline as bl
    from signwatch.monitoring import quality
    from signwatch.monitoring.labelled import LabelledDataError, read_pairs

    others = [name for name, v in (("--gtsrb", gtsrb), ("--images", images)) if v is not None]
    if others:
        raise _fail(f"--quality takes labelled predictions (--dataset, or --ground-truth with --capture), "
                    f"not {others[0]}")
    if (dataset is None) == (ground_truth is None):
        raise _fail("--quality needs labelled predictions: --dataset FILE, or --ground-truth PREFIX (with --capture, "
                    "--start, --end), one of them")
    if dataset is not None and capture is not None:
        raise _fail("--capture goes with --ground-truth, not --dataset")
    t0, t1 = _time(start, "start"), _time(end, "end")
    spec = _model_facts(settings, weights)
    result: dict = {}
    if dataset is not None:
        data = _read_dataset(dataset, settings)
        try:
            y_true, y_pred = read_pairs(data, dataset, spec.class_names, label_column, prediction_column)
        except LabelledDataError as exc:
            raise _fail(str(exc), 1)
        source = f"dataset {dataset}"
    else:
        # the predictions of [start, end), with every label collected for them up to now (a run's
        # merge reads labels up to its end only, so that a rerun merges the same ones)
        now = datetime.now(timezone.utc)
        back = None if t1 is None else f"{'-' if t1 <= now else ''}PT{abs((now - t1).total_seconds()):.6f}S"
        merged = _merge(_label_source(ground_truth, capture or "datacapture", settings, None, back),
                        settings, spec, t0, now)
        result["merge"] = merged.counts.as_dict()
        if not merged.pairs:
            raise _fail(f"{_no_pairs_reason(merged.counts)} for the predictions of [{start}, {end}): nothing to "
                        f"make a baseline of ({json.dumps(merged.counts.as_dict()['bad'])} bad label lines)", 1)
        y_true, y_pred = merged.y()
        source = f"capture {capture or 'datacapture'} + ground truth {ground_truth} [{start}, {end})"
    source += f", model {spec.version}"
    statistics = quality.quality_statistics(y_true, y_pred, spec.num_classes, list(spec.class_names))
    statistics["signwatch"] |= {"source": source, "model": {"version": spec.version, "num_classes": spec.num_classes}}
    constraints = quality.quality_constraints(statistics, tolerance, deviations)
    constraints["signwatch"] = {"tolerance": tolerance, "deviations": deviations}
    bl.write_folder(out, statistics, constraints)
    metrics = statistics[quality.METRICS_KEY]
    result = {"out": str(out), "item_count": len(y_true), "source": source,
              "metrics": {name: metrics[name]["value"] for name in quality.METRICS},
              "thresholds": {name: c["threshold"] for name, c in constraints[quality.CONSTRAINTS_KEY].items()},
              "model_version": spec.version, "num_classes": spec.num_classes} | result
    if upload:
        store = _configured_store(settings)
        _check_served(store, settings, spec)
        result["uploaded"] = bl.write_store(store, quality.baseline_prefix(_baseline_prefix(settings)),
                                            statistics, constraints)
    typer.echo(json.dumps(result, indent=2))


def _print_counts(result, class_names) -> None:
    typer.echo(f"{result.total} predictions, {result.unreadable} unreadable records, {result.files} files")
    for c, n in sorted(result.predicted_classes.items(), key=lambda kv: -kv[1]):
        typer.echo(f"  class {c:>2} ({class_names[c]}): {n} ({n / max(1, result.total):.2%})")
    for v in result.violations:
        typer.echo(f"VIOLATION {v['constraint_check_type']} {v['feature_name']}: {v['description']}")


def _check(store, settings, keys, t0=None, t1=None, runs_per_day=24, counting: Optional[_Counting] = None):
    """(the run's result, the model's facts, the drift baseline or None): the model is asked for at
    each run (it may change)."""
    from signwatch.monitoring import baseline as bl
    from signwatch.monitoring.capture_counts import finish
    from signwatch.monitoring.job import run_counted
    from signwatch.monitoring.job_workers import count_range

    spec = _model_facts(settings)
    from signwatch.monitoring.tracks import Tracks
    from signwatch.ports.state_memory import MemoryState

    baseline, judge_classes = _baseline(store, settings, spec)
    tracks = Tracks(MemoryState(), settings.endpoint, settings.monitor_track_window_seconds,
                    settings.monitor_track_max_distance, settings.monitor_track_max_age_seconds,
                    settings.monitor_track_capacity)  # the run's own: frames of one object count once
    counting = counting or _Counting(_capture_source("", settings))
    # the map over the files (here, on local processes or on Dask), then the reduce and the fold here
    partial = count_range(counting.source, keys, t0, t1, hashes=tracks.enabled, workers=counting.workers,
                          scheduler=counting.scheduler, store=store)
    result = run_counted(finish(partial, spec.num_classes, tracks), baseline, spec.class_names, runs_per_day,
                         model_version=spec.version, thresholds=bl.Thresholds().merged(_overrides(settings)),
                         judge_classes=judge_classes)
    return result, spec, baseline


def _facts(result, spec) -> dict:
    return {"model_version": spec.version, "num_classes": spec.num_classes, "baseline_id": result.baseline_id,
            "drift_checks": "ran" if result.baseline_id else "skipped: no baseline for this model"}


def _run_once(store, prefix, output, t0, t1, settings, runs_per_day, as_json,
              labels: Optional[_LabelSource] = None, counting: Optional[_Counting] = None) -> int:
    from signwatch.monitoring.job import keys_in_range, run_folder, write_run

    keys = keys_in_range(store.list(prefix), t0, t1)
    if not keys:
        typer.echo(f"error: no capture files under {prefix!r} in the range", err=True)
        return 1
    result, spec, baseline = _check(store, settings, keys, t0, t1, runs_per_day, counting)
    folder = run_folder(output, t1 or datetime.now(timezone.utc))
    written = write_run(store, folder, result)
    summary = {"total": result.total, "unreadable": result.unreadable, "folded": result.folded,
               "predicted_classes": result.predicted_classes,
               "violations": result.violations, "estimated_accuracy": result.estimated_accuracy,
               "files": result.files, "folder": folder, "written": written} | _facts(result, spec)
    quality = None
    if labels is not None:
        quality = summary["model_quality"] = _run_quality(labels, store, folder, t0, t1, settings, spec, baseline)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_counts(result, spec.class_names)
        if quality is not None:
            _print_quality(quality)
    return 2 if result.violations or (quality and quality["violations"]) else 0


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
    ground_truth: Optional[str] = typer.Option(None, help="also check model quality: ground-truth labels (prefix or "
                                                            "s3://bucket/prefix, labels under it at "
                                                            "{endpoint}/yyyy/mm/dd/hh/), merged with the captures"),
    start_offset: Optional[str] = typer.Option(None, help="with --ground-truth: move the labelled predictions' "
                                                            "start back (ISO 8601 duration, e.g. -P1D)"),
    end_offset: Optional[str] = typer.Option(None, help="with --ground-truth: move their end back (e.g. -PT1H)"),
    workers: Optional[int] = typer.Option(None, help=WORKERS_HELP),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_HELP),
) -> None:
    """Check captured records against the baseline; write statistics.json + constraint_violations.json
    (with --ground-truth also model_quality/statistics.json + constraint_violations.json)."""
    settings = _settings()
    if ground_truth is None and (start_offset or end_offset):
        raise _fail("--start-offset and --end-offset go with --ground-truth")
    _workers_option(workers, scheduler)
    store, prefix = _store_and_prefix(capture, settings)
    counting = _Counting(_capture_source(capture, settings), workers, scheduler)
    labels = None
    if ground_truth is not None:
        labels = _label_source(ground_truth, capture, settings, start_offset, end_offset)
    output = output or f"monitoring/{settings.endpoint}/schedule"
    if schedule is None:
        t0, t1 = _time(start, "start"), _time(end, "end")
        if t0 and t1 and t1 <= t0:
            raise _fail("--end must come after --start")
        raise typer.Exit(_run_once(store, prefix, output, t0, t1, settings, 24, as_json, labels, counting))
    fire = _next_fire(schedule, datetime.now(timezone.utc))
    period = _next_fire(schedule, fire) - fire
    runs_per_day = max(1, round(timedelta(days=1) / period))
    typer.echo(f"scheduled ({schedule}): next run at {fire.isoformat()}", err=True)
    try:
        while True:
            time.sleep(max(0.0, (fire - datetime.now(timezone.utc)).total_seconds()))
            try:
                _run_once(store, prefix, output, fire - period, fire, settings, runs_per_day, as_json, labels,
                          counting)
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
    store, where = _store_and_prefix(prefix, settings)
    counting, prefix = _Counting(_capture_source(prefix, settings)), where
    keys = keys_in_range(store.list(prefix), None, None)
    if not keys:
        raise _fail(f"no capture files under {prefix!r}", 1)
    result, spec, _ = _check(store, settings, keys, counting=counting)
    uri = store.put(output, json.dumps({"violations": result.violations}, indent=2).encode(), "application/json")
    typer.echo(json.dumps({"violations": result.violations, "predicted_classes": result.predicted_classes,
                           "total": result.total, "unreadable": result.unreadable, "files": len(keys),
                           "estimated_accuracy": result.estimated_accuracy, "report": uri} | _facts(result, spec),
                          indent=2))
    raise typer.Exit(2 if result.violations else 0)
