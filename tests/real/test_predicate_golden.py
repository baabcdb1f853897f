"""The report's predicate on the real ResNet-20 pair does not drift (issue #14).

The golden file was written by main before the run-context refactor (commit cdae136). The refactor
must leave every number, record and rule byte-identical; only timing, the environment and the
temporary paths may differ, so those are blanked on both sides before comparing the JSON text.
Regenerate deliberately with `PRUNEGATE_WRITE_GOLDEN=1 pytest tests/real/test_predicate_golden.py`
when a change is meant to alter the report, and say so in the commit.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import torch

from prunegate.cli import main
from prunegate.prune import global_magnitude_prune

from .conftest import resnet20_dense, shared_path

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "resnet20-predicate.json"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# What depends on when, where and on which machine the run happened, not on what it measured.
VOLATILE = {
    "timing",
    "timings",
    "environment",
    "created",
    "started",
    "finished",
    "duration_s",
    "seconds",
    "images_per_second",
    "path",
    "hostname",
    "frost_textures",
}


def _policy(folder: Path) -> Path:
    test = shared_path("data", "cifar10-test-jpeg")
    ood = shared_path("data", "cifar10-test-png20")
    frost = shared_path("data", "frost-textures")
    text = f"""
version: 1
name: resnet20-golden
models:
  dense: dense.onnx
  pruned: pruned.onnx
  input: {{size: 32, mean: {MEAN}, std: {STD}}}
data:
  test: {{format: imagefolder, path: {test}}}
  ood:
    - {{name: png20, format: imagefolder, path: {folder / "ood"}}}
  limit: 120
suite:
  seed: 3
  noise:
    - {{kind: uniform, levels: [0.1]}}
    - {{kind: gaussian, levels: [0.05]}}
  corruptions:
    preset: cifar10-c
    names: [shot_noise, glass_blur, frost, fog, jpeg_compression, elastic_transform, spatter]
    severities: [2, 5]
    frost_textures: {frost}
gate:
  confidence: 0.9
  rules:
    - {{name: clean accuracy, tasks: clean, metric: accuracy_drop, max: 0.05}}
    - {{name: agreement, tasks: "noise/*", metric: agreement, aggregate: min, min: 0.6}}
    - {{name: corruptions, tasks: "corruption/*", metric: accuracy_drop, aggregate: mean, max: 0.1}}
    - {{name: worst, tasks: "corruption/*/5", metric: accuracy_drop, aggregate: max, max: 0.2}}
runtime: {{batch_size: 50, workers: 1}}
"""
    # The 20 lossless PNGs as an image folder by label, so an ood set of another encoding is read.
    for png in sorted(ood.glob("cifar10_*.png")):
        label = png.stem.split("_")[-1]
        (folder / "ood" / label).mkdir(parents=True, exist_ok=True)
        (folder / "ood" / label / png.name).symlink_to(png)
    path = folder / "policy.yaml"
    path.write_text(text)
    return path


def _blank(value):
    if isinstance(value, dict):
        return {k: ("<volatile>" if k in VOLATILE else _blank(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank(v) for v in value]
    return value


def _predicate_text(report: Path) -> str:
    envelope = json.loads(report.read_text())
    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    predicate["policy"]["sha256"] = "<volatile: the policy text names temporary paths>"
    return json.dumps(_blank(predicate), indent=1, sort_keys=True) + "\n"


def test_predicate_is_byte_identical_to_the_golden_one(tmp_path):
    dense = resnet20_dense()
    pruned = global_magnitude_prune(dense, 0.5)
    example = torch.zeros(2, 3, 32, 32)
    for name, model in (("dense", dense), ("pruned", pruned)):
        torch.onnx.export(
            model,
            (example,),
            tmp_path / f"{name}.onnx",
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    report = tmp_path / "report.json"
    code = main(["check", "--policy", str(_policy(tmp_path)), "--report", str(report), "--quiet"])
    assert code in (0, 1)
    text = _predicate_text(report)
    if os.environ.get("PRUNEGATE_WRITE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
