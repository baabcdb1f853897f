"""Issue 17: a `path,label` CSV of the real CIFAR-10 test images gives the image folder's numbers.

The list sits in a scratch folder beside a link to the shared folder (paths in a list are
relative to the list's folder, and ../shared is read-only). It names all 10,000 images in the
folder's order, labelled by class name, so that `limit: 500` picks the same 500 images from both:
every task's record (metrics, intervals, examples) and the data digest (over each image's index
and bytes) must then be equal, and only the filelist's record carries the list's own sha256.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import torch

from prunegate.cli import main
from prunegate.prune import global_magnitude_prune

from .conftest import resnet20_dense, shared_path

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_list(folder: Path) -> Path:
    data = shared_path("data", "cifar10-test-jpeg")
    (folder / "cifar10").symlink_to(data, target_is_directory=True)
    rows = ["path,label"]
    for name in CLASSES:  # the image folder's order: sorted classes, then sorted files
        rows += [f"cifar10/{name}/{file.name},{name}" for file in sorted((data / name).glob("*.jpg"))]
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    listed = folder / "test.csv"
    listed.write_text("\n".join(rows) + "\n")
    return listed


def _policy(folder: Path, test: str) -> Path:
    path = folder / f"policy-{len(list(folder.glob('policy-*')))}.yaml"
    path.write_text(f"""
version: 1
name: filelist-vs-imagefolder
models:
  dense: dense.pt
  pruned: pruned.pt
  input: {{size: 32, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}
data:
  test: {test}
  limit: 500
suite:
  seed: 0
  noise: [{{kind: gaussian, levels: [0.05]}}]
gate:
  rules:
    - {{name: clean accuracy, tasks: clean, metric: accuracy_drop, max: 0.5}}
# backend pinned: auto picks torch or ONNX Runtime by timing, which can differ between the two
# runs on a loaded machine (and with it the logits' last bits)
runtime: {{batch_size: 250, workers: 0, device: cpu, backend: torch}}
""")
    return path


def _predicate(folder: Path, policy: Path) -> dict:
    report = folder / f"{policy.stem}.json"
    assert main(["check", "--policy", str(policy), "--report", str(report), "--quiet"]) == 0
    return json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))["predicate"]


def test_a_csv_of_the_images_gives_the_folders_numbers_and_digest(tmp_path: Path) -> None:
    dense = resnet20_dense()
    example = torch.zeros(2, 3, 32, 32)
    for name, model in (("dense", dense), ("pruned", global_magnitude_prune(dense, 0.5))):
        torch.jit.save(torch.jit.trace(model, example), tmp_path / f"{name}.pt")
    listed = _write_list(tmp_path)
    folder_test = f"{{format: imagefolder, path: {shared_path('data', 'cifar10-test-jpeg')}}}"
    list_test = "{format: filelist, path: test.csv, class_names: classes.txt}"
    by_folder = _predicate(tmp_path, _policy(tmp_path, folder_test))
    by_list = _predicate(tmp_path, _policy(tmp_path, list_test))

    folder_record, list_record = by_folder["data"][0], by_list["data"][0]
    assert (folder_record["format"], list_record["format"]) == ("imagefolder", "filelist")
    assert list_record["size"] == folder_record["size"] == 10_000
    assert list_record["used"] == folder_record["used"] == 500
    assert list_record["sha256"] == folder_record["sha256"]  # the same images at the same indices
    assert list_record["list_sha256"] == hashlib.sha256(listed.read_bytes()).hexdigest()
    assert "list_sha256" not in folder_record

    assert (
        [t["name"] for t in by_list["tasks"]]
        == [t["name"] for t in by_folder["tasks"]]
        == [
            "clean",
            "noise/gaussian/0.05",
        ]
    )
    for from_folder, from_list in zip(by_folder["tasks"], by_list["tasks"]):
        assert from_list["n"] == 500
        assert from_list == from_folder  # every metric, interval and example, to the last bit
    assert 0.7 < by_list["tasks"][0]["dense"]["accuracy"] < 0.9  # DATA.md: 81 % on all 10,000
