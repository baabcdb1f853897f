"""A state dict's module runs in eval mode from the moment it is built (runners.torch.load_torch_module).

An arch builds its network in training mode. Before the fix, backend auto probed and exported it
in that mode: the probe's forward moved the batch norms' running statistics (inference_mode
allows the in-place update), so torch and the export agreed with each other and both were wrong
(the real MobileNetV2 state dict scored 29/200 instead of 171/200).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunegate.policy import ModelSpec
from prunegate.runners import LoadOptions, load_runner

ARCH = """
import torch

def build():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    )
"""


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_batch_norm_statistics_survive_loading_under_every_backend(tmp_path: Path, backend: str) -> None:
    (tmp_path / "arch.py").write_text(ARCH)
    namespace: dict = {}
    exec(ARCH, namespace)
    torch.manual_seed(0)
    reference = namespace["build"]()
    with torch.no_grad():
        norm = reference[1]
        norm.running_mean.uniform_(-2, 2)
        norm.running_var.uniform_(0.5, 3)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    options = LoadOptions(
        base_dir=tmp_path, backend=backend, device=torch.device("cpu"), allow_pickle=False, allow_fallback=False,
        input_size=16,
    )  # fmt: skip
    runner = load_runner(ModelSpec(path="w.pth", arch="arch.py:build"), tmp_path / "w.pth", "models.dense", options)
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = reference.eval()(x)
    torch.testing.assert_close(runner(x), expected, atol=1e-5, rtol=1e-4)
