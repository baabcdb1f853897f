"""The sequential gate on the real ResNet-20 and the whole CIFAR-10 test set (issue 18).

A 70 % magnitude-pruned copy loses ~25 points: with `accuracy_drop max 0.02` the gate must FAIL
after at most 1,000 of the 10,000 images; a 10 % copy with `max 0.10` must PASS after at most
2,000. (The same policies without `sequential` reach the same verdicts on all 10,000 images:
bench/sequential.py measures both, with their wall times, in bench/RESULTS.md.)
"""

from __future__ import annotations

import base64
import json

import pytest
import torch

from prunegate.cli import main
from prunegate.prune import global_magnitude_prune

from .conftest import resnet20_dense, shared_path

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    dense = resnet20_dense()
    out = tmp_path_factory.mktemp("sequential")
    example = torch.zeros(2, 3, 32, 32)
    for name, model in (
        ("dense", dense),
        ("wt70", global_magnitude_prune(dense, 0.7)),
        ("wt10", global_magnitude_prune(dense, 0.1)),
    ):
        torch.jit.save(torch.jit.trace(model, example), out / f"{name}.pt")
    return out


def run(folder, pruned: str, threshold: float) -> tuple[int, dict]:
    data = shared_path("data", "cifar10-test-jpeg")
    policy = folder / f"{pruned}.yaml"
    policy.write_text(f"""
version: 1
name: sequential-{pruned}
models:
  dense: dense.pt
  pruned: {pruned}.pt
  input: {{size: 32, mean: {MEAN}, std: {STD}}}
data:
  test: {{format: imagefolder, path: {data}}}
gate:
  confidence: 0.95
  sequential: true
  rules:
    - {{name: clean drop, tasks: clean, metric: accuracy_drop, max: {threshold}}}
runtime: {{batch_size: 100, workers: 2}}
""")
    report = folder / f"{pruned}.json"
    code = main(["check", "--policy", str(policy), "-o", str(report), "--quiet"])
    predicate = json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))["predicate"]
    return code, predicate


def test_a_70_percent_copy_fails_within_1000_images(family) -> None:
    code, report = run(family, "wt70", 0.02)
    used = report["sequential"]["sources"][0]
    assert code == 1 and report["verdict"] == "fail" and report["rules"][0]["status"] == "fail"
    assert used["total"] == 10_000 and used["used"] <= 1_000, used
    assert report["sequential"]["stopped"] == "a rule was decided fail"


def test_a_10_percent_copy_passes_within_2000_images(family) -> None:
    code, report = run(family, "wt10", 0.10)
    used = report["sequential"]["sources"][0]
    assert code == 0 and report["verdict"] == "pass", report["rules"][0]
    assert used["used"] <= 2_000, used
    assert report["sequential"]["stopped"] == "every rule was decided"
