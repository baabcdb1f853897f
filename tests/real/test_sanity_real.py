"""Sanity before verdicts on a real ImageNet model (issue 17, item 9): the real MobileNetV2 on 32 of
the real ImageNet photos read through wrong labels stops with exit 2, one line that names the
test set, the score against chance, and the fix; no report is written.

- `val-names`: the photos linked as ImageNet validation files (`ILSVRC2012_val_00000001.JPEG`)
  and read as imagefolder-flat, which takes the image number as the label;
- `wnid-folders`: the photos linked into one folder per wnid and read as imagefolder without
  class_names, whose sorted folder order is not the model's class order.
"""

from __future__ import annotations

import pytest
import yaml

from prunegate.cli import main
from tests.real.conftest import shared_path

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
IMAGES = 32


def _link(photos, tmp_path, layout: str) -> tuple[str, str]:
    """The first IMAGES photos linked into `layout`; the (format, folder) to read them as."""
    files = sorted(photos.glob("*.JPEG"))[:IMAGES]
    folder = tmp_path / layout
    for number, file in enumerate(files, start=1):
        if layout == "val-names":
            target = folder / f"ILSVRC2012_val_{number:08d}.JPEG"
        else:
            target = folder / file.name.split("_")[0] / file.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(file)
    return ("imagefolder-flat" if layout == "val-names" else "imagefolder"), str(folder)


@pytest.mark.parametrize(
    ("layout", "hint"),
    [
        ("val-names", "look like ImageNet validation images (ILSVRC2012_val_*)"),
        ("wnid-folders", "look like ImageNet wnids (n01440764): set class_names"),
    ],
)
def test_the_real_mobilenet_read_through_wrong_labels_stops_before_any_verdict(tmp_path, capsys, layout, hint):
    model = shared_path("models", "imagenet-mobilenetv2", "mobilenet_v2-float-from-int8.pth")
    fmt, folder = _link(shared_path("data", "imagenet-samples-200"), tmp_path, layout)
    spec = {"path": str(model), "arch": "torchvision.models:mobilenet_v2"}
    policy = {
        "version": 1,
        "name": "wrong-labels",
        "models": {"dense": spec, "pruned": spec, "input": {"size": 224, "mean": MEAN, "std": STD}},
        "data": {"test": {"format": fmt, "path": folder}},
        "gate": {"rules": [{"name": "clean", "tasks": "clean", "metric": "accuracy_drop", "max": 0.01}]},
        "runtime": {"device": "cpu", "backend": "torch", "workers": 1, "batch_size": 16},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy))
    out = tmp_path / "out"
    out.mkdir()
    code = main(["check", "--policy", str(tmp_path / "p.yaml"), "-o", str(out / "r.json"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = err.splitlines()
    assert line.startswith(f"error: {folder}: data.test: the dense model gets ")
    assert f"/{IMAGES} clean images right" in line and "no better than chance (0.10 % for 1000 classes)" in line
    assert hint in line
    assert list(out.iterdir()) == []
