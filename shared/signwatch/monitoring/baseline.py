"""Baselines in SageMaker Model Monitor's own shapes: ``statistics.json`` and ``constraints.json``.

``suggest`` turns the features of reference predictions into both files, as SageMaker's
``suggest_baseline`` does (statistics per feature: ``string_statistics`` with categorical
buckets for the predicted class, ``numerical_statistics`` with KLL buckets for the top-1
confidence and the top-1 minus top-2 margin; constraints with ``monitoring_config`` and
``distribution_constraints``). signwatch's own thresholds (over-prediction share, false-alarm
budget, minimum sample sizes) sit under a ``signwatch`` key that SageMaker ignores. The KLL
``sketch.data`` holds up to 1,024 sorted quantiles of the values rather than a real KLL
compactor state: signwatch reads only the buckets, which use the fixed bins of ``features``.

A baseline is made for one model's classes: ``constraints.json`` lists the class domain
(``string_constraints.domains``: ``"0"`` to ``"n-1"``) and ``statistics.json`` records the model
(``signwatch.model``: version and class count). ``load`` refuses one whose classes are not the
served model's (``BaselineMismatch``), never truncating. The shipped baseline describes the
shipped GTSRB model only (``for_shipped_classes``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from signwatch.data.classes import CLASS_NAMES as GTSRB_CLASS_NAMES
from signwatch.monitoring import estimate
from signwatch.monitoring.features import EDGES, N_BINS, Features, bin_of

CLASS_FEATURE, CONFIDENCE_FEATURE, MARGIN_FEATURE = "PredictedClass", "Confidence", "Margin"
# signwatch.model.core's MODELS_DIR, not imported from it: that would load torch into every
# process that counts captured records (the scheduled job's workers never run the model)
MODELS_DIR = Path(__file__).resolve().parents[3] / "models"
SHIPPED = MODELS_DIR / "signwatch-resnet18.baseline"
STATISTICS, CONSTRAINTS = "statistics.json", "constraints.json"
SUGGEST_HINT = "signwatch baseline suggest --capture PREFIX --start ... --end ... --upload"


class BaselineMismatch(ValueError):
    """The baseline was made for other classes than the served model's."""


def for_shipped_classes(class_names: tuple[str, ...]) -> bool:
    """The shipped baseline (and rendered or GTSRB reference images) fit a model whose labels are
    the GTSRB classes, in GTSRB's order, and no other."""
    return tuple(class_names) == GTSRB_CLASS_NAMES


@dataclass(frozen=True)
class Thresholds:
    """Check thresholds: from ``constraints.json``, overridable by settings."""

    over_prediction_share: float = 0.5        # the reference's rule
    categorical_comparison_threshold: float = 0.1  # L-infinity distance of the class shares
    comparison_threshold: float = 0.1          # KS distance of confidence / margin
    low_confidence: float = 0.5                # top three all below this
    low_confidence_min_increase: float = 0.02  # effect size on top of significance
    completeness: float = 0.99                 # share of events that must be readable
    alpha_per_day: float = 0.01                # false-alarm budget, see registry.alpha_for
    min_over_prediction: int = 20
    min_drift: int = 100

    def merged(self, overrides: dict) -> "Thresholds":
        names = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in names and v is not None})


@dataclass(frozen=True)
class Baseline:
    baseline_id: str
    item_count: int
    class_counts: np.ndarray          # (n_classes,)
    confidence_counts: np.ndarray     # (N_BINS,)
    margin_counts: np.ndarray         # (N_BINS,)
    low_confidence_count: int
    mean_confidence: float
    accuracy: float | None            # when the reference data had labels
    atc_bin: int | None               # bins >= this count as "probably right" (ATC)
    thresholds: Thresholds
    model: dict | None = None         # the model it was made for: version, num_classes (when recorded)
    # per confidence bin, the share right in labelled calibration data with shifted sets
    # (``estimate.bin_accuracy``): the label-free estimate's table, when suggested with them
    bin_accuracy: np.ndarray | None = None

    @property
    def class_shares(self) -> np.ndarray:
        return self.class_counts / max(1, self.item_count)

    @property
    def low_confidence_share(self) -> float:
        return self.low_confidence_count / max(1, self.item_count)


def _numerical_document(name: str, n: int, mean: float, std: float, lo: float, hi: float, counts: np.ndarray,
                        quantiles: list[float]) -> dict:
    """One ``numerical_statistics`` feature: the fixed-bin buckets and the quantiles as the KLL sketch."""
    return {"name": name, "inferred_type": "Fractional", "numerical_statistics": {
        "common": {"num_present": int(n), "num_missing": 0},
        "mean": float(mean), "sum": float(mean * n), "std_dev": float(std), "min": float(lo), "max": float(hi),
        "distribution": {"kll": {
            "buckets": [{"lower_bound": EDGES[i], "upper_bound": EDGES[i + 1], "count": float(counts[i])}
                        for i in range(N_BINS)],
            "sketch": {"parameters": {"c": 0.64, "k": 2048.0}, "data": [quantiles]}}}}}


def _numerical(name: str, values: np.ndarray) -> dict:
    # ``bin_of`` of every value at once (bisect_right is searchsorted "right"): 500,000 captured
    # records are binned in milliseconds rather than a second
    bins = np.clip(np.searchsorted(np.array(EDGES), values, side="right") - 1, 0, N_BINS - 1)
    counts = np.bincount(bins, minlength=N_BINS)
    quantiles = np.quantile(values, np.linspace(0, 1, min(1024, len(values)))).round(7).tolist()
    return _numerical_document(name, len(values), values.mean(), values.std(), values.min(), values.max(), counts,
                               quantiles)


def _numerical_from_bins(name: str, counts: np.ndarray, value_sum: float | None = None,
                         square_sum: float | None = None) -> dict:
    """The same feature from bin counts alone (a baseline learned by the streaming monitor, which
    keeps counters, never values). The sketch's quantiles are read off the bins as if the values
    were spread evenly within each bin, and min and max are the edges of the outermost bins
    holding any: signwatch reads only the buckets, which are exact. The mean and the standard
    deviation are exact when the running sums are given, else from the bins' middles."""
    counts = np.asarray(counts, dtype=float)
    n = float(counts.sum())
    edges = np.array(EDGES)
    middles = (edges[:-1] + edges[1:]) / 2
    mean = value_sum / n if value_sum is not None else float((counts * middles).sum() / n)
    second = square_sum / n if square_sum is not None else float((counts * middles ** 2).sum() / n)
    std = math.sqrt(max(0.0, second - mean ** 2))
    present = np.flatnonzero(counts)
    lo, hi = edges[present[0]], edges[present[-1] + 1]
    above = np.cumsum(counts) / n  # the share at or below each bin's upper edge
    levels = np.linspace(0, 1, int(min(1024, n)))
    bins = np.minimum(np.searchsorted(above, levels, side="left"), N_BINS - 1)  # the first bin reaching the level
    below = above[bins] - counts[bins] / n
    within = np.divide(levels - below, counts[bins] / n, out=np.zeros_like(levels), where=counts[bins] > 0)
    quantiles = edges[bins] + np.clip(within, 0, 1) * (edges[bins + 1] - edges[bins])  # even within a bin
    quantiles = np.clip(quantiles, lo, hi).round(7).tolist()
    return _numerical_document(name, int(n), mean, std, lo, hi, counts, quantiles)


def _atc_bin(confidence: np.ndarray, accuracy: float) -> int:
    """Average Thresholded Confidence (Garg et al., ICLR 2022): the bin edge above which the
    share of reference confidences equals the reference accuracy."""
    bins = np.array([bin_of(c) for c in confidence])
    shares = [(bins >= b).mean() for b in range(N_BINS)]
    return int(np.argmin([abs(s - accuracy) for s in shares]))


def suggest(features: list[Features], n_classes: int, labels: list[int] | None = None,
            source: str = "", thresholds: Thresholds | None = None, min_items: int = 100,
            model_version: str | None = None,
            calibration: list[tuple[list[Features], list[int]]] | None = None) -> tuple[dict, dict]:
    """``statistics.json`` and ``constraints.json`` for reference predictions of a model with
    ``n_classes`` classes (recorded, with ``model_version``, under ``signwatch.model``).

    ``calibration``: labelled predictions on shifted data (rendered snow, night, fog) beside the
    labelled reference; with them the label-free estimate's table (``signwatch.bin_accuracy``,
    ``estimate.bin_accuracy``) is learned from the reference and every set alike. They describe
    the model's confidence under shift only: the drift statistics are the reference's alone."""
    if len(features) < min_items:
        raise ValueError(f"a baseline needs at least {min_items} predictions, got {len(features)}")
    classes = np.array([f.class_id for f in features])
    conf = np.array([f.confidence for f in features])
    margin = np.array([f.margin for f in features])
    labelled: dict = {}
    if labels is not None:
        accuracy = float((classes == np.array(labels)).mean())
        labelled |= {"labelled_accuracy": accuracy, "atc_bin": _atc_bin(conf, accuracy)}
        if calibration:
            sets = [(features, labels)] + list(calibration)
            labelled |= {"bin_accuracy": [round(float(a), 6) for a in estimate.bin_accuracy(
                             [([f.confidence_bin for f in fs], [f.class_id == y for f, y in zip(fs, ys)])
                              for fs, ys in sets])],
                         "bin_accuracy_sets": [len(fs) for fs, _ in sets]}
    return suggest_from_values(classes, conf, margin, int(sum(f.low_confidence for f in features)), n_classes,
                               source, thresholds, min_items, model_version, labelled)


def suggest_from_values(classes: np.ndarray, confidence: np.ndarray, margin: np.ndarray, low_confidence_count: int,
                        n_classes: int, source: str = "", thresholds: Thresholds | None = None, min_items: int = 100,
                        model_version: str | None = None, labelled: dict | None = None) -> tuple[dict, dict]:
    """``suggest`` from the predictions as columns (top-1 class ids, confidences, margins; the
    scheduled job's ``capture_counts.Counted``), not one object each; ``labelled``: what labels add."""
    n = len(classes)
    if n < min_items:
        raise ValueError(f"a baseline needs at least {min_items} predictions, got {n}")
    classes = np.asarray(classes, dtype=np.int64)
    outside = int(((classes < 0) | (classes >= n_classes)).sum())
    if outside:
        raise ValueError(f"{outside} of {n} predictions name a class outside the model's "
                         f"0..{n_classes - 1}: were they made by another model?")
    counts = np.bincount(classes, minlength=n_classes)
    extra: dict = {"source": source, "low_confidence_count": int(low_confidence_count),
                   "bin_edges": list(EDGES), "model": {"version": model_version, "num_classes": n_classes}}
    extra |= labelled or {}
    return _documents(counts, _numerical(CONFIDENCE_FEATURE, np.asarray(confidence, dtype=float)),
                      _numerical(MARGIN_FEATURE, np.asarray(margin, dtype=float)), extra, thresholds)


def suggest_from_counts(class_counts: np.ndarray, confidence_counts: np.ndarray, margin_counts: np.ndarray,
                        low_confidence_count: int, source: str = "", model_version: str | None = None,
                        thresholds: Thresholds | None = None, min_items: int = 100,
                        confidence_sums: tuple[float, float] | None = None,
                        margin_sums: tuple[float, float] | None = None) -> tuple[dict, dict]:
    """What ``suggest`` writes, from counts rather than predictions (the streaming monitor learns a
    baseline as counters): the class counts, the confidence and margin bin counts (``features``'
    bins) and the low-confidence count; optionally the running sums (of the values, of their
    squares) for exact means and standard deviations. The checks read only these counts, so the
    baseline judges as one suggested from the same predictions would (``_numerical_from_bins``)."""
    class_counts = np.asarray(class_counts, dtype=np.int64)
    n = int(class_counts.sum())
    if n < min_items:
        raise ValueError(f"a baseline needs at least {min_items} predictions, got {n}")
    for name, bins in (("confidence", confidence_counts), ("margin", margin_counts)):
        if len(bins) != N_BINS or int(np.sum(bins)) != n:
            raise ValueError(f"the {name} bins count {int(np.sum(bins))} predictions in {len(bins)} bins, "
                             f"the classes {n} (expected {N_BINS} bins)")
    n_classes = len(class_counts)
    extra: dict = {"source": source, "low_confidence_count": int(low_confidence_count), "bin_edges": list(EDGES),
                   "model": {"version": model_version, "num_classes": n_classes}}
    return _documents(class_counts,
                      _numerical_from_bins(CONFIDENCE_FEATURE, confidence_counts, *(confidence_sums or ())),
                      _numerical_from_bins(MARGIN_FEATURE, margin_counts, *(margin_sums or ())), extra, thresholds)


def with_calibration(files: tuple[dict, dict], previous: "Baseline") -> tuple[dict, dict]:
    """``files`` (a learned baseline) keeping ``previous``'s calibration of the label-free
    estimate (the binned table, the ATC bin): it describes the model, not the traffic, and the
    traffic a baseline is learned from has no labels to learn one. For the same model only."""
    statistics, constraints = files
    extra = dict(statistics.get("signwatch", {}))
    if previous.bin_accuracy is not None:
        extra["bin_accuracy"] = [round(float(a), 6) for a in previous.bin_accuracy]
    if previous.atc_bin is not None:
        extra["atc_bin"] = int(previous.atc_bin)
    extra["calibration_from"] = previous.baseline_id
    return statistics | {"signwatch": extra}, constraints


def _documents(counts: np.ndarray, confidence: dict, margin: dict, extra: dict,
               thresholds: Thresholds | None) -> tuple[dict, dict]:
    """``statistics.json`` and ``constraints.json`` around the class counts and the two numerical features."""
    n, n_classes = int(counts.sum()), len(counts)
    statistics = {
        "version": 0.0,
        "dataset": {"item_count": n},
        "features": [
            {"name": CLASS_FEATURE, "inferred_type": "String", "string_statistics": {
                "common": {"num_present": n, "num_missing": 0},
                "distinct_count": float((counts > 0).sum()),
                "distribution": {"categorical": {"buckets": [
                    {"value": str(c), "count": int(counts[c])} for c in range(n_classes)]}}}},
            confidence,
            margin,
        ],
        "signwatch": extra,
    }
    t = thresholds or Thresholds()
    numeric = {"completeness": 1.0, "num_constraints": {"is_non_negative": True}}
    constraints = {
        "version": 0.0,
        "features": [
            {"name": CLASS_FEATURE, "inferred_type": "String", "completeness": 1.0,
             "string_constraints": {"domains": [str(c) for c in range(n_classes)]}},
            {"name": CONFIDENCE_FEATURE, "inferred_type": "Fractional"} | numeric,
            {"name": MARGIN_FEATURE, "inferred_type": "Fractional"} | numeric,
        ],
        "monitoring_config": {
            "evaluate_constraints": "Enabled", "emit_metrics": "Enabled",
            "datatype_check_threshold": 1.0, "domain_content_threshold": 1.0,
            "distribution_constraints": {
                "perform_comparison": "Enabled",
                "comparison_threshold": t.comparison_threshold, "comparison_method": "Robust",
                "categorical_comparison_threshold": t.categorical_comparison_threshold,
                "categorical_drift_method": "LInfinity",
            },
        },
        "signwatch": {f.name: getattr(t, f.name) for f in fields(t)
                      if f.name not in ("comparison_threshold", "categorical_comparison_threshold")},
    }
    return statistics, constraints


def baseline_id(statistics: dict, constraints: dict) -> str:
    canonical = json.dumps([statistics, constraints], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _feature(statistics: dict, name: str) -> dict:
    for f in statistics.get("features", []):
        if f.get("name") == name:
            return f
    raise ValueError(f"statistics.json has no feature {name!r}")


def _buckets(feature: dict) -> np.ndarray:
    buckets = feature["numerical_statistics"]["distribution"]["kll"]["buckets"]
    counts = np.zeros(N_BINS)
    for b in buckets:  # re-bin by the bucket's middle: any bucket layout is accepted
        lo, hi = float(b["lower_bound"]), float(b["upper_bound"])
        counts[bin_of((lo + hi) / 2 if hi > lo else lo)] += float(b["count"])
    return counts


def _class_domain(constraints: dict) -> list[str] | None:
    for f in constraints.get("features", []):
        if f.get("name") == CLASS_FEATURE:
            return (f.get("string_constraints") or {}).get("domains")
    return None


def check_classes(statistics: dict, constraints: dict, n_classes: int) -> None:
    """``BaselineMismatch`` when the baseline was made for another class count than ``n_classes``."""
    recorded = ((statistics.get("signwatch") or {}).get("model") or {})
    made_for = recorded.get("num_classes")
    domain = _class_domain(constraints)
    if made_for is None and domain is not None:
        made_for = len(domain)
    version = f" (model {recorded['version']})" if recorded.get("version") else ""
    if made_for is not None and int(made_for) != n_classes:
        raise BaselineMismatch(f"the baseline was made for {made_for} classes{version}, the served model has "
                               f"{n_classes}: suggest one from its captured traffic ({SUGGEST_HINT})")
    if domain is not None and {str(d) for d in domain} != {str(c) for c in range(n_classes)}:
        raise BaselineMismatch(f"the baseline's class domain is not 0..{n_classes - 1}: suggest one for the "
                               f"served model ({SUGGEST_HINT})")


def check_baseline_fits(baseline: Baseline, n_classes: int) -> None:
    """``BaselineMismatch`` when a loaded baseline counts another number of classes."""
    if len(baseline.class_counts) != n_classes:
        raise BaselineMismatch(f"baseline {baseline.baseline_id} counts {len(baseline.class_counts)} classes, "
                               f"the served model has {n_classes} ({SUGGEST_HINT})")


def load(statistics: dict, constraints: dict, n_classes: int, overrides: dict | None = None) -> Baseline:
    """Parse the two files for a model of ``n_classes`` classes; a clear ``ValueError`` when they
    are not usable, ``BaselineMismatch`` when they describe other classes (never truncated)."""
    check_classes(statistics, constraints, n_classes)
    try:
        item_count = int(statistics["dataset"]["item_count"])
        classes = _feature(statistics, CLASS_FEATURE)["string_statistics"]["distribution"]["categorical"]["buckets"]
        class_counts = np.zeros(n_classes)
        for b in classes:
            c = int(b["value"])
            if not 0 <= c < n_classes:
                raise BaselineMismatch(f"statistics.json counts class {c}, outside the served model's "
                                       f"0..{n_classes - 1}: suggest a baseline for it ({SUGGEST_HINT})")
            class_counts[c] = float(b["count"])
        conf_feature = _feature(statistics, CONFIDENCE_FEATURE)
        confidence_counts = _buckets(conf_feature)
        margin_counts = _buckets(_feature(statistics, MARGIN_FEATURE))
        mean_confidence = float(conf_feature["numerical_statistics"]["mean"])
        dist = constraints["monitoring_config"]["distribution_constraints"]
        from_file = dict(constraints.get("signwatch", {}))
        from_file |= {"comparison_threshold": float(dist["comparison_threshold"]),
                      "categorical_comparison_threshold": float(dist.get("categorical_comparison_threshold",
                                                                         dist["comparison_threshold"]))}
    except BaselineMismatch:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"not a usable baseline: {type(exc).__name__}: {exc}") from exc
    if item_count <= 0 or not math.isclose(class_counts.sum(), item_count, rel_tol=1e-6):
        raise ValueError("statistics.json: class counts do not add up to dataset.item_count")
    extra = statistics.get("signwatch", {})
    low = extra.get("low_confidence_count")
    if low is None:  # a foreign baseline: top-1 below 0.5 from the buckets
        low = confidence_counts[: bin_of(0.4999)+1].sum()
    thresholds = Thresholds().merged(from_file).merged(overrides or {})
    return Baseline(
        baseline_id=baseline_id(statistics, constraints), item_count=item_count,
        class_counts=class_counts, confidence_counts=confidence_counts, margin_counts=margin_counts,
        low_confidence_count=int(low), mean_confidence=mean_confidence,
        accuracy=extra.get("labelled_accuracy"), atc_bin=extra.get("atc_bin"), thresholds=thresholds,
        model=extra.get("model"), bin_accuracy=_bin_table(extra.get("bin_accuracy")),
    )


def _bin_table(values) -> np.ndarray | None:
    """The calibration table, when it has one share per bin of ``features`` (else the estimate
    falls back to ATC rather than misreading another bin layout)."""
    if not isinstance(values, list) or len(values) != N_BINS:
        return None
    try:
        table = np.array([float(v) for v in values])
    except (TypeError, ValueError):
        return None
    return table if np.all((table >= 0) & (table <= 1)) else None


def load_folder(folder: Path, n_classes: int, overrides: dict | None = None) -> Baseline:
    return load(json.loads((folder / STATISTICS).read_text()), json.loads((folder / CONSTRAINTS).read_text()),
                n_classes, overrides)


def write_folder(folder: Path, statistics: dict, constraints: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATISTICS).write_text(json.dumps(statistics, indent=1) + "\n")
    (folder / CONSTRAINTS).write_text(json.dumps(constraints, indent=1) + "\n")


def store_prefix(endpoint: str) -> str:
    return f"baselines/{endpoint}"


def read_store(store, prefix: str) -> tuple[dict, dict] | None:
    """The two files from the store, or None when no baseline is there."""
    s_key, c_key = f"{prefix}/{STATISTICS}", f"{prefix}/{CONSTRAINTS}"
    if not (store.exists(s_key) and store.exists(c_key)):
        return None
    return json.loads(store.get(s_key)), json.loads(store.get(c_key))


def write_store(store, prefix: str, statistics: dict, constraints: dict) -> list[str]:
    return [store.put(f"{prefix}/{STATISTICS}", json.dumps(statistics, indent=1).encode(), "application/json"),
            store.put(f"{prefix}/{CONSTRAINTS}", json.dumps(constraints, indent=1).encode(), "application/json")]


def shipped_files() -> tuple[dict, dict]:
    return json.loads((SHIPPED / STATISTICS).read_text()), json.loads((SHIPPED / CONSTRAINTS).read_text())
