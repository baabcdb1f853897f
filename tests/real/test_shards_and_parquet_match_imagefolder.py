"""Issue 17: 100 real CIFAR-10 test JPEGs as an image folder, a webdataset shard (labelled by class
name) and a Parquet file (written as Hugging Face datasets writes images, labelled by index) give
one set of numbers.

The test packs the shard and the Parquet file itself from the folder, in the folder's order, so
that each of the three formats reads the same bytes at the same indices: the data digest (over
each image's index and sha256) and every task's record must then be equal, and only the shard's
and the Parquet file's records carry their files' sha256.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from conftest import assert_same_report
from prunegate.cli import main
from prunegate.prune import global_magnitude_prune

from .conftest import resnet20_dense, shared_path

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_CLASS = 10


def _folder(root: Path) -> list[tuple[Path, int]]:
    """The first 10 JPEGs of each class, copied into root/<class>/: (file, label) in folder order."""
    data = shared_path("data", "cifar10-test-jpeg")
    files = []
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for source in sorted((data / name).glob("*.jpg"))[:PER_CLASS]:
            files.append((Path(shutil.copy(source, root / name / source.name)), label))
    return files


def _shard(files: list[tuple[Path, int]], folder: Path, path: Path) -> None:
    with tarfile.open(path, "w") as tar:
        for file, label in files:
            key = file.relative_to(folder).with_suffix("").as_posix()
            for name, content in ((f"{key}.jpg", file.read_bytes()), (f"{key}.cls", CLASSES[label].encode())):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))


def _parquet(files: list[tuple[Path, int]], path: Path) -> None:
    images = [{"bytes": file.read_bytes(), "path": file.name} for file, _ in files]
    table = pa.table({"image": images, "label": pa.array([label for _, label in files], pa.int64())})
    pq.write_table(table, path, row_group_size=32)  # several row groups, as datasets writes


def _predicate(folder: Path) -> dict:
    """One check: the folder is the test set, the shard and the Parquet file are ood sets (one
    run of the sandboxed models, which is most of the time), each its own task."""
    policy = folder / "policy.yaml"
    policy.write_text("""
version: 1
name: shards-and-parquet-vs-imagefolder
models:
  dense: dense.pt
  pruned: pruned.pt
  input: {size: 32, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
data:
  test: {format: imagefolder, path: images}
  ood:
    - {name: shard, format: webdataset, path: 'test-{000..000}.tar', class_names: classes.txt}
    - {name: table, format: parquet, path: test.parquet, class_names: classes.txt}
  limit: 60
suite:
  seed: 0
gate:
  rules:
    - {name: clean accuracy, tasks: clean, metric: accuracy_drop, max: 0.5}
runtime: {batch_size: 50, workers: 0, device: cpu}
""")
    report = folder / "report.json"
    assert main(["check", "--policy", str(policy), "--report", str(report), "--quiet"]) == 0
    return json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))["predicate"]


def test_a_shard_and_a_parquet_file_of_the_images_give_the_folders_numbers(tmp_path: Path) -> None:
    files = _folder(tmp_path / "images")
    _shard(files, tmp_path / "images", tmp_path / "test-000.tar")
    _parquet(files, tmp_path / "test.parquet")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")  # .cls members name the classes
    dense = resnet20_dense()
    example = torch.zeros(2, 3, 32, 32)
    for name, model in (("dense", dense), ("pruned", global_magnitude_prune(dense, 0.5))):
        torch.jit.save(torch.jit.trace(model, example), tmp_path / f"{name}.pt")
    predicate = _predicate(tmp_path)

    records = {record["name"]: record for record in predicate["data"]}
    folder_record, shard_record, parquet_record = records["test"], records["shard"], records["table"]
    assert [r["format"] for r in (folder_record, shard_record, parquet_record)] == [
        "imagefolder",
        "webdataset",
        "parquet",
    ]
    for record in (shard_record, parquet_record):
        assert record["size"] == folder_record["size"] == 100 and record["used"] == folder_record["used"] == 60
        assert record["sha256"] == folder_record["sha256"]  # the same images at the same indices
        assert record["classes"] == folder_record["classes"] == CLASSES
    shard = tmp_path / "test-000.tar"
    assert shard_record["files_sha256"] == {str(shard): hashlib.sha256(shard.read_bytes()).hexdigest()}
    parquet = tmp_path / "test.parquet"
    assert parquet_record["files_sha256"] == {str(parquet): hashlib.sha256(parquet.read_bytes()).hexdigest()}
    assert "files_sha256" not in folder_record

    tasks = {task["name"]: task for task in predicate["tasks"]}
    assert set(tasks) == {"clean", "ood/shard", "ood/table"}

    # Every metric and example (probabilities to 1e-5); not the names, nor the intervals, whose bootstrap draws
    # are seeded by the task's name.
    def judged(task: dict) -> dict:
        return {k: v for k, v in task.items() if k not in ("name", "kind", "group", "source", "intervals")}

    for name in ("ood/shard", "ood/table"):
        assert_same_report(judged(tasks[name]), judged(tasks["clean"]))
        assert tasks[name]["intervals"].keys() == tasks["clean"]["intervals"].keys()
    assert 0.6 < tasks["clean"]["dense"]["accuracy"] <= 1.0  # DATA.md: 81 % on all 10,000
