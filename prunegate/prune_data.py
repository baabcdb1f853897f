"""Data-informed pruning: a small batch of real inputs decides which weights or channels go.

- SiPP (Baykal et al., "SiPP: Sensitivity-informed Provable Pruning of Neural Networks", SIAM J.
  Math. Data Science 2022): unstructured. The sensitivity of weight w_ij (neuron i, input j) is

      s_ij = max over x in S of |w_ij a_j(x)| / sum_k |w_ik a_k(x)|,

  the largest share of neuron i's absolute input mass that w_ij carries on the batch S.
- PFP (Liebenwein et al., "Provable Filter Pruning for Efficient Neural Networks", ICLR 2020):
  structured. The sensitivity of input channel j of a layer is the same share with the channel's
  terms summed over its kernel positions, maximised over the layer's neurons as well:

      s_j = max over x in S, over neurons i of sum_{k in channel j} |w_ik a_k(x)| / sum_k |w_ik a_k(x)|.

For a conv layer a "neuron" is one output channel at one output position; its inputs are that
position's unfolded patch, and the maxima run over the images and the positions. |w a| rather
than the papers' |w| a: the first layer's inputs are normalised images (signed); after a ReLU the
two agree. Biases are not part of the shares. A share whose denominator is 0 (the neuron sees
nothing on that input) counts as 0, so a weight whose input is always 0 has sensitivity 0.

Both methods here are the deterministic variants, not the papers' importance sampling with
replacement and inverse-probability reweighting: each keeps the highest-sensitivity weights
(channels) at their original values. Why: the guarantee below holds on S without randomness,
the count removed is exact, and a test can check the kept set; torchprune (the authors' code)
has the same deterministic SiPP beside the sampled one. Dropping a set D of neuron i's inputs
changes its pre-activation by at most (sum_{j in D} s_ij) * sum_k |w_ik a_k(x)| for every x in S.

Budgets. SiPP: every layer drops round(ratio * its weights); inside a layer the budget goes to
the neurons by one bound eps on the dropped sensitivity sum above: each neuron's inputs in
ascending sensitivity, ranked across the layer by their running sums, the first `budget` go (the
smallest common eps). PFP: every layer drops the same fraction of its input channels (plus any
channel of sensitivity 0, which carries nothing on S), the fraction chosen so the zeroed weights
come closest to the ratio. The network-wide version of the eps rule (one eps for all layers) was
tried first and rejected: on ResNet-20 at 50 % it took 80 % of the first conv and 98 % of the
classifier and left 18 % accuracy: one relative bound per neuron is not one effect on the output.
The seed only breaks ties between equal sensitivities (a seeded `torch.Generator` permutation
before a stable sort).

The pruned model is a deep copy with exact zeros: no `torch.nn.utils.prune` hooks. PFP zeroes
channels, it does not build smaller tensors.

Limits: activations are collected with forward pre-hooks over one forward pass of `images`, all
held in memory; the share computation is chunked (about 16M elements at a time), so N <= 64
images at 32 px is cheap and larger images are fine with `max_positions` (conv output positions
per image, an evenly spaced deterministic subset when there are more; the maxima are then taken
over that subset). Supported layers: Linear and Conv2d with integer padding, zero padding mode and
groups=1; other conv/linear layers are left dense (they still count in the ratio's denominator).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunegate.prune import PRUNABLE

_CHUNK = 1 << 24  # elements per intermediate tensor in the share maxima


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"prune ratio must be in [0, 1), got {ratio}")


def _supported(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return (
        isinstance(layer, nn.Conv2d)
        and layer.groups == 1
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    )


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every conv/linear leaf with a weight, in registration order, each once."""
    seen: set[int] = set()
    out: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, PRUNABLE) and isinstance(weight, torch.Tensor) and id(module) not in seen:
            seen.add(id(module))
            out.append((name, module))
    return out


def layer_inputs(model: nn.Module, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """The inputs that every supported conv/linear layer of `model` receives on `images`.

    Forward pre-hooks on a deep copy in eval mode, one pass under no_grad; a layer called more
    than once gets one tensor per call. Keys are module names as in `named_modules()`."""
    copied = copy.deepcopy(model).eval()
    found: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, layer in _layers(copied):
        if _supported(layer):

            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], name: str = name) -> None:
                found.setdefault(name, []).append(args[0].detach())

            handles.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            copied(images)
    finally:
        for handle in handles:
            handle.remove()
    return found


def _terms(layer: nn.Module, x: torch.Tensor, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(|a| as patches [N, F, P], 1/denominator [N, O, P]) for one layer input.

    F is the fan-in of a neuron (C*kh*kw for a conv), P the output positions (1 for Linear) and
    the denominator sum_k |w_ik a_k(x)|; 0 where the denominator is 0."""
    weight = _weight(layer).detach().abs().float()
    a = x.detach().abs().float()
    if isinstance(layer, nn.Linear):
        patches = a.reshape(-1, a.shape[-1]).unsqueeze(-1)  # leading dims are all samples
        den = torch.einsum("nfp,of->nop", patches, weight)
    else:
        assert isinstance(layer, nn.Conv2d)
        kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
        patches = F.unfold(a, kernel, dilation=dilation, padding=padding, stride=stride)  # type: ignore[arg-type]
        den = F.conv2d(a, weight, None, stride, padding, dilation).flatten(2)
        if patches.shape[-1] > max_positions:
            keep = torch.linspace(0, patches.shape[-1] - 1, max_positions, device=a.device).round().long()
            patches, den = patches[..., keep], den[..., keep]
    inv = torch.where(den > 0, 1.0 / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(den))
    return patches, inv


def _chunked_max(n: int, o: int, per: int, fn: Callable[[slice, slice], torch.Tensor]) -> torch.Tensor:
    """max over image chunks of fn(image slice, out slice) -> [o_chunk, ...], stitched over outputs."""
    o_step = max(1, min(o, _CHUNK // max(1, per)))
    n_step = max(1, _CHUNK // max(1, per * o_step))
    rows = []
    for o0 in range(0, o, o_step):
        best = None
        for n0 in range(0, n, n_step):
            part = fn(slice(n0, n0 + n_step), slice(o0, o0 + o_step))
            best = part if best is None else torch.maximum(best, part)
        assert best is not None
        rows.append(best)
    return torch.cat(rows)


def weight_sensitivities(
    layer: nn.Module, inputs: torch.Tensor | list[torch.Tensor], *, max_positions: int = 4096
) -> torch.Tensor:
    """SiPP's s_ij for every weight of a Linear or Conv2d layer, shaped like its weight.

    `inputs` are the layer's inputs ([N, in] or [N, C, H, W]; a list is one tensor per call).
    s_ij = max over inputs (and conv positions) of |w_ij a_j| / sum_k |w_ik a_k|, 0/0 = 0."""
    if not _supported(layer):
        raise ValueError(f"unsupported layer for sensitivities: {layer}")
    weight = _weight(layer).detach()
    o = weight.shape[0]
    best = torch.zeros(o, weight[0].numel(), device=weight.device)
    for x in inputs if isinstance(inputs, list) else [inputs]:
        patches, inv = _terms(layer, x, max_positions)
        per = patches.shape[1] * patches.shape[2]

        def share(ns: slice, os: slice, patches: torch.Tensor = patches, inv: torch.Tensor = inv) -> torch.Tensor:
            return (patches[ns, None] * inv[ns, os, None]).amax(dim=(0, 3))  # [o_chunk, F]

        if patches.shape[0]:
            best = torch.maximum(best, _chunked_max(patches.shape[0], o, per, share))
    return (best * weight.abs().float().flatten(1)).view(weight.shape)


def channel_sensitivities(
    layer: nn.Module, inputs: torch.Tensor | list[torch.Tensor], *, max_positions: int = 4096
) -> torch.Tensor:
    """PFP's s_j for every input channel of a Linear or Conv2d layer: [in_features] or [C].

    s_j = max over inputs, positions and neurons of sum_{k in channel j} |w_ik a_k| / sum_k |w_ik a_k|,
    the channel's terms summed over its kernel positions; 0/0 = 0."""
    if not _supported(layer):
        raise ValueError(f"unsupported layer for sensitivities: {layer}")
    weight = _weight(layer).detach()
    o, c = weight.shape[0], weight.shape[1]
    kk = weight[0, 0].numel()
    w = weight.abs().float().reshape(o, c, kk)
    best = torch.zeros(o, c, device=weight.device)
    for x in inputs if isinstance(inputs, list) else [inputs]:
        patches, inv = _terms(layer, x, max_positions)
        n, _, p = patches.shape
        by_channel = patches.view(n, c, kk, p)

        def share(ns: slice, os: slice, by_channel: torch.Tensor = by_channel, inv: torch.Tensor = inv) -> torch.Tensor:
            mass = torch.einsum("nckp,ock->nocp", by_channel[ns], w[os])
            return (mass * inv[ns, os, None]).amax(dim=(0, 3))  # [o_chunk, C]

        if n:
            best = torch.maximum(best, _chunked_max(n, o, c * p, share))
    return best.amax(dim=0)


def _ranked(sens: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the columns in ascending sensitivity (seeded ties) and the running sums along them."""
    rows, cols = sens.shape
    noise = torch.rand(rows, cols, generator=generator).argsort(dim=1)  # a random order to break ties
    shuffled = torch.gather(sens.cpu(), 1, noise)
    order = torch.gather(noise, 1, shuffled.argsort(dim=1, stable=True))
    return order, torch.gather(sens.cpu(), 1, order).cumsum(dim=1)


def _sensitivity_map(
    model: nn.Module, images: torch.Tensor, max_positions: int, channels: bool
) -> dict[str, torch.Tensor]:
    inputs = layer_inputs(model, images)
    modules = dict(_layers(model))
    fn = channel_sensitivities if channels else weight_sensitivities
    return {name: fn(modules[name], xs, max_positions=max_positions) for name, xs in inputs.items()}


def sipp_prune(
    model: nn.Module, ratio: float, images: torch.Tensor, *, seed: int = 0, max_positions: int = 4096
) -> nn.Module:
    """A deep copy of `model` with round(ratio * conv/linear weights) weights zeroed by SiPP-det.

    Each layer drops round(ratio * its weights); every neuron (output row; output channel for a
    conv) drops its inputs in ascending order of sensitivity, as many as one common bound on the
    neuron's dropped sensitivity allows (see the module docstring). Each neuron keeps at least its
    top-sensitivity weight, so a layer's count can fall short only at ratios near 1; unsupported
    layers stay dense. Kept weights keep their values (no reweighting)."""
    _check_ratio(ratio)
    pruned = copy.deepcopy(model)
    layers = _layers(pruned)
    sens = _sensitivity_map(model, images, max_positions, channels=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, layer in layers:
            if name not in sens:
                continue
            order, running = _ranked(sens[name].flatten(1), generator)
            order, running = order[:, :-1], running[:, :-1]  # each neuron keeps its top weight
            rows = torch.arange(order.shape[0]).unsqueeze(1).expand_as(order).flatten()
            drop = torch.argsort(running.flatten(), stable=True)[: round(ratio * _weight(layer).numel())]
            flat = _weight(layer).view(_weight(layer).shape[0], -1)
            flat[rows[drop].to(flat.device), order.flatten()[drop].to(flat.device)] = 0.0
    return pruned


@dataclass(frozen=True)
class ChannelCut:
    """PFP's decision for one layer: which of its input channels go, and the filters that feed them."""

    layer: str  # the consumer, whose input channels are ranked
    producer: str | None  # the layer whose filters are those channels, when that is unambiguous
    channels: int  # input channels of `layer`
    dropped: tuple[int, ...]  # input channels removed (the layer's budget is channels - len(dropped))


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not list(m.children())]


def _following_norm(model: nn.Module, name: str) -> nn.modules.batchnorm._BatchNorm | None:
    leaves = _leaves(model)
    names = [n for n, _ in leaves]
    at = names.index(name) + 1
    following = leaves[at][1] if at < len(leaves) else None
    return following if isinstance(following, nn.modules.batchnorm._BatchNorm) else None


def _zero_filters(model: nn.Module, name: str, filters: list[int]) -> None:
    """Zero output filters of layer `name`: weight, bias, and the scale and shift of the batch norm
    registered right after it (as prunegate.prune.filter_prune does)."""
    layer = dict(model.named_modules())[name]
    idx = torch.tensor(filters, dtype=torch.long, device=_weight(layer).device)
    with torch.no_grad():
        _weight(layer)[idx] = 0.0
        if getattr(layer, "bias", None) is not None:
            layer.bias[idx] = 0.0
        norm = _following_norm(model, name)
        if norm is not None and norm.num_features == _weight(layer).shape[0] and norm.weight is not None:
            norm.weight[idx] = 0.0
            norm.bias[idx] = 0.0


def _producers(model: nn.Module, images: torch.Tensor) -> dict[str, str]:
    """consumer -> producer for each layer whose input is, verifiably, its predecessor's output.

    The predecessor (previous conv/linear in registration order) qualifies when its filters count
    the consumer's input channels and, on `images`, zeroing all its filters (and their batch norm)
    makes the consumer's input exactly 0 while, with the consumer's input channels zeroed, it
    leaves the model's output unchanged: the predecessor feeds the consumer and nothing else (no
    residual stream in between). Checked once per pair, on a deep copy."""
    layers = _layers(model)
    sample = images[:2]
    found: dict[str, str] = {}
    for (before, producer), (name, layer) in zip(layers, layers[1:]):
        if not (_supported(layer) and _weight(producer).shape[0] == _weight(layer).shape[1]):
            continue
        cut = copy.deepcopy(model).eval()
        consumer = dict(cut.named_modules())[name]
        seen: list[torch.Tensor] = []
        handle = consumer.register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(args[0]))
        try:
            with torch.no_grad():
                _weight(consumer).zero_()
                reference = cut(sample)
                seen.clear()
                _zero_filters(cut, before, list(range(_weight(producer).shape[0])))
                after = cut(sample)
        finally:
            handle.remove()
        if seen and all(bool((x == 0).all()) for x in seen) and torch.equal(reference, after):
            found[name] = before
    return found


def pfp_plan(
    model: nn.Module, ratio: float, images: torch.Tensor, *, seed: int = 0, max_positions: int = 4096
) -> list[ChannelCut]:
    """PFP's per-layer channel budgets for removing about `ratio` of the conv/linear weights.

    Every layer but the first (its inputs are the image) ranks its input channels by sensitivity;
    removing channel j zeroes the layer's weights that read it and, where a producer is verified,
    the producer's filter j (so the classifier's outputs are never touched: it is nobody's
    producer). Each layer drops its lowest-sensitivity channels: all of sensitivity 0 and at least
    round(f * channels), one fraction f in {0, 1/256, ..., 1} for every layer, the f whose zeroed
    conv/linear weights come closest to round(ratio * total); each layer keeps one channel. "First"
    is the first conv/linear in registration order."""
    _check_ratio(ratio)
    layers = _layers(model)
    sizes = {name: _weight(m).shape for name, m in layers}
    total = sum(_weight(m).numel() for _, m in layers)
    target = round(ratio * total)
    sens = _sensitivity_map(model, images, max_positions, channels=True)
    producers = _producers(model, images)
    generator = torch.Generator().manual_seed(seed)
    consumers = [name for name, _ in layers[1:] if name in sens]
    orders = {name: _ranked(sens[name].unsqueeze(0), generator)[0][0].tolist() for name in consumers}
    dead = {name: int((sens[name] == 0).sum()) for name in consumers}  # they carry nothing on S: free

    def cuts(fraction: float) -> list[ChannelCut]:
        return [
            ChannelCut(
                name,
                producers.get(name),
                sizes[name][1],
                tuple(
                    sorted(orders[name][: min(max(dead[name], round(fraction * sizes[name][1])), sizes[name][1] - 1)])
                ),
            )
            for name in consumers
        ]

    def zeroed(plan: list[ChannelCut]) -> int:
        rows: dict[str, int] = {}
        cols: dict[str, int] = {}
        for cut in plan:
            cols[cut.layer] = len(cut.dropped)
            if cut.producer is not None:
                rows[cut.producer] = len(cut.dropped)
        count = 0
        for name, shape in sizes.items():
            r, c, kk = rows.get(name, 0), cols.get(name, 0), shape[2:].numel()
            count += (r * shape[1] + c * shape[0] - r * c) * kk
        return count

    grid = [i / 256 for i in range(257)]  # the per-layer fraction of channels dropped
    best = min(grid, key=lambda f: (abs(zeroed(cuts(f)) - target), f))
    return cuts(best)


def apply_channel_cuts(model: nn.Module, cuts: list[ChannelCut]) -> nn.Module:
    """A deep copy of `model` with each cut's input channels zeroed in its layer, and its
    producer's filters (weight, bias, following batch norm) zeroed too."""
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    with torch.no_grad():
        for cut in cuts:
            if not cut.dropped:
                continue
            weight = _weight(modules[cut.layer])
            weight[:, torch.tensor(cut.dropped, dtype=torch.long, device=weight.device)] = 0.0
            if cut.producer is not None:
                _zero_filters(pruned, cut.producer, list(cut.dropped))
    return pruned


def pfp_prune(
    model: nn.Module, ratio: float, images: torch.Tensor, *, seed: int = 0, max_positions: int = 4096
) -> nn.Module:
    """A deep copy of `model` pruned by PFP (deterministic variant) to about `ratio` of its
    conv/linear weights: zeroed channels and filters, not smaller tensors. See `pfp_plan`."""
    return apply_channel_cuts(model, pfp_plan(model, ratio, images, seed=seed, max_positions=max_positions))
