"""Prune potential of akamaster ResNet-20 on the real CIFAR-10 test images (issue #5's bench).

Makes a family with `prunegate prune` (WT and FT, no retraining), then runs `prunegate
potential` on clean, input noise and the whole cifar10-c suite. Writes the JSON tables and the
plots to --out. Needs ../shared (DATA.md). Usage:

    .venv/bin/python bench/resnet20_potential.py --limit 500 --out bench/potential
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from prunegate.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CHECKPOINT = SHARED / "models" / "akamaster-resnet-cifar10" / "resnet20-12fca82f.th"
ARCH = "prunegate.archs.cifar_resnet:resnet20"
FAMILIES = {"wt": "0.1,0.3,0.5,0.6,0.7,0.8", "ft": "0.05,0.1,0.2,0.3,0.4"}

POLICY = """
version: 1
name: resnet20-potential
models:
  dense: {dense}
  pruned: {dense}
  input: {{size: 32, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
data:
  test: {{format: imagefolder, path: {data}}}
  limit: {limit}
suite:
  seed: 0
  noise:
    - {{kind: uniform, levels: [0.1, 0.2, 0.3]}}
    - {{kind: gaussian, levels: [0.02, 0.05, 0.1]}}
  corruptions: {{preset: cifar10-c, names: all, severities: [1, 2, 3, 4, 5]}}
gate:
  rules:
    - {{name: clean, tasks: clean, metric: accuracy_drop, max: 0.01}}
runtime: {{batch_size: 250, workers: 1}}
"""


def run(argv: list[str]) -> None:
    code = main(argv)
    if code != 0:
        raise SystemExit(f"prunegate {' '.join(argv[:1])} exited {code}")


def bench(out: Path, limit: int, families: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    dense = out / "wt-00.onnx"
    if not dense.exists():
        run(
            [
                "prune",
                "--model",
                str(CHECKPOINT),
                "--arch",
                ARCH,
                "--method",
                "wt",
                "--ratios",
                "0",
                "--input-size",
                "32",
                "--format",
                "onnx",
                "--out",
                str(out),
            ]
        )
    policy = out / "policy.yaml"
    policy.write_text(POLICY.format(dense=dense.name, data=SHARED / "data" / "cifar10-test-jpeg", limit=limit))
    for method in families:
        members = [out / f"{method}-{round(float(r) * 100):02d}.onnx" for r in FAMILIES[method].split(",")]
        if not all(m.exists() for m in members):
            run(
                [
                    "prune",
                    "--model",
                    str(CHECKPOINT),
                    "--arch",
                    ARCH,
                    "--method",
                    method,
                    "--ratios",
                    FAMILIES[method],
                    "--input-size",
                    "32",
                    "--format",
                    "onnx",
                    "--out",
                    str(out),
                ]
            )
        tick = time.perf_counter()
        run(
            [
                "potential",
                "--policy",
                str(policy),
                "--pruned",
                *map(str, members),
                "--delta",
                "0.005",
                "--out",
                str(out / f"potential-{method}.json"),
                "--plot",
                str(out / f"potential-{method}.png"),
            ]
        )
        print(f"{method}: {time.perf_counter() - tick:.0f} s")
        result = json.loads((out / f"potential-{method}.json").read_text())
        print(json.dumps({g["name"]: round(g["potential"], 3) for g in result["groups"]}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("bench/potential"))
    parser.add_argument("--families", default="wt,ft")
    args = parser.parse_args()
    bench(args.out, args.limit, args.families.split(","))
