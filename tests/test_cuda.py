"""GPU readiness (issue 16): on real images and the real ResNet-20, CUDA gives what the CPU gives.

Every test here is marked `cuda` and skips without a GPU (and without ../shared), so a default
`pytest` run collects and skips them; on a GPU machine run them alone with `pytest -m cuda`
(bench/gpu.sh does, on a bare GPU machine). Three levels:
(a) every corruption x severity of both presets, and the input noise, on the same images and
    random keys as `prunegate.context.task_pixels` uses them;
(b) the torch and the ONNX Runtime runners' logits;
(c) a whole `prunegate check`: verdict and per-task accuracies.

Tolerances (none could be measured when this was written, on a machine without a GPU: each must
be confirmed on a GPU, and tightened where the GPU gives more):
- corruptions, compared as the uint8 images the benchmark saves: at least 99.9 % of the values
  identical and none more than 1 grey level apart. The shifts work in float64 (or integers: the
  JPEG codec), so CPU and CUDA differ only by summation order and libm ulps, ~1e-12 levels: only
  a value that lands within that of a rounding or truncation boundary can flip, by one level.
  Corruptions with a data-dependent branch (BRANCHY below: a threshold, a floored coordinate, a
  drawn count) can jump further where such a flip takes the other branch; for them the 0.1 %
  of values may differ by any amount, but the mean difference stays under 0.05 levels;
- noise (not quantised): the float tensors within 1e-6 (as tests/test_rng.py allows the CUDA
  draws themselves: log/cos ulps in the Gaussian draws);
- logits: CUDA convolutions run in TF32 by default (torch's cudnn.allow_tf32, ONNX Runtime's
  use_tf32), a 10-bit mantissa: within 0.05 + 1 % of the logit; so the top-1 class must agree
  wherever the CPU's top-2 margin exceeds 0.1;
- the check: the same verdict, rules, tasks and counts; each task's accuracy within one image of
  the 64 per model (a prediction may flip only on a near tie, see the logits), its accuracy drop
  and agreement, which both models move, within two.

PRUNEGATE_CUDA_TESTS_DEVICE names the device that stands for the GPU (default cuda). Set to cpu,
the suite compares the CPU with itself: a dry run of its plumbing on a machine without a GPU
(bench/gpu.sh with GPU_SH_ALLOW_CPU=1), which proves nothing about CUDA.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunegate import shifts
from prunegate.context import Preprocess
from prunegate.shifts import CORRUPTION_NAMES, SampleRNG, ShiftAssets, task_key

GPU = torch.device(os.environ.get("PRUNEGATE_CUDA_TESTS_DEVICE", "cuda"))
DRY_RUN = GPU.type == "cpu"
CPU = torch.device("cpu")
SHARED = Path(__file__).resolve().parents[2] / "shared"  # the convention of tests/real/conftest.py

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not DRY_RUN and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False); run with `pytest -m cuda` on a GPU machine",
    ),
]

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PRESETS = {"cifar10-c": 32, "imagenet-c": 224}  # preset -> the image side it is made for
SEED = 0

IDENTICAL = 0.999  # fraction of uint8 values that must be equal
MAX_LEVELS = 1  # the largest difference allowed anywhere, except for BRANCHY
BRANCHY_MEAN_LEVELS = 0.05
# Corruptions whose output can jump where a float rounding difference takes the other side of a
# data-dependent branch, and why.
BRANCHY = {
    "elastic_transform": "source coordinates floored to 1/32 px as cv2 does",
    "spatter": "liquid and mud masks thresholded from blurred noise",
    "snow": "snow layer thresholded before its motion blur",
    "shot_noise": "Poisson counts drawn against alias tables computed on the device",
    "frost": "texture resampled and cropped at drawn positions",
}
NOISE_TOLERANCE = {"rtol": 1e-6, "atol": 1e-6}
LOGIT_TOLERANCE = {"rtol": 1e-2, "atol": 5e-2}
MARGIN = 0.1  # top-2 margin above which CPU and GPU must agree on the class (2 x atol)


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path} (../shared is provided in CI; bench/gpu.sh carries a subset)")
    return path


def _cifar(n: int) -> np.ndarray:
    """uint8 NHWC: CIFAR-10 test images 0..n-1 (classes in turn, as bench/corruption_reference.py)."""
    root = shared_path("data", "cifar10-test-jpeg")
    files = [root / CLASSES[i % 10] / f"{i // 10:04d}.jpg" for i in range(n)]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def _imagenet(n: int) -> np.ndarray:
    """uint8 NHWC: n real ImageNet photos, resized (short side 256) and centre-cropped to 224."""
    files = sorted(shared_path("data", "imagenet-samples-200").glob("*.JPEG"))[:n]
    out = []
    for f in files:
        img = Image.open(f).convert("RGB")
        w, h = img.size
        img = img.resize((256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256), Image.BILINEAR)
        w, h = img.size
        top, left = round((h - 224) / 2), round((w - 224) / 2)
        out.append(np.asarray(img.crop((left, top, left + 224, top + 224))))
    return np.stack(out)


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def batches() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """preset -> (float [0, 1] NCHW images on the CPU, their sample ids): 64 CIFAR images, 4 photos."""
    out = {}
    for preset, images in (("cifar10-c", _cifar(64)), ("imagenet-c", _imagenet(4))):
        x = _tensor(images)
        out[preset] = (x, torch.arange(x.shape[0]) * 7 + 3)  # ids as a source's selection gives them
    return out


def _rng(task: str, ids: torch.Tensor, device: torch.device) -> SampleRNG:
    """The random streams task_pixels gives a task's batch (one draw per task)."""
    return SampleRNG(task_key(SEED, task), ids, device=device)


def _levels(x: torch.Tensor) -> np.ndarray:
    return torch.round(x.detach().float().cpu().clamp(0, 1) * 255).to(torch.uint8).numpy()


def _assert_same_image(name: str, cpu: torch.Tensor, gpu: torch.Tensor) -> None:
    assert gpu.device.type == GPU.type and gpu.shape == cpu.shape and gpu.dtype == cpu.dtype
    diff = np.abs(_levels(cpu).astype(np.int16) - _levels(gpu).astype(np.int16))
    identical, worst, mean = float((diff == 0).mean()), int(diff.max()), float(diff.mean())
    summary = f"{name}: {identical:.5%} identical, max {worst} levels, mean {mean:.4f}"
    assert identical >= IDENTICAL, summary
    if name in BRANCHY:
        assert mean <= BRANCHY_MEAN_LEVELS, f"{summary} ({BRANCHY[name]})"
    else:
        assert worst <= MAX_LEVELS, summary


def _corrupt_both(x, ids, name, severity, preset, assets=shifts.NO_ASSETS):
    task = f"corruption/{name}/{severity}"
    with torch.no_grad():
        cpu = shifts.corrupt(x, name, severity, _rng(task, ids, CPU), preset=preset, assets=assets)
        gpu = shifts.corrupt(x.to(GPU), name, severity, _rng(task, ids, GPU), preset=preset, assets=assets)
    return cpu, gpu


def test_the_registry_is_the_benchmark() -> None:
    """The cases below are parametrised over CORRUPTION_NAMES: it must be the whole registry."""
    assert sorted(CORRUPTION_NAMES) == shifts.list_shifts()


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", CORRUPTION_NAMES)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_corruption_on_cuda_equals_cpu(batches, preset: str, name: str, severity: int) -> None:
    x, ids = batches[preset]
    cpu, gpu = _corrupt_both(x, ids, name, severity, preset)
    _assert_same_image(name, cpu, gpu)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_frost_with_the_reference_photographs_on_cuda_equals_cpu(batches, preset: str) -> None:
    assets = ShiftAssets.load({"frost_textures": shared_path("data", "frost-textures")})
    x, ids = batches[preset]
    for severity in range(1, 6):
        cpu, gpu = _corrupt_both(x, ids, "frost", severity, preset, assets)
        _assert_same_image("frost", cpu, gpu)


@pytest.mark.parametrize("level", [0.05, 0.3])
@pytest.mark.parametrize("kind", shifts.list_noises())
@pytest.mark.parametrize("preset", list(PRESETS))
def test_noise_on_cuda_equals_cpu(batches, preset: str, kind: str, level: float) -> None:
    """As task_pixels applies it: in the normalised model input or in pixel space."""
    x, ids = batches[preset]
    noise = shifts.get_noise(kind)
    task = f"noise/{kind}/{level}"
    results = []
    for device in (CPU, GPU):
        pre = Preprocess.create(MEAN, STD, device)
        xd = x.to(device)
        with torch.no_grad():
            values = pre(xd) if noise.space == "normalized" else xd
            results.append(noise.apply(values, level, _rng(task, ids, device)))
    cpu, gpu = results
    assert gpu.device.type == GPU.type and gpu.shape == cpu.shape
    torch.testing.assert_close(gpu.cpu(), cpu, **NOISE_TOLERANCE)


# (b) runners


@pytest.fixture(scope="module")
def resnet20_files(tmp_path_factory) -> dict[str, Path]:
    """The real ResNet-20 (dense) and its 50 % globally pruned copy, as TorchScript and ONNX."""
    from prunegate.archs.cifar_resnet import resnet20
    from prunegate.prune import export_model, global_magnitude_prune

    checkpoint = shared_path("models", "akamaster-resnet-cifar10", "resnet20-12fca82f.th")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    dense = resnet20()
    dense.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    dense.eval()
    folder = tmp_path_factory.mktemp("resnet20-cuda")
    files = {}
    for role, model in (("dense", dense), ("pruned", global_magnitude_prune(dense, 0.5))):
        for suffix, fmt in (("pt", "torchscript"), ("onnx", "onnx")):
            files[f"{role}.{suffix}"] = folder / f"{role}.{suffix}"
            export_model(model, 32, files[f"{role}.{suffix}"], fmt)
    return files


def _runner(path: Path, backend: str, device: torch.device):
    from prunegate.policy import ModelSpec
    from prunegate.runners import LoadOptions, load_runner

    options = LoadOptions(
        base_dir=path.parent, backend=backend, device=device, allow_pickle=False, allow_fallback=False
    )
    return load_runner(ModelSpec(path=path.name), path, "models.dense", options)


def _onnx_cuda_or_skip() -> None:
    if DRY_RUN:
        return
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
            f"({', '.join(ort.get_available_providers())}): install onnxruntime-gpu (prunegate[gpu])"
        )


@pytest.mark.parametrize(("backend", "suffix"), [("torch", "pt"), ("onnx", "onnx")])
def test_runner_logits_on_cuda_equal_cpu(resnet20_files, backend: str, suffix: str) -> None:
    if backend == "onnx":
        _onnx_cuda_or_skip()
    path = resnet20_files[f"dense.{suffix}"]
    x = Preprocess.create(MEAN, STD, CPU)(_tensor(_cifar(256)))
    with torch.no_grad():
        cpu = _runner(path, backend, CPU)(x).float().cpu()
        gpu_runner = _runner(path, backend, GPU)
        gpu = gpu_runner(x.to(GPU)).float()
    record = gpu_runner.record
    assert record.device.startswith(GPU.type), record.device
    if backend == "onnx" and not DRY_RUN:
        assert record.provider == "CUDAExecutionProvider", record.provider
    assert gpu.device.type == GPU.type
    gpu = gpu.cpu()
    torch.testing.assert_close(gpu, cpu, **LOGIT_TOLERANCE)
    top2 = cpu.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > MARGIN
    assert bool((cpu.argmax(1) == gpu.argmax(1))[clear].all())
    assert float((cpu.argmax(1) == gpu.argmax(1)).double().mean()) >= 0.99


# (c) a whole check

CHECK_IMAGES = 64
CHECK_TASKS = [
    "clean",
    "corruption/gaussian_noise/3",
    "corruption/fog/3",
    "corruption/jpeg_compression/3",
    "noise/uniform/0.1",
    "noise/gaussian/0.05",
]
POLICY = """
version: 1
name: cuda-vs-cpu
models:
  dense: {dense}
  pruned: {pruned}
  input: {{size: 32, mean: {mean}, std: {std}}}
data:
  test: {{format: imagefolder, path: {data}}}
  limit: {limit}
suite:
  seed: 0
  noise:
    - {{kind: uniform, levels: [0.1]}}
    - {{kind: gaussian, levels: [0.05]}}
  corruptions: {{preset: cifar10-c, names: [gaussian_noise, fog, jpeg_compression], severities: [3]}}
gate:
  rules:
    - {{name: clean accuracy, tasks: clean, metric: accuracy_drop, max: 0.5}}
    - {{name: agreement, tasks: "*", metric: agreement, aggregate: min, min: 0.2}}
runtime: {{batch_size: 32, workers: 1, backend: {backend}, isolation: {isolation}}}
"""


def _predicate(path: Path) -> dict:
    return json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))["predicate"]


@pytest.mark.parametrize("isolation", ["auto", "off"])
@pytest.mark.parametrize(("backend", "suffix"), [("torch", "pt"), ("onnx", "onnx")])
def test_check_on_cuda_equals_cpu(resnet20_files, tmp_path, backend: str, suffix: str, isolation: str) -> None:
    """isolation auto: the product's path (models in sandboxed processes); off: the engine alone,
    so that a sandbox that keeps a model process from the GPU shows as such."""
    from prunegate.cli import main

    if backend == "onnx":
        _onnx_cuda_or_skip()
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        POLICY.format(
            dense=resnet20_files[f"dense.{suffix}"],
            pruned=resnet20_files[f"pruned.{suffix}"],
            mean=list(MEAN),
            std=list(STD),
            data=shared_path("data", "cifar10-test-jpeg"),
            limit=CHECK_IMAGES,
            backend=backend,
            isolation=isolation,
        )
    )
    predicates = {}
    for label, device in (("cpu", "cpu"), ("gpu", GPU.type)):
        report = tmp_path / f"report-{label}.json"
        code = main(["check", "--policy", str(policy), "--device", device, "--report", str(report), "--quiet"])
        assert code in (0, 1), f"check on {device} exited {code}"
        predicates[label] = _predicate(report)
    cpu, gpu = predicates["cpu"], predicates["gpu"]
    for role in ("dense", "pruned"):
        assert gpu["models"][role]["device"].startswith(GPU.type), gpu["models"][role]
        if backend == "onnx" and not DRY_RUN:
            assert gpu["models"][role]["provider"] == "CUDAExecutionProvider"
    assert gpu["verdict"] == cpu["verdict"] == "pass"
    assert [r["passed"] for r in gpu["rules"]] == [r["passed"] for r in cpu["rules"]]
    cpu_tasks = {t["name"]: t for t in cpu["tasks"]}
    gpu_tasks = {t["name"]: t for t in gpu["tasks"]}
    assert list(gpu_tasks) == list(cpu_tasks)
    assert sorted(cpu_tasks) == sorted(CHECK_TASKS)
    one_image = 1.0 / CHECK_IMAGES + 1e-9
    for name, expected in cpu_tasks.items():
        got = gpu_tasks[name]
        assert got["n"] == expected["n"] == CHECK_IMAGES
        for role in ("dense", "pruned"):
            assert abs(got[role]["accuracy"] - expected[role]["accuracy"]) <= one_image, (name, role)
        for metric in ("accuracy_drop", "agreement"):  # both models' flips count: two images
            assert abs(got[metric] - expected[metric]) <= 2 * one_image, (name, metric)
