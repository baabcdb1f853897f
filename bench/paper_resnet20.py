"""The paper's protocol on akamaster ResNet-20: prune, retrain, prune potential (issue 21's bench).

Liebenwein et al. ("Lost in Pruning", MLSys 2021) prune a network to a family of ratios, retrain
every member, and compare the prune potential (the largest ratio within δ of the dense error) on
clean test data with the potential under noise and corruptions. This bench does the same with
prunegate's own commands, on a budget a loaded 2-core CPU finishes in about half an hour:

1. unpack the CIFAR-10 training set (../shared/data/cifar10-train-jpeg.tar.gz) into a temporary
   folder, once;
2. `prunegate prune --retrain` makes each family (WT: global weight magnitude; FT: per-layer filter
   L1; optionally the data-informed SiPP and PFP), every member fine-tuned with its masks fixed on a
   class-balanced subset of the training set, ImageNet normalisation;
3. `prunegate potential` evaluates the dense model (not retrained) and each family on clean,
   uniform input noise ε ∈ {0.1, 0.2, 0.3} and the 19 cifar10-c corruptions at severity 3, on a
   class-balanced subset of the CIFAR-10 test JPEGs;
4. writes potential-<family>.json and .png and summary.json / summary.md into --out.

`--families dense` is the control: the dense model retrained with the same budget (ratio 0),
evaluated as a one-member family. The retraining set is JPEG-encoded like the test set, which the
dense model never saw, so a short fine-tune alone lowers the error; the summary therefore also
gives each family's potential against the retrained dense model (`vs_retrained_dense`).

Needs ../shared (DATA.md). Usage (wt and ft took 33 minutes on 2 loaded cores, the control 9 more):

    .venv/bin/python bench/paper_resnet20.py --out /tmp/paper21/out
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
import time
from pathlib import Path

from prunegate.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CHECKPOINT = SHARED / "models" / "akamaster-resnet-cifar10" / "resnet20-12fca82f.th"
TRAIN_ARCHIVE = SHARED / "data" / "cifar10-train-jpeg.tar.gz"
TEST = SHARED / "data" / "cifar10-test-jpeg"
ARCH = "prunegate.archs.cifar_resnet:resnet20"
MEAN, STD = "0.485,0.456,0.406", "0.229,0.224,0.225"
FAMILIES = {
    "wt": "0.3,0.5,0.7,0.8,0.9,0.95",
    "ft": "0.1,0.2,0.3,0.4,0.5,0.6",
    "sipp": "0.3,0.5,0.7,0.8,0.9,0.95",
    "pfp": "0.1,0.2,0.3,0.4,0.5,0.6",
    "dense": "0",  # the control: the dense model retrained alike
}
NOISE = [0.1, 0.2, 0.3]

POLICY = """
version: 1
name: paper-resnet20
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
    - {{kind: uniform, levels: {noise}}}
  corruptions: {{preset: cifar10-c, names: all, severities: [3]}}
gate:
  rules:
    - {{name: clean, tasks: clean, metric: accuracy_drop, max: 0.01}}
runtime: {{batch_size: 250, workers: 1}}
"""


def run(argv: list[str]) -> None:
    """One prunegate command, in this process; a non-zero exit stops the bench."""
    code = main(argv)
    if code != 0:
        raise SystemExit(f"prunegate {argv[0]} exited {code}")


def unpack(folder: Path) -> Path:
    """The training set's train/<class>/NNNN.jpg, unpacked into `folder` unless it is there."""
    train = folder / "train"
    if not (train / "truck").is_dir():
        with tarfile.open(TRAIN_ARCHIVE) as archive:
            archive.extractall(folder, filter="data")
    return train


def prune_args(method: str, ratios: str, out: Path) -> list[str]:
    """`prunegate prune` of the shared ResNet-20 to ONNX members."""
    return [
        "prune",
        *("--model", str(CHECKPOINT), "--arch", ARCH, "--method", method, "--ratios", ratios),
        *("--input-size", "32", "--format", "onnx", "--out", str(out)),
    ]


def summary(out: Path, budget: dict, seconds: dict[str, float]) -> None:
    """summary.json (potential per group and per noise level, against the dense model and against
    the retrained dense control when it is there; measured ratios) and summary.md."""
    from prunegate.potential import prune_potential

    results = {
        f: json.loads((out / f"potential-{f}.json").read_text())
        for f in FAMILIES
        if (out / f"potential-{f}.json").exists()
    }
    control = results.pop("dense", None)
    table: dict = {"budget": budget, "seconds": seconds, "families": {}}
    rows: dict[str, dict[str, str]] = {}
    for family, result in results.items():
        ratios = [m["prune_ratio"] for m in result["members"]]
        entries = result["groups"] + [t for t in result["tasks"] if t["name"].startswith("noise/")]
        baseline = {}
        if control is not None:
            baseline = {e["name"]: e["errors"][0] for e in control["groups"] + control["tasks"]}
        potentials, retrained = {}, {}
        for entry in entries:
            name = entry["name"]
            potentials[name] = entry["potential"]
            if name in baseline:
                retrained[name] = prune_potential(baseline[name], entry["errors"], ratios, result["delta"])
            cell = f"{100 * potentials[name]:.0f} %"
            rows.setdefault(name, {})[family] = cell + (
                f" ({100 * retrained[name]:.0f} %)" if name in retrained else ""
            )
        table["families"][family] = {
            "ratios": [round(r, 4) for r in ratios],
            "potential": potentials,
            "vs_retrained_dense": retrained or None,
            "groups": result["groups"],
            "noise_tasks": [t for t in result["tasks"] if t["name"].startswith("noise/")],
        }
    if control is not None:
        table["retrained_dense"] = {e["name"]: e["errors"][0] for e in control["groups"] + control["tasks"]}
    families = list(results)
    lines = ["| group | " + " | ".join(f.upper() for f in families) + " |", "|---|" + "---:|" * len(families)]
    lines += [f"| {name} | " + " | ".join(cells.get(f, "") for f in families) + " |" for name, cells in rows.items()]
    if control is not None:
        lines.append("\n(in brackets: the potential against the dense model retrained with the same budget)")
    (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def bench(out: Path, families: list[str], train_images: int, epochs: int, iterations: int, limit: int) -> None:
    """Prune and retrain each family, then its potential; the summary is rewritten after each."""
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = (
        json.loads((out / "seconds.json").read_text()) if (out / "seconds.json").exists() else {}
    )
    tick = time.perf_counter()
    scratch = Path(tempfile.gettempdir()) / "prunegate-paper-resnet20"
    scratch.mkdir(exist_ok=True)
    train = unpack(scratch)
    seconds["unpack"] = time.perf_counter() - tick
    dense = out / "wt-00.onnx"
    if not dense.exists():  # the dense parent, as it is (not retrained)
        run(prune_args("wt", "0", out))
    policy = out / "policy.yaml"
    policy.write_text(POLICY.format(dense=dense.name, data=TEST, limit=limit, noise=NOISE))
    retrain = ["--retrain", str(train), "--train-limit", str(train_images), "--epochs", str(epochs)]
    retrain += ["--iterations", str(iterations), "--mean", MEAN, "--std", STD]
    budget = {"train_images": train_images, "epochs": epochs, "iterations": iterations, "test_images": limit}
    budget |= {"ratios": {f: FAMILIES[f] for f in families}, "lr": 0.01, "batch_size": 64, "delta": 0.005}
    for family in families:
        ratios = FAMILIES[family]
        folder = out / "dense-retrained" if family == "dense" else out
        method = "wt" if family == "dense" else family
        members = [folder / f"{method}-{round(float(r) * 100):02d}.onnx" for r in ratios.split(",")]
        tick = time.perf_counter()
        if not all(m.exists() for m in members):
            run([*prune_args(method, ratios, folder), *retrain])
        seconds[f"prune-retrain {family}"] = time.perf_counter() - tick
        print(f"{family}: pruned and retrained in {seconds[f'prune-retrain {family}']:.0f} s", flush=True)
        tick = time.perf_counter()
        run(
            [
                "potential",
                *("--policy", str(policy), "--pruned", *map(str, members), "--delta", "0.005"),
                *("--out", str(out / f"potential-{family}.json"), "--plot", str(out / f"potential-{family}.png")),
            ]
        )
        seconds[f"potential {family}"] = time.perf_counter() - tick
        print(f"{family}: potential in {seconds[f'potential {family}']:.0f} s", flush=True)
        (out / "seconds.json").write_text(json.dumps(seconds, indent=2) + "\n")
        summary(out, budget, seconds)
    summary(out, budget, seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/paper"))
    parser.add_argument("--families", default="wt,ft,dense", help="comma-separated: wt, ft, sipp, pfp, dense")
    parser.add_argument("--train-images", type=int, default=1000, help="class-balanced training images per member")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--limit", type=int, default=500, help="class-balanced test images")
    args = parser.parse_args()
    started = time.perf_counter()
    bench(args.out, args.families.split(","), args.train_images, args.epochs, args.iterations, args.limit)
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
