"""`prunegate check` on a segmentation policy, end to end (issue 15), on tiny synthetic data.
(Bad segmentation input: tests/test_bad_input.py's segmentation rows.)

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
from conftest import VOID, PixelNet, segmentation_policy, write_segmentation_folder
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
    write_segmentation_folder(folder / "other", images=3, seed=7)  # an ood set: another segmentation folder
    policy = segmentation_policy(folder)
    document = yaml.safe_load(policy.read_text())
    document["data"]["ood"] = [{"name": "other", "format": "segmentation-folder", "path": "other"}]
    policy.write_text(yaml.safe_dump(document))
    report = folder / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report)])
    out, err = capsys.readouterr()
    assert code == 0, err + out
    predicate = read_envelope(report.read_text(), str(report))[2]["predicate"]
    assert [t["name"] for t in predicate["tasks"]] == ["clean", "ood/other", "corruption/contrast/1"]
    assert next(t for t in predicate["tasks"] if t["name"] == "ood/other")["n"] == 3
    assert all(t["miou_drop"] == 0.0 and t["pixel_agreement"] == 1.0 for t in predicate["tasks"])
    assert "mIoU" in out and "dense mIoU" in out and "pixel agreement" in out  # the console's task table
    assert "+0.00pp" in out and "100.00%" in out and "PASS" in out


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


class Interrupting:
    """A checkpoint that is always due and keeps what it is given; the progress callback stops the
    pass after `after` calls, as Ctrl-C would."""

    def __init__(self, after: int):
        self.saved: dict | None = None
        self.calls, self.after = 0, after

    def due(self) -> bool:
        return True

    def save(self, state: dict) -> None:
        self.saved = state

    def progress(self, count: int) -> None:
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt


def test_an_interrupted_segmentation_pass_resumes_to_the_same_tallies(segmentation_case) -> None:
    from prunegate.check import prepare
    from prunegate.engine import evaluate_family
    from prunegate.policy import load_policy

    folder, _ = segmentation_case
    policy = load_policy(segmentation_policy(folder, runtime={"device": "cpu", "workers": 0, "batch_size": 2}))
    with prepare(policy) as setup:
        options = {"kind": setup.kind, "classes": setup.classes}
        whole, _ = evaluate_family(setup.ctx, setup.dense, setup.pruned, **options)
        stopper = Interrupting(after=3)  # 2 tasks a batch: stopped in the second batch of 2 images
        with pytest.raises(KeyboardInterrupt):
            evaluate_family(
                setup.ctx, setup.dense, setup.pruned, progress=stopper.progress, checkpoint=stopper, **options
            )
        assert stopper.saved is not None and len(stopper.saved["sources"]["test"]["done"]) == 2
        resumed, _ = evaluate_family(setup.ctx, setup.dense, setup.pruned, restored=stopper.saved, **options)
    for name, tally in whole[0].items():
        again = resumed[0][name]
        for field in ("dense_confusion", "pruned_confusion", "agree", "valid", "filled"):
            assert torch.equal(getattr(tally, field), getattr(again, field)), (name, field)
