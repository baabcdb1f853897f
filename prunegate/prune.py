"""Pruning a torch model into a family of pruned copies, as in "Lost in Pruning":

- WT, global weight magnitude (unstructured): the smallest |w| over all conv/linear weights.
- FT, filter L1-norm (structured, per layer): in every conv/linear layer but the classifier,
  the output filters with the smallest L1 norm (Li et al. 2017), with their biases.

The pruned model is an ordinary module whose removed weights are exact zeros: no
`torch.nn.utils.prune` reparametrisation or hooks (the masks are permanent), so it saves,
exports and runs like its parent.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

METHODS = ("wt", "ft")

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


def filter_prune(model: nn.Module, ratio: float) -> nn.Module:
    """A deep copy of `model` with, in each conv/linear layer except the last (the classifier,
    whose outputs are the classes), round(ratio * filters) output filters of smallest L1 norm
    zeroed, bias included. `ratio` is the fraction of filters per layer; the fraction of
    parameters removed is smaller (norm layers and the classifier are kept).

    Removing a filter removes its channel: where a batch norm layer is registered right after
    the conv and has as many features (conv1, bn1, ... as in ResNets and VGGs), that channel's
    scale and shift are zeroed too, so the channel outputs zeros rather than a constant."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"filter prune ratio must be in [0, 1), got {ratio}")
    pruned = copy.deepcopy(model)
    modules = [m for m in pruned.modules() if not list(m.children())]  # leaves, in registration order
    layers = [m for m in modules if isinstance(m, PRUNABLE) and isinstance(getattr(m, "weight", None), torch.Tensor)]
    if len(layers) < 2:
        raise ValueError("model needs at least one conv or linear layer before its classifier to filter-prune")
    with torch.no_grad():
        for layer in layers[:-1]:
            weight = layer.weight
            norms = weight.detach().abs().flatten(1).sum(dim=1).float().cpu()
            k = round(ratio * norms.numel())
            if k == 0:
                continue
            drop = torch.argsort(norms, stable=True)[:k].to(weight.device)
            weight[drop] = 0.0
            bias = getattr(layer, "bias", None)
            if bias is not None:
                bias[drop] = 0.0
            following = modules[modules.index(layer) + 1] if modules.index(layer) + 1 < len(modules) else None
            if isinstance(following, nn.modules.batchnorm._BatchNorm) and following.num_features == norms.numel():
                if following.weight is not None:
                    following.weight[drop] = 0.0
                    following.bias[drop] = 0.0
    return pruned


def prune(model: nn.Module, method: str, ratio: float) -> nn.Module:
    """Prune `model` by `ratio` with a named method: 'wt' (global weight magnitude) or 'ft' (filters)."""
    if method == "wt":
        return global_magnitude_prune(model, ratio)
    if method == "ft":
        return filter_prune(model, ratio)
    raise ValueError(f"unknown prune method {method!r}; known: {', '.join(METHODS)}")


def export_model(model: nn.Module, size: int, path: Path, fmt: str) -> None:
    """Save as TorchScript (traced) or ONNX (dynamic batch; input "input", output "logits")."""
    model = model.eval()
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and TorchScript-exporter notices
        if fmt == "torchscript":
            scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.trace(model, example)
            torch.jit.save(scripted, str(path))
        elif fmt == "onnx":
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
            )
        else:
            raise ValueError(f"unknown export format {fmt!r}")
