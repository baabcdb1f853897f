"""Checks before cost (issue 15): a model of another kind fails in seconds, whatever the backend.

The real DeepLabV3 (output [N, 21, 513, 513]) under `--backend auto` used to be exported and timed
on full batches of 513-px images before any output check: five minutes, 22.6 GB, killed. Now the
backend choice probes 2 images first and the gate's probe refuses the model with exit 2.
"""

from __future__ import annotations

import time

import pytest

from prunegate.cli import main

from .conftest import shared_path


@pytest.mark.parametrize("suffix", ["pt", "onnx"])
def test_a_segmentation_model_in_a_classification_policy_fails_fast(tmp_path, capsys, suffix: str) -> None:
    model = shared_path("models", "voc-deeplabv3-mobilenetv2", f"deeplabv3_mnv2_pascal.{suffix}")
    data = shared_path("data", "cifar10-test-png20")
    folder = tmp_path / "data" / "0"
    folder.mkdir(parents=True)
    for png in sorted(data.glob("cifar10_*.png"))[:4]:
        (folder / png.name).symlink_to(png)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
version: 1
name: wrong-kind
models:
  dense: {model}
  pruned: {model}
  input: {{size: 513, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}
data:
  test: {{format: imagefolder, path: {tmp_path / "data"}}}
gate:
  rules: [{{name: drop, tasks: clean, metric: accuracy_drop, max: 0.01}}]
runtime: {{backend: auto, batch_size: 64}}
""")
    report = tmp_path / "report.json"
    started = time.perf_counter()
    code = main(["check", "--policy", str(policy), "--report", str(report), "--quiet"])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert "is not [batch, classes] logits" in err and "21, 513, 513" in err and str(model) in err
    assert len(err.strip().splitlines()) == 1 and not report.exists()
    assert seconds < 60, f"took {seconds:.0f} s: the model was timed or exported before its output was checked"
