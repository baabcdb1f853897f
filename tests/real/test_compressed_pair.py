"""Compressed, not only pruned (issue 17, item 10): the real int8 ONNX MobileNetV2 gated against
its float parent (a torchvision state dict) on the 200 ImageNet photos.

The independent evaluation runs the two models directly: torchvision's own decoding and tensor
transforms (resize 256 antialiased, centre crop 224, ImageNet mean/std), the float parent in
torch, the int8 file in a plain ONNX Runtime session.

The float parent gets the same count whatever resizes its input. The int8 model does not: on
these 200 photos it scored 154 with PIL's resize, 152 with `torchvision.transforms.Resize` on the
decoded tensor (the reference here) and 149 with prunegate's own resize
(`torchvision.transforms.v2.functional.resize`; measured 2026-12-01, same decoder and session):
quantisation turns sub-pixel differences into a few flipped predictions. So the float side must
agree within 2 images, the int8 side within 4 (2 %).
(DATA.md's 174/200 for the int8 file was not reproduced by any of them.)
"""

from __future__ import annotations

import base64
import json

import numpy as np
import torch
import yaml

from prunegate.cli import main
from tests.real.conftest import shared_path

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SLACK = 2  # images, for the float model
SLACK_INT8 = 4  # images, for the int8 model (the resize kernel moves it: module docstring)


def independent(folder, photos, wnids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import onnxruntime
    import torchvision
    from torchvision import transforms
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    prepare = transforms.Compose(
        [
            transforms.Resize(256, antialias=True),
            transforms.CenterCrop(224),
            transforms.ConvertImageDtype(torch.float32),
            transforms.Normalize(MEAN, STD),
        ]
    )
    files = sorted(photos.glob("*.JPEG"))
    labels = np.array([wnids.index(f.name.split("_")[0]) for f in files])
    x = torch.stack([prepare(decode_jpeg(read_file(str(f)), mode=ImageReadMode.RGB)) for f in files])
    parent = torchvision.models.mobilenet_v2()
    parent.load_state_dict(torch.load(folder / "mobilenet_v2-float-from-int8.pth", weights_only=True), strict=True)
    with torch.no_grad():
        dense = parent.eval()(x).argmax(1).numpy()
    session = onnxruntime.InferenceSession(str(folder / "mobilenetv2-12-int8.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    pruned = np.concatenate([session.run(None, {name: x[i : i + 1].numpy()})[0].argmax(1) for i in range(len(x))])
    return labels, dense, pruned


def test_the_int8_model_is_gated_against_its_float_parent_as_an_independent_evaluation_sees_them(tmp_path, capsys):
    folder = shared_path("models", "imagenet-mobilenetv2")
    photos = shared_path("data", "imagenet-samples-200")
    wnids_file = shared_path("data", "imagenet-wnids.txt")
    policy = {
        "version": 1,
        "name": "int8-vs-float",
        "models": {
            "dense": {
                "path": str(folder / "mobilenet_v2-float-from-int8.pth"),
                "arch": "torchvision.models:mobilenet_v2",
            },
            "pruned": str(folder / "mobilenetv2-12-int8.onnx"),
            "input": {"size": 224, "mean": MEAN, "std": STD},
        },
        "data": {"test": {"format": "imagefolder-flat", "path": str(photos), "class_names": str(wnids_file)}},
        "gate": {"rules": [{"name": "clean", "tasks": "clean", "metric": "accuracy_drop", "max": 0.05}]},
        "runtime": {"device": "cpu", "backend": "auto", "workers": 1},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy))
    report = tmp_path / "r.json"
    code = main(["check", "--policy", str(tmp_path / "p.yaml"), "-o", str(report), "--quiet"])
    assert code in (0, 1), capsys.readouterr().err
    predicate = json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))["predicate"]
    clean = next(t for t in predicate["tasks"] if t["name"] == "clean")
    assert predicate["models"]["pruned"]["quantisation"] == "QDQ + QLinear"
    assert predicate["models"]["dense"]["format"] == "state-dict" and clean["n"] == 200

    labels, dense, pruned = independent(folder, photos, wnids_file.read_text().split())
    assert abs(clean["dense"]["correct"] - int((dense == labels).sum())) <= SLACK
    assert abs(clean["pruned"]["correct"] - int((pruned == labels).sum())) <= SLACK_INT8
    assert abs(round(clean["agreement"] * 200) - int((dense == pruned).sum())) <= SLACK_INT8
    assert abs(int((dense == labels).sum()) - 171) <= SLACK  # DATA.md's figure for the float parent
