"""Beyond top-1 (issue 19): top-5, ECE, NLL, Brier, KL, loyalty, selective risk and subgroups,
each against an independent implementation, and their intervals' coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr, softmax
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error

from prunegate.metrics import TaskTally
from prunegate.metrics.intervals import Resampler
from prunegate.metrics.paired import StatisticsOptions, selective_risks


def tally_of(labels: np.ndarray, dense: np.ndarray, pruned: np.ndarray) -> TaskTally:
    tally = TaskTally.empty(len(labels), torch.device("cpu"))
    tally.update(torch.arange(len(labels)), torch.from_numpy(labels), torch.from_numpy(dense), torch.from_numpy(pruned))
    return tally


def noisy_logits(rng: np.random.Generator, labels: np.ndarray, classes: int, signal: float, scale: float) -> np.ndarray:
    """Logits that favour the label by `signal`, tempered by `scale` (over/under-confidence)."""
    logits = rng.normal(size=(len(labels), classes))
    logits[np.arange(len(labels)), labels] += signal
    return (logits * scale).astype(np.float32)


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(3)
    n, classes = 2000, 12
    labels = rng.integers(0, classes, n)
    dense = noisy_logits(rng, labels, classes, 2.5, 1.0)
    pruned = (dense + rng.normal(scale=0.8, size=dense.shape) * 1.0).astype(np.float32) * 1.6  # overconfident
    return labels, dense, pruned, classes


def ece_reference(logits: np.ndarray, labels: np.ndarray, classes: int) -> float:
    probs = torch.from_numpy(softmax(logits.astype(np.float64), axis=1).astype(np.float32))
    return float(multiclass_calibration_error(probs, torch.from_numpy(labels), classes, n_bins=15, norm="l1"))


def test_each_model_s_top5_ece_nll_brier_match_references(pair) -> None:
    labels, dense, pruned, classes = pair
    s = tally_of(labels, dense, pruned).summary(classes=classes)
    for side, logits in (("dense", dense), ("pruned", pruned)):
        p = softmax(logits.astype(np.float64), axis=1)
        onehot = np.eye(classes)[labels]
        assert s[side]["ece"] == pytest.approx(ece_reference(logits, labels, classes), abs=1e-6)
        assert s[side]["nll"] == pytest.approx(-np.log(p[np.arange(len(labels)), labels]).mean(), abs=1e-6)
        assert s[side]["brier"] == pytest.approx(((p - onehot) ** 2).sum(axis=1).mean(), abs=1e-6)
        top5 = multiclass_accuracy(
            torch.from_numpy(logits), torch.from_numpy(labels), classes, top_k=5, average="micro"
        )
        assert s[side]["top5"] == pytest.approx(float(top5), abs=1e-6)  # torchmetrics: float32
    assert s["top5_drop"] == pytest.approx(s["dense"]["top5"] - s["pruned"]["top5"])
    assert s["ece_increase"] == pytest.approx(s["pruned"]["ece"] - s["dense"]["ece"])
    assert s["nll_increase"] == pytest.approx(s["pruned"]["nll"] - s["dense"]["nll"])
    assert s["brier_increase"] == pytest.approx(s["pruned"]["brier"] - s["dense"]["brier"])


def test_kl_and_loyalty_match_scipy(pair) -> None:
    labels, dense, pruned, classes = pair
    s = tally_of(labels, dense, pruned).summary(classes=classes)
    p, q = softmax(dense.astype(np.float64), axis=1), softmax(pruned.astype(np.float64), axis=1)
    assert s["kl_divergence"] == pytest.approx(rel_entr(p, q).sum(axis=1).mean(), rel=1e-6)
    distance = jensenshannon(p, q, base=2, axis=1)
    assert s["probability_loyalty"] == pytest.approx((1 - distance).mean(), rel=1e-6)
    same = tally_of(labels, dense, dense).summary(classes=classes)
    assert same["kl_divergence"] == pytest.approx(0.0, abs=1e-7) and same["probability_loyalty"] == pytest.approx(1.0)


def test_selective_risk_by_hand() -> None:
    confidence = np.array([0.9, 0.2, 0.8, 0.5, 0.95, 0.3, 0.6, 0.7, 0.4, 0.1])
    wrong = np.array([0, 1, 1, 0, 0, 1, 0, 1, 0, 1], dtype=bool)
    # coverage 0.5 keeps the 5 most confident: 0.95, 0.9, 0.8, 0.7, 0.6 -> wrong at 0.8 and 0.7
    assert selective_risks(confidence, wrong, 0.5)[0] == pytest.approx(2 / 5)
    assert selective_risks(confidence, wrong, 0.25)[0] == pytest.approx(1 / 3)  # ceil(2.5) = 3 kept
    assert selective_risks(confidence, wrong, 1.0)[0] == pytest.approx(wrong.mean())
    # weights: the bootstrap's counts act as repeated samples
    weights = np.array([[2, 0, 1, 1, 0, 1, 1, 2, 1, 1]], dtype=float)
    repeated = np.repeat(np.arange(10), weights[0].astype(int))
    order = np.argsort(-confidence[repeated], kind="stable")
    kept = repeated[order][: int(np.ceil(0.5 * len(repeated)))]
    assert selective_risks(confidence, wrong, 0.5, weights)[0] == pytest.approx(wrong[kept].mean())


def test_selective_risk_increase_in_the_summary(pair) -> None:
    labels, dense, pruned, classes = pair
    options = StatisticsOptions(coverages=(0.5, 0.8))
    s = tally_of(labels, dense, pruned).summary(classes=classes, options=options)
    by_coverage = {r["coverage"]: r for r in s["selective_risk"]}
    for coverage in (0.5, 0.8):
        risks = {}
        for side, logits in (("dense", dense), ("pruned", pruned)):
            p = softmax(logits.astype(np.float64), axis=1)
            order = np.argsort(-p.max(axis=1), kind="stable")[: int(np.ceil(coverage * len(labels)))]
            risks[side] = float((p.argmax(axis=1)[order] != labels[order]).mean())
        assert by_coverage[coverage]["dense"] == pytest.approx(risks["dense"])
        assert by_coverage[coverage]["increase"] == pytest.approx(risks["pruned"] - risks["dense"])


def test_subgroups_name_the_worst_group(pair) -> None:
    labels, dense, pruned, classes = pair
    groups = {"low": np.arange(0, 4), "mid": np.arange(4, 8), "high": np.arange(8, 12)}
    resampler = Resampler(seed=1, images=len(labels), replicates=200)
    s = tally_of(labels, dense, pruned).summary(
        classes=classes, options=StatisticsOptions(groups=groups), resampler=resampler
    )
    d_ok, p_ok = dense.argmax(1) == labels, pruned.argmax(1) == labels
    drops = {g: d_ok[np.isin(labels, m)].mean() - p_ok[np.isin(labels, m)].mean() for g, m in groups.items()}
    worst = max(drops, key=lambda g: drops[g])
    assert s["group_accuracy_drop"] == pytest.approx(drops[worst])
    assert s["worst_group"]["name"] == worst and s["worst_group"]["n"] == int(np.isin(labels, groups[worst]).sum())
    assert [g["name"] for g in s["groups"]] == list(groups)
    interval = s["intervals"]["group_accuracy_drop"]
    assert interval["method"] == "bootstrap" and interval["low"] <= s["group_accuracy_drop"] <= interval["high"]


def test_fewer_than_five_classes_have_no_top5() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    s = tally_of(labels, noisy_logits(rng, labels, 3, 2, 1), noisy_logits(rng, labels, 3, 2, 1)).summary(classes=3)
    assert s["dense"]["top5"] is None and s["top5_drop"] is None and "top5_drop" not in s["intervals"]


def test_a_non_finite_output_is_the_worst_case_never_a_number_that_passes() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 40)
    dense = noisy_logits(rng, labels, 6, 3, 1)
    pruned = dense.copy()
    pruned[0, 0] = np.nan
    s = tally_of(labels, dense, pruned).summary(classes=6)
    assert s["pruned"]["nll"] is None and s["nll_increase"] is None and s["kl_divergence"] is None
    assert "nll_increase" not in s["intervals"] and "kl_divergence" not in s["intervals"]
    assert s["probability_loyalty"] < 1.0 and s["pruned"]["brier"] > s["dense"]["brier"]


def test_intervals_cover_the_truth_near_the_nominal_rate() -> None:
    """Over many synthetic pairs: the closed-form NLL/Brier/KL intervals and the bootstrap
    interval of the selective risk increase cover the population value about 95 % of the time."""
    rng = np.random.default_rng(11)
    classes, n, trials = 8, 300, 160

    def draw(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, size)
        dense = noisy_logits(rng, labels, classes, 2.0, 1.0)
        pruned = (dense + rng.normal(scale=1.0, size=dense.shape)).astype(np.float32) * 1.3
        return labels, dense, pruned

    population = tally_of(*draw(200_000)).summary(classes=classes)
    truth = {m: population[m] for m in ("nll_increase", "brier_increase", "kl_divergence")}
    truth["selective_risk_increase@0.8"] = population["selective_risk"][0]["increase"]
    covered = dict.fromkeys(truth, 0)
    for trial in range(trials):
        resampler = Resampler(seed=trial, images=n, replicates=200)
        s = tally_of(*draw(n)).summary(classes=classes, resampler=resampler)
        for metric, value in truth.items():
            interval = s["intervals"][metric]
            covered[metric] += interval["low"] <= value <= interval["high"]
    rates = {m: c / trials for m, c in covered.items()}
    assert all(0.89 <= r <= 0.995 for r in rates.values()), rates
