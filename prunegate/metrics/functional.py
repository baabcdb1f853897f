"""Pure functions on logits, predictions and labels (torch in, torch out).

A prediction is the top-1 class, or -1 where the logits are not finite: a NaN or Inf output is
never counted as a prediction, so it is wrong and disagrees with everything.
"""

from __future__ import annotations

import torch

NO_PREDICTION = -1


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 class per sample, or NO_PREDICTION where the logits are not all finite."""
    finite = torch.isfinite(logits).all(dim=1)
    top1 = logits.argmax(dim=1)
    return torch.where(finite, top1, torch.full_like(top1, NO_PREDICTION))


def softmax_distances(dense_logits: torch.Tensor, pruned_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample L2 and L-infinity distance between the two softmax vectors. A sample with
    non-finite logits gets the largest possible distance (sqrt 2 and 1)."""
    p = torch.softmax(dense_logits.float(), dim=1)
    q = torch.softmax(pruned_logits.float(), dim=1)
    diff = p - q
    l2 = torch.linalg.vector_norm(diff, ord=2, dim=1)
    linf = diff.abs().amax(dim=1)
    finite = torch.isfinite(dense_logits).all(dim=1) & torch.isfinite(pruned_logits).all(dim=1)
    return torch.where(finite, l2, torch.full_like(l2, 2.0**0.5)), torch.where(finite, linf, torch.ones_like(linf))


def correct(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample bool: the prediction is the label."""
    return (preds == labels) & (preds != NO_PREDICTION)


def in_label_set(preds: torch.Tensor, labels: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """Per-sample bool: the prediction is one of the label's model classes (`sets`: bool
    [dataset labels, model classes], data.label_map)."""
    valid = (preds != NO_PREDICTION) & (labels >= 0) & (preds < sets.shape[1])
    found = torch.zeros_like(valid)
    found[valid] = sets[labels[valid].long(), preds[valid].long()]
    return found


def agree(dense_preds: torch.Tensor, pruned_preds: torch.Tensor) -> torch.Tensor:
    """Per-sample bool: both models made the same prediction."""
    return (dense_preds == pruned_preds) & (dense_preds != NO_PREDICTION)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of correct predictions (NaN for no samples)."""
    return float(correct(preds, labels).double().mean()) if len(labels) else float("nan")


def agreement(dense_preds: torch.Tensor, pruned_preds: torch.Tensor) -> float:
    """The fraction of samples on which both models agree (NaN for no samples)."""
    return float(agree(dense_preds, pruned_preds).double().mean()) if len(dense_preds) else float("nan")
