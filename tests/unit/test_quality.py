"""The check of the checker: every model-quality metric equals scikit-learn's own on the same
labels, the figures equal those SageMaker publishes for its example, and the files fit schemas
written from SageMaker's model-quality docs."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score, confusion_matrix, fbeta_score, precision_recall_fscore_support, recall_score,
)

from signwatch.monitoring import quality as q
from tests.schemas import validate

TOL = 1e-9


def _uneven_43(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """43 classes with a long tail and 8 classes absent from the labels; the model is right
    70% of the time and otherwise answers any class, absent ones included."""
    rng = np.random.default_rng(seed)
    present = np.setdiff1d(np.arange(43), [3, 7, 15, 22, 29, 30, 38, 42])
    shares = 1.0 / np.arange(1, present.size + 1) ** 1.2
    y_true = rng.choice(present, size=n, p=shares / shares.sum())
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, 43, n))
    return y_true, y_pred


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    rng = np.random.default_rng(7)
    two_true = (rng.random(1000) < 0.2).astype(int)
    two_pred = np.where(rng.random(1000) < 0.8, two_true, 1 - two_true)
    balanced = rng.integers(0, 43, 3000)
    return {
        "43 classes, absent ones, 5,000": (*_uneven_43(5000, 1), 43),
        "43 classes, absent ones, 150 (no deviation)": (*_uneven_43(150, 2), 43),
        "2 classes": (two_true, two_pred, 2),
        "perfect model": (balanced, balanced.copy(), 43),
        "constant model": (balanced, np.full(balanced.size, 14), 43),
        "43 classes, random answers": (balanced, rng.integers(0, 43, balanced.size), 43),
    }


CASES = _cases()


def _sklearn(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    p, r, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "weighted_recall": r,
        "weighted_precision": p,
        "weighted_f0_5": fbeta_score(y_true, y_pred, beta=0.5, average="weighted", zero_division=0),
        "weighted_f1": f1,
        "weighted_f2": fbeta_score(y_true, y_pred, beta=2, average="weighted", zero_division=0),
    }


@pytest.mark.parametrize("case", CASES)
def test_every_metric_equals_scikit_learns(case):
    y_true, y_pred, k = CASES[case]
    metrics = q.multiclass_metrics(y_true, y_pred, k)
    expected = _sklearn(y_true, y_pred)
    assert {name: metrics[name]["value"] for name in q.METRICS} == pytest.approx(expected, abs=TOL)
    # the f1 of precision_recall_fscore_support is fbeta_score's with beta 1
    assert metrics["weighted_f1"]["value"] == pytest.approx(
        fbeta_score(y_true, y_pred, beta=1, average="weighted", zero_division=0), abs=TOL)

    majority = np.bincount(y_true).argmax()
    constant = _sklearn(y_true, np.full(y_true.size, majority))
    assert {name: metrics[name + q.BEST_CONSTANT_SUFFIX]["value"] for name in q.METRICS} == pytest.approx(
        constant, abs=TOL)

    seen = np.union1d(y_true, y_pred)
    expected_matrix = confusion_matrix(y_true, y_pred, labels=seen)
    ours = metrics["confusion_matrix"]
    assert list(ours) == [str(c) for c in seen]
    assert np.array_equal([[ours[str(t)][str(p)] for p in seen] for t in seen], expected_matrix)

    recall = q.per_class_recall(y_true, y_pred, k)
    expected_recall = recall_score(y_true, y_pred, labels=np.arange(k), average=None, zero_division=np.nan)
    np.testing.assert_allclose(recall, expected_recall, atol=TOL, equal_nan=True)
    assert np.isnan(recall).sum() == k - np.unique(y_true).size  # NaN exactly where a class has no label


def test_the_figures_are_those_sagemaker_publishes_for_its_example():
    """The multiclass example of 'Model quality metrics and Amazon CloudWatch monitoring': its
    confusion matrix, turned back into labels, gives its six metrics; its best-constant figures
    are those of the constant answer "1" (see ``quality._best_constant``)."""
    cells = {(0, 0): 1180, (0, 1): 510, (1, 0): 268, (1, 1): 138}
    y_true = np.repeat([t for t, _ in cells], list(cells.values()))
    y_pred = np.repeat([p for _, p in cells], list(cells.values()))
    published = {"accuracy": 0.6288167938931297, "weighted_recall": 0.6288167938931297,
                 "weighted_precision": 0.6983172269629505, "weighted_f0_5": 0.6803947317178771,
                 "weighted_f1": 0.6571162346664904, "weighted_f2": 0.6384024354394601}
    published_constant = {"accuracy": 0.19370229007633588, "weighted_recall": 0.19370229007633588,
                           "weighted_precision": 0.03752057718081697, "weighted_f0_5": 0.04473443104152011,
                           "weighted_f1": 0.06286421244683643, "weighted_f2": 0.10570313141262414}
    metrics = q.multiclass_metrics(y_true, y_pred, 2, constant_class=1)
    assert metrics["confusion_matrix"] == {"0": {"0": 1180, "1": 510}, "1": {"0": 268, "1": 138}}
    assert {n: metrics[n]["value"] for n in q.METRICS} == pytest.approx(published, abs=1e-12)
    assert {n: metrics[n + q.BEST_CONSTANT_SUFFIX]["value"] for n in q.METRICS} == pytest.approx(
        published_constant, abs=1e-12)
    # their deviations (5 subsamples of 80%) are 0.0037 to 0.0062: ours land in the same range
    assert all(0.002 < metrics[n]["standard_deviation"] < 0.008 for n in q.METRICS)


def test_the_deviation_is_that_of_five_seeded_80_percent_subsamples():
    y_true, y_pred, k = CASES["43 classes, absent ones, 5,000"]
    metrics = q.multiclass_metrics(y_true, y_pred, k, seed=3)
    picks = q._subsamples(y_true.size, 3)
    assert picks.shape == (5, 4000) and all(np.unique(row).size == 4000 for row in picks)  # no repeats
    for name, score in (("accuracy", accuracy_score),
                        ("weighted_f2", lambda t, p: fbeta_score(t, p, beta=2, average="weighted", zero_division=0))):
        expected = np.std([score(y_true[i], y_pred[i]) for i in picks], ddof=1)
        assert metrics[name]["standard_deviation"] == pytest.approx(expected, abs=TOL)
    assert q.multiclass_metrics(y_true, y_pred, k, seed=3) == metrics  # seeded: the same window, the same file
    assert q.multiclass_metrics(y_true, y_pred, k, seed=4)["accuracy"]["standard_deviation"] != \
        metrics["accuracy"]["standard_deviation"]


def test_under_200_items_the_deviation_is_nan_as_sagemaker_writes_it():
    (y_true, y_pred), k = _uneven_43(199, 5), 43
    metrics = q.multiclass_metrics(y_true, y_pred, k)
    assert {metrics[n]["standard_deviation"] for n in q.METRICS} == {"NaN"}
    json.dumps(metrics, allow_nan=False)  # valid JSON: no bare NaN anywhere
    (y_true, y_pred), k = _uneven_43(200, 5), 43
    assert isinstance(q.multiclass_metrics(y_true, y_pred, k)["accuracy"]["standard_deviation"], float)


def test_labels_name_the_confusion_matrix():
    names = tuple(f"class {c}" for c in range(3))
    metrics = q.multiclass_metrics([0, 0, 2], [0, 2, 2], 3, labels=names)
    assert metrics["confusion_matrix"] == {"class 0": {"class 0": 1, "class 2": 1},
                                           "class 2": {"class 0": 0, "class 2": 1}}


@pytest.mark.parametrize("y_true, y_pred, message", [
    ([0, 1, 43], [0, 1, 2], "outside the model's classes"),
    ([0, -1], [0, 1], "outside the model's classes"),
    ([0, 1], [0, 1, 1], "2 true labels for 3 predictions"),
    ([], [], "at least one"),
    ([0.5, 1], [0, 1], "integers"),
])
def test_labels_outside_the_model_are_refused(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        q.multiclass_metrics(y_true, y_pred, 43)


def test_the_files_fit_sagemakers_model_quality_schemas():
    y_true, y_pred, k = CASES["43 classes, absent ones, 5,000"]
    statistics = json.loads(json.dumps(q.quality_statistics(y_true, y_pred, k), allow_nan=False))
    validate(statistics, "model_quality_statistics")
    small = json.loads(json.dumps(q.quality_statistics(y_true[:50], y_pred[:50], k), allow_nan=False))
    validate(small, "model_quality_statistics")
    constraints = q.quality_constraints(statistics)
    validate(constraints, "model_quality_constraints")
    worse = q.quality_statistics(y_true, np.where(np.arange(y_true.size) % 2, y_pred, (y_pred + 1) % k), k)
    report = q.violations_report(q.check_quality(worse, constraints))
    assert report["violations"]
    validate(report, "model_quality_constraint_violations")
    # the schemas have teeth: a metric missing, a deviation that is neither a number nor "NaN"
    broken = json.loads(json.dumps(statistics))
    del broken[q.METRICS_KEY]["weighted_f2"]
    with pytest.raises(jsonschema.ValidationError):
        validate(broken, "model_quality_statistics")
    broken = json.loads(json.dumps(statistics))
    broken[q.METRICS_KEY]["accuracy"]["standard_deviation"] = "n/a"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken, "model_quality_statistics")
    with pytest.raises(jsonschema.ValidationError):
        validate({"violations": [{"feature_name": "accuracy", "constraint_check_type": "LessThanThreshold",
                                  "description": "x"}]}, "model_quality_constraint_violations")


def test_a_drop_in_accuracy_below_its_threshold_is_a_violation_naming_the_metric():
    (y_true, y_pred), k = _uneven_43(4000, 11), 43  # about 70% right
    baseline = q.quality_statistics(y_true, y_pred, k)
    constraints = q.quality_constraints(baseline, tolerance=0.05)
    accuracy = baseline[q.METRICS_KEY]["accuracy"]["value"]
    assert constraints[q.CONSTRAINTS_KEY]["accuracy"] == {
        "threshold": pytest.approx(accuracy - 0.05), "comparison_operator": "LessThanThreshold"}

    rng = np.random.default_rng(12)
    t2, p2 = _uneven_43(4000, 13)
    snow = np.where(rng.random(t2.size) < 0.25, rng.integers(0, k, t2.size), p2)  # a quarter answered at random
    violations = q.check_quality(q.multiclass_metrics(t2, snow, k), constraints)
    named = {v["metric_name"]: v for v in violations}
    assert "accuracy" in named
    v = named["accuracy"]
    assert v["constraint_check_type"] == "LessThanThreshold"
    assert v["description"].startswith("Metric accuracy with 0.") and "+/- " in v["description"]
    assert v["description"].endswith(f"was LessThanThreshold {constraints[q.CONSTRAINTS_KEY]['accuracy']['threshold']}")

    # a window as good as the baseline, or better, raises nothing
    assert q.check_quality(q.multiclass_metrics(t2, p2, k), constraints) == []
    assert q.check_quality(q.multiclass_metrics(t2, t2, k), constraints) == []
    # SageMaker's own suggestion (no margin): the baseline itself holds, any drop fails
    exact = q.quality_constraints(baseline)
    assert q.check_quality(baseline, exact) == []
    assert q.check_quality(baseline, q.quality_constraints(baseline, deviations=2.0)) == []


def test_a_constraint_that_cannot_be_checked_is_an_error_not_a_pass():
    metrics = q.multiclass_metrics([0, 1, 1], [0, 1, 0], 2)
    with pytest.raises(ValueError, match="unknown comparison_operator"):
        q.check_quality(metrics, {"accuracy": {"threshold": 0.5, "comparison_operator": "LessThan"}})
    with pytest.raises(ValueError, match="statistics do not have"):
        q.check_quality(metrics, {"auc": {"threshold": 0.5, "comparison_operator": "LessThanThreshold"}})
    high = q.check_quality(metrics, {"accuracy": {"threshold": 0.5, "comparison_operator": "GreaterThanThreshold"}})
    assert [v["metric_name"] for v in high] == ["accuracy"] and "+/-" not in high[0]["description"]  # "NaN" deviation
