"""`prunegate check` on a segmentation policy, end to end (issue 15), on tiny synthetic data.

A per-pixel colour classifier (a 1x1 convolution: class = the brightest channel) segments images
whose regions are coloured by their mask, so the dense model is exactly right; a "pruned" copy
with one weight zeroed loses one class. The report's metrics are checked against an independent
numpy confusion matrix over the same masks and the models' own predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

from conftest import SEG_CLASSES as CLASSES
from conftest import SEG_SIZE as SIZE
from conftest import VOID, PixelNet, segmentation_policy
from prunegate.cli import main
from prunegate.report.attest import read_envelope


def numpy_confusion(masks: list[np.ndarray], predictions: list[np.ndarray], classes: int) -> np.ndarray:
    confusion = np.zeros((classes, classes), dtype=np.int64)
    for mask, pred in zip(masks, predictions):
        valid = mask != VOID
        np.add.at(confusion, (mask[valid].astype(int), pred[valid].astype(int)), 1)
    return confusion


def numpy_miou(confusion: np.ndarray) -> float:
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def predictions(folder: Path, net: PixelNet) -> list[np.ndarray]:
    found = []
    for file in sorted((folder / "images").glob("*.png")):
        x = torch.from_numpy(np.array(PIL.Image.open(file))).permute(2, 0, 1)[None].float() / 255.0
        found.append(net(x).argmax(1)[0].numpy())
    return found


def test_check_gates_a_segmentation_pair_on_miou(segmentation_case, capsys) -> None:
    folder, masks = segmentation_case
    policy = segmentation_policy(folder)
    report = folder / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report), "-q"])
    out, err = capsys.readouterr()
    assert code == 1, err  # the pruned model lost class 2: the mIoU rule fails
    predicate = read_envelope(report.read_text(), str(report))[2]["predicate"]
    assert predicate["task"] == "segmentation"
    clean = next(t for t in predicate["tasks"] if t["name"] == "clean")
    assert "accuracy_drop" not in clean and "accuracy" not in clean["dense"]  # no classification fields

    with torch.no_grad():
        dense_pred, pruned_pred = predictions(folder / "voc", PixelNet()), predictions(folder / "voc", PixelNet(2))
    dense_confusion = numpy_confusion(masks, dense_pred, CLASSES)
    pruned_confusion = numpy_confusion(masks, pruned_pred, CLASSES)
    assert clean["dense"]["miou"] == pytest.approx(numpy_miou(dense_confusion), abs=1e-12) == 1.0
    assert clean["pruned"]["miou"] == pytest.approx(numpy_miou(pruned_confusion), abs=1e-12)
    assert clean["miou_drop"] == pytest.approx(1.0 - numpy_miou(pruned_confusion), abs=1e-12)
    valid = sum(int((m != VOID).sum()) for m in masks)
    assert clean["pixels"] == valid and clean["n"] == len(masks)
    agree = sum(int(((d == p) & (m != VOID)).sum()) for d, p, m in zip(dense_pred, pruned_pred, masks))
    assert clean["pixel_agreement"] == pytest.approx(agree / valid, abs=1e-12)
    assert clean["worst_class_iou"]["label"] == 2 and clean["worst_class_iou"]["pruned_iou"] == 0.0
    assert clean["class_iou"]["pruned"][2] == 0.0 and clean["class_iou"]["dense"] == [1.0, 1.0, 1.0]
    assert {"miou_drop", "pixel_agreement", "dense_miou"} <= set(clean["intervals"])
    worst = clean["segmentation_examples"][0]
    assert worst["drop"] == max(e["drop"] for e in clean["segmentation_examples"]) > 0
    rules = {r["name"]: r for r in predicate["rules"]}
    assert rules["miou"]["passed"] is False and rules["agreement"]["passed"] == (agree / valid >= 0.5)
    assert [t["name"] for t in predicate["tasks"]] == ["clean", "corruption/contrast/1"]
    assert predicate["corruption_summary"]["per_corruption"][0]["name"] == "contrast"
    assert predicate["data"][0]["format"] == "segmentation-folder" and predicate["data"][0]["ignore_index"] == VOID


def test_the_same_pair_passes_and_the_console_shows_miou(segmentation_case, capsys) -> None:
    folder, _ = segmentation_case
    (folder / "pruned.pt").write_bytes((folder / "dense.pt").read_bytes())
    policy = segmentation_policy(folder)
    report = folder / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report)])
    out, err = capsys.readouterr()
    assert code == 0, err + out
    predicate = read_envelope(report.read_text(), str(report))[2]["predicate"]
    assert all(t["miou_drop"] == 0.0 and t["pixel_agreement"] == 1.0 for t in predicate["tasks"])
    assert "mIoU" in out and "dense mIoU" in out and "pixel agreement" in out  # the console's task table
    assert "+0.00pp" in out and "100.00%" in out and "PASS" in out


def test_a_classification_model_in_a_segmentation_policy_is_refused(segmentation_case, capsys) -> None:
    folder, _ = segmentation_case
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, CLASSES))
    torch.jit.trace(classifier.eval(), torch.rand(2, 3, SIZE, SIZE)).save(str(folder / "dense.pt"))
    policy = segmentation_policy(folder)
    report = folder / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "models.dense" in err and str(folder / "dense.pt") in err
    assert f"is not [batch, classes, {SIZE}, {SIZE}] logits" in err and "task: classification" in err
    assert not report.exists()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing mask", "has no mask"),
        ("label outside the classes", "mask value 7 is not a class index (0-2)"),
        ("mask of another size", "mask is 8x8 pixels"),
        ("rgb mask", "mask has mode RGB"),
    ],
)
def test_bad_segmentation_data_is_exit_2_naming_the_file(segmentation_case, capsys, damage: str, expected: str) -> None:
    folder, masks = segmentation_case
    mask = folder / "voc" / "masks" / "img03.png"
    if damage == "missing mask":
        mask.unlink()
    elif damage == "label outside the classes":
        broken = masks[3].copy()
        broken[5, 5] = 7
        PIL.Image.fromarray(broken, mode="L").save(mask)
    elif damage == "mask of another size":
        PIL.Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(mask)
    else:
        PIL.Image.fromarray(np.zeros((SIZE, SIZE, 3), dtype=np.uint8)).save(mask)
    report = folder / "report.json"
    code = main(["check", "-p", str(segmentation_policy(folder)), "-o", str(report), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and str(mask) in err and "data.test" in err
    assert len(err.strip().splitlines()) == 1 and not report.exists()


def test_a_classification_metric_in_a_segmentation_policy_names_the_rule(tmp_path: Path, capsys) -> None:
    policy = segmentation_policy(
        tmp_path, rules=[{"name": "top1", "tasks": "*", "metric": "accuracy_drop", "max": 0.1}]
    )
    code = main(["policy", "validate", str(policy)])
    err = capsys.readouterr().err
    assert code == 2
    assert "gate.rules.0.metric" in err and "'top1'" in err and "classification metric" in err


def test_ignore_index_and_class_names_reach_the_report(segmentation_case, capsys) -> None:
    folder, masks = segmentation_case
    for i, mask in enumerate(masks):  # void as 9 instead of 255
        PIL.Image.fromarray(np.where(mask == VOID, 9, mask).astype(np.uint8), mode="L").save(
            folder / "voc" / "masks" / f"img{i:02d}.png"
        )
    (folder / "names.txt").write_text("red\ngreen\nblue\n")
    policy = segmentation_policy(folder)
    document = yaml.safe_load(policy.read_text())
    document["data"]["test"].update({"ignore_index": 9, "class_names": "names.txt"})
    policy.write_text(yaml.safe_dump(document))
    report = folder / "report.json"
    assert main(["check", "-p", str(policy), "-o", str(report), "-q"]) == 1
    predicate = read_envelope(report.read_text(), str(report))[2]["predicate"]
    clean = predicate["tasks"][0]
    assert clean["worst_class_iou"]["name"] == "blue"
    assert clean["pixels"] == sum(int((m != VOID).sum()) for m in masks)
    assert json.dumps(predicate["data"][0]["classes"]) == '["red", "green", "blue"]'


def test_a_height_and_width_input_crops_the_masks_with_the_images(segmentation_case, capsys) -> None:
    """models.input.size [12, 16] on 16x16 images: already as wide, so the rows are centre-cropped
    (2 off the top, 2 off the bottom), the masks alike; noise and corruptions run at 12x16 too."""
    folder, masks = segmentation_case
    policy = segmentation_policy(folder, suite={"seed": 0, "noise": [{"kind": "gaussian", "levels": [0.01]}]})
    document = yaml.safe_load(policy.read_text())
    document["models"]["input"]["size"] = [12, 16]
    policy.write_text(yaml.safe_dump(document))
    report = folder / "report.json"
    assert main(["check", "-p", str(policy), "-o", str(report), "-q"]) == 1, capsys.readouterr().err
    predicate = read_envelope(report.read_text(), str(report))[2]["predicate"]
    assert [t["name"] for t in predicate["tasks"]] == ["clean", "noise/gaussian/0.01"]
    cropped = [m[2:14] for m in masks]
    assert predicate["tasks"][0]["pixels"] == sum(int((m != VOID).sum()) for m in cropped)
    with torch.no_grad():
        pruned = [p[2:14] for p in predictions(folder / "voc", PixelNet(2))]
    expected = numpy_miou(numpy_confusion(cropped, pruned, CLASSES))
    assert predicate["tasks"][0]["pruned"]["miou"] == pytest.approx(expected, abs=1e-12)
