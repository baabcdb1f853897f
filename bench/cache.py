"""The dense-output cache: a second candidate's check vs an uncached one (issue 16, item 4).

    .venv/bin/python bench/cache.py prepare /tmp/pgcache
    P='-p /tmp/pgcache/policy.yaml --pruned /tmp/pgcache/pruned70.onnx -q'
    farm-bench -n 3 --timeout 1800 --vs ".venv/bin/prunegate check $P -o /tmp/pgcache/b.json" \\
        -- .venv/bin/prunegate check $P -o /tmp/pgcache/a.json --cache /tmp/pgcache/cache

`prepare` writes akamaster's ResNet-20 (dense) and two global-magnitude-pruned copies (50 %, 70 %)
as ONNX, a policy (1,000 class-balanced CIFAR-10 test images, clean + the 19 CIFAR-10-C
corruptions at severity 3, `backend: onnx`, CPU) and fills the cache by checking the 50 % copy
with `--cache`. The timed pair then checks the 70 % copy with the warm cache (A) and without (B).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CHECKPOINT = SHARED / "models" / "akamaster-resnet-cifar10" / "resnet20-12fca82f.th"
DATA = SHARED / "data" / "cifar10-test-jpeg"

POLICY = f"""
version: 1
name: bench-cache
models:
  dense: dense.onnx
  pruned: pruned50.onnx
  input: {{size: 32, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
data:
  test: {{format: imagefolder, path: {DATA}}}
  limit: 1000
suite:
  seed: 0
  corruptions: {{preset: cifar10-c, names: all, severities: [3]}}
gate:
  rules:
    - {{name: clean, tasks: clean, metric: accuracy_drop, max: 0.05}}
runtime: {{batch_size: 256, workers: 1, backend: onnx, device: cpu}}
"""


def prepare(folder: Path) -> None:
    """The three models, the policy, and the cache filled by a check of the 50 % copy."""
    from prunegate.archs.cifar_resnet import resnet20
    from prunegate.cli import main
    from prunegate.prune import export_model, global_magnitude_prune

    folder.mkdir(parents=True, exist_ok=True)
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
    dense = resnet20()
    dense.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    export_model(dense.eval(), 32, folder / "dense.onnx", "onnx")
    for amount in (50, 70):
        export_model(global_magnitude_prune(dense, amount / 100).eval(), 32, folder / f"pruned{amount}.onnx", "onnx")
    (folder / "policy.yaml").write_text(POLICY)
    code = main(
        [
            "check",
            "-p",
            str(folder / "policy.yaml"),
            "-o",
            str(folder / "fill.json"),
            "-q",
            "--cache",
            str(folder / "cache"),
        ]
    )
    assert code in (0, 1)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "prepare":
        sys.exit("usage: bench/cache.py prepare FOLDER")
    prepare(Path(sys.argv[2]))
