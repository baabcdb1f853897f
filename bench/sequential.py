"""The sequential gate against the full pass on the real ResNet-20, all 10,000 CIFAR-10 test images
(issue 18).

    .venv/bin/python bench/sequential.py /tmp/pgseq

writes akamaster's ResNet-20 and two global-magnitude-pruned copies (70 %, 10 %) as TorchScript
and, for each copy, one policy with `gate.sequential: true` and one without (the 70 % copy with
`accuracy_drop max 0.02`, the 10 % copy with `max 0.10`, 95 % confidence, clean task only), then
runs the four `prunegate check` commands one after another, each a whole process from start to
exit, and prints per run: the verdict, the images used, the rule's interval and the wall time.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CHECKPOINT = SHARED / "models" / "akamaster-resnet-cifar10" / "resnet20-12fca82f.th"
DATA = SHARED / "data" / "cifar10-test-jpeg"
CASES = (("wt70", 0.7, 0.02), ("wt10", 0.1, 0.10))

POLICY = """
version: 1
name: bench-sequential-{name}
models:
  dense: dense.pt
  pruned: {name}.pt
  input: {{size: 32, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
data:
  test: {{format: imagefolder, path: {data}}}
gate:
  confidence: 0.95
  sequential: {sequential}
  rules:
    - {{name: clean drop, tasks: clean, metric: accuracy_drop, max: {threshold}}}
runtime: {{batch_size: 100, workers: 2}}
"""


def prepare(folder: Path) -> None:
    from prunegate.archs.cifar_resnet import resnet20
    from prunegate.prune import global_magnitude_prune

    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
    dense = resnet20()
    dense.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    dense.eval()
    example = torch.zeros(2, 3, 32, 32)
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.trace(dense, example), folder / "dense.pt")
    for name, ratio, threshold in CASES:
        torch.jit.save(torch.jit.trace(global_magnitude_prune(dense, ratio).eval(), example), folder / f"{name}.pt")
        for sequential in (True, False):
            text = POLICY.format(name=name, data=DATA, sequential=str(sequential).lower(), threshold=threshold)
            (folder / f"{name}-{'seq' if sequential else 'full'}.yaml").write_text(text)


def run(folder: Path, policy: str) -> dict:
    prunegate = Path(sys.executable).parent / "prunegate"
    report = folder / f"{policy}.json"
    tick = time.perf_counter()
    subprocess.run(
        [str(prunegate), "check", "-p", str(folder / f"{policy}.yaml"), "-o", str(report), "-q"], check=False
    )
    wall = time.perf_counter() - tick
    predicate = json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))["predicate"]
    rule = predicate["rules"][0]
    sequential = predicate["sequential"]
    used = sequential["sources"][0]["used"] if sequential else predicate["tasks"][0]["n"]
    return {
        "policy": policy,
        "verdict": predicate["verdict"],
        "images": used,
        "value": round(rule["value"], 4),
        "interval": [round(rule["interval"]["low"], 4), round(rule["interval"]["high"], 4)],
        "method": rule["interval"]["method"],
        "wall_s": round(wall, 1),
    }


def main() -> None:
    folder = Path(sys.argv[1])
    prepare(folder)
    for name, _, _ in CASES:
        for kind in ("seq", "full"):
            print(json.dumps(run(folder, f"{name}-{kind}")), flush=True)


if __name__ == "__main__":
    main()
