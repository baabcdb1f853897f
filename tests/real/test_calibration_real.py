"""Issue 19 on a real pretrained network: the report's ECE, NLL and top-5 of akamaster's ResNet-20
and of its 50 % global-magnitude-pruned copy, on 2,000 real CIFAR-10 test images, equal an
independent computation from the logits (the two torch modules run here on images decoded by PIL
and normalised by hand; NLL in numpy float64, top-5 by torch.topk, ECE in float64 with
torchmetrics' binning) to 1e-6, and torchmetrics' own ECE to 5e-6.

Why not torchmetrics' ECE to 1e-6: torchmetrics casts the probabilities to float32 and sums each
bin's confidences in float32, which on 2,000 samples moves its ECE by about 1e-6 (measured:
1.2e-6 for the dense model, 0.9e-6 for the pruned; the same with float64 probabilities given to
it). prunegate sums in float64: the float64 computation with torchmetrics' bins (bucketize on
linspace(0, 1, 16), right=True) agrees with the report to ~1e-8, the residue of the logits
themselves (the report's come from the TorchScript files, these from the eager modules; NLL
differs by ~1.5e-7 nats for the same reason)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from prunegate.cli import main
from prunegate.prune import global_magnitude_prune
from prunegate.report.attest import read_envelope

from .conftest import resnet20_dense, shared_path

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # DATA.md
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = 200  # data.limit 2000, class-balanced: the first 200 files of each class


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    """The 2,000 images as prunegate feeds them: uint8 RGB / 255, then (x - mean) / std in float32."""
    root = shared_path("data", "cifar10-test-jpeg")
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for file in sorted((root / name).glob("*.jpg"))[:PER_CLASS]:
            images.append(np.asarray(Image.open(file).convert("RGB")))
            labels.append(label)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(labels)


def _expected(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    from torchmetrics.functional.classification import multiclass_calibration_error

    with torch.inference_mode():
        logits = torch.cat([model(chunk) for chunk in x.split(500)])
    probabilities = torch.softmax(logits, dim=1)  # float32
    ece = multiclass_calibration_error(probabilities, labels, num_classes=10, n_bins=15, norm="l1")
    confidence, predicted = torch.softmax(logits.double(), dim=1).max(dim=1)
    right = (predicted == labels).double()
    bins = (torch.bucketize(confidence, torch.linspace(0, 1, 16, dtype=torch.float64), right=True) - 1).clamp(0, 14)
    ece64 = sum(abs(confidence[bins == b].sum() - right[bins == b].sum()) for b in range(15)) / len(labels)
    z = logits.double().numpy()
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = float(-log_p[np.arange(len(z)), labels.numpy()].mean())
    top5 = float((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).double().mean())
    accuracy = float((logits.argmax(dim=1) == labels).double().mean())
    return {"ece": float(ece64), "torchmetrics_ece": float(ece), "nll": nll, "top5": top5, "accuracy": accuracy}


def test_ece_nll_and_top5_of_a_real_pair_match_an_independent_computation(tmp_path) -> None:
    data = shared_path("data", "cifar10-test-jpeg")
    dense = resnet20_dense()
    pruned = global_magnitude_prune(dense, 0.5)
    example = torch.zeros(2, 3, 32, 32)
    for name, model in (("dense", dense), ("pruned", pruned)):
        torch.jit.save(torch.jit.trace(model, example), tmp_path / f"{name}.pt")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
version: 1
name: resnet20-calibration
models:
  dense: dense.pt
  pruned: pruned.pt
  input: {{size: 32, mean: {MEAN}, std: {STD}}}
data:
  test: {{format: imagefolder, path: {data}}}
  limit: 2000
suite: {{seed: 0}}
gate:
  rules:
    - {{name: clean calibration, tasks: clean, metric: ece_increase, max: 0.5}}
runtime: {{device: cpu, batch_size: 500, workers: 2}}
""")
    report = tmp_path / "report.json"
    assert main(["check", "--policy", str(policy), "--report", str(report), "--quiet"]) == 0
    [clean] = read_envelope(report.read_text(), str(report))[2]["predicate"]["tasks"]
    assert clean["name"] == "clean" and clean["n"] == 2000

    x, labels = _images()
    for side, model in (("dense", dense), ("pruned", pruned)):
        expected = _expected(model, x, labels)
        # the same 2,000 images: the accuracy, a count of 2,000, agrees exactly
        assert clean[side]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
        for metric in ("ece", "nll", "top5"):
            assert clean[side][metric] == pytest.approx(expected[metric], abs=1e-6), (side, metric)
        # torchmetrics' float32 bin sums: ~1e-6 off (see the module's doc)
        assert clean[side]["ece"] == pytest.approx(expected["torchmetrics_ece"], abs=5e-6)
    assert clean["ece_increase"] == pytest.approx(clean["pruned"]["ece"] - clean["dense"]["ece"], abs=1e-12)
    assert clean["top5_drop"] == pytest.approx(clean["dense"]["top5"] - clean["pruned"]["top5"], abs=1e-12)
    assert 0.78 < clean["dense"]["accuracy"] < 0.85 and clean["dense"]["top5"] > 0.95  # DATA.md: 81.03 % top-1
