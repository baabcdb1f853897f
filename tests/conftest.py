"""Shared fixtures: a tiny CNN and its saved forms, tiny datasets, and a policy writer.

Everything here is small on purpose (8x8 images, 3 classes, a few hundred parameters) so the
whole suite runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

# Tiny tensors gain nothing from threads, and on a busy shared CPU the spinning of a thread pool
# makes each tiny convolution hundreds of times slower.
torch.set_num_threads(1)

SIZE = 8  # input side of the tiny models and datasets
CLASSES = 3


class TinyNet(torch.nn.Module):
    """conv 3x3 stride 2 -> ReLU -> flatten -> linear. The flatten ties it to one input size."""

    def __init__(self, classes: int = 3, size: int = 8, channels: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(channels * (size // 2) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(torch.relu(self.conv(x)), 1))


def tiny_parameter_count(classes: int = CLASSES, size: int = SIZE, channels: int = 4) -> int:
    return channels * 3 * 9 + channels + channels * (size // 2) ** 2 * classes + classes


def _random_net(classes: int = CLASSES, seed: int = 0, size: int = SIZE) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(classes, size).eval()


def _colour_net(size: int = SIZE, jitter: float = 0.0, seed: int = 0) -> TinyNet:
    """A 3-class TinyNet that predicts the brightest colour channel: right on `colour_dataset`.

    `jitter` adds seeded noise to its weights, making a slightly different ("pruned") model."""
    net = TinyNet(3, size)
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.bias.zero_()
        for c in range(3):
            net.conv.weight[c, c, 1, 1] = 1.0  # channel c passes through (then ReLU)
        net.conv.weight[3, :, 1, 1] = 0.1
        net.head.weight.zero_()
        net.head.bias.zero_()
        cells = (size // 2) ** 2
        for c in range(3):
            net.head.weight[c, c * cells : (c + 1) * cells] = 1.0 / cells  # mean of channel c
        if jitter:
            generator = torch.Generator().manual_seed(seed)
            for p in net.parameters():
                p.add_(jitter * torch.randn(p.shape, generator=generator))
    return net.eval()


def _colour_dataset(n: int, size: int = SIZE, seed: int = 0, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images whose class is the brightest channel, with noise; labels cycle 0..K-1."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 90, size=(n, size, size, 3))
    for i, label in enumerate(labels):
        images[i, :, :, label % 3] += 130
    return images.astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="session")
def random_net() -> Callable[..., TinyNet]:
    """random_net(classes=3, seed=0, size=8) -> a seeded, randomly initialised TinyNet."""
    return _random_net


@pytest.fixture(scope="session")
def colour_net() -> Callable[..., TinyNet]:
    """colour_net(size=8, jitter=0.0, seed=0) -> a TinyNet that classifies `colour_dataset`."""
    return _colour_net


@pytest.fixture(scope="session")
def colour_dataset() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    return _colour_dataset


def _save_torchscript(model: torch.nn.Module, path: Path, size: int = SIZE) -> Path:
    traced = torch.jit.trace(model, torch.rand(2, 3, size, size))
    traced.save(str(path))
    return path


def _save_onnx(model: torch.nn.Module, path: Path, size: int = SIZE) -> Path:
    example = (torch.rand(2, 3, size, size),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                example,
                str(path),
                dynamo=False,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            )
        except TypeError:  # a torch without the `dynamo` switch: its default exporter
            torch.onnx.export(
                model,
                example,
                str(path),
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            )
    return path


def _save_export(model: torch.nn.Module, path: Path, size: int = SIZE) -> Path:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.rand(2, 3, size, size),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def corrupt_torchscript(source: Path, target: Path) -> None:
    """A TorchScript archive that stays a valid zip, but whose code members are garbage."""
    import zipfile

    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as broken:
        for item in original.infolist():
            data = original.read(item)
            if "/code/" in item.filename and item.filename.endswith(".py"):
                data = b"def forward(self, x):\n    return ((( not python\n"
            broken.writestr(item, data)


def _write_arch_file(folder: Path, name: str = "tiny_arch.py", classes: int = CLASSES, size: int = SIZE) -> Path:
    """A `file.py` with `build()` returning an untrained TinyNet: an `arch` for state dicts."""
    source = (
        "import torch\n\n\n"
        + inspect.getsource(TinyNet)
        + (f"\n\ndef build():\n    return TinyNet({classes}, {size})\n")
    )
    path = folder / name
    path.write_text(source)
    return path


@pytest.fixture(scope="session")
def save_torchscript() -> Callable[..., Path]:
    return _save_torchscript


@pytest.fixture(scope="session")
def save_onnx() -> Callable[..., Path]:
    return _save_onnx


@pytest.fixture(scope="session")
def save_export() -> Callable[..., Path]:
    return _save_export


@pytest.fixture(scope="session")
def write_arch_file() -> Callable[..., Path]:
    return _write_arch_file


def _write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture(scope="session")
def write_npz() -> Callable[..., Path]:
    """write_npz(path, images, labels) -> path (keys 'images' and 'labels')."""
    return _write_npz


def _policy_dict(
    dense: str = "dense.pt",
    pruned: str = "pruned.pt",
    data_file: str = "data.npz",
    rules: list[dict] | None = None,
    size: int = SIZE,
    **sections,
) -> dict:
    policy = {
        "version": 1,
        "name": "tiny",
        "models": {"dense": dense, "pruned": pruned, "input": {"size": size}},
        "data": {"test": {"format": "npz", "path": data_file}},
        "gate": {
            "rules": rules
            or [
                {"name": "clean drop", "tasks": "clean", "metric": "accuracy_drop", "max": 0.01},
                {"name": "clean agreement", "tasks": "clean", "metric": "agreement", "min": 0.9},
            ]
        },
        "runtime": {"device": "cpu", "workers": 0, "batch_size": 16},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(policy.get(key), dict):
            policy[key] = {**policy[key], **value}
        else:
            policy[key] = value
    return policy


def _write_policy(path: Path, policy: dict | None = None, **kwargs) -> Path:
    """Write `policy` (or `_policy_dict(**kwargs)`) as YAML to `path`."""
    path.write_text(yaml.safe_dump(policy if policy is not None else _policy_dict(**kwargs), sort_keys=False))
    return path


@pytest.fixture(scope="session")
def policy_dict() -> Callable[..., dict]:
    """policy_dict(dense=, pruned=, data_file=, rules=, size=, **sections) -> a valid policy mapping;
    dict-valued sections are merged into the defaults (e.g. runtime={"batch_size": 3})."""
    return _policy_dict


@pytest.fixture(scope="session")
def write_policy() -> Callable[..., Path]:
    """write_policy(path, policy=None, **policy_dict kwargs) -> path."""
    return _write_policy


@pytest.fixture
def gate_case(tmp_path: Path) -> Callable[..., Path]:
    """A folder with a colour dataset, a dense and a pruned TorchScript model and a policy.

    gate_case(pruned="same" | "zero" | "jitter", n=12, **policy_dict kwargs) -> policy path."""

    def make(pruned: str = "same", n: int = 12, **policy_kwargs) -> Path:
        images, labels = _colour_dataset(n)
        _write_npz(tmp_path / "data.npz", images, labels)
        dense_net = _colour_net()
        _save_torchscript(dense_net, tmp_path / "dense.pt")
        if pruned == "same":
            pruned_net = _colour_net()
        elif pruned == "zero":
            pruned_net = _colour_net()
            with torch.no_grad():
                for p in pruned_net.parameters():
                    p.zero_()
        else:
            pruned_net = _colour_net(jitter=0.05, seed=1)
        _save_torchscript(pruned_net, tmp_path / "pruned.pt")
        return _write_policy(tmp_path / "policy.yaml", **policy_kwargs)

    return make


# --- reports for the renderers -----------------------------------------------------------------


def _sample_report(
    *,
    failing: bool = True,
    extras: bool = True,
    corruptions: tuple[str, ...] = ("fog", "contrast"),
    severities: tuple[int, ...] = (1, 3, 5),
    classes: int = 3,
    name: str = "sample",
    beyond: bool = False,
):
    """A synthetic but consistent Report: clean, two noise levels and `corruptions` x `severities`.

    failing: the pruned model loses agreement under noise (rule 'noise agreement' fails) and one
    rule is undecided. extras: the optional fields (intervals, bounds, per-class counts, examples,
    corruption summary) are filled, as a report from the full engine has them. beyond: the
    metrics beyond top-1 (issue 19: top-5, ECE, NLL, Brier, KL, loyalty, selective risk at 0.8
    and 0.9, the subgroups warm and cool, reliability bins) are filled, and four rules ask for
    some: ece_increase (a negative min), top5_drop, selective_risk_increase at coverage 0.9 and
    group_accuracy_drop."""
    import fnmatch

    from prunegate.report.schema import Report

    def task(name: str, kind: str, group: str, dense: float, pruned: float, agreement: float, n: int = 300) -> dict:
        record = {
            "name": name,
            "kind": kind,
            "group": group,
            "source": "test",
            "n": n,
            "dense": {"accuracy": dense, "correct": round(dense * n), "nonfinite": 0},
            "pruned": {"accuracy": pruned, "correct": round(pruned * n), "nonfinite": 0},
            "accuracy_drop": dense - pruned,
            "agreement": agreement,
            "softmax_l2": 0.05 + (1 - agreement) / 2,
            "softmax_linf": 0.04,
        }
        if extras:
            per_class = [n // classes] * classes
            record.update(
                {
                    "newly_wrong": (dense - pruned) + 0.01,
                    "newly_right": 0.01,
                    "mcnemar_p": 0.03,
                    "error_consistency": 0.6,
                    "class_recall_drop": (dense - pruned) + 0.05,
                    "worst_class": {
                        "label": 1,
                        "name": "green",
                        "n": n // classes,
                        "dense_recall": dense,
                        "pruned_recall": pruned - 0.05,
                        "drop": (dense - pruned) + 0.05,
                    },
                    "flips": {"newly_wrong": round(((dense - pruned) + 0.01) * n), "newly_right": round(0.01 * n)},
                    "intervals": {
                        "accuracy_drop": {
                            "low": dense - pruned - 0.02,
                            "high": dense - pruned + 0.02,
                            "method": "newcombe",
                        },
                        "agreement": {"low": agreement - 0.03, "high": min(1.0, agreement + 0.03), "method": "wilson"},
                    },
                    "class_recall": {
                        "n": per_class,
                        "dense_correct": [round(dense * k) for k in per_class],
                        "pruned_correct": [round(pruned * k) - (5 if i == 1 else 0) for i, k in enumerate(per_class)],
                    },
                    "examples": [
                        {"index": i, "draw": 0, "label": i % classes, "dense": i % classes, "pruned": (i + 1) % classes}
                        for i in (0, 4)
                    ],
                }
            )
        if beyond:
            more = _beyond_top1(dense, pruned, agreement, n)
            for side, fields in more.pop("sides").items():
                record[side].update(fields)
            record.setdefault("intervals", {}).update(more.pop("intervals_beyond"))
            record.update(more)
        return record

    drop = 0.06 if failing else 0.0
    tasks = [task("clean", "clean", "clean", 0.9, 0.895, 0.97)]
    tasks += [
        task(
            f"noise/uniform/{level:g}",
            "noise",
            "noise",
            0.85 - level,
            0.85 - level - drop * level * 10,
            0.95 - drop * level * 5 - level / 10,
        )
        for level in (0.1, 0.3)
    ]
    for corruption in corruptions:
        for s in severities:
            tasks.append(
                task(
                    f"corruption/{corruption}/{s}",
                    "corruption",
                    corruption,
                    0.88 - 0.08 * s,
                    0.88 - 0.08 * s - drop * s / 5,
                    0.95 - 0.03 * s,
                )
            )

    def rule(name, metric, globs, aggregate, comparison, threshold, status=None, coverage=None) -> dict:
        def value_of(t):
            if coverage is not None:
                return next(r["increase"] for r in t["selective_risk"] if r["coverage"] == coverage)
            return t[metric]

        chosen = [t for t in tasks if any(fnmatch.fnmatchcase(t["name"], g) for g in globs)]
        values = [value_of(t) for t in chosen]
        ok = (lambda v: v <= threshold + 1e-12) if comparison == "max" else (lambda v: v >= threshold - 1e-12)
        per_task = [{"task": t["name"], "value": v, "passed": ok(v)} for t, v in zip(chosen, values)]
        value = (
            (max if comparison == "max" else min)(values)
            if aggregate == "each"
            else {"min": min, "max": max}.get(aggregate, lambda xs: sum(xs) / len(xs))(values)
        )
        passed = ok(value) and status != "undecided"
        record = {
            "name": name,
            "metric": metric,
            "tasks": globs,
            "aggregate": aggregate,
            "comparison": comparison,
            "threshold": threshold,
            "value": value,
            "passed": passed,
            "per_task": per_task,
            "status": status or ("pass" if passed else "fail"),
            "coverage": coverage,
        }
        if extras:
            record.update(
                {
                    "confidence": 0.95,
                    "bound": value + (0.01 if comparison == "max" else -0.01),
                    "interval": {"low": value - 0.02, "high": value + 0.02, "method": "newcombe"},
                }
            )
            if status == "undecided":
                record["samples_needed"] = 4200
        return record

    rules = [
        rule("clean accuracy", "accuracy_drop", ["clean"], "each", "max", 0.01),
        rule("noise agreement", "agreement", ["noise/*"], "each", "min", 0.9),
    ]
    if corruptions:
        rules.append(
            rule(
                "corruption drop",
                "accuracy_drop",
                ["corruption/*"],
                "mean",
                "max",
                0.05,
                status="undecided" if failing else None,
            )
        )
    if beyond:
        rules += [
            rule("calibration", "ece_increase", ["clean"], "each", "min", -0.05),
            rule("top-5", "top5_drop", ["clean"], "each", "max", 0.02),
            rule("selective risk", "selective_risk_increase", ["noise/*"], "each", "max", 0.05, coverage=0.9),
            rule("subgroups", "group_accuracy_drop", ["clean"], "each", "max", 0.05),
        ]
    verdict = "pass" if all(r["passed"] for r in rules) else "fail"
    model = {
        "sha256": "ab" * 32,
        "format": "onnx",
        "parameters": 1000,
        "backend": "onnx",
        "device": "cpu",
        "provider": "CPUExecutionProvider",
    }
    document = {
        "version": 1,
        "name": name,
        "models": {"dense": "dense.onnx", "pruned": "pruned.onnx", "input": {"size": 8}},
        "data": {"test": {"format": "npz", "path": "data.npz"}},
        "suite": {"seed": 0, "noise": [{"kind": "uniform", "levels": [0.1, 0.3]}]},
        "gate": {
            "rules": [
                {
                    "name": r["name"],
                    "tasks": r["tasks"],
                    "metric": r["metric"],
                    "aggregate": r["aggregate"],
                    r["comparison"]: r["threshold"],
                    **({"coverage": r["coverage"]} if r["coverage"] is not None else {}),
                }
                for r in rules
            ]
        },
    }
    if beyond:
        document["data"]["groups"] = {"warm": ["red"], "cool": ["green", "blue"]}
    if corruptions:
        document["suite"]["corruptions"] = {
            "preset": "cifar10-c",
            "names": list(corruptions),
            "severities": list(severities),
        }
    report = {
        "tool": {"name": "prunegate", "version": "0.1.0"},
        "verdict": verdict,
        "policy": {"name": name, "path": "/nowhere/policy.yaml", "sha256": "cd" * 32, "document": document},
        "models": {
            "dense": {**model, "path": "/nowhere/dense.onnx", "nonzero_parameters": 1000, "sparsity": 0.0},
            "pruned": {
                **model,
                "path": "/nowhere/pruned.onnx",
                "nonzero_parameters": 100,
                "sparsity": 0.9,
                "sha256": "ef" * 32,
            },
        },
        "data": [
            {
                "name": "test",
                "format": "npz",
                "path": "/nowhere/data.npz",
                "size": 300,
                "used": 300,
                "sha256": "01" * 32,
                "classes": ["red", "green", "blue"][:classes] if classes <= 3 else None,
            }
        ],
        "seed": 0,
        "options": {"device": "cpu", "backend": "onnx", "batch_size": 64, "limit": None},
        "tasks": tasks,
        "rules": rules,
        "environment": {"python": "3.11", "torch": "2.x", "device": "cpu"},
        "timing": {
            "started": "2026-01-02T03:04:05+00:00",
            "duration_s": 12.5,
            "data_s": 1.0,
            "shift_s": 2.0,
            "models_s": 9.0,
        },
    }
    if extras:
        report["confidence"] = 0.95
    if extras and corruptions:
        report["corruption_summary"] = {
            "per_corruption": [
                {
                    "name": c,
                    "severities": list(severities),
                    "dense_error": 1.2,
                    "pruned_error": 1.3,
                    "ce": 1.3 / 1.2,
                    "relative_ce": 1.1,
                }
                for c in corruptions
            ],
            "mce": 1.3 / 1.2,
            "relative_mce": 1.1,
        }
    return Report.model_validate(report)


def _beyond_top1(dense: float, pruned: float, agreement: float, n: int) -> dict:
    """A synthetic task's metrics beyond top-1 (issue 19), consistent with its accuracies: the
    pruned model a little worse calibrated, its risk and its cool group's accuracy a little worse."""
    lost = dense - pruned

    def risk(coverage: float, scale: float) -> dict:
        d, p = scale * (1 - dense), scale * (1 - pruned)
        return {"coverage": coverage, "dense": d, "pruned": p, "increase": p - d}

    def bins(miscalibration: float) -> dict:
        counts = [0] * 10 + [n // 20, n // 10, n // 10, n // 5, n // 5]
        counts.append(n - sum(counts))
        confidence = [None if not k else (i + 0.5) / 15 if i < 15 else 1.0 for i, k in enumerate(counts)]
        accuracy = [None if c is None else max(0.0, c - miscalibration) for c in confidence]
        return {"n": counts, "confidence": confidence, "accuracy": accuracy}

    groups = [
        {"name": "warm", "n": n // 3, "dense_accuracy": dense, "pruned_accuracy": pruned, "drop": lost},
        {
            "name": "cool",
            "n": n - n // 3,
            "dense_accuracy": dense,
            "pruned_accuracy": pruned - 0.02,
            "drop": lost + 0.02,
        },
    ]
    values = {
        "top5_drop": lost / 2,
        "ece_increase": 0.01 + lost / 2,
        "nll_increase": 0.03 + 2 * lost,
        "brier_increase": 0.005 + lost,
        "kl_divergence": 0.02 + (1 - agreement) / 4,
        "probability_loyalty": 0.85 + agreement / 10,
        "group_accuracy_drop": lost + 0.02,
    }
    selective = [risk(0.8, 0.5), risk(0.9, 0.7)]
    intervals = {k: {"low": v - 0.01, "high": v + 0.01, "method": "bootstrap"} for k, v in values.items()}
    for r in selective:
        intervals[f"selective_risk_increase@{r['coverage']:g}"] = {
            "low": r["increase"] - 0.01,
            "high": r["increase"] + 0.01,
            "method": "bootstrap",
        }
    return {
        **values,
        "selective_risk": selective,
        "groups": groups,
        "worst_group": groups[1],
        "calibration": {"bins": 15, "dense": bins(0.02), "pruned": bins(0.02 + lost + 0.03)},
        "intervals_beyond": intervals,
        "sides": {
            "dense": {"top5": min(1.0, dense + 0.08), "ece": 0.03, "nll": 0.35, "brier": 0.15},
            "pruned": {
                "top5": min(1.0, dense + 0.08) - lost / 2,
                "ece": 0.04 + lost / 2,
                "nll": 0.38 + 2 * lost,
                "brier": 0.155 + lost,
            },
        },
    }


@pytest.fixture(scope="session")
def sample_report() -> Callable[..., object]:
    """sample_report(failing=True, extras=True, corruptions=("fog", "contrast"), severities=(1, 3, 5), classes=3)
    -> a consistent synthetic Report for the renderers (see `_sample_report`)."""
    return _sample_report


def _write_report(path: Path, report) -> Path:
    """Write `report` as an unsigned DSSE envelope (as `check` does without a key)."""
    from prunegate.report.attest import envelope, envelope_json, statement_bytes

    path.write_text(envelope_json(envelope(statement_bytes(report))))
    return path


@pytest.fixture(scope="session")
def write_report() -> Callable[..., Path]:
    """write_report(path, report) -> path: an unsigned report file."""
    return _write_report


# --- segmentation (issue 15): a per-pixel colour classifier on tiny segmentation-folder data ---------

SEG_SIZE, SEG_CLASSES, VOID = 16, 3, 255


class PixelNet(torch.nn.Module):
    """Logits [N, 3, H, W]: each pixel's colour channels, scaled (class = the brightest channel)."""

    def __init__(self, dropped: int | None = None):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, SEG_CLASSES, 1)
        with torch.no_grad():
            self.conv.weight.copy_(4.0 * torch.eye(SEG_CLASSES).view(SEG_CLASSES, SEG_CLASSES, 1, 1))
            self.conv.bias.zero_()
            if dropped is not None:  # "pruned": that class's weight zeroed, so it is never the brightest
                self.conv.weight[dropped] = 0.0
                self.conv.bias[dropped] = -10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def write_segmentation_folder(folder: Path, images: int = 6, seed: int = 0, size: int = SEG_SIZE) -> list[np.ndarray]:
    """images/<i>.png coloured by masks/<i>.png (quadrants of random classes, a void border row);
    returns the masks."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    masks = []
    for i in range(images):
        mask = np.zeros((size, size), dtype=np.uint8)
        half = size // 2
        for r in range(2):
            for c in range(2):
                mask[r * half : (r + 1) * half, c * half : (c + 1) * half] = rng.integers(0, SEG_CLASSES)
        mask[0, :] = VOID
        picture = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
        for k in range(SEG_CLASSES):
            picture[..., k][mask == k] += 180
        PIL.Image.fromarray(picture).save(folder / "images" / f"img{i:02d}.png")
        PIL.Image.fromarray(mask, mode="L").save(folder / "masks" / f"img{i:02d}.png")
        masks.append(mask)
    return masks


def segmentation_policy(folder: Path, rules: list[dict] | None = None, **sections) -> Path:
    policy = {
        "version": 1,
        "name": "tiny-segmentation",
        "task": "segmentation",
        "models": {
            "dense": "dense.pt",
            "pruned": "pruned.pt",
            "input": {"size": SEG_SIZE, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        },
        "data": {"test": {"format": "segmentation-folder", "path": "voc"}},
        "suite": {"seed": 1, "corruptions": {"names": ["contrast"], "severities": [1]}},
        "gate": {
            "rules": rules
            or [
                {"name": "miou", "tasks": "*", "metric": "miou_drop", "max": 0.05},
                {"name": "agreement", "tasks": "clean", "metric": "pixel_agreement", "min": 0.5},
            ]
        },
        "runtime": {"device": "cpu", "workers": 0, "batch_size": 4},
        **sections,
    }
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def _segmentation_case(folder: Path) -> list[np.ndarray]:
    masks = write_segmentation_folder(folder / "voc")
    for name, net in (("dense", PixelNet()), ("pruned", PixelNet(dropped=2))):
        torch.jit.trace(net.eval(), torch.rand(2, 3, SEG_SIZE, SEG_SIZE)).save(str(folder / f"{name}.pt"))
    return masks


@pytest.fixture
def segmentation_case(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """(folder, masks): segmentation-folder data in voc/, a dense and a pruned (class 2 lost)
    TorchScript PixelNet; write a policy with segmentation_policy(folder)."""
    return tmp_path, _segmentation_case(tmp_path)


@pytest.fixture(scope="session")
def segmentation_report(tmp_path_factory: pytest.TempPathFactory):
    """(Report, folder): a real `prunegate check` report of the tiny segmentation pair (clean and
    contrast 1; the mIoU rule fails), made once per session; the folder holds its policy and data."""
    from prunegate.cli import main
    from prunegate.report.attest import read_envelope
    from prunegate.report.schema import Report

    folder = tmp_path_factory.mktemp("segmentation-report")
    _segmentation_case(folder)
    report = folder / "report.json"
    code = main(["check", "-p", str(segmentation_policy(folder)), "-o", str(report), "-q"])
    assert code == 1, "the tiny segmentation pair must fail its mIoU rule"
    return Report.model_validate(read_envelope(report.read_text(), str(report))[2]["predicate"]), folder


# --- comparing reports ---------------------------------------------------------------------------

# Numbers computed from the softmax probabilities themselves (not from which class wins): they
# follow the logits' last bits (another batch size, inputs rounded to uint8 and read back).
FROM_PROBABILITIES = (".softmax_", "ece", "nll", "brier", ".kl_divergence", ".probability_loyalty", ".calibration.")


def assert_same_report(value, reference, path: str = "") -> None:
    """Equal, but numbers computed from the probabilities only to a relative 1e-5."""
    assert type(value) is type(reference), path
    if isinstance(value, dict):
        assert value.keys() == reference.keys(), path
        for key in value:
            assert_same_report(value[key], reference[key], f"{path}.{key}")
    elif isinstance(value, list):
        assert len(value) == len(reference), path
        for i, (a, b) in enumerate(zip(value, reference)):
            assert_same_report(a, b, f"{path}.{i}")
    elif isinstance(value, float) and any(name in path for name in FROM_PROBABILITIES):
        assert value == pytest.approx(reference, rel=1e-5, abs=1e-7), path
    else:
        assert value == reference, path
