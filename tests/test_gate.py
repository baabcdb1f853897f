from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from prunegate.gate import Evidence, evaluate_rule, evaluate_rules, metric_value, verdict
from prunegate.policy import Rule
from prunegate.report.schema import TaskRecord


def summary(dense: float, pruned: float, agreement: float = 1.0, l2: float = 0.0) -> dict:
    return {
        "n": 100,
        "dense": {"accuracy": dense},
        "pruned": {"accuracy": pruned},
        "accuracy_drop": dense - pruned,
        "agreement": agreement,
        "softmax_l2": l2,
    }


def record(name: str, numbers: dict) -> TaskRecord:
    """The task record of a summary's numbers; the fields the tests do not set are neutral (no non-finite outputs)."""
    sides = {which: {"correct": 0, "nonfinite": 0, **numbers[which]} for which in ("dense", "pruned")}
    return TaskRecord.model_validate(
        {"name": name, "kind": name.split("/")[0], "group": name, "softmax_linf": 0.0, **numbers, **sides}
    )


def evidence(
    summaries: dict[str, dict],
    replicates: dict[str, dict[str, np.ndarray]] | None = None,
    confidence: float | None = None,
) -> Evidence:
    """What the gate reads, from summaries by task name."""
    return Evidence([record(name, s) for name, s in summaries.items()], replicates or {}, confidence)


# Drops 0.01, 0.03, 0.05 (mean 0.03); agreements 0.95, 0.90, 0.85 (mean 0.90).
SUMMARIES = {
    "clean": summary(0.90, 0.89, 0.99),
    "noise/uniform/0.1": summary(0.80, 0.79, 0.95),
    "noise/uniform/0.2": summary(0.70, 0.67, 0.90),
    "noise/uniform/0.3": summary(0.60, 0.55, 0.85),
}
NOISE = "noise/*"


def rule(**fields: Any) -> Rule:
    return Rule(**{"name": "r", "tasks": NOISE, "metric": "accuracy_drop", **fields})


@pytest.mark.parametrize(
    ("aggregate", "threshold", "value", "passed"),
    [
        ("each", 0.05, 0.05, True),  # every task within: the worst (largest) drop is reported
        ("each", 0.04, 0.05, False),
        ("mean", 0.03, 0.03, True),
        ("mean", 0.029, 0.03, False),
        ("max", 0.05, 0.05, True),
        ("max", 0.049, 0.05, False),
        ("min", 0.01, 0.01, True),
        ("min", 0.009, 0.01, False),
    ],
)
def test_aggregates_against_a_max(aggregate: str, threshold: float, value: float, passed: bool) -> None:
    result = evaluate_rule(rule(aggregate=aggregate, max=threshold), evidence(SUMMARIES))
    assert result.value == pytest.approx(value)
    assert result.passed is passed
    assert result.comparison == "max" and result.threshold == threshold
    assert result.tasks == [NOISE] and [t.task for t in result.per_task] == list(SUMMARIES)[1:]


@pytest.mark.parametrize(
    ("aggregate", "threshold", "value", "passed"),
    [
        ("each", 0.85, 0.85, True),  # every task must reach it: the smallest agreement is reported
        ("each", 0.86, 0.85, False),
        ("mean", 0.90, 0.90, True),
        ("mean", 0.91, 0.90, False),
        ("min", 0.85, 0.85, True),
        ("min", 0.86, 0.85, False),
        ("max", 0.95, 0.95, True),
        ("max", 0.96, 0.95, False),
    ],
)
def test_aggregates_against_a_min(aggregate: str, threshold: float, value: float, passed: bool) -> None:
    result = evaluate_rule(rule(metric="agreement", aggregate=aggregate, min=threshold), evidence(SUMMARIES))
    assert result.value == pytest.approx(value)
    assert result.passed is passed
    assert result.comparison == "min"


def test_each_reports_which_tasks_failed() -> None:
    result = evaluate_rule(rule(aggregate="each", max=0.03), evidence(SUMMARIES))
    assert [(t.task, t.passed) for t in result.per_task] == [
        ("noise/uniform/0.1", True),
        ("noise/uniform/0.2", True),
        ("noise/uniform/0.3", False),
    ]
    assert result.passed is False


def test_drop_exactly_at_the_tolerance_passes() -> None:
    # 1621/2000 - 1601/2000 is 0.010000000000000009 in floating point, not 0.01.
    dense, pruned = 1621 / 2000, 1601 / 2000
    assert (dense, pruned) == (0.8105, 0.8005) and dense - pruned > 0.01
    result = evaluate_rule(rule(tasks="clean", max=0.01), evidence({"clean": summary(dense, pruned)}))
    assert result.passed
    assert not evaluate_rule(rule(tasks="clean", max=0.01), evidence({"clean": summary(0.8106, 0.8005)})).passed


def test_min_exactly_at_the_threshold_passes() -> None:
    just_below = 0.3 * 3  # 0.8999999999999999: 0.9 up to rounding
    agreement = rule(tasks="clean", metric="agreement", min=0.9)
    result = evaluate_rule(agreement, evidence({"clean": summary(1, 1, just_below)}))
    assert result.passed
    assert not evaluate_rule(agreement, evidence({"clean": summary(1, 1, 0.8999)})).passed


@pytest.mark.parametrize("nan_first", [True, False])
@pytest.mark.parametrize("aggregate", ["each", "mean", "min", "max"])
def test_nan_fails_whatever_the_aggregate_and_order(aggregate: str, nan_first: bool) -> None:
    broken, fine = summary(0.9, 0.9, agreement=math.nan), summary(0.9, 0.9, agreement=1.0)
    summaries = {"clean": broken, "ood/x": fine} if nan_first else {"clean": fine, "ood/x": broken}
    result = evaluate_rule(rule(tasks="*", metric="agreement", aggregate=aggregate, min=0.0), evidence(summaries))
    assert [t.passed for t in result.per_task] == ([False, True] if nan_first else [True, False])
    assert math.isnan(result.value) and result.passed is False


def test_nan_fails_a_max_rule() -> None:
    result = evaluate_rule(rule(tasks="clean", max=1.0), evidence({"clean": summary(math.nan, 0.5)}))
    assert math.isnan(result.value) and result.passed is False


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("dense_accuracy", 0.9),
        ("pruned_accuracy", 0.8),
        ("accuracy_drop", 0.9 - 0.8),
        ("agreement", 0.7),
        ("softmax_l2", 0.25),
    ],
)
def test_metric_value_reads_each_metric(metric: str, expected: float) -> None:
    assert metric_value(record("clean", summary(0.9, 0.8, 0.7, 0.25)), metric) == pytest.approx(expected)


def test_rule_matching_no_task_fails() -> None:
    result = evaluate_rule(rule(tasks="ood/*", max=0.5), evidence(SUMMARIES))
    assert result.per_task == [] and result.passed is False


def test_verdict() -> None:
    passing = evaluate_rule(rule(max=0.05), evidence(SUMMARIES))
    failing = evaluate_rule(rule(name="f", max=0.01), evidence(SUMMARIES))
    assert verdict([passing]) == "pass"
    assert verdict([passing, failing]) == "fail"
    assert verdict([]) == "fail"  # nothing checked is not a pass
    assert (
        verdict(evaluate_rules([rule(max=0.05), rule(name="g", tasks="clean", max=0.01)], evidence(SUMMARIES)))
        == "pass"
    )


def test_result_serialises_to_plain_data() -> None:
    data = evaluate_rule(rule(max=0.05), evidence(SUMMARIES)).model_dump()
    assert data["per_task"][0] == {
        "task": "noise/uniform/0.1",
        "value": pytest.approx(0.01),
        "passed": True,
        "bound": None,
        "status": None,
    }
    assert set(data) >= {"name", "metric", "tasks", "aggregate", "comparison", "threshold", "value", "passed"}


# --- decisions at a confidence level ---------------------------------------------------------


def with_interval(s: dict, metric: str, low: float, high: float, n: int = 100) -> dict:
    return {**s, "n": n, "intervals": {metric: {"low": low, "high": high, "method": "newcombe"}}}


@pytest.mark.parametrize(
    ("low", "high", "status"),
    [(0.00, 0.009, "pass"), (0.005, 0.02, "undecided"), (0.011, 0.03, "fail"), (-0.01, 0.01, "pass")],
)
def test_confidence_decides_on_the_conservative_bound(low: float, high: float, status: str) -> None:
    summaries = {"clean": with_interval(summary(0.9, 0.895), "accuracy_drop", low, high)}
    result = evaluate_rule(rule(tasks="clean", max=0.01), evidence(summaries, confidence=0.95))
    assert result.status == status and result.passed == (status == "pass")
    assert result.bound == high and result.per_task[0].status == status
    assert (result.samples_needed is not None) == (status == "undecided")


def test_undecided_estimates_how_many_samples_would_decide() -> None:
    # drop 0.005, upper bound 0.015 (half-width 0.01), threshold 0.01: margin 0.005, so about
    # (0.01 / 0.005)^2 = 4 times the samples.
    summaries = {"clean": with_interval(summary(0.9, 0.895), "accuracy_drop", -0.005, 0.015, n=1000)}
    result = evaluate_rule(rule(tasks="clean", max=0.01), evidence(summaries, confidence=0.95))
    assert result.status == "undecided" and result.samples_needed == pytest.approx(4000, rel=0.01)


def test_min_rules_use_the_lower_bound() -> None:
    summaries = {"clean": with_interval(summary(0.9, 0.9, agreement=0.97), "agreement", 0.94, 0.99)}
    result = evaluate_rule(rule(tasks="clean", metric="agreement", min=0.95), evidence(summaries, confidence=0.95))
    assert result.status == "undecided" and result.bound == 0.94
    result = evaluate_rule(rule(tasks="clean", metric="agreement", min=0.93), evidence(summaries, confidence=0.95))
    assert result.status == "pass"


def test_each_rule_fails_if_any_task_fails_and_is_undecided_if_any_is() -> None:
    summaries = {
        "noise/a": with_interval(summary(0.9, 0.9), "accuracy_drop", -0.01, 0.005),
        "noise/b": with_interval(summary(0.9, 0.89), "accuracy_drop", 0.0, 0.02),
    }
    assert evaluate_rule(rule(max=0.01), evidence(summaries, confidence=0.9)).status == "undecided"
    summaries["noise/c"] = with_interval(summary(0.9, 0.85), "accuracy_drop", 0.03, 0.07)
    assert evaluate_rule(rule(max=0.01), evidence(summaries, confidence=0.9)).status == "fail"


def test_mean_rules_use_the_joint_bootstrap_replicates() -> None:
    summaries = {"noise/a": summary(0.9, 0.89), "noise/b": summary(0.9, 0.87)}
    replicates = {
        "noise/a": {"accuracy_drop": np.linspace(0.0, 0.02, 1001)},
        "noise/b": {"accuracy_drop": np.linspace(0.02, 0.04, 1001)},
    }
    result = evaluate_rule(rule(aggregate="mean", max=0.035), evidence(summaries, replicates, 0.9))
    assert result.interval is not None
    assert result.value == pytest.approx(0.02) and result.interval.method == "bootstrap"
    assert result.interval.low == pytest.approx(0.011) and result.interval.high == pytest.approx(0.029)
    assert result.status == "pass"


def test_without_confidence_point_estimates_decide_as_before() -> None:
    summaries = {"clean": with_interval(summary(0.9, 0.895), "accuracy_drop", 0.0, 0.02)}
    result = evaluate_rule(rule(tasks="clean", max=0.01), evidence(summaries))
    assert result.passed and result.status == "pass" and result.confidence is None and result.bound is None


# --- tasks with non-finite outputs -------------------------------------------------------------

from prunegate.gate import nonfinite_share, nonfinite_warnings  # noqa: E402


def with_nonfinite(s: dict, dense: int, pruned: int) -> dict:
    return {**s, "dense": {**s["dense"], "nonfinite": dense}, "pruned": {**s["pruned"], "nonfinite": pruned}}


def test_nonfinite_share_and_warnings_name_the_model() -> None:
    summaries = {"clean": summary(0.9, 0.9), "noise/uniform/0.1": with_nonfinite(summary(0.9, 0.5), 3, 60)}
    records = evidence(summaries).records
    assert nonfinite_share(records[0]) == (0.0, "dense") and nonfinite_share(records[1]) == (0.6, "pruned")
    assert nonfinite_warnings(records) == [
        "noise/uniform/0.1: non-finite logits (dense 3 of 100, pruned 60 of 100): counted as wrong and disagreeing"
    ]


@pytest.mark.parametrize("confidence", [None, 0.95])
def test_a_task_with_mostly_nonfinite_outputs_fails_its_rules(confidence: float | None) -> None:
    summaries = {"noise/a": summary(0.9, 0.9), "noise/b": with_nonfinite(summary(0.9, 0.9), 0, 51)}
    result = evaluate_rule(rule(max=0.05), evidence(summaries, confidence=confidence))
    assert result.passed is False and result.status == "fail" and result.samples_needed is None
    assert [t.passed for t in result.per_task] == [True, False]
    assert [t.status for t in result.per_task] == ([None, None] if confidence is None else ["pass", "fail"])
    assert result.note == (
        "failed: most outputs are NaN or infinite on noise/b (pruned 51%); a task where a model "
        "outputs no numbers measures nothing"
    )


def test_an_undecided_mean_over_an_undefined_metric_estimates_no_sample_count() -> None:
    """A task without a number (error consistency of a model without errors) makes the mean NaN
    while its replicates may straddle the threshold: undecided, with no sample estimate (this
    raised 'cannot convert float NaN to integer' before)."""
    summaries = {
        "noise/a": {**summary(0.9, 0.89), "error_consistency": 0.5},
        "noise/b": {**summary(0.9, 0.87), "error_consistency": None},
    }
    replicates = {
        "noise/a": {"error_consistency": np.linspace(0.3, 0.7, 1001)},
        "noise/b": {"error_consistency": np.linspace(0.3, 0.7, 1001)},
    }
    result = evaluate_rule(
        rule(metric="error_consistency", aggregate="mean", min=0.5), evidence(summaries, replicates, 0.9)
    )
    assert math.isnan(result.value) and not result.passed
    assert result.status == "undecided" and result.samples_needed is None
