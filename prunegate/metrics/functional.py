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


TOP_K = 5  # top-5 accuracy, the ImageNet standard
WORST_NLL = float("inf")  # a sample without a prediction: the worst of every probability metric


def probability_outcomes(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample outcomes of one model's softmax, from its logits [N, K] and labels [N]:

    - confidence: the top-1 softmax probability (1 where the logits are not finite: a model that
      outputs no numbers is treated as fully confident and wrong);
    - logp: log softmax probability of the label (-inf without a prediction; NaN where the label
      is not one of the K classes, e.g. a data set's own label under data.label_map);
    - brier: sum over classes of (p_k - [k == label])^2 (2, the maximum, without a prediction);
    - top5: the 5 most probable classes [N, 5], -1 beyond K or without a prediction.

    Computed in float64 so that the means equal a float64 reference to ~1e-9."""
    logits64 = logits.double()
    finite = torch.isfinite(logits64).all(dim=1)
    safe = torch.where(finite[:, None], logits64, torch.zeros_like(logits64))
    logp_all = torch.log_softmax(safe, dim=1)
    p = logp_all.exp()
    classes = logits.shape[1]
    known = (labels >= 0) & (labels < classes)
    index = torch.where(known, labels.long(), torch.zeros_like(labels, dtype=torch.long))
    logp = logp_all.gather(1, index[:, None])[:, 0]
    p_label = logp.exp()
    brier = (p * p).sum(dim=1) - 2 * p_label + 1
    nan = torch.full_like(logp, float("nan"))
    logp, brier = torch.where(known, logp, nan), torch.where(known, brier, nan)
    k = min(TOP_K, classes)
    top = torch.full((logits.shape[0], TOP_K), NO_PREDICTION, dtype=torch.int64, device=logits.device)
    top[:, :k] = safe.topk(k, dim=1).indices
    top[~finite] = NO_PREDICTION
    return {
        "confidence": torch.where(finite, p.amax(dim=1), torch.ones_like(logp)),
        "logp": torch.where(finite, logp, torch.full_like(logp, -WORST_NLL)),
        "brier": torch.where(finite, brier, torch.full_like(brier, 2.0)),
        "top5": top,
    }


def softmax_divergences(dense_logits: torch.Tensor, pruned_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample KL(dense || pruned) in nats and the Jensen-Shannon distance (the square root of
    the JS divergence in bits, so within [0, 1], as scipy's jensenshannon(p, q, base=2)). A sample
    with non-finite logits gets KL = inf and distance 1."""
    dense64, pruned64 = dense_logits.double(), pruned_logits.double()
    finite = torch.isfinite(dense64).all(dim=1) & torch.isfinite(pruned64).all(dim=1)
    zero = torch.zeros_like(dense64)
    log_p = torch.log_softmax(torch.where(finite[:, None], dense64, zero), dim=1)
    log_q = torch.log_softmax(torch.where(finite[:, None], pruned64, zero), dim=1)
    p, q = log_p.exp(), log_q.exp()
    kl = torch.where(p > 0, p * (log_p - log_q), zero).sum(dim=1).clamp_min(0.0)
    m = (p + q) / 2
    log_m = torch.log(m.clamp_min(torch.finfo(torch.float64).tiny))
    js = 0.5 * (torch.where(p > 0, p * (log_p - log_m), zero) + torch.where(q > 0, q * (log_q - log_m), zero)).sum(1)
    distance = (js.clamp_min(0.0) / torch.log(torch.tensor(2.0, dtype=torch.float64))).clamp(max=1.0).sqrt()
    inf = torch.full_like(kl, float("inf"))
    return torch.where(finite, kl, inf), torch.where(finite, distance, torch.ones_like(distance))


def in_top_k(top: torch.Tensor, labels: torch.Tensor, sets: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample bool: one of the top-k classes [N, k] is the label (or, with `sets`, one of its
    label's model classes, data.label_map)."""
    if sets is None:
        return ((top == labels[:, None].to(top.dtype)) & (top != NO_PREDICTION)).any(dim=1)
    found = torch.zeros(top.shape, dtype=torch.bool, device=top.device)
    for column in range(top.shape[1]):
        found[:, column] = in_label_set(top[:, column], labels, sets)
    return found.any(dim=1)
