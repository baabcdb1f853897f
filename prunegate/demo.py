"""The embedded demo: builds its own data and models, offline, in under a minute on one CPU core.

The data is a procedurally generated 10-class image set (five shapes, five striped or checked
textures; random colours, contrast, position, size, rotation and background). A small CNN learns
it to ~99.8 % in five epochs. Iterative global magnitude pruning (50 %, 90 %, 95 %, each step
followed by a short masked fine-tune, as the paper retrains) gives pruned models that all keep
the dense model's clean test accuracy, while the heavily pruned ones drift away from its
predictions under input noise: the point of "Lost in Pruning" (Liebenwein et al., MLSys 2021).
prunegate/policies/demo.yaml is tuned to this: pruned-50 passes it, pruned-95 fails its noise rule.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunegate.cpu_pool import op_threads
from prunegate.files import write_atomic
from prunegate.onnx_proto import write_normalisation
from prunegate.prune import count_parameters, global_magnitude_prune, prunable_weights

if TYPE_CHECKING:  # pragma: no cover
    from prunegate.report.schema import Report

log = logging.getLogger(__name__)

CLASSES = (
    "disk", "square", "triangle", "ring", "cross",
    "horizontal stripes", "vertical stripes", "diagonal stripes", "antidiagonal stripes", "checks",
)  # fmt: skip
SIZE = 32
MEAN = (0.5, 0.5, 0.5)  # the normalisation the demo models expect; prunegate/policies/demo.yaml repeats it
STD = (0.5, 0.5, 0.5)
WIDTHS = (16, 32, 64, 128)  # channels of the demo CNN's conv layers
_GRATING_ANGLE = {5: 90.0, 6: 0.0, 7: 45.0, 8: 135.0}  # direction the stripes vary along, degrees


def _soft(sdf: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Antialiased coverage of a signed distance field (negative inside), edge ~1 pixel wide."""
    return (0.5 - sdf / width).clamp(0.0, 1.0)


def _coverage(label: int, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Foreground coverage in [0, 1], [m, S, S], for m images of one class at pixel coords x, y."""
    m = x.shape[0]
    rand = lambda lo, hi: lo + (hi - lo) * torch.rand(m, 1, 1, generator=g)  # noqa: E731
    cx, cy, scale = rand(-0.3, 0.3), rand(-0.3, 0.3), rand(0.5, 0.75)
    theta = rand(0.0, 2 * math.pi)
    dx, dy = x - cx, y - cy
    u = (dx * torch.cos(theta) + dy * torch.sin(theta)) / scale
    v = (-dx * torch.sin(theta) + dy * torch.cos(theta)) / scale
    width = (2.0 / SIZE) / scale  # one pixel in shape units
    r = torch.sqrt(u * u + v * v)
    if label == 0:  # disk
        return _soft(r - 0.85, width)
    if label == 1:  # square
        return _soft(torch.maximum(u.abs(), v.abs()) - 0.8, width)
    if label == 2:  # equilateral triangle, vertices on the unit circle
        c = math.cos(math.pi / 6)
        return _soft(torch.maximum(torch.maximum(-v - 0.5, 0.5 * v + c * u - 0.5), 0.5 * v - c * u - 0.5), width)
    if label == 3:  # ring
        return _soft((r - 0.72).abs() - 0.2, width)
    if label == 4:  # cross
        bar = lambda a, b: torch.maximum(a.abs() - 0.25, b.abs() - 0.95)  # noqa: E731
        return _soft(torch.minimum(bar(u, v), bar(v, u)), width)
    # Textures: a square patch filled with a square-wave grating of fixed orientation (+-12 deg).
    patch = _soft(torch.maximum(u.abs(), v.abs()) - 1.0, width)
    if label == 9:  # checks: any orientation
        angle = rand(0.0, math.pi)
    else:
        angle = torch.deg2rad(_GRATING_ANGLE[label] + rand(-12.0, 12.0))
    freq = 2 * math.pi / (rand(4.0, 7.0) * 2.0 / SIZE)  # period 4-7 pixels
    along = freq * (x * torch.cos(angle) + y * torch.sin(angle)) + rand(0.0, 2 * math.pi)
    wave = torch.sin(along)
    if label == 9:
        wave = wave * torch.sin(freq * (-x * torch.sin(angle) + y * torch.cos(angle)) + rand(0.0, 2 * math.pi))
        wave = wave.sign() * wave.abs().sqrt()  # sharpen the checks like the stripes below
    return patch * (0.5 + 0.5 * (3.0 * wave).clamp(-1.0, 1.0))


def make_demo_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (uint8 NHWC [n, 32, 32, 3]) and labels (int64 [n]), balanced over 10 classes.

    Deterministic in (n, seed). Each image: a background colour with a soft gradient, one
    foreground shape or texture in a tinted colour whose grey level differs from the
    background's by about 0.3-0.6, and a little sensor noise (sigma 0.02).
    """
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=g)]
    coords = (torch.arange(SIZE, dtype=torch.float32) + 0.5) * (2.0 / SIZE) - 1.0
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    cover = torch.zeros(n, SIZE, SIZE)
    for label in range(len(CLASSES)):
        idx = (labels == label).nonzero().flatten()
        if len(idx):
            cover[idx] = _coverage(label, x.expand(len(idx), -1, -1), y.expand(len(idx), -1, -1), g)

    rand = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(n, *shape, generator=g)  # noqa: E731
    bg_level = rand(0.1, 0.9, 1)
    gap = rand(0.3, 0.6, 1) * torch.where(torch.rand(n, 1, generator=g) < 0.5, -1.0, 1.0)
    fg_level = bg_level + gap
    fg_level = torch.where((fg_level < 0.05) | (fg_level > 0.95), bg_level - gap, fg_level).clamp(0.02, 0.98)
    bg = bg_level + rand(-0.15, 0.15, 3)  # [n, 3]: grey level plus a tint
    fg = fg_level + rand(-0.15, 0.15, 3)
    tilt = rand(0.0, 2 * math.pi, 1, 1)
    gradient = rand(0.0, 0.12, 1, 1) * (x * torch.cos(tilt) + y * torch.sin(tilt))  # [n, S, S]
    # Composite in NHWC, in place where possible: at 10^4 images every full-size pass counts.
    img = torch.randn(n, SIZE, SIZE, 3, generator=g).mul_(0.02)  # sensor noise
    img.add_(gradient[..., None]).add_(bg[:, None, None, :])
    img.addcmul_(cover[..., None], (fg - bg)[:, None, None, :])
    images = img.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return images.numpy(), labels.to(torch.int64).numpy()


# --- model and training ----------------------------------------------------------------------


def demo_net(widths: Sequence[int] = WIDTHS) -> nn.Module:
    """conv-BN-ReLU stages, the first three with stride 2 (32 -> 16 -> 8 -> 4 pixels), then a
    global max pool ("is the feature anywhere": shapes are told apart by corners and curvature)
    and a linear classifier. Strided convs instead of pooling keep CPU training cheap."""
    layers: list[nn.Module] = []
    cin = 3
    for i, cout in enumerate(widths):
        stride = 2 if i < 3 else 1
        layers += [nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(cin, len(CLASSES)))


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images -> the models' input: normalised float NCHW (channels-last in memory)."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def _fit(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    keep_zeros: bool,
) -> nn.Module:
    """AdamW with a one-cycle schedule, in place; with keep_zeros, zero weights stay zero."""
    x, y = to_input(images), torch.as_tensor(labels, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    masks = [(w, w != 0) for _, w in prunable_weights(model)] if keep_zeros else []
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.25)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        total = torch.zeros(())
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for w, mask in masks:  # AdamW moves zero weights too (momentum, decay): re-mask
                    w.mul_(mask)
                total += loss.detach() * len(idx)
        log.debug("epoch %d/%d: loss %.4f", epoch + 1, epochs, float(total) / len(x))
    return model.eval()


def train_demo_model(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 5,
    widths: Sequence[int] = WIDTHS,
    lr: float = 4e-3,
    batch_size: int = 128,
    seed: int = 0,
    threads: int = 1,
) -> nn.Module:
    """Train `demo_net(widths)` from scratch on uint8 NHWC images; returns it in eval mode.

    One thread by default: bitwise repeatable on a machine whatever its core count, and on
    two shared cores a second thread made training several times slower, not faster
    (its barrier waits on a core that another process holds).
    """
    with op_threads(threads), torch.random.fork_rng(devices=[]):  # seed the init, leave the caller's RNG
        torch.manual_seed(seed)
        model = demo_net(widths).to(memory_format=torch.channels_last)
        return _fit(model, images, labels, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, keep_zeros=False)


def finetune_pruned(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 1,
    lr: float = 3e-3,
    batch_size: int = 128,
    seed: int = 0,
    threads: int = 1,
) -> nn.Module:
    """Masked fine-tune, in place: the zeros of the conv/linear weights (the masks) stay zero."""
    with op_threads(threads):
        return _fit(model, images, labels, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, keep_zeros=True)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits for normalised NCHW input, in eval mode."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


# --- export and the whole build --------------------------------------------------------------


def export_onnx(model: nn.Module, path: Path) -> None:
    """ONNX with a dynamic batch: input "input" (normalised float NCHW), output "logits"."""
    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
        )  # fmt: skip
    write_normalisation(path, MEAN, STD)  # so that `policy init --dense` reads it


@dataclass(frozen=True)
class PruneStep:
    """One step of iterative pruning: prune the previous model to `ratio`, then fine-tune."""

    ratio: float
    epochs: int
    lr: float


# Iterative prune-and-retrain as in the paper: each step starts from the previous pruned model
# (straight from 50 % to 95 % recovers clean accuracy less well for the same epochs).
# The 50 % step barely needs retraining (a gentle one keeps it close to its parent); 95 % does.
DEFAULT_STEPS = (PruneStep(0.5, 1, 1e-3), PruneStep(0.9, 2, 3e-3), PruneStep(0.95, 4, 3e-3))


def pruned_name(ratio: float) -> str:
    """The demo's name of the model pruned to `ratio`: 0.5 -> "pruned-50"."""
    return f"pruned-{round(ratio * 100):d}"


@dataclass
class DemoAssets:
    """What `build_demo` wrote, and how each model did on the clean test split."""

    root: Path
    test_data: Path  # npz: images uint8 NHWC, labels int64
    dense: Path
    pruned: dict[float, Path]  # prune ratio -> ONNX file
    accuracy: dict[str, float] = field(default_factory=dict)  # model name -> clean test accuracy
    parameters: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (total, nonzero)
    seconds: float = 0.0
    models: dict[str, nn.Module] = field(default_factory=dict, repr=False)  # the torch models


def build_demo(
    out_dir: Path,
    seed: int = 0,
    *,
    n_train: int = 8000,
    n_test: int = 2000,
    epochs: int = 5,
    widths: Sequence[int] = WIDTHS,
    steps: Sequence[PruneStep] = DEFAULT_STEPS,
    threads: int = 1,
) -> DemoAssets:
    """Write out_dir/data/test.npz and out_dir/models/{dense,pruned-NN}.onnx.

    Train and test splits are drawn with different seeds; only the test split is written.
    The ONNX models take normalised input: (x / 255 - MEAN) / STD, NCHW float32.
    Deterministic for a seed on a given machine (`threads` intra-op threads, 1 by default).
    """
    with op_threads(threads):
        return _build(Path(out_dir), seed, n_train, n_test, epochs, tuple(widths), tuple(steps), threads)


def _build(
    out_dir: Path,
    seed: int,
    n_train: int,
    n_test: int,
    epochs: int,
    widths: tuple[int, ...],
    steps: tuple[PruneStep, ...],
    threads: int,
) -> DemoAssets:
    t0 = time.perf_counter()
    train_x, train_y = make_demo_dataset(n_train, seed=2 * seed)
    test_x, test_y = make_demo_dataset(n_test, seed=2 * seed + 1)
    test_path = out_dir / "data" / "test.npz"
    test_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(test_path, images=test_x, labels=test_y)  # noisy pixels barely compress
    log.info("data: %d train, %d test images (%.1fs)", n_train, n_test, time.perf_counter() - t0)

    model = train_demo_model(train_x, train_y, epochs=epochs, widths=widths, seed=seed, threads=threads)
    models = {"dense": model}
    log.info("dense: trained %d epochs (%.1fs)", epochs, time.perf_counter() - t0)
    for i, step in enumerate(steps, 1):
        model = global_magnitude_prune(model, step.ratio)
        if step.epochs:
            finetune_pruned(model, train_x, train_y, epochs=step.epochs, lr=step.lr, seed=seed + i, threads=threads)
        models[pruned_name(step.ratio)] = model
        log.info("%s: pruned, fine-tuned %d epochs (%.1fs)", pruned_name(step.ratio), step.epochs,
                 time.perf_counter() - t0)  # fmt: skip

    paths = {name: out_dir / "models" / f"{name}.onnx" for name in models}
    pruned = {step.ratio: paths[pruned_name(step.ratio)] for step in steps}
    assets = DemoAssets(out_dir, test_path, paths["dense"], pruned, models=models)
    test_in = to_input(test_x)
    for name, net in models.items():
        export_onnx(net, paths[name])
        assets.accuracy[name] = float((predict(net, test_in).argmax(1).numpy() == test_y).mean())
        assets.parameters[name] = count_parameters(net)
        log.info("%s: clean accuracy %.4f, %d of %d parameters nonzero", name, assets.accuracy[name],
                 assets.parameters[name][1], assets.parameters[name][0])  # fmt: skip
    assets.seconds = time.perf_counter() - t0
    log.info("demo assets built in %.1fs", assets.seconds)
    return assets


# --- the demo: build the assets, then gate each pruned copy with prunegate/policies/demo.yaml ----------

DEMO_POLICY = Path(__file__).resolve().parent / "policies" / "demo.yaml"


@dataclass
class DemoResult:
    """What `run_demo` built and what the gate decided for each pruned model (mildest first)."""

    assets: DemoAssets
    policy: Path  # the demo policy, copied into the output folder
    reports: list[tuple[str, Report]]  # (model name, its report)
    ratios: dict[str, float]  # model name -> prune ratio


def run_demo(out_dir: Path, *, sanity_check: bool = True, **build_options: Any) -> DemoResult:
    """Build the demo's data and models in `out_dir` (with its policy, out_dir/policy.yaml) and gate
    each pruned model against the dense one. Writes no report: the caller does.
    `build_options` go to `build_demo` (tests make a smaller demo); `sanity_check`: run_check's
    (a demo trained too briefly to learn is at chance)."""
    from prunegate.check import Overrides, apply_overrides, run_check
    from prunegate.policy import load_policy

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assets = build_demo(out_dir, **build_options)
    policy_path = out_dir / "policy.yaml"
    write_atomic(policy_path, DEMO_POLICY.read_text(encoding="utf-8"))
    policy = load_policy(policy_path)
    result = DemoResult(assets, policy_path, [], {})
    for ratio, pruned_path in sorted(assets.pruned.items()):
        name = pruned_name(ratio)
        overridden = apply_overrides(policy, Overrides(dense=assets.dense, pruned=pruned_path))
        report = run_check(overridden, sanity_check=sanity_check)
        result.reports.append((name, report))
        result.ratios[name] = ratio
    return result
