"""Unstructured pruning: global weight-magnitude pruning (the paper's "WT" method).

The pruned model is an ordinary module whose removed weights are exact zeros: no
`torch.nn.utils.prune` reparametrisation or hooks, so it saves, exports and runs like its parent.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# Layers whose `weight` is pruned; their biases, norm layers and buffers are left alone.
PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


def prunable_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(qualified name, weight) of every conv/linear weight, in module order, each once."""
    seen: set[int] = set()
    out: list[tuple[str, torch.Tensor]] = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, PRUNABLE) and isinstance(weight, torch.Tensor) and id(weight) not in seen:
            seen.add(id(weight))  # a weight shared by two layers is one set of parameters
            out.append((f"{name}.weight" if name else "weight", weight))
    return out


def global_magnitude_prune(model: nn.Module, ratio: float) -> nn.Module:
    """A deep copy of `model` with the `ratio` fraction of smallest-|w| prunable weights zeroed.

    The threshold is global over all conv/linear weights (layers keep different fractions).
    Exactly round(ratio * total) weights are removed; ties at the threshold are broken by
    position (stable sort), so the count is exact even when many weights are equal, e.g. zeros
    left by an earlier pruning.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"prune ratio must be in [0, 1], got {ratio}")
    pruned = copy.deepcopy(model)
    weights = [w for _, w in prunable_weights(pruned)]
    if not weights:
        raise ValueError("model has no conv or linear weights to prune")
    with torch.no_grad():
        magnitudes = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
        k = round(ratio * magnitudes.numel())
        keep = torch.ones(magnitudes.numel(), dtype=torch.bool)
        keep[torch.argsort(magnitudes, stable=True)[:k]] = False
        start = 0
        for w in weights:
            mask = keep[start : start + w.numel()].view_as(w).to(w.device)
            w.masked_fill_(~mask, 0.0)
            start += w.numel()
    return pruned


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) over all parameters (each shared parameter counted once)."""
    params = list(model.parameters())  # parameters() already deduplicates shared tensors
    total = sum(p.numel() for p in params)
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in params)
    return total, nonzero
