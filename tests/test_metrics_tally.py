from __future__ import annotations

import math

import pytest
import torch

from prunegate.metrics import TaskTally


def one_hot_logits(classes: list[int], k: int = 3, scale: float = 10.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), k).float() * scale


def test_summary_numbers_match_a_hand_count() -> None:
    labels = [0, 1, 2, 0, 1, 2]
    dense = [0, 1, 2, 0, 0, 1]  # 4 correct
    pruned = [0, 1, 1, 2, 0, 1]  # 2 correct (0, 1); agrees with dense on samples 0, 1, 4, 5
    tally = TaskTally.empty(6, torch.device("cpu"))
    tally.update(torch.arange(6), torch.tensor(labels), one_hot_logits(dense), one_hot_logits(pruned))
    s = tally.summary()
    assert s["n"] == 6
    top1 = ("accuracy", "correct", "nonfinite")  # the probability metrics: tests/test_metrics_calibration.py
    assert {k: s["dense"][k] for k in top1} == {"accuracy": pytest.approx(4 / 6), "correct": 4, "nonfinite": 0}
    assert {k: s["pruned"][k] for k in top1} == {"accuracy": pytest.approx(2 / 6), "correct": 2, "nonfinite": 0}
    assert s["accuracy_drop"] == pytest.approx(2 / 6)
    assert s["agreement"] == pytest.approx(4 / 6)
    p_one_hot = torch.softmax(torch.tensor([10.0, 0.0, 0.0]), 0)  # the softmax of a scaled one-hot
    per_disagreement_l2 = math.sqrt(2) * float(p_one_hot[0] - p_one_hot[1])
    assert s["softmax_l2"] == pytest.approx(2 / 6 * per_disagreement_l2, rel=1e-5)
    assert s["softmax_linf"] == pytest.approx(2 / 6 * float(p_one_hot[0] - p_one_hot[1]), rel=1e-5)


def test_updates_in_any_batches_and_order_give_the_same_summary() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (10,), generator=generator)
    dense, pruned = torch.randn(10, 4, generator=generator), torch.randn(10, 4, generator=generator)
    whole = TaskTally.empty(10, torch.device("cpu"))
    whole.update(torch.arange(10), labels, dense, pruned)
    pieces = TaskTally.empty(10, torch.device("cpu"))
    for chunk in (torch.tensor([7, 8, 9]), torch.tensor([3, 0]), torch.tensor([1, 2, 4, 5, 6])):
        pieces.update(chunk, labels[chunk], dense[chunk], pruned[chunk])
    assert pieces.summary() == whole.summary()
    assert bool(pieces.filled.all())


def test_nonfinite_logits_are_counted_wrong_and_disagreeing() -> None:
    tally = TaskTally.empty(3, torch.device("cpu"))
    dense = one_hot_logits([0, 1, 2])
    pruned = dense.clone()
    pruned[1, 0] = math.nan
    pruned[2, 2] = math.inf
    tally.update(torch.arange(3), torch.tensor([0, 1, 2]), dense, pruned)
    s = tally.summary()
    assert s["pruned"]["nonfinite"] == 2 and s["pruned"]["correct"] == 1 and s["dense"]["nonfinite"] == 0
    assert s["agreement"] == pytest.approx(1 / 3) and s["accuracy_drop"] == pytest.approx(2 / 3)
    assert s["softmax_l2"] == pytest.approx(2 / 3 * math.sqrt(2))


def test_slots_start_unfilled_and_fill_only_where_written() -> None:
    tally = TaskTally.empty(4, torch.device("cpu"))
    assert not bool(tally.filled.any()) and tally.n == 4
    tally.update(torch.tensor([1, 3]), torch.tensor([0, 0]), one_hot_logits([0, 0]), one_hot_logits([0, 0]))
    assert tally.filled.tolist() == [False, True, False, True]
    assert tally.dense_pred.tolist() == [-1, 0, -1, 0]


def test_an_unfilled_slot_is_never_correct() -> None:
    # Label and predictions of an unwritten slot are all -1: that must not count as a hit.
    tally = TaskTally.empty(2, torch.device("cpu"))
    tally.update(torch.tensor([0]), torch.tensor([1]), one_hot_logits([1]), one_hot_logits([1]))
    s = tally.summary()
    assert s["dense"]["correct"] == 1 and s["dense"]["accuracy"] == pytest.approx(0.5)
    assert s["agreement"] == pytest.approx(0.5)


def test_cpu_copy_keeps_every_field() -> None:
    tally = TaskTally.empty(2, torch.device("cpu"))
    tally.update(torch.arange(2), torch.tensor([0, 1]), one_hot_logits([0, 1]), one_hot_logits([1, 1]))
    assert tally.cpu().summary() == tally.summary()
