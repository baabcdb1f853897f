"""`prunegate prune --scope layer --keep-depthwise` on the real MobileNetV2 whose batch norms are
folded into its convs: per-layer magnitude pruning keeps it working where the global threshold
(the paper's WT) does not. Evaluated with torchvision's own transforms, not through prunegate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunegate.cli import main

from .conftest import shared_path

ARCH = "torchvision.models:mobilenet_v2"


@pytest.fixture(scope="module")
def photos() -> tuple[torch.Tensor, torch.Tensor]:
    """The 200 ImageNet photos, resized to 256, centre-cropped to 224, normalised; their labels."""
    from PIL import Image
    from torchvision import transforms

    folder = shared_path("data", "imagenet-samples-200")
    wnids = shared_path("data", "imagenet-wnids.txt").read_text().split()
    index = {wnid: i for i, wnid in enumerate(wnids)}
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    files = sorted(folder.glob("*.JPEG"))
    images = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    labels = torch.tensor([index[f.name.split("_")[0]] for f in files])
    return images, labels


def _top1(model: torch.nn.Module, photos: tuple[torch.Tensor, torch.Tensor]) -> float:
    images, labels = photos
    with torch.inference_mode():
        predictions = torch.cat([model.eval()(chunk).argmax(1) for chunk in images.split(50)])
    return float((predictions == labels).float().mean())


def test_layer_scope_keeps_mobilenetv2_working_where_global_collapses(tmp_path: Path, photos, capsys) -> None:
    import json

    from prunegate.prune import global_magnitude_prune, layer_sparsity
    from prunegate.runners.torch import load_torch_module

    state = shared_path("models", "imagenet-mobilenetv2", "mobilenet_v2-float-from-int8.pth")
    dense, _, _ = load_torch_module(state, "--model", ARCH, Path.cwd(), False)
    out = tmp_path / "family"
    argv = ["prune", "--model", str(state), "--arch", ARCH, "--ratios", "0.3", "--input-size", "224"]
    code = main([*argv, "--out", str(out), "--scope", "layer", "--keep-depthwise", "--format", "torchscript"])
    printed, err = capsys.readouterr()
    assert code == 0, err
    layers = json.loads((out / "wt-30.layers.json").read_text())
    assert layers["scope"] == "layer" and len(layers["kept_dense"]) == 17  # MobileNetV2's depthwise convs
    for row, before in zip(layers["layers"], layer_sparsity(dense), strict=True):
        # a kept layer is as it was (the dequantised weights hold a few zeros already); every other
        # layer loses exactly 30 % of its weights
        zeros = before["parameters"] - before["nonzero"]
        removed = zeros if row["layer"] in layers["kept_dense"] else max(zeros, round(0.3 * row["parameters"]))
        assert row["parameters"] - row["nonzero"] == removed, row["layer"]
    assert "features.18.0" in printed and "kept" in printed  # the per-layer table

    layer_scope = _top1(torch.jit.load(str(out / "wt-30.pt")), photos)
    global_scope = _top1(global_magnitude_prune(dense, 0.3), photos)
    print(f"MobileNetV2 at 30 %: layer scope {layer_scope:.1%}, global {global_scope:.1%}")
    assert layer_scope >= 0.55
    assert global_scope < 0.2  # the collapse layer scope avoids (4 % measured)
