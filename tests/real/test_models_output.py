"""models.output on the real ResNet-20 (issue 17): a traced TorchScript returning
{"logits": ..., "features": ...} with `models.output: logits`, gated against the same weights as
the shared state dict, agrees on every image, and both accuracies match a plain-torch evaluation
that shares no code with prunegate's data path (PIL decoding, hand-written normalisation).
"""

from __future__ import annotations

import base64
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from prunegate.cli import main

from .conftest import cifar10_first, resnet20_dense, shared_path

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = 10  # data.limit 100: the first 10 images of each class, in file order


class WithFeatures(torch.nn.Module):
    """The ResNet-20, returning its pooled features beside its logits."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.net
        out = F.relu(net.bn1(net.conv1(x)))
        features = F.adaptive_avg_pool2d(net.layer3(net.layer2(net.layer1(out))), 1).flatten(1)
        return {"logits": net.linear(features), "features": features}


def plain_torch_accuracy(model: torch.nn.Module) -> float:
    x, labels = cifar10_first(PER_CLASS)
    with torch.inference_mode():
        return float((model(x).argmax(1) == labels).double().mean())


def test_a_dict_returning_torchscript_agrees_fully_with_the_same_weights(tmp_path: Path) -> None:
    checkpoint = shared_path("models", "akamaster-resnet-cifar10", "resnet20-12fca82f.th")
    data = shared_path("data", "cifar10-test-jpeg")
    dense = resnet20_dense()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(WithFeatures(dense), torch.zeros(2, 3, 32, 32), strict=False)
    traced.save(str(tmp_path / "pruned.pt"))
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
version: 1
name: resnet20-models-output
models:
  dense: {{path: {checkpoint}, arch: "prunegate.archs.cifar_resnet:resnet20"}}
  pruned: pruned.pt
  output: logits
  input: {{size: 32, mean: {MEAN}, std: {STD}}}
data:
  test: {{format: imagefolder, path: {data}}}
  limit: {PER_CLASS * len(CLASSES)}
gate:
  rules:
    - {{name: agreement, tasks: clean, metric: agreement, min: 1.0}}
runtime: {{batch_size: 50, workers: 1}}
""")
    report = tmp_path / "report.json"
    assert main(["check", "--policy", str(policy), "--report", str(report), "--quiet"]) == 0

    predicate = json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))["predicate"]
    (clean,) = predicate["tasks"]
    assert clean["name"] == "clean" and clean["n"] == 100 and clean["agreement"] == 1.0
    models = predicate["models"]
    assert models["pruned"]["output"] == "logits" and models["pruned"]["format"] == "torchscript"
    assert models["dense"]["output"] is None and models["dense"]["format"] == "state-dict"
    # backend auto exported the selection (not the dict) to ONNX, and its logits agreed with torch's
    reason = models["pruned"]["backend_choice"]["reason"]
    assert reason.startswith("faster"), reason
    expected = plain_torch_accuracy(dense)
    # PIL and torchvision may decode a JPEG a shade apart: at most one image's difference
    assert abs(clean["dense"]["accuracy"] - expected) <= 1 / 100 + 1e-9
    assert clean["pruned"]["accuracy"] == clean["dense"]["accuracy"]
    assert 0.6 < expected < 0.95
