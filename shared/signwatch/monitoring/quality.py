"""Model quality from labels, in SageMaker Model Monitor's model-quality shapes.

``multiclass_metrics`` is the ``multiclass_classification_metrics`` object of a model-quality
``statistics.json``; ``quality_constraints`` writes ``multiclass_classification_constraints``;
``check_quality`` judges metrics against them as model-quality violations. Sources (SageMaker
Developer Guide): "Model quality metrics and Amazon CloudWatch monitoring"
(docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-model-quality-metrics.html) for the
metrics object, the confusion matrix and the standard deviation; "Create a Model Quality
Baseline" (model-monitor-model-quality-baseline.html) for ``suggested_constraints()`` under
``multiclass_classification_constraints``; the violation shape (``metric_name``, the comparison
operator as ``constraint_check_type``) from AWS's MonitoringCustomMetrics (github.com/amzn/
MonitoringCustomMetrics), written to SageMaker's model-quality output formats.

Everything is computed from confusion matrices, many at a time (one per subsample), so a window
of any size costs a few ``bincount`` calls. Definitions are scikit-learn's, and the tests hold
them to it: weighted averages are weighted by each class's count of true labels, so a class
absent from the window weighs nothing; a per-class ratio whose denominator is zero (a class
never predicted has no precision) counts as 0, scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METRICS_KEY = "multiclass_classification_metrics"
CONSTRAINTS_KEY = "multiclass_classification_constraints"
# SageMaker's F-scores: F0.5 leans on precision, F2 on recall
BETAS = {"weighted_f0_5": 0.5, "weighted_f1": 1.0, "weighted_f2": 2.0}
METRICS = ("accuracy", "weighted_recall", "weighted_precision", *BETAS)
BEST_CONSTANT_SUFFIX = "_best_constant_classifier"

# SageMaker's note on the metrics page: "Standard deviation for metrics are provided only when at
# least 200 samples are available. Model Monitor computes standard deviation by randomly
# sampling 80% of the data five times, computing the metric, and taking the standard deviation
# for those results." Below 200 it writes the string "NaN" (the page's binary example). The page
# says neither whether the 80% are drawn with replacement nor which standard deviation: we draw
# without replacement (a subsample, as "80% of the data" reads) and take the sample standard
# deviation (ddof=1, Spark's ``stddev``, the analyzer being a Spark job), seeded, so a window
# always gets the same figures.
MIN_ITEMS_FOR_DEVIATION = 200
SUBSAMPLES = 5
SUBSAMPLE_SHARE = 0.8
NOT_A_NUMBER = "NaN"

# Where the model-quality files sit beside the drift ones: a baseline's under
# ``{drift baseline prefix}/model-quality/`` (SageMaker runs model-quality baselining as a job of
# its own, with its own output), a run's under ``{run folder}/model_quality/``.
BASELINE_FOLDER = "model-quality"
RUN_FOLDER = "model_quality"
STATISTICS_FILE, CONSTRAINTS_FILE, VIOLATIONS_FILE = "statistics.json", "constraints.json", "constraint_violations.json"


def baseline_prefix(drift_baseline_prefix: str) -> str:
    """The store prefix of the model-quality baseline of an endpoint whose drift baseline sits at
    ``drift_baseline_prefix`` (``baselines/{endpoint}``)."""
    return f"{drift_baseline_prefix.rstrip('/')}/{BASELINE_FOLDER}"


def constraints_key(drift_baseline_prefix: str) -> str:
    return f"{baseline_prefix(drift_baseline_prefix)}/{CONSTRAINTS_FILE}"


# The comparison operators of model-quality constraints: the metric violates when it lies on
# the named side of the threshold
OPERATORS = {
    "LessThanThreshold": lambda value, threshold: value < threshold,
    "GreaterThanThreshold": lambda value, threshold: value > threshold,
}


def _as_labels(values, n_classes: int, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        as_int = array.astype(np.int64)
        if not np.array_equal(as_int, array):
            raise ValueError(f"{what} must be class ids (integers)")
        array = as_int
    array = array.astype(np.int64)
    outside = (array < 0) | (array >= n_classes)
    if outside.any():
        raise ValueError(f"{int(outside.sum())} of {array.size} {what} lie outside the model's classes "
                         f"0..{n_classes - 1} (first: {int(array[outside][0])})")
    return array


def _validated(y_true, y_pred, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    t, p = _as_labels(y_true, n_classes, "true labels"), _as_labels(y_pred, n_classes, "predictions")
    if t.size != p.size:
        raise ValueError(f"{t.size} true labels for {p.size} predictions")
    if t.size == 0:
        raise ValueError("no labelled predictions: model quality needs at least one")
    return t, p


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int,
              groups: np.ndarray | None = None, n_groups: int = 1) -> np.ndarray:
    """``(n_groups, n_classes, n_classes)`` counts, rows the true class, columns the predicted
    (scikit-learn's and SageMaker's orientation); ``groups`` assigns each pair to a matrix."""
    k = n_classes
    cell = y_true * k + y_pred if groups is None else (groups * k + y_true) * k + y_pred
    return np.bincount(cell.ravel(), minlength=n_groups * k * k).reshape(n_groups, k, k)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Ratio with 0 where the denominator is 0 (scikit-learn's ``zero_division=0``)."""
    return np.divide(numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape),
                     where=denominator > 0)


def _scores(c: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of each confusion matrix in ``c`` (B, K, K): a (B,) array per name."""
    c = c.astype(np.float64)
    tp = np.diagonal(c, axis1=1, axis2=2)
    support, predicted = c.sum(axis=2), c.sum(axis=1)
    n = support.sum(axis=1)
    weights = support / n[:, None]
    scores = {
        "accuracy": tp.sum(axis=1) / n,
        "weighted_recall": (weights * _divide(tp, support)).sum(axis=1),
        "weighted_precision": (weights * _divide(tp, predicted)).sum(axis=1),
    }
    for name, beta in BETAS.items():
        # (1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp), as scikit-learn writes F-beta
        f = _divide((1 + beta ** 2) * tp, beta ** 2 * support + predicted)
        scores[name] = (weights * f).sum(axis=1)
    return scores


def _best_constant(c: np.ndarray, answer: int | None = None) -> np.ndarray:
    """The confusion matrices of the constant classifier that always answers ``answer``, by
    default each matrix's most frequent true class. That one is the best constant classifier by
    every metric here at once: answering a class of share p scores accuracy and weighted recall
    p, weighted precision p^2 and weighted F-beta p * (1+b^2) p / (b^2 p + 1), all growing with p. Ties
    go to the lowest class id (same scores).

    The docs do not define it for multiclass. Their example's figures (accuracy 406/2096,
    weighted precision its square) are those of the constant answer "1", the rarer of its two
    classes (as in their binary example, where the constant answer is the positive class):
    ``answer=1`` reproduces them; by default we keep "best" literal."""
    support = c.sum(axis=2)
    answers = support.argmax(axis=1) if answer is None else np.full(c.shape[0], answer)
    constant = np.zeros_like(c)
    b, k = c.shape[0], c.shape[1]
    constant[np.arange(b)[:, None], np.arange(k)[None, :], answers[:, None]] = support
    return constant


def _subsamples(n: int, seed: int) -> np.ndarray:
    """``SUBSAMPLES`` draws of 80% of the indices, without replacement, as (SUBSAMPLES, m)."""
    m = max(1, int(round(SUBSAMPLE_SHARE * n)))
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((SUBSAMPLES, n)), axis=1)[:, :m]


def _key(c: int, labels: Sequence[str] | None) -> str:
    return str(c) if labels is None else str(labels[c])


def _confusion_document(c: np.ndarray, labels: Sequence[str] | None) -> dict:
    """SageMaker's nested ``{"true": {"predicted": count}}`` over the classes seen in the window
    (as labels or as predictions: scikit-learn's default label set), zero cells included."""
    seen = np.flatnonzero((c.sum(axis=0) + c.sum(axis=1)) > 0)
    return {_key(t, labels): {_key(p, labels): int(c[t, p]) for p in seen} for t in seen}


def multiclass_metrics(y_true, y_pred, n_classes: int, labels: Sequence[str] | None = None,
                       seed: int = 0, constant_class: int | None = None) -> dict:
    """SageMaker's ``multiclass_classification_metrics`` for class ids ``y_true`` (the labels)
    and ``y_pred`` (the model's answers), each in ``[0, n_classes)`` (else ``ValueError``).

    ``confusion_matrix`` is keyed by class id as a string, or by ``labels[id]`` when given (the
    class names, one per class); every metric and its ``_best_constant_classifier`` twin is
    ``{"value", "standard_deviation"}``, the deviation ``"NaN"`` under 200 items. The constant
    classifier answers the window's most frequent true class unless ``constant_class`` names
    one (``_best_constant``)."""
    t, p = _validated(y_true, y_pred, n_classes)
    if labels is not None and len(labels) != n_classes:
        raise ValueError(f"{len(labels)} labels for {n_classes} classes")
    if constant_class is not None and not 0 <= constant_class < n_classes:
        raise ValueError(f"constant_class {constant_class} lies outside 0..{n_classes - 1}")
    whole = confusion(t, p, n_classes)
    matrices = whole
    if t.size >= MIN_ITEMS_FOR_DEVIATION:
        picks = _subsamples(t.size, seed)
        groups = np.repeat(np.arange(SUBSAMPLES), picks.shape[1])
        parts = confusion(t[picks].ravel(), p[picks].ravel(), n_classes, groups, SUBSAMPLES)
        matrices = np.concatenate([whole, parts])  # row 0 is the whole window
    model, constant = _scores(matrices), _scores(_best_constant(matrices, constant_class))

    def entry(values: np.ndarray) -> dict:
        sd = float(np.std(values[1:], ddof=1)) if values.size > 1 else NOT_A_NUMBER
        return {"value": float(values[0]), "standard_deviation": sd}

    document: dict = {"confusion_matrix": _confusion_document(whole[0], labels)}
    document |= {name: entry(model[name]) for name in METRICS}
    document |= {name + BEST_CONSTANT_SUFFIX: entry(constant[name]) for name in METRICS}
    return document


def per_class_recall(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Each class's recall (the share of its true labels the model got right), ``NaN`` for a
    class with no label in the window (scikit-learn's ``recall_score(average=None,
    zero_division=np.nan)``): a class the model loses shows here even when the weighted
    figures barely move. Kept out of the SageMaker object, which has no per-class key."""
    t, p = _validated(y_true, y_pred, n_classes)
    c = confusion(t, p, n_classes)[0].astype(np.float64)
    support = c.sum(axis=1)
    return np.divide(np.diag(c), support, out=np.full(n_classes, np.nan), where=support > 0)


def quality_statistics(y_true, y_pred, n_classes: int, labels: Sequence[str] | None = None,
                       seed: int = 0) -> dict:
    """A model-quality ``statistics.json``: ``version``, ``dataset.item_count`` (as the
    data-quality file has it) and the metrics object; per-class recall and the deviation's
    method sit under ``signwatch``, which SageMaker readers ignore."""
    metrics = multiclass_metrics(y_true, y_pred, n_classes, labels, seed)
    recall = per_class_recall(y_true, y_pred, n_classes)
    return {
        "version": 0.0,
        "dataset": {"item_count": int(np.asarray(y_true).size)},
        METRICS_KEY: metrics,
        "signwatch": {
            "per_class_recall": {_key(c, labels): float(recall[c]) for c in np.flatnonzero(~np.isnan(recall))},
            "standard_deviation": {"subsamples": SUBSAMPLES, "share": SUBSAMPLE_SHARE, "replacement": False,
                                   "ddof": 1, "seed": seed, "min_items": MIN_ITEMS_FOR_DEVIATION},
        },
    }


def _inner(document: dict, key: str) -> dict:
    """The inner object of a whole file, or the object itself."""
    return document[key] if key in document else document


def quality_constraints(metrics: dict, tolerance: float = 0.0, deviations: float = 0.0) -> dict:
    """A model-quality ``constraints.json`` from baseline metrics (the object or the whole
    statistics file): for each of SageMaker's six metrics, ``LessThanThreshold`` at its
    baseline value less ``tolerance`` and ``deviations`` standard deviations.

    With both 0 it is what SageMaker's baseline job suggests (the baseline's own value, which
    its docs call possibly "too aggressive": any drop alerts); the baseline then wants a margin."""
    m = _inner(metrics, METRICS_KEY)
    constraints = {}
    for name in METRICS:
        sd = m[name]["standard_deviation"]
        spread = deviations * sd if isinstance(sd, (int, float)) and not math.isnan(sd) else 0.0
        threshold = max(0.0, m[name]["value"] - tolerance - spread)
        constraints[name] = {"threshold": threshold, "comparison_operator": "LessThanThreshold"}
    return {"version": 0.0, CONSTRAINTS_KEY: constraints}


def check_quality(metrics: dict, constraints: dict) -> list[dict]:
    """The model-quality violations of ``metrics`` (the object or the whole statistics file)
    against ``constraints`` (the object or the whole constraints file), in the constraints'
    order, each ``{"metric_name", "constraint_check_type", "description"}`` with the comparison
    operator as the check type. A constraint on a metric the statistics lack, or with an
    operator other than ``OPERATORS``, is a ``ValueError``: a check that cannot run must not
    pass for one that held."""
    m, cs = _inner(metrics, METRICS_KEY), _inner(constraints, CONSTRAINTS_KEY)
    violations = []
    for name, constraint in cs.items():
        operator = constraint.get("comparison_operator")
        if operator not in OPERATORS:
            raise ValueError(f"constraint on {name}: unknown comparison_operator {operator!r}")
        if name not in m:
            raise ValueError(f"constraint on {name}, which the statistics do not have")
        value, sd, threshold = m[name]["value"], m[name]["standard_deviation"], constraint["threshold"]
        if OPERATORS[operator](value, threshold):
            spread = f" +/- {sd}" if sd != NOT_A_NUMBER else ""
            violations.append({"metric_name": name, "constraint_check_type": operator,
                               "description": f"Metric {name} with {value}{spread} was {operator} {threshold}"})
    return violations


def violations_report(violations: list[dict]) -> dict:
    """The ``constraint_violations.json`` document."""
    return {"violations": violations}
