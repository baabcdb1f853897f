from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prunegate.metrics import functional as F

INF, NAN = math.inf, math.nan


def numpy_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def test_predictions_are_top1() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0], [5.0, 4.0, 3.0], [-3.0, -2.0, -1.0]])
    assert F.predictions(logits).tolist() == [1, 0, 2]


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_logits_give_no_prediction(bad: float) -> None:
    logits = torch.tensor([[0.0, 1.0, 0.5], [bad, 0.0, 0.0], [0.0, 0.0, bad]])
    assert F.predictions(logits).tolist() == [1, F.NO_PREDICTION, F.NO_PREDICTION]


def test_no_prediction_is_wrong_and_disagrees_even_with_itself() -> None:
    dense = torch.tensor([0, F.NO_PREDICTION, 2, F.NO_PREDICTION])
    pruned = torch.tensor([0, 1, 2, F.NO_PREDICTION])
    labels = torch.tensor([0, 1, 1, 0])
    assert F.correct(dense, labels).tolist() == [True, False, False, False]
    assert F.agree(dense, pruned).tolist() == [True, False, True, False]
    assert F.accuracy(dense, labels) == pytest.approx(1 / 4)
    assert F.agreement(dense, pruned) == pytest.approx(2 / 4)


def test_no_prediction_is_wrong_whatever_the_label() -> None:
    no = torch.tensor([F.NO_PREDICTION, F.NO_PREDICTION])
    assert F.correct(no, torch.tensor([F.NO_PREDICTION, 0])).tolist() == [False, False]


def test_accuracy_and_agreement_of_nothing_are_nan() -> None:
    empty = torch.zeros(0, dtype=torch.int64)
    assert math.isnan(F.accuracy(empty, empty)) and math.isnan(F.agreement(empty, empty))


def test_softmax_distances_match_numpy() -> None:
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(64, 10, generator=generator) * 3
    pruned = dense + torch.randn(64, 10, generator=generator)
    l2, linf = F.softmax_distances(dense, pruned)
    diff = numpy_softmax(dense.double().numpy()) - numpy_softmax(pruned.double().numpy())
    np.testing.assert_allclose(l2.numpy(), np.linalg.norm(diff, axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(linf.numpy(), np.abs(diff).max(axis=1), rtol=1e-5, atol=1e-6)


def test_softmax_distances_of_identical_and_opposite_outputs() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    l2, linf = F.softmax_distances(logits, logits)
    assert l2.item() == 0.0 and linf.item() == 0.0
    l2, linf = F.softmax_distances(torch.tensor([[100.0, 0.0]]), torch.tensor([[0.0, 100.0]]))
    assert l2.item() == pytest.approx(math.sqrt(2)) and linf.item() == pytest.approx(1.0)


def test_softmax_distances_survive_huge_logits() -> None:
    l2, _ = F.softmax_distances(torch.tensor([[1e30, 0.0]]), torch.tensor([[1e30, 0.0]]))
    assert l2.item() == 0.0


@pytest.mark.parametrize("bad", [NAN, INF])
def test_non_finite_logits_get_the_largest_distance(bad: float) -> None:
    dense = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    pruned = torch.tensor([[1.0, 0.0], [bad, 0.0], [1.0, 0.0]])
    dense[2, 1] = bad
    l2, linf = F.softmax_distances(dense, pruned)
    assert l2.tolist() == pytest.approx([0.0, math.sqrt(2), math.sqrt(2)])
    assert linf.tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_half_precision_logits_are_measured_in_float32() -> None:
    dense, pruned = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[1.0, 2.0, 0.0]])
    full, _ = F.softmax_distances(dense, pruned)
    half, _ = F.softmax_distances(dense.half(), pruned.half())
    assert half.dtype == torch.float32 and half.item() == pytest.approx(full.item(), rel=1e-3)
