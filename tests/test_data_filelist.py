"""Format `filelist`: a CSV/TSV of image paths and labels, checked row by row."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from prunegate.data import open_source, select
from prunegate.data.filelist import FileList
from prunegate.data.imagefolder import ImageFolder
from prunegate.errors import DataError
from prunegate.policy import DataSource
from tests.test_data_imagefolder import BIG, pil_rgb, random_rgb, save

CLASSES = ["ant", "cat", "zebra"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A folder of six PNGs in two sub-folders, which the lists name."""
    folder = tmp_path / "set"
    for i, name in enumerate(["a/0.png", "a/1.png", "b/2.png", "b/3.png", "b/4.png", "5.png"]):
        save(folder / name, random_rgb(i, 8 + i, 9))
    return folder


def write_list(folder: Path, text: str, name: str = "list.csv") -> Path:
    path = folder / name
    path.write_bytes(text.encode())
    return path


def test_paths_and_labels_come_from_the_rows_in_their_order(root: Path) -> None:
    listed = write_list(root, "path,label\nb/3.png,2\na/0.png,0\n5.png,1\n")
    images = FileList(listed, "data.test")
    assert [f.relative_to(root).as_posix() for f in images.files] == ["b/3.png", "a/0.png", "5.png"]
    assert images.labels.tolist() == [2, 0, 1] and len(images) == 3
    assert images.describe() == {
        "format": "filelist",
        "path": str(listed),
        "size": 3,
        "list_sha256": hashlib.sha256(listed.read_bytes()).hexdigest(),
    }
    assert images.sample_name(0) == "b/3.png"
    assert images.tracked_files() == [listed, *images.files]


def test_class_names_labels_a_tsv_with_other_columns_and_a_byte_order_mark(root: Path) -> None:
    listed = write_list(root, "\ufeffid\tfile\tclass\n7\ta/1.png\tzebra\n8\tb/2.png\tant\n", "list.tsv")
    images = FileList(listed, "data.test", CLASSES, path_column="file", label_column="class")
    assert images.labels.tolist() == [2, 0] and images.classes == CLASSES
    assert images.describe()["classes"] == CLASSES


def test_images_decode_with_the_folders_pixels_and_digests(root: Path) -> None:
    listed = write_list(root, "path,label\na/1.png,0\nb/4.png,1\n")
    pictures, digests = FileList(listed, "data.test").read([0, 1], BIG)
    for picture, digest, name in zip(pictures, digests, ["a/1.png", "b/4.png"]):
        assert np.array_equal(picture.numpy(), pil_rgb(root / name))  # Pillow, the independent reference
        assert digest == hashlib.sha256((root / name).read_bytes()).hexdigest()


def test_a_list_of_a_folders_images_in_its_order_is_that_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tree"
    for i, name in enumerate(["ant/x.png", "ant/y.png", "cat/z.png", "zebra/w.png", "zebra/v.png"]):
        save(folder / name, random_rgb(i))
    reference = ImageFolder(folder, "data.test")
    rows = [f"{f.relative_to(folder).as_posix()},{reference.classes[label]}" for f, label in
            zip(reference.files, reference.labels)]  # fmt: skip
    listed = FileList(write_list(folder, "path,label\n" + "\n".join(rows)), "data.test", reference.classes)
    assert listed.files == reference.files and np.array_equal(listed.labels, reference.labels)
    assert select(listed.labels, 3).tolist() == select(reference.labels, 3).tolist()
    assert listed.read([0, 4], BIG)[1] == reference.read([0, 4], BIG)[1]


def test_the_policy_fields_reach_the_reader(root: Path) -> None:
    write_list(root, "file;x,class\nb/2.png,cat\n")
    (root / "names.txt").write_text("\n".join(CLASSES))
    spec = DataSource.model_validate(
        {"format": "filelist", "path": "list.csv", "class_names": "names.txt", "path_column": "file;x",
         "label_column": "class"}
    )  # fmt: skip
    images = open_source(spec, lambda name: root / name, "data.test")
    assert isinstance(images, FileList) and images.labels.tolist() == [1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file list is empty: expected a header with 'path' and 'label'"),
        ("path,label\n", "the file list has a header but no rows"),
        ("file,label\na/0.png,0\n", "column 'path' (data.test.path_column) is not in the header ['file', 'label']"),
        ("path,label,label\na/0.png,0,1\n", "column 'label' (data.test.label_column) is twice"),
        ("path,label\na/0.png,0\n\nb/2.png\n", "line 4: 1 fields, the header has 2"),
        ("path,label\na/0.png,0,extra\n", "line 2: 3 fields, the header has 2"),
        ("path,label\n,0\n", "line 2: empty 'path'"),
        ("path,label\na/0.png,0\na/9.png,1\n", "line 3: image 'a/9.png' not found"),
        ("path,label\na,0\n", "line 2: image 'a' is not a file"),
        ("path,label\nb/2.png/x.png,0\n", "line 2: image 'b/2.png/x.png' not found"),
        ("path,label\na/0.png,cat\n", "line 2: 'label' 'cat' is not a non-negative integer label"),
        ("path,label\na/0.png,-1\n", "line 2: 'label' '-1' is not a non-negative integer label"),
        ("path,label\na/0.png,99999999999\n", "line 2: 'label' '99999999999' is too large"),
        ("path,label\na/0.png,0\n./a/0.png,1\n", "line 3: image './a/0.png' is also listed on line 2"),
        ("path,label\n/etc/hostname,0\n", "line 2: path '/etc/hostname' is absolute"),
        ("path,label\nC:\\img\\0.png,0\n", "line 2: path 'C:\\\\img\\\\0.png' is absolute"),
        ("path,label\na/../../x.png,0\n", "line 2: path 'a/../../x.png' has a '..'"),
        ('path,label\n"a/0.png,0\n', "line 2: not valid CSV"),
    ],
)
def test_a_bad_list_is_one_line_naming_the_file_and_the_row(root: Path, text: str, expected: str) -> None:
    listed = write_list(root, text)
    with pytest.raises(DataError) as caught:
        FileList(listed, "data.test")
    assert expected in str(caught.value)
    assert caught.value.file == str(listed) and caught.value.field == "data.test"
    assert "\n" not in str(caught.value)


def test_an_unknown_class_name_names_its_line(root: Path) -> None:
    listed = write_list(root, "path,label\na/0.png,ant\nb/2.png,dog\n")
    with pytest.raises(DataError, match="line 3: class 'dog' is not in the class_names file \\(3 names\\)"):
        FileList(listed, "data.test", CLASSES)


def test_a_broken_link_is_refused_and_a_link_to_a_file_is_followed(root: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere.png", root / "dead.png")
    os.symlink(root / "5.png", root / "alias.png")
    with pytest.raises(DataError, match="line 2: image 'dead.png' is a broken symbolic link"):
        FileList(write_list(root, "path,label\ndead.png,0\n"), "data.test")
    images = FileList(write_list(root, "path,label\nalias.png,0\n"), "data.test")
    assert images.read([0], BIG)[1] == [hashlib.sha256((root / "5.png").read_bytes()).hexdigest()]


@pytest.mark.parametrize(("name", "expected"), [("list.txt", "not '.txt'"), ("list", "not 'no suffix'")])
def test_only_csv_and_tsv_files_are_lists(root: Path, name: str, expected: str) -> None:
    with pytest.raises(DataError, match=f"a file list is a .csv \\(comma\\) or .tsv \\(tab\\) file, {expected}"):
        FileList(write_list(root, "path,label\na/0.png,0\n", name), "data.test")


def test_a_list_that_is_not_utf8_or_missing_is_refused(root: Path) -> None:
    listed = root / "list.csv"
    listed.write_bytes(b"path,label\n\xff.png,0\n")
    with pytest.raises(DataError, match="the file list is not UTF-8 text"):
        FileList(listed, "data.test")
    with pytest.raises(DataError, match="not found") as caught:
        FileList(root / "absent.csv", "data.test")
    assert caught.value.field == "data.test.path"


def test_the_report_records_the_lists_digest_and_older_records_still_parse(root: Path) -> None:
    from prunegate.data import Manifest
    from prunegate.report.schema import DataRecord

    images = FileList(write_list(root, "path,label\na/0.png,0\n"), "data.test")
    record = DataRecord.model_validate({"name": "test", **Manifest(images.describe(), np.arange(1)).to_dict()})
    assert record.model_dump()["list_sha256"] == images.list_sha256
    older = {"name": "test", "format": "imagefolder", "path": "x", "size": 1, "used": 1, "sha256": "0" * 64}
    assert "list_sha256" not in DataRecord.model_validate(older).model_dump()  # written as before
