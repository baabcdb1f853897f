"""Pruning a torch model into a family of pruned copies, as in "Lost in Pruning":

- WT, weight magnitude (unstructured): the smallest |w| over all conv/linear weights (scope
  "global", the paper's) or the same fraction of every layer (scope "layer", for networks whose
  layers differ in scale: batch norms folded into the convs, depthwise layers). Chosen layers
  (depthwise convs, the first and last layer) can be kept dense in either scope.
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

METHODS = ("wt", "ft", "sipp", "pfp")
DATA_METHODS = ("sipp", "pfp")  # data-informed (`prunegate.prune_data`): they need a calibration batch
SCOPES = ("global", "layer")

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


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv: one filter group per input channel (groups == in_channels > 1)."""
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups == module.in_channels


def kept_layers(model: nn.Module, *, depthwise: bool = False, first_last: bool = False) -> set[str]:
    """Names of the prunable weights to keep dense: the depthwise convs' and/or the first and the
    last prunable layer's (the stem sees raw pixels, the classifier decides the classes)."""
    names = [name for name, _ in prunable_weights(model)]
    kept: set[str] = set()
    if depthwise:
        modules = dict(model.named_modules())
        kept |= {name for name in names if is_depthwise(modules[name.removesuffix("weight").rstrip(".")])}
    if first_last and names:
        kept |= {names[0], names[-1]}
    return kept


def _smallest_mask(magnitudes: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep-mask of a flat tensor without its round(ratio * n) smallest entries, ties by position
    (stable sort), so the count is exact even when many are equal (e.g. zeros of an earlier step)."""
    keep = torch.ones(magnitudes.numel(), dtype=torch.bool)
    keep[torch.argsort(magnitudes, stable=True)[: round(ratio * magnitudes.numel())]] = False
    return keep


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"prune ratio must be in [0, 1], got {ratio}")


def _targets(model: nn.Module, keep: set[str] | frozenset[str]) -> list[torch.Tensor]:
    weights = [w for name, w in prunable_weights(model) if name not in keep]
    if not weights:
        raise ValueError("model has no conv or linear weights to prune")
    return weights


def global_magnitude_prune(model: nn.Module, ratio: float, keep: set[str] | frozenset[str] = frozenset()) -> nn.Module:
    """A deep copy of `model` with the `ratio` fraction of smallest-|w| prunable weights zeroed.

    The threshold is global over all conv/linear weights but those named in `keep` (layers keep
    different fractions). Exactly round(ratio * total) weights are removed; ties at the threshold
    are broken by position (stable sort), so the count is exact even when many weights are equal,
    e.g. zeros left by an earlier pruning.
    """
    _check_ratio(ratio)
    pruned = copy.deepcopy(model)
    weights = _targets(pruned, keep)
    with torch.no_grad():
        keep_mask = _smallest_mask(torch.cat([w.detach().abs().flatten().float().cpu() for w in weights]), ratio)
        start = 0
        for w in weights:
            mask = keep_mask[start : start + w.numel()].view_as(w).to(w.device)
            w.masked_fill_(~mask, 0.0)
            start += w.numel()
    return pruned


def layer_magnitude_prune(model: nn.Module, ratio: float, keep: set[str] | frozenset[str] = frozenset()) -> nn.Module:
    """A deep copy of `model` in which every prunable weight but those named in `keep` loses its
    round(ratio * numel) smallest-|w| entries (uniform per-layer sparsity; ties by position)."""
    _check_ratio(ratio)
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for w in _targets(pruned, keep):
            mask = _smallest_mask(w.detach().abs().flatten().float().cpu(), ratio).view_as(w).to(w.device)
            w.masked_fill_(~mask, 0.0)
    return pruned


def layer_sparsity(model: nn.Module) -> list[dict]:
    """Per prunable weight: its name, parameters, nonzero entries and sparsity (fraction zero)."""
    rows = []
    for name, w in prunable_weights(model):
        nonzero = int(torch.count_nonzero(w.detach()))
        rows.append({"layer": name, "parameters": w.numel(), "nonzero": nonzero, "sparsity": 1 - nonzero / w.numel()})
    return rows


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


def prune(
    model: nn.Module,
    method: str,
    ratio: float,
    scope: str = "global",
    keep: set[str] | frozenset[str] = frozenset(),
    images: torch.Tensor | None = None,
) -> nn.Module:
    """Prune `model` by `ratio` with a named method: 'wt' (weight magnitude, over the whole net
    or per layer by `scope`, the weights named in `keep` left dense), 'ft' (filters, per layer
    by definition: `scope` and `keep` do not apply), or the data-informed 'sipp' (weights) and
    'pfp' (filters) of `prunegate.prune_data`, which rank by sensitivity on the calibration batch
    `images` (preprocessed model inputs, NCHW float; `scope` and `keep` do not apply)."""
    if method == "wt":
        if scope not in SCOPES:
            raise ValueError(f"unknown prune scope {scope!r}; known: {', '.join(SCOPES)}")
        return (global_magnitude_prune if scope == "global" else layer_magnitude_prune)(model, ratio, keep)
    if method == "ft":
        return filter_prune(model, ratio)
    if method in DATA_METHODS:
        from prunegate.prune_data import pfp_prune, sipp_prune  # it imports this module

        if images is None:
            raise ValueError(f"prune method {method!r} needs a calibration batch (images)")
        return (sipp_prune if method == "sipp" else pfp_prune)(model, ratio, images)
    raise ValueError(f"unknown prune method {method!r}; known: {', '.join(METHODS)}")


def prune_masks(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, keep-mask) for what pruning removed, to hold fixed while retraining: every
    zero of a prunable weight, and, where a whole filter is zero, its bias and the following batch
    norm's scale and shift where they are zero too (as filter pruning leaves them)."""
    modules = [m for m in model.modules() if not list(m.children())]
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    seen: set[int] = set()
    for index, layer in enumerate(modules):
        weight = getattr(layer, "weight", None)
        if not isinstance(layer, PRUNABLE) or not isinstance(weight, torch.Tensor) or id(weight) in seen:
            continue
        seen.add(id(weight))
        out.append((weight, weight.detach() != 0))
        dead = (weight.detach().flatten(1) == 0).all(dim=1)
        if not bool(dead.any()):
            continue
        following = modules[index + 1] if index + 1 < len(modules) else None
        extra = [getattr(layer, "bias", None)]
        if isinstance(following, nn.modules.batchnorm._BatchNorm) and following.num_features == dead.numel():
            extra += [following.weight, following.bias]
        for param in extra:
            if isinstance(param, torch.Tensor) and param.shape == dead.shape:
                out.append((param, ~(dead & (param.detach() == 0))))
    return out


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
