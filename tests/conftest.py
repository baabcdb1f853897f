"""Shared fixtures: a tiny CNN and its saved forms, tiny datasets, and a policy writer.

Everything here is small on purpose (8x8 images, 3 classes, a few hundred parameters) so the
whole suite runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
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
            torch.onnx.export(model, example, str(path), dynamo=False, input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
        except TypeError:  # a torch without the `dynamo` switch: its default exporter
            torch.onnx.export(model, example, str(path), input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return path


def _save_export(model: torch.nn.Module, path: Path, size: int = SIZE) -> Path:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.rand(2, 3, size, size),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def _write_arch_file(folder: Path, name: str = "tiny_arch.py", classes: int = CLASSES, size: int = SIZE) -> Path:
    """A `file.py` with `build()` returning an untrained TinyNet: an `arch` for state dicts."""
    source = "import torch\n\n\n" + inspect.getsource(TinyNet) + (
        f"\n\ndef build():\n    return TinyNet({classes}, {size})\n"
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
    rules: Optional[list[dict]] = None,
    size: int = SIZE,
    **sections,
) -> dict:
    policy = {
        "version": 1,
        "name": "tiny",
        "models": {"dense": dense, "pruned": pruned, "input": {"size": size}},
        "data": {"test": {"format": "npz", "path": data_file}},
        "gate": {"rules": rules or [
            {"name": "clean drop", "tasks": "clean", "metric": "accuracy_drop", "max": 0.01},
            {"name": "clean agreement", "tasks": "clean", "metric": "agreement", "min": 0.9},
        ]},
        "runtime": {"device": "cpu", "workers": 0, "batch_size": 16},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(policy.get(key), dict):
            policy[key] = {**policy[key], **value}
        else:
            policy[key] = value
    return policy


def _write_policy(path: Path, policy: Optional[dict] = None, **kwargs) -> Path:
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
