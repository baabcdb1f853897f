"""The streaming pass vs the two models alone (issues 7 and 16).

Issue 16, item 3 -- the user's own command against the two models alone, whole processes:

    .venv/bin/python bench/pipeline.py prepare /tmp/pipe          # both cases, models + policies
    farm-bench -n 3 --timeout 1800 \\
        --vs '.venv/bin/python bench/pipeline.py models /tmp/pipe/mobilenetv2' \\
        -- .venv/bin/prunegate check -p /tmp/pipe/mobilenetv2/policy.yaml -o /tmp/pipe/mnv2.json -q
    .venv/bin/python bench/pipeline.py split /tmp/pipe/mnv2.json   # the report's data/shift/models/wait

and the same for /tmp/pipe/resnet20. `prepare` writes two cases, each a folder with dense.onnx,
pruned.onnx and policy.yaml (defaults otherwise: batch size auto, isolation auto, ONNX Runtime,
CPU): `mobilenetv2` -- the real MobileNetV2 of ../shared (float weights exported to ONNX) and a
copy with 50 % of each conv's smallest weights zeroed, the 200 photos of imagenet-samples-200,
clean + the 19 imagenet-c corruptions at severity 3 (20 tasks); `resnet20` -- akamaster's
ResNet-20 and its 50 % global-magnitude-pruned copy, 1,000 class-balanced CIFAR-10 test images,
clean + the whole cifar10-c suite (19 x 5: 96 tasks). `models CASE` is the yardstick: a fresh
process that loads both ONNX models in ONNX Runtime (default session options, as the check's)
and runs them over inputs made ahead of time, as many batches of the check's batch size as the
check makes (tasks x images): no decoding, no shifts, no tallies, no sandbox, no report.

Issue 7 -- the streaming pass vs inference alone, ONNX Runtime vs torch, and peak memory:

In one run on one machine:
1. pipeline: `prunegate check` on akamaster ResNet-20 (dense) and its 50 % WT-pruned copy, clean +
   the whole cifar10-c suite (19 x 5) on N images of ../shared/data/cifar10-test-jpeg, for each
   backend; wall time of the check, and the engine's own split (data, shifts, models);
2. inference alone: both models on pre-made tensors of the same count (N x 96 batches' worth),
   same batch size, same backend, same threads;
3. peak memory (max RSS of a fresh process) of a check on synthetic data of growing size.

    .venv/bin/python bench/pipeline.py --images 1000 --md bench/pipeline.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corruption_speed import machine  # noqa: E402  (one description of the machine for all benches)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CHECKPOINT = SHARED / "models" / "akamaster-resnet-cifar10" / "resnet20-12fca82f.th"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TASKS = 1 + 19 * 5

POLICY = """
version: 1
name: bench-pipeline
models:
  dense: {dense}
  pruned: {pruned}
  input: {{size: 32, mean: {mean}, std: {std}}}
data:
  test: {{format: {fmt}, path: {data}}}
  limit: {limit}
suite:
  seed: 0
  corruptions: {{preset: cifar10-c, names: {names}, severities: {severities}}}
gate:
  rules:
    - {{name: clean, tasks: clean, metric: accuracy_drop, max: 1.0}}
runtime: {{batch_size: {batch}, workers: 1, backend: {backend}, device: {device}}}
"""


def make_models(folder: Path) -> dict[str, dict[str, Path]]:
    from prunegate.archs.cifar_resnet import resnet20
    from prunegate.prune import export_model, global_magnitude_prune

    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
    dense = resnet20()
    dense.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    models = {"dense": dense.eval(), "pruned": global_magnitude_prune(dense, 0.5).eval()}
    paths: dict[str, dict[str, Path]] = {"onnx": {}, "torch": {}}
    for role, model in models.items():
        for backend, suffix, fmt in (("onnx", "onnx", "onnx"), ("torch", "pt", "torchscript")):
            path = folder / f"{role}.{suffix}"
            export_model(model, 32, path, fmt)
            paths[backend][role] = path
    return paths


def write_policy(
    folder: Path,
    models: dict[str, Path],
    backend: str,
    images: int,
    data: Path,
    fmt: str,
    batch: int,
    names: str = "all",
    severities: str = "[1, 2, 3, 4, 5]",
    device: str = "cpu",
) -> Path:
    path = folder / f"policy-{backend}-{fmt}-{images}.yaml"
    path.write_text(
        POLICY.format(
            dense=models["dense"],
            pruned=models["pruned"],
            mean=MEAN,
            std=STD,
            fmt=fmt,
            data=data,
            limit=images,
            names=names,
            severities=severities,
            batch=batch,
            backend=backend,
            device=device,
        )
    )
    return path


def run_check(policy: Path, report: Path) -> tuple[float, dict, int]:
    """(wall seconds, the report's timing, peak RSS in MB) of a fresh `prunegate check` process."""
    code = (
        "import resource, sys, time; from prunegate.cli import main; t = time.perf_counter(); "
        f"rc = main(['check', '--policy', {str(policy)!r}, '--report', {str(report)!r}, '--quiet']); "
        "print('WALL', time.perf_counter() - t, 'RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); "
        "sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(done.stderr[-2000:])
    words = done.stdout.split()
    wall, rss_kb = float(words[words.index("WALL") + 1]), int(words[words.index("RSS") + 1])
    import base64

    predicate = json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))["predicate"]
    return wall, predicate["timing"], rss_kb // 1024


def inference_alone(models: dict[str, Path], backend: str, images: int, batch: int, device: str = "cpu") -> float:
    """Seconds to run both models over TASKS x images pre-made inputs, in batches."""
    from prunegate.policy import ModelSpec
    from prunegate.runners import LoadOptions, load_runner

    runners = [
        load_runner(
            ModelSpec(path=str(p)),
            p,
            role,
            LoadOptions(
                base_dir=p.parent,
                backend=backend,
                device=torch.device(device),
                allow_pickle=False,
                allow_fallback=False,
            ),
        )
        for role, p in models.items()
    ]
    x = torch.randn(batch, 3, 32, 32, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for r in runners:
        r(x)  # warm-up
    full, last = divmod(images, batch)
    sync()
    tick = time.perf_counter()
    for _ in range(TASKS):
        for size in [batch] * full + ([last] if last else []):
            chunk = x[:size]
            for r in runners:
                r(chunk)
    sync()
    return time.perf_counter() - tick


def synthetic(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    path = folder / f"synthetic-{n}.npz"
    np.savez(path, images=images, labels=labels)
    return path


CASES = {
    "mobilenetv2": {"images": 200, "size": 224, "tasks": 1 + 19, "severities": "[3]", "preset": "imagenet-c"},
    "resnet20": {
        "images": 1000,
        "size": 32,
        "tasks": 1 + 19 * 5,
        "severities": "[1, 2, 3, 4, 5]",
        "preset": "cifar10-c",
    },
}

CASE_POLICY = """version: 1
name: bench-pipeline-{case}
models:
  dense: dense.onnx
  pruned: pruned.onnx
  input: {{size: {size}, mean: {mean}, std: {std}}}
data:
  test: {data}
  limit: {images}
suite:
  seed: 0
  corruptions: {{preset: {preset}, names: all, severities: {severities}}}
gate:
  rules:
    - {{name: clean top-1, tasks: clean, metric: accuracy_drop, max: 1.0}}
runtime: {{backend: onnx, device: cpu}}
"""


def prepare(folder: Path) -> None:
    """The two cases' models and policies (module docstring)."""
    import shutil

    import memory  # bench/memory.py: the MobileNetV2 pair and the photos' layout

    for case, spec in CASES.items():
        where = folder / case
        where.mkdir(parents=True, exist_ok=True)
        if case == "mobilenetv2":
            memory.make_models(where)
            data = f"{{format: imagefolder-flat, path: {memory.PHOTOS}, class_names: {memory.WNIDS}}}"
        else:
            paths = make_models(where)["onnx"]
            for role, path in paths.items():
                shutil.move(str(path), where / f"{role}.onnx")
            data = f"{{format: imagefolder, path: {SHARED / 'data' / 'cifar10-test-jpeg'}}}"
        (where / "policy.yaml").write_text(CASE_POLICY.format(case=case, mean=MEAN, std=STD, data=data, **spec))


def models_alone(where: Path) -> None:
    """The yardstick: both models over tasks x images inputs made ahead, in the check's batches."""
    import onnxruntime as ort

    from prunegate.context import choose_batch_size

    spec = CASES[where.name]
    size, images, tasks = spec["size"], spec["images"], spec["tasks"]
    batch = choose_batch_size("auto", (size, size), torch.device("cpu")).size
    sessions = [
        ort.InferenceSession(str(where / f"{role}.onnx"), providers=["CPUExecutionProvider"])
        for role in ("dense", "pruned")
    ]
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    full, last = divmod(images, batch)
    for _ in range(tasks):
        for count in [batch] * full + ([last] if last else []):
            for session in sessions:
                session.run(None, {session.get_inputs()[0].name: x[:count]})[0].argmax(axis=1)


def split(report: Path) -> None:
    """Print a report's timing: the pass's split between data, shifts, models and waiting."""
    import base64

    predicate = json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))["predicate"]
    timing, options = predicate["timing"], predicate["options"]
    print(json.dumps({**timing, "batch_size": options.get("batch_size")}, indent=2))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("prepare", "models", "split"):
        {"prepare": prepare, "models": models_alone, "split": split}[sys.argv[1]](Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000])
    parser.add_argument("--memory", type=int, nargs="*", default=[1000, 10000, 100000], help="none: skip; on cpu")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--backends", default="onnx,torch")
    parser.add_argument("--md", type=Path)
    parser.add_argument("--device", default="cpu", help="where the pipeline and inference runs go (cpu | cuda)")
    args = parser.parse_args()
    device = f"; device {args.device}" if args.device != "cpu" else ""
    lines = [f"Machine: {machine()}; {dt.date.today()}; batch {args.batch}{device}.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_models(folder)
        data = SHARED / "data" / "cifar10-test-jpeg"
        lines += [
            "| backend | images | pipeline s | data s | shifts s | models s (in pass) | inference alone s | "
            "pipeline / inference | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for backend in [b for b in args.backends.split(",") if b]:  # --backends "" : memory only
            for n in args.images:
                policy = write_policy(
                    folder, paths[backend], backend, n, data, "imagefolder", args.batch, device=args.device
                )
                wall, timing, rss = run_check(policy, folder / "report.json")
                alone = inference_alone(paths[backend], backend, n, args.batch, args.device)
                lines.append(
                    f"| {backend} | {n:,} | {wall:.1f} | {timing['data_s']:.1f} | {timing['shift_s']:.1f} | "
                    f"{timing['models_s']:.1f} | {alone:.1f} | **{wall / alone:.2f}x** | {rss:,} |"
                )
                print(lines[-1], flush=True)
        lines += [
            "",
            "Peak memory (fresh process, ONNX, clean + fog and shot_noise at severity 3, synthetic 32 px npz):",
            "",
            "| images | wall s | peak RSS MB |",
            "|---:|---:|---:|",
        ]
        for n in args.memory:
            policy = write_policy(
                folder,
                paths["onnx"],
                "onnx",
                n,
                synthetic(folder, n),
                "npz",
                args.batch,
                names="[fog, shot_noise]",
                severities="[3]",
            )
            wall, _, rss = run_check(policy, folder / "report.json")
            lines.append(f"| {n:,} | {wall:.1f} | {rss:,} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)


if __name__ == "__main__":
    main()
