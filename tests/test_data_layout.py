"""prunegate.data_layout: a data path's format from its layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunegate.data_layout import guess_format
from prunegate.errors import PolicyError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("files", "target", "expected"),
    [
        (["x.npz"], "x.npz", "npz"),
        (["b/test_batch.bin"], "b/test_batch.bin", "cifar10-binary"),
        (["cifar-10-batches-bin/test_batch.bin", "cifar-10-batches-bin/batches.meta.txt"], "cifar-10-batches-bin",
         "cifar10-binary"),
        (["voc/images/1.jpg", "voc/masks/1.png"], "voc", "segmentation-folder"),
        (["flat/a_1.JPEG", "flat/b_2.png"], "flat", "imagefolder-flat"),
        (["tree/cat/1.jpg", "tree/dog/2.jpg", "tree/README"], "tree", "imagefolder"),
        (["val/list.csv", "val/a.jpg"], "val/list.csv", "filelist"),
        (["val/LIST.TSV"], "val/LIST.TSV", "filelist"),
        (["shards/train-000.tar"], "shards/train-000.tar", "webdataset"),
        (["hf/test.parquet"], "hf/test.parquet", "parquet"),
        (["hf/data/test-00000-of-00002.parquet", "hf/data/test-00001-of-00002.parquet", "hf/data/a.jpg"], "hf/data",
         "parquet"),
    ],
)  # fmt: skip
def test_each_layout_is_recognised(tmp_path, files, target, expected) -> None:
    for name in files:
        touch(tmp_path / name)
    assert guess_format(tmp_path / target) == expected


@pytest.mark.parametrize(
    ("files", "target", "reason"),
    [
        ([], "absent", "not found"),
        (["notes.txt"], "notes.txt", "cannot tell the data format of this file"),
        (["empty/.hidden.jpg", "empty/readme.txt"], "empty", "cannot tell the data format of this folder"),
    ],
)
def test_what_is_no_known_layout_is_a_one_line_error(tmp_path, files, target, reason) -> None:
    for name in files:
        touch(tmp_path / name)
    with pytest.raises(PolicyError, match=reason) as caught:
        guess_format(tmp_path / target)
    assert "\n" not in str(caught.value) and caught.value.field == "--data"
