"""Tests on the real data and models in ../shared (present in CI; skipped in a bare clone)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared"


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path} (../shared is provided in CI)")
    return path


def resnet20_dense():
    """akamaster's pretrained CIFAR-10 ResNet-20 in prunegate's own module, in eval mode."""
    import torch

    from prunegate.archs.cifar_resnet import resnet20

    checkpoint = shared_path("models", "akamaster-resnet-cifar10", "resnet20-12fca82f.th")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model = resnet20()
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()


CIFAR10_MEAN, CIFAR10_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # the akamaster models'
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_first(per_class: int):
    """The first `per_class` images of each class of cifar10-test-jpeg in file order (what
    data.limit = 10 x per_class selects), decoded by PIL and normalised by hand, as an NCHW float
    tensor, and their labels: an evaluation that shares no code with prunegate's data path."""
    import numpy as np
    import torch
    from PIL import Image

    root = shared_path("data", "cifar10-test-jpeg")
    images, labels = [], []
    for label, name in enumerate(CIFAR10_CLASSES):
        for file in sorted((root / name).glob("*.jpg"))[:per_class]:
            images.append(np.asarray(Image.open(file).convert("RGB"), dtype=np.float32) / 255.0)
            labels.append(label)
    x = (torch.from_numpy(np.stack(images)) - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    return x.permute(0, 3, 1, 2), torch.tensor(labels)
