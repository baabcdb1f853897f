"""Peak memory of `prunegate check` at ImageNet scale (issue 16): the user's own command, end to end.

Builds, in a temporary folder: the dense model (the float MobileNetV2 of
../shared/models/imagenet-mobilenetv2, exported to ONNX), a pruned copy (50 % of each conv's
smallest-magnitude weights zeroed, with onnx + numpy), an `imagefolder-flat` set of N images
(the 200 photos of ../shared/data/imagenet-samples-200, repeated through symlinks) and a policy
(imagenet-c preset at severity 3, 224 px). Then it runs

    prunegate check -p POLICY -o REPORT -q

and follows its process tree: every process's peak resident set (VmHWM, polled from /proc every
0.1 s), split into the main process, the models' sandboxed processes (runtime.isolation: auto)
and the rest (data workers, the zygote); the largest single process also comes exact from
getrusage(RUSAGE_CHILDREN) once the command has finished.

    .venv/bin/python bench/memory.py --images 200 --corruptions all
    .venv/bin/python bench/memory.py --images 10000 --corruptions brightness,contrast --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = SHARED / "models" / "imagenet-mobilenetv2"
PHOTOS = SHARED / "data" / "imagenet-samples-200"
WNIDS = SHARED / "data" / "imagenet-wnids.txt"


def make_models(folder: Path) -> tuple[Path, Path]:
    """dense.onnx (the float state dict, exported) and pruned.onnx (each conv 50 % zeroed)."""
    import numpy as np
    import onnx
    import torch
    import torchvision
    from onnx import numpy_helper

    from prunegate.runners.auto import export_onnx

    module = torchvision.models.mobilenet_v2()
    module.load_state_dict(torch.load(MODELS / "mobilenet_v2-float-from-int8.pth", weights_only=True), strict=True)
    module.eval()
    dense = export_onnx(module, (224, 224), None)
    onnx.save(dense, folder / "dense.onnx")
    conv_weights = {n.input[1] for n in dense.graph.node if n.op_type == "Conv"}
    for init in dense.graph.initializer:
        if init.name in conv_weights:
            w = numpy_helper.to_array(init).copy()
            flat = np.abs(w).ravel()
            cut = np.sort(flat)[len(flat) // 2]
            w[np.abs(w) < cut] = 0.0
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(dense, folder / "pruned.onnx")
    return folder / "dense.onnx", folder / "pruned.onnx"


def make_images(folder: Path, count: int) -> Path:
    """`count` images: the 200 photos repeated through symlinks (`<wnid>_<k>.JPEG`)."""
    target = folder / f"images-{count}"
    target.mkdir()
    photos = sorted(PHOTOS.glob("*.JPEG"))
    for k in range(count):
        photo = photos[k % len(photos)]
        (target / f"{photo.stem.split('_')[0]}_{k:05d}.JPEG").symlink_to(photo)
    return target


def write_policy(folder: Path, images: Path, corruptions: str, batch_size: str | None) -> Path:
    """The policy: imagenet-c `corruptions` at severity 3 on `images`; runtime.batch_size if given."""
    names = "all" if corruptions == "all" else "[" + corruptions + "]"
    runtime = f"runtime: {{batch_size: {batch_size}}}\n" if batch_size else ""
    text = f"""version: 1
name: memory-bench
models:
  dense: dense.onnx
  pruned: pruned.onnx
  input: {{size: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
data:
  test: {{format: imagefolder-flat, path: {images}, class_names: {WNIDS}}}
suite:
  seed: 0
  corruptions: {{preset: imagenet-c, names: {names}, severities: [3]}}
gate:
  rules:
    - {{name: clean top-1, tasks: clean, metric: accuracy_drop, max: 1.0}}
{runtime}"""
    path = folder / f"policy-{images.name}-{batch_size or 'default'}.yaml"
    path.write_text(text)
    return path


def _tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def _peak_kib(pid: int) -> tuple[int, str] | None:
    """(VmHWM in KiB, a label): `model` for a process forked by the zygote (a model's sandbox)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        hwm, parent = int(fields.get("VmHWM", "0 kB").split()[0]), int(fields["PPid"])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            forked_by_zygote = b"runners.zygote" in f.read()
        return hwm, ("model " if forked_by_zygote else "") + cmd
    except (OSError, StopIteration):
        return None


def measure(command: list[str]) -> dict:
    """Run `command`, polling its process tree; peaks in MiB."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peaks: dict[int, tuple[int, str]] = {}
    while child.poll() is None:
        for pid in _tree(child.pid):
            found = _peak_kib(pid)
            if found is not None:
                peaks[pid] = max(peaks.get(pid, (0, "")), found, key=lambda p: p[0])
        time.sleep(0.1)
    output = child.stdout.read().decode(errors="replace") if child.stdout else ""
    wall = time.perf_counter() - start
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, this script's largest child so far
    main = peaks.get(child.pid, (0, ""))[0]
    models = [kib for pid, (kib, cmd) in peaks.items() if pid != child.pid and cmd.startswith("model ")]
    others = [kib for pid, (kib, cmd) in peaks.items() if pid != child.pid and not cmd.startswith("model ")]
    mib = 1024.0
    return {
        "rc": child.returncode,
        "wall_s": round(wall, 1),
        "largest_process_mib": round(largest / mib),
        "main_mib": round(main / mib),
        "model_processes_mib": sorted(round(k / mib) for k in models),
        "other_processes_mib": sorted(round(k / mib) for k in others),
        "processes": {str(pid): [round(kib / mib), cmd] for pid, (kib, cmd) in peaks.items()},
        "output_tail": output[-2000:],
    }


def main(argv: list[str] | None = None) -> int:
    """Prepare what is missing in the scratch folder, measure one run, print and keep the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--corruptions", default="all", help="all, or a comma-separated list")
    parser.add_argument("--batch-size", default=None, help="runtime.batch_size in the policy (default: unset)")
    parser.add_argument("--folder", type=Path, default=None, help="reuse this scratch folder (models are kept)")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="prunegate-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "pruned.onnx").exists():
        make_models(folder)
    images = folder / f"images-{args.images}"
    if not images.exists():
        make_images(folder, args.images)
    policy = write_policy(folder, images, args.corruptions, args.batch_size)
    report = policy.with_suffix(".report.json")
    prunegate = str(Path(sys.executable).with_name("prunegate"))
    result = measure([prunegate, "check", "-p", str(policy), "-o", str(report), "-q"])
    if report.exists():
        options = json.loads(report.read_text()).get("options")
        if options is None:  # a signed envelope or a bare predicate: look for the options inside
            options = _find_options(json.loads(report.read_text()))
        result["options"] = {k: v for k, v in (options or {}).items() if k.startswith("batch")}
    result["setting"] = {"images": args.images, "corruptions": args.corruptions, "batch_size": args.batch_size}
    print(json.dumps({k: v for k, v in result.items() if k != "processes"}, indent=1))
    (
        folder / f"result-{args.images}-{args.corruptions.replace(',', '+')}-{args.batch_size or 'default'}.json"
    ).write_text(json.dumps(result, indent=1))
    return 0


def _find_options(document: object) -> dict | None:
    if isinstance(document, dict):
        if isinstance(document.get("options"), dict):
            return document["options"]
        for value in document.values():
            found = _find_options(value)
            if found is not None:
                return found
    if isinstance(document, str) and document.startswith("ey"):  # a DSSE payload (base64)
        import base64

        try:
            return _find_options(json.loads(base64.b64decode(document)))
        except ValueError:
            return None
    return None


if __name__ == "__main__":
    sys.exit(main())
