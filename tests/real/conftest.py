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
