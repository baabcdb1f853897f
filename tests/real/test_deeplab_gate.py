"""The real DeepLabV3-MobileNetV2 (PASCAL VOC, 21 classes) gated against a pruned copy (issue 15).

The pruned copy has 30 % of each non-depthwise convolution's smallest-magnitude weights zeroed.
Both run on the 14 real VOC 2012 val images, clean and under three corruptions. The dense model's
clean mIoU is checked against an independent computation: ONNX Runtime called directly on the
same preprocessed input ((pixel - 128) / 128, as DATA.md gives it), its argmax, and a numpy
confusion matrix over the valid pixels (void 255 left out). It must also match DATA.md's 0.828.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import PIL.Image
import pytest
from onnx import numpy_helper

from prunegate.cli import main
from prunegate.report.attest import read_envelope

from .conftest import shared_path

CLASSES, VOID = 21, 255
NORMAL = 128 / 255  # (pixel - 128) / 128 on [0, 1] pixels is (x - 128/255) / (128/255)
CORRUPTIONS = ["gaussian_noise", "contrast", "jpeg_compression"]


def prune_non_depthwise_convs(source: Path, target: Path, fraction: float = 0.3) -> int:
    """Zero `fraction` of each non-depthwise Conv's smallest |weights|; returns the convs pruned."""
    model = onnx.load(str(source))
    initializers = {i.name: i for i in model.graph.initializer}
    pruned = 0
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type != "Conv" or group != 1 or node.input[1] not in initializers:
            continue
        weight = initializers[node.input[1]]
        values = numpy_helper.to_array(weight).copy()
        cut = np.sort(np.abs(values).ravel())[int(fraction * values.size)]
        values[np.abs(values) < cut] = 0.0
        weight.CopyFrom(numpy_helper.from_array(values, weight.name))
        pruned += 1
    onnx.save(model, str(target))
    return pruned


def numpy_miou(model: Path, data: Path) -> float:
    """Dataset-level mIoU computed without prunegate: one confusion matrix over all valid pixels."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    confusion = np.zeros((CLASSES, CLASSES), dtype=np.int64)
    for image_file in sorted((data / "images").glob("*.png")):
        pixels = np.asarray(PIL.Image.open(image_file).convert("RGB"), dtype=np.float32)
        x = ((pixels / 255.0 - NORMAL) / NORMAL).transpose(2, 0, 1)[None].astype(np.float32)
        prediction = session.run(None, {name: x})[0][0].argmax(axis=0)
        mask = np.asarray(PIL.Image.open(data / "masks" / image_file.name))
        valid = mask != VOID
        np.add.at(confusion, (mask[valid].astype(np.int64), prediction[valid]), 1)
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def test_a_pruned_deeplab_is_gated_on_miou_under_corruptions(tmp_path: Path, capsys) -> None:
    folder = shared_path("models", "voc-deeplabv3-mobilenetv2")
    dense = folder / "deeplabv3_mnv2_pascal.onnx"
    data = shared_path("data", "voc2012-val-14")
    pruned = tmp_path / "pruned.onnx"
    assert prune_non_depthwise_convs(dense, pruned) > 30
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""
version: 1
name: deeplab-voc
task: segmentation
models:
  dense: {dense}
  pruned: {pruned}
  input: {{size: 513, mean: [{NORMAL}, {NORMAL}, {NORMAL}], std: [{NORMAL}, {NORMAL}, {NORMAL}]}}
data:
  test: {{format: segmentation-folder, path: {data}, class_names: {folder / "voc-classes.txt"}}}
suite:
  seed: 0
  corruptions: {{names: {CORRUPTIONS}, severities: [3]}}
gate:
  rules:
    - {{name: clean miou, tasks: clean, metric: miou_drop, max: 0.5}}
    - {{name: corrupted miou, tasks: "corruption/*", metric: miou_drop, aggregate: mean, max: 0.001}}
    - {{name: agreement, tasks: "*", metric: pixel_agreement, min: 0.5}}
  bootstrap: 200
runtime: {{device: cpu, backend: onnx, batch_size: 2, workers: 1}}
""")
    report = tmp_path / "report.json"
    html = tmp_path / "report.html"
    code = main(["check", "-p", str(policy), "-o", str(report), "--html", str(html), "-q"])
    err = capsys.readouterr().err
    assert code in (0, 1), err
    predicate = read_envelope(report.read_text(), str(report))[2]["predicate"]
    tasks = {t["name"]: t for t in predicate["tasks"]}
    assert list(tasks) == ["clean", *(f"corruption/{name}/3" for name in CORRUPTIONS)]
    clean = tasks["clean"]
    assert clean["n"] == 14 and clean["pixels"] > 14 * 513 * 513 * 0.8

    independent = numpy_miou(dense, data)
    assert independent == pytest.approx(0.828, abs=5e-4)  # DATA.md's figure
    assert clean["dense"]["miou"] == pytest.approx(independent, abs=1e-6)

    # Pruning 30 % of every dense conv costs mIoU, and more under corruption than the rule allows.
    assert 0 < clean["miou_drop"] < 0.5 and clean["pruned"]["miou"] < clean["dense"]["miou"]
    for task in tasks.values():
        assert task["dense"]["miou"] is not None and 0 <= task["pixel_agreement"] <= 1
        low, high = task["intervals"]["miou_drop"]["low"], task["intervals"]["miou_drop"]["high"]
        assert low <= task["miou_drop"] <= high
    rules = {r["name"]: r for r in predicate["rules"]}
    corrupted = np.mean([tasks[f"corruption/{name}/3"]["miou_drop"] for name in CORRUPTIONS])
    assert rules["corrupted miou"]["value"] == pytest.approx(corrupted, abs=1e-12)
    assert rules["clean miou"]["passed"] == (clean["miou_drop"] <= 0.5)
    assert rules["corrupted miou"]["passed"] == (corrupted <= 0.001)
    assert rules["agreement"]["passed"] == (min(t["pixel_agreement"] for t in tasks.values()) >= 0.5)
    assert predicate["verdict"] == ("pass" if all(r["passed"] for r in rules.values()) else "fail")
    assert code == (0 if predicate["verdict"] == "pass" else 1)
    assert clean["worst_class_iou"]["name"] in (folder / "voc-classes.txt").read_text().split()

    # The worst image's predictions travel in the report, for the HTML's overlays.
    worst = max(tasks.values(), key=lambda t: t["miou_drop"])
    example = worst["segmentation_examples"][0]
    assert example["dense_mask"] and example["pruned_mask"]
    assert html.is_file() and "mIoU" in html.read_text()
