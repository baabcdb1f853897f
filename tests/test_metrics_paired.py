"""Per-task similarity metrics and their intervals, against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from statsmodels.stats.inter_rater import cohens_kappa

from prunegate.metrics import TaskTally
from prunegate.metrics.intervals import Resampler, newcombe_paired


def logits_for(preds: np.ndarray, classes: int) -> torch.Tensor:
    out = torch.zeros(len(preds), classes)
    out[torch.arange(len(preds)), torch.from_numpy(preds)] = 5.0
    return out


def make_tally(labels: np.ndarray, dense: np.ndarray, pruned: np.ndarray, classes: int) -> TaskTally:
    tally = TaskTally.empty(len(labels), torch.device("cpu"))
    tally.update(
        torch.arange(len(labels)), torch.from_numpy(labels), logits_for(dense, classes), logits_for(pruned, classes)
    )
    return tally


@pytest.fixture()
def outcomes():
    rng = np.random.default_rng(0)
    n, classes = 600, 5
    labels = rng.integers(0, classes, n)
    dense = np.where(rng.random(n) < 0.8, labels, rng.integers(0, classes, n))
    pruned = np.where(rng.random(n) < 0.85, dense, rng.integers(0, classes, n))
    return labels, dense, pruned, classes


def test_flips_kappa_and_class_recall_match_direct_counts(outcomes) -> None:
    labels, dense, pruned, classes = outcomes
    s = make_tally(labels, dense, pruned, classes).summary(classes=classes)
    d_ok, p_ok = dense == labels, pruned == labels
    assert s["flips"] == {"newly_wrong": int((d_ok & ~p_ok).sum()), "newly_right": int((~d_ok & p_ok).sum())}
    assert s["newly_wrong"] == pytest.approx((d_ok & ~p_ok).mean())
    table = np.array([[(d_ok & p_ok).sum(), (d_ok & ~p_ok).sum()], [(~d_ok & p_ok).sum(), (~d_ok & ~p_ok).sum()]])
    assert s["error_consistency"] == pytest.approx(cohens_kappa(table, return_results=False))
    recall_drop = [d_ok[labels == c].mean() - p_ok[labels == c].mean() for c in range(classes)]
    worst = int(np.argmax(recall_drop))
    assert s["class_recall_drop"] == pytest.approx(max(recall_drop))
    assert s["worst_class"]["label"] == worst and s["worst_class"]["n"] == int((labels == worst).sum())
    assert s["class_recall"]["n"] == np.bincount(labels, minlength=classes).tolist()
    assert s["class_recall"]["pruned_correct"] == [int(p_ok[labels == c].sum()) for c in range(classes)]


def test_closed_form_intervals_and_mcnemar(outcomes) -> None:
    labels, dense, pruned, classes = outcomes
    s = make_tally(labels, dense, pruned, classes).summary(classes=classes, confidence=0.9)
    d_ok, p_ok = dense == labels, pruned == labels
    table = (int((d_ok & p_ok).sum()), int((d_ok & ~p_ok).sum()), int((~d_ok & p_ok).sum()), int((~d_ok & ~p_ok).sum()))
    drop = s["intervals"]["accuracy_drop"]
    assert (drop["low"], drop["high"]) == pytest.approx(newcombe_paired(*table, 0.9)) and drop["method"] == "newcombe"
    assert s["intervals"]["agreement"]["method"] == "wilson"
    assert s["intervals"]["softmax_l2"]["method"] == "normal"
    assert "error_consistency" not in s["intervals"]  # no closed form and no resampler given
    assert 0 < s["mcnemar_p"] <= 1


def test_bootstrap_intervals_cover_the_metrics_without_a_closed_form(outcomes) -> None:
    labels, dense, pruned, classes = outcomes
    tally = make_tally(labels, dense, pruned, classes)
    summary, replicates = tally.statistics(classes=classes, resampler=Resampler(3, len(labels), 400))
    for metric in ("error_consistency", "class_recall_drop"):
        interval = summary["intervals"][metric]
        assert interval["method"] == "bootstrap" and interval["low"] <= summary[metric] <= interval["high"]
        assert replicates[metric].shape == (400,)
    # the bootstrap of the drop agrees with Newcombe's closed form
    boot = np.quantile(replicates["accuracy_drop"], [0.025, 0.975])
    closed = summary["intervals"]["accuracy_drop"]
    assert boot == pytest.approx([closed["low"], closed["high"]], abs=0.01)


def test_several_draws_per_image_are_resampled_by_image() -> None:
    # 2 draws per image, perfectly correlated: the interval must be as wide as for the images
    # alone, not narrower as if there were twice as many independent samples.
    rng = np.random.default_rng(1)
    images, classes = 300, 3
    labels = rng.integers(0, classes, images)
    dense = labels.copy()
    pruned = np.where(rng.random(images) < 0.8, labels, (labels + 1) % classes)
    doubled = make_tally(np.repeat(labels, 2), np.repeat(dense, 2), np.repeat(pruned, 2), classes)
    single = make_tally(labels, dense, pruned, classes)
    s2 = doubled.summary(draws=2, classes=classes, resampler=Resampler(5, images, 1000))
    s1 = single.summary(classes=classes, resampler=Resampler(5, images, 1000))
    assert s2["accuracy_drop"] == pytest.approx(s1["accuracy_drop"])
    assert s2["intervals"]["accuracy_drop"]["method"] == "bootstrap"
    width2 = s2["intervals"]["accuracy_drop"]["high"] - s2["intervals"]["accuracy_drop"]["low"]
    width1 = s1["intervals"]["accuracy_drop"]["high"] - s1["intervals"]["accuracy_drop"]["low"]
    assert width2 == pytest.approx(width1, rel=0.15)


def test_examples_are_newly_wrong_samples_with_dataset_indices(outcomes) -> None:
    labels, dense, pruned, classes = outcomes
    indices = np.arange(len(labels)) * 10 + 3
    s = make_tally(labels, dense, pruned, classes).summary(classes=classes, indices=indices)
    newly_wrong = np.flatnonzero((dense == labels) & (pruned != labels))
    firsts = sorted(newly_wrong[labels[newly_wrong] == c][0] for c in range(classes))  # one per class first
    seconds = sorted(newly_wrong[labels[newly_wrong] == c][1] for c in range(classes))
    assert [e["index"] for e in s["examples"]] == indices[firsts + seconds[:3]].tolist()
    for e in s["examples"]:
        assert e["dense"] == e["label"] != e["pruned"]


def test_identical_models_have_kappa_one_and_no_flips(outcomes) -> None:
    labels, dense, _, classes = outcomes
    s = make_tally(labels, dense, dense, classes).summary(classes=classes)
    assert s["error_consistency"] == pytest.approx(1.0)
    assert s["flips"] == {"newly_wrong": 0, "newly_right": 0} and s["mcnemar_p"] == 1.0
    assert s["class_recall_drop"] == 0.0
