"""A state dict saved while torch.nn.utils.prune is still applied (issue 17): the real ResNet-20,
pruned by `prune.global_unstructured` (L1, half of every conv and linear weight) and saved
without `prune.remove`, so its keys are `*.weight_orig` + `*.weight_mask`.

prunegate must read it as prune's own forward computes it: its accuracies on 200 real CIFAR-10
test images equal a plain-torch evaluation of the pruned model in memory, masks and hooks in
place (PIL decoding, hand-written selection and normalisation, no prunegate code), its format says
so and its non-zero parameter count counts the masked weights as zeros.
"""

from __future__ import annotations

import base64
import copy
import json

import torch
import yaml
from torch.nn.utils import prune

from prunegate.cli import main

from .conftest import CIFAR10_MEAN as MEAN
from .conftest import CIFAR10_STD as STD
from .conftest import cifar10_first, resnet20_dense, shared_path

PER_CLASS = 20  # data.limit 200 takes each class's first 20 images in file order


def _pruned_in_memory(dense: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(dense)
    weights = [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=0.5)
    return model.eval()


def _plain_torch_correct(models: list[torch.nn.Module]) -> list[int]:
    x, labels = cifar10_first(PER_CLASS)
    with torch.inference_mode():
        return [int((model(x).argmax(1) == labels).sum()) for model in models]


def test_a_state_dict_saved_under_prune_is_gated_as_prune_computes_it(tmp_path, capsys):
    dense = resnet20_dense()
    pruned = _pruned_in_memory(dense)
    state = pruned.state_dict()
    assert "conv1.weight_orig" in state and "conv1.weight_mask" in state and "conv1.weight" not in state
    torch.save(dense.state_dict(), tmp_path / "dense.pth")
    torch.save(state, tmp_path / "pruned.pth")
    policy = {
        "version": 1,
        "name": "resnet20-prune-reparametrised",
        "models": {
            "dense": "dense.pth",
            "pruned": "pruned.pth",
            "arch": "prunegate.archs.cifar_resnet:resnet20",
            "input": {"size": 32, "mean": MEAN, "std": STD},
        },
        "data": {
            "test": {"format": "imagefolder", "path": str(shared_path("data", "cifar10-test-jpeg"))},
            "limit": 200,
        },
        "gate": {"rules": [{"name": "clean", "tasks": "clean", "metric": "accuracy_drop", "max": 0.5}]},
        "runtime": {"device": "cpu", "backend": "torch", "workers": 0, "batch_size": 200},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy))
    report = tmp_path / "r.json"
    code = main(["check", "--policy", str(tmp_path / "p.yaml"), "-o", str(report), "--quiet"])
    assert code in (0, 1), capsys.readouterr().err
    predicate = json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))["predicate"]
    (clean,) = predicate["tasks"]
    assert clean["n"] == 200

    dense_right, pruned_right = _plain_torch_correct([dense, pruned])
    assert (clean["dense"]["correct"], clean["pruned"]["correct"]) == (dense_right, pruned_right)
    record = predicate["models"]["pruned"]
    assert record["format"] == "state-dict (pruning reparametrised)"
    assert predicate["models"]["dense"]["format"] == "state-dict"
    # the folded model's parameters, each zero the mask made counted as zero
    folded = {name: getattr(module, name.rpartition(".")[2]) for name, module in _parameter_owners(pruned)}
    assert record["parameters"] == sum(p.numel() for p in folded.values()) == 269_722
    assert record["nonzero_parameters"] == sum(int((p != 0).sum()) for p in folded.values())
    masked = sum(int((m == 0).sum()) for key, m in state.items() if key.endswith("_mask"))
    assert record["nonzero_parameters"] <= record["parameters"] - masked
    assert predicate["sanity"]["checked"] and predicate["sanity"]["dense_correct"] == dense_right


def _parameter_owners(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(parameter name as the plain model has it, its module): `weight_orig` read as `weight`,
    which prune's hook keeps as orig x mask."""
    owners = []
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            plain = name.removesuffix("_orig")
            owners.append((f"{module_name}.{plain}" if module_name else plain, module))
    return owners
