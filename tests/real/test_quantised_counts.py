"""The real int8 MobileNetV2 (ONNX Model Zoo, QDQ + QLinear): its parameters are its weights.

The independent reference is its float parent in ../shared, a torchvision state dict made by
dequantising the very same int8 weights (batch norms identity, the bias folded into them): every
int8 weight and int32 bias is a float parameter there, and a weight dequantises to zero exactly
where its integer equals its zero point. The parent has one more kind of parameter, the batch
norms' weights (all ones), which the int8 graph does not hold.
"""

from __future__ import annotations

import torch

from prunegate.policy import ModelSpec
from prunegate.runners import LoadOptions, load_runner
from tests.real.conftest import shared_path


def test_the_int8_model_counts_its_weights_not_its_scales() -> None:
    import torchvision

    folder = shared_path("models", "imagenet-mobilenetv2")
    parent = torchvision.models.mobilenet_v2()
    parent.load_state_dict(torch.load(folder / "mobilenet_v2-float-from-int8.pth", weights_only=True), strict=True)
    norms = [p for m in parent.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in [m.weight]]
    expected = sum(p.numel() for p in parent.parameters()) - sum(p.numel() for p in norms)
    expected_nonzero = sum(int(p.count_nonzero()) for p in parent.parameters()) - sum(
        int(p.count_nonzero()) for p in norms
    )
    path = folder / "mobilenetv2-12-int8.onnx"
    runner = load_runner(
        ModelSpec(path=path.name),
        path,
        "models.pruned",
        LoadOptions(
            base_dir=folder, backend="onnx", device=torch.device("cpu"), allow_pickle=False, allow_fallback=False
        ),
    )
    record = runner.record
    assert (record.parameters, record.nonzero_parameters) == (expected, expected_nonzero)
    assert record.parameters > 3_400_000  # (it said 18,123 when only float initializers counted)
    assert record.quantisation == "QDQ + QLinear" and record.format == "onnx"
