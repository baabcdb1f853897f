from __future__ import annotations

import pytest
import torch
from torch import nn

from prunegate.prune import count_parameters, global_magnitude_prune, prunable_weights


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 4, 1, bias=False), nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
    )  # fmt: skip
    with torch.no_grad():  # non-default values, so "untouched" is a real check
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
        model[1].running_mean.uniform_(-1, 1)
    return model


def _prunable(model: nn.Module) -> torch.Tensor:
    return torch.cat([w.detach().flatten() for _, w in prunable_weights(model)])


def test_prunable_weights_are_conv_and_linear_weights():
    names = [name for name, _ in prunable_weights(_model())]
    assert names == ["0.weight", "3.weight", "5.weight"]


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 0.9, 0.95, 1.0])
def test_exact_global_ratio_of_zeros(ratio):
    pruned = global_magnitude_prune(_model(), ratio)
    weights = _prunable(pruned)
    assert int((weights == 0).sum()) == round(ratio * weights.numel())


@pytest.mark.parametrize("ratio", [0.3, 0.8])
def test_smallest_magnitudes_are_removed(ratio):
    model = _model(1)
    original = _prunable(model)
    # Sort-based reference: the k smallest |w| over all layers together (continuous random
    # weights, so there are no ties at the threshold).
    k = round(ratio * original.numel())
    threshold = original.abs().sort().values[k - 1]
    expected = torch.where(original.abs() > threshold, original, torch.zeros_like(original))
    pruned = _prunable(global_magnitude_prune(model, ratio))
    assert torch.equal(pruned, expected)


def test_threshold_is_global_not_per_layer():
    model = _model()
    with torch.no_grad():
        model[5].weight.mul_(1e-3)  # the linear layer's weights are now the smallest
    pruned = global_magnitude_prune(model, 0.5)
    k = round(0.5 * _prunable(model).numel())
    assert k < model[5].weight.numel()
    # a per-layer 50 % would prune every layer; the global threshold takes all k from the linear one
    assert int((pruned[5].weight == 0).sum()) == k
    assert torch.equal(pruned[0].weight, model[0].weight) and torch.equal(pruned[3].weight, model[3].weight)


def test_ties_still_give_the_exact_count():
    model = _model()
    with torch.no_grad():
        for _, w in prunable_weights(model):
            w.fill_(0.25)
    weights = _prunable(global_magnitude_prune(model, 0.4))
    assert int((weights == 0).sum()) == round(0.4 * weights.numel())
    assert set(weights.unique().tolist()) == {0.0, 0.25}


def test_other_parameters_and_buffers_untouched():
    model = _model()
    pruned = global_magnitude_prune(model, 0.9)
    prunable = {name for name, _ in prunable_weights(model)}
    before, after = model.state_dict(), pruned.state_dict()
    assert before.keys() == after.keys()  # no weight_orig / weight_mask left behind
    for name in before:
        if name not in prunable:
            assert torch.equal(before[name], after[name]), name


def test_original_unchanged_and_result_is_plain():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = global_magnitude_prune(model, 0.5)
    assert pruned is not model
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    for module in pruned.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
        assert not any(name.endswith(("_orig", "_mask")) for name, _ in module.named_parameters(recurse=False))
    assert all(isinstance(p, nn.Parameter) for _, p in prunable_weights(pruned))
    # masks are permanent: the pruned model trains like any other module
    pruned(torch.randn(2, 3, 8, 8)).sum().backward()


def test_count_parameters():
    model = _model()
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == (total, total)
    pruned = global_magnitude_prune(model, 0.5)
    removed = round(0.5 * _prunable(model).numel())
    assert count_parameters(pruned) == (total, total - removed)
    expected_total = (8 * 3 * 9 + 8) + (8 + 8) + (4 * 8) + (4 * 36 * 5 + 5)
    assert total == expected_total


def test_count_parameters_counts_shared_weights_once():
    linear = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(linear, nn.ReLU(), linear)
    assert count_parameters(model) == (16, 16)
    assert len(prunable_weights(model)) == 1


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError):
        global_magnitude_prune(_model(), ratio)


def test_model_without_prunable_layers():
    with pytest.raises(ValueError):
        global_magnitude_prune(nn.Sequential(nn.ReLU()), 0.5)


# --- filter pruning (FT) and export ------------------------------------------------------------

from prunegate.prune import export_model, filter_prune  # noqa: E402


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_filter_prune_zeroes_the_smallest_l1_filters_per_layer_but_not_the_classifier(ratio):
    model = _model()
    pruned = filter_prune(model, ratio)
    layers = [(n, w) for n, w in prunable_weights(model)]
    for (name, before), (_, after) in zip(layers[:-1], prunable_weights(pruned)[:-1]):
        norms = before.detach().abs().flatten(1).sum(dim=1)
        k = round(ratio * len(norms))
        zeroed = (after.detach().flatten(1) == 0).all(dim=1)
        assert int(zeroed.sum()) == k, name
        assert set(torch.argsort(norms)[:k].tolist()) == set(torch.nonzero(zeroed).flatten().tolist())
    assert torch.equal(prunable_weights(pruned)[-1][1], layers[-1][1])  # the classifier keeps all classes
    dropped = (pruned[0].weight.flatten(1) == 0).all(dim=1)
    assert (pruned[0].bias[dropped] == 0).all()  # with their biases
    # the batch norm right after the conv loses those channels too; its statistics are kept
    assert (pruned[1].weight[dropped] == 0).all() and (pruned[1].bias[dropped] == 0).all()
    assert torch.equal(pruned[1].weight[~dropped], model[1].weight[~dropped])
    assert torch.equal(pruned[1].running_mean, model[1].running_mean)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert (pruned.eval()[:3](x)[:, dropped] == 0).all()  # removed channels output zeros


def test_filter_prune_rejects_bad_ratios():
    with pytest.raises(ValueError):
        filter_prune(_model(), 1.0)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_pruned_models_compute_what_the_module_computes(tmp_path, fmt):
    import onnxruntime

    model = global_magnitude_prune(_model(), 0.5).eval()
    path = tmp_path / f"m.{fmt}"
    export_model(model, 8, path, fmt)
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    else:
        got = torch.jit.load(str(path))(x)
    assert torch.allclose(got, expected, atol=1e-5)


# --- per-layer scope, kept layers, masks ---------------------------------------------------------

from prunegate.prune import (  # noqa: E402
    kept_layers,
    layer_magnitude_prune,
    layer_sparsity,
    prune,
    prune_masks,
)


def _depthwise_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8),  # depthwise
        nn.Conv2d(8, 8, 3, groups=2),  # grouped, not depthwise
        nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 2 * 2, 5),
    )  # fmt: skip


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 0.95, 1.0])
def test_layer_scope_removes_the_exact_count_from_every_layer(ratio):
    model = _model(2)
    with torch.no_grad():
        model[5].weight.mul_(1e-3)  # scales differ: a global threshold would take this layer first
    pruned = layer_magnitude_prune(model, ratio)
    for (name, before), (_, after) in zip(prunable_weights(model), prunable_weights(pruned), strict=True):
        k = round(ratio * before.numel())
        assert int((after == 0).sum()) == k, name
        # the k smallest |w| of this layer (continuous random weights: no ties)
        if 0 < k < before.numel():
            threshold = before.detach().abs().flatten().sort().values[k - 1]
            assert torch.equal(after, torch.where(before.abs() > threshold, before, torch.zeros_like(before)))


def test_layer_scope_ties_are_broken_by_position():
    model = _model()
    with torch.no_grad():
        for _, w in prunable_weights(model):
            w.fill_(-0.5)
    pruned = layer_magnitude_prune(model, 0.4)
    for _, w in prunable_weights(pruned):
        flat = w.detach().flatten()
        k = round(0.4 * flat.numel())
        assert (flat[:k] == 0).all() and (flat[k:] == -0.5).all()  # the first k positions go


def test_keep_depthwise_names_only_depthwise_convs():
    model = _depthwise_model()
    assert kept_layers(model, depthwise=True) == {"2.weight"}
    assert kept_layers(model, first_last=True) == {"0.weight", "6.weight"}
    assert kept_layers(model, depthwise=True, first_last=True) == {"0.weight", "2.weight", "6.weight"}
    assert kept_layers(model) == set()


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("flags", [{"depthwise": True}, {"first_last": True}, {"depthwise": True, "first_last": True}])
def test_kept_layers_stay_dense_and_the_rest_is_pruned_exactly(scope, flags):
    model = _depthwise_model(3)
    keep = kept_layers(model, **flags)
    pruned = prune(model, "wt", 0.6, scope, keep)
    before, after = dict(prunable_weights(model)), dict(prunable_weights(pruned))
    for name in keep:
        assert torch.equal(after[name], before[name]), name
    rest = [name for name in before if name not in keep]
    if scope == "layer":
        for name in rest:
            assert int((after[name] == 0).sum()) == round(0.6 * before[name].numel()), name
    else:  # the kept layers are outside the threshold: the ratio is of the others' weights
        total = sum(before[name].numel() for name in rest)
        assert sum(int((after[name] == 0).sum()) for name in rest) == round(0.6 * total)


def test_prune_dispatches_on_scope_and_refuses_an_unknown_one():
    model = _model(4)
    assert torch.equal(_prunable(prune(model, "wt", 0.5)), _prunable(global_magnitude_prune(model, 0.5)))
    assert torch.equal(_prunable(prune(model, "wt", 0.5, "layer")), _prunable(layer_magnitude_prune(model, 0.5)))
    with pytest.raises(ValueError, match="scope"):
        prune(model, "wt", 0.5, "everywhere")
    with pytest.raises(ValueError):
        layer_magnitude_prune(model, 1.5)


def test_layer_sparsity_rows():
    pruned = layer_magnitude_prune(_model(), 0.5)
    rows = layer_sparsity(pruned)
    assert [r["layer"] for r in rows] == ["0.weight", "3.weight", "5.weight"]
    for row, (_, w) in zip(rows, prunable_weights(pruned), strict=True):
        assert row["parameters"] == w.numel() and row["nonzero"] == int(torch.count_nonzero(w))
        assert row["sparsity"] == pytest.approx(round(0.5 * w.numel()) / w.numel())


def test_prune_masks_cover_weights_and_the_dead_filters_bias_and_norm():
    pruned = filter_prune(_model(), 0.5)
    masks = {id(p): keep for p, keep in prune_masks(pruned)}
    conv, norm = pruned[0], pruned[1]
    dead = (conv.weight.flatten(1) == 0).all(dim=1)
    assert torch.equal(masks[id(conv.weight)], conv.weight != 0)
    for param in (conv.bias, norm.weight, norm.bias):
        assert torch.equal(masks[id(param)], ~dead)
    wt = global_magnitude_prune(_model(), 0.5)
    assert {id(p) for p, _ in prune_masks(wt)} == {id(w) for _, w in prunable_weights(wt)}  # no dead filter
