"""Format `parquet`: image bytes and labels in columns, labels read up front, images by row group."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prunegate.data import Manifest, batches, open_source, select
from prunegate.data.imagefolder import ImageFolder
from prunegate.data.parquet import ParquetImages
from prunegate.errors import DataError
from prunegate.policy import DataSource
from tests.test_data_imagefolder import BIG, pil_rgb, random_rgb, save
from tests.test_data_webdataset import png

CLASSES = ["ant", "cat", "zebra"]


@pytest.fixture
def tree(tmp_path: Path) -> ImageFolder:
    """An image folder of PNGs and JPEGs in three classes (ant 3, cat 2, zebra 2 images)."""
    folder = tmp_path / "tree"
    names = ["ant/a.png", "ant/b.jpg", "ant/c.png", "cat/d.png", "cat/g.jpg", "zebra/e.png", "zebra/f.jpg"]
    for i, name in enumerate(names):
        save(folder / name, random_rgb(i, 8 + i, 10), **({"quality": 90} if name.endswith(".jpg") else {}))
    return ImageFolder(folder, "data.test")


def write_parquet(path: Path, columns: dict, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def hugging_face_export(folder: ImageFolder, path: Path, row_group_size: int = 3) -> Path:
    """As `datasets` writes an image set: image {bytes, path}, label int64, small row groups."""
    images = [{"bytes": f.read_bytes(), "path": f.name} for f in folder.files]
    return write_parquet(path, {"image": images, "label": pa.array(folder.labels, pa.int64())}, row_group_size)


def data_digest(reader) -> str:
    manifest = Manifest(reader.describe(), select(reader.labels, 5))
    chosen = manifest.indices.tolist()
    manifest.add(np.asarray(chosen), reader.read(chosen, BIG)[1])
    return manifest.to_dict()["sha256"]


def test_a_hugging_face_export_of_a_folder_is_that_folder(tree: ImageFolder, tmp_path: Path) -> None:
    path = hugging_face_export(tree, tmp_path / "test.parquet")
    images = ParquetImages(path, "data.test")
    assert np.array_equal(images.labels, tree.labels) and len(images) == 7
    everything = list(range(7))
    pictures, digests = images.read(everything, BIG)
    assert digests == tree.read(everything, BIG)[1]
    for picture, file, expected in zip(pictures, tree.files, tree.read(everything, BIG)[0]):
        assert np.array_equal(picture.numpy(), expected.numpy())
        if file.suffix == ".png":
            assert np.array_equal(picture.numpy(), pil_rgb(file))  # Pillow, the independent reference
    assert select(images.labels, 5).tolist() == select(tree.labels, 5).tolist()
    assert data_digest(images) == data_digest(tree)
    assert images.describe() == {
        "format": "parquet",
        "path": str(path),
        "size": 7,
        "files_sha256": {str(path): hashlib.sha256(path.read_bytes()).hexdigest()},
    }
    assert images.sample_name(4) == "test.parquet #4"


def test_a_binary_column_in_a_folder_of_files_reads_them_in_name_order(tree: ImageFolder, tmp_path: Path) -> None:
    raw = [f.read_bytes() for f in tree.files]
    second = write_parquet(tmp_path / "set" / "part-1.parquet", {"image": raw[4:], "label": tree.labels[4:]})
    first = write_parquet(tmp_path / "set" / "part-0.parquet", {"image": raw[:4], "label": tree.labels[:4]})
    (tmp_path / "set" / "notes.txt").write_text("not a part")
    images = ParquetImages(tmp_path / "set", "data.test")
    assert images.files == [first, second] and np.array_equal(images.labels, tree.labels)
    assert images.read([3, 4, 6], BIG)[1] == tree.read([3, 4, 6], BIG)[1]
    assert images.sample_name(5) == "part-1.parquet #1"
    assert set(images.describe()["files_sha256"]) == {str(first), str(second)}


def test_images_are_read_by_row_group_keeping_only_the_last(tree: ImageFolder, tmp_path: Path) -> None:
    images = ParquetImages(hugging_face_export(tree, tmp_path / "t.parquet", row_group_size=2), "data.test")
    images.read([5], BIG)
    assert images._cached is not None and images._cached[0] == (0, 2) and len(images._cached[1]) == 2
    images.read([0, 1], BIG)
    assert images._cached[0] == (0, 0)
    got = [digest for batch in batches(images, np.arange(7), 8, 3, 1, BIG) for digest in batch[3]]
    assert got == tree.read(list(range(7)), BIG)[1]  # in a worker, which gets no cache


def test_class_names_look_up_text_labels_and_index_integer_ones(tree: ImageFolder, tmp_path: Path) -> None:
    raw = [f.read_bytes() for f in tree.files]
    names = ["zebra", "cat", "ant", "dog"]
    words = [CLASSES[label] for label in tree.labels]
    for labels in (pa.array(words), pa.array(words).dictionary_encode(), pa.array(words, pa.large_string())):
        path = write_parquet(tmp_path / "t.parquet", {"png": raw, "cls": labels})
        images = ParquetImages(path, "data.test", names, "png", "cls")
        assert images.labels.tolist() == [2, 2, 2, 1, 1, 0, 0] and images.classes == names
    path = write_parquet(tmp_path / "n.parquet", {"image": raw, "label": pa.array(tree.labels, pa.int16())})
    assert ParquetImages(path, "data.test", names).labels.tolist() == tree.labels.tolist()
    with pytest.raises(DataError, match="row 5: 'label' 2 is past the class_names file's 2 names \\(0-1\\)"):
        ParquetImages(path, "data.test", ["ant", "cat"])


def test_the_policy_fields_reach_the_reader(tree: ImageFolder, tmp_path: Path) -> None:
    raw = [f.read_bytes() for f in tree.files]
    write_parquet(tmp_path / "t.parquet", {"jpeg": raw, "y": [CLASSES[label] for label in tree.labels]})
    (tmp_path / "names.txt").write_text("\n".join(CLASSES))
    spec = DataSource.model_validate(
        {"format": "parquet", "path": "t.parquet", "class_names": "names.txt", "image_column": "jpeg",
         "label_column": "y"}
    )  # fmt: skip
    images = open_source(spec, lambda name: tmp_path / name, "data.test")
    assert isinstance(images, ParquetImages) and images.labels.tolist() == tree.labels.tolist()


IMAGE = png(3)


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"img": [IMAGE], "label": [0]}, "column 'image' (data.test.image_column) is not in the file's columns"),
        ({"image": [IMAGE], "cls": [0]}, "column 'label' (data.test.label_column) is not in the file's columns"),
        ({"image": [1], "label": [0]}, "column 'image' is int64: expected image file bytes"),
        ({"image": [{"path": "a.png"}], "label": [0]}, "column 'image' is struct<path: string>: expected image"),
        ({"image": [IMAGE], "label": [0.0]}, "column 'label' is double: expected integer labels"),
        ({"image": [IMAGE], "label": ["cat"]}, "column 'label' holds text: give the policy's class_names file"),
        ({"image": [IMAGE] * 3, "label": [0, None, 1]}, "row 1: column 'label' is empty (null)"),
        ({"image": [IMAGE] * 3, "label": [0, 1, -4]}, "row 2: 'label' -4 is not a non-negative integer label"),
        ({"image": [IMAGE], "label": [2**40]}, "row 0: 'label' 1099511627776 is too large for a class index"),
        ({"image": pa.array([], pa.binary()), "label": pa.array([], pa.int64())}, "no rows in the Parquet files"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_row_and_column(tmp_path: Path, columns: dict, expected: str) -> None:
    path = write_parquet(tmp_path / "t.parquet", columns)
    with pytest.raises(DataError) as caught:
        ParquetImages(path, "data.test")
    assert expected in str(caught.value)
    assert caught.value.file == str(path) and caught.value.field == "data.test"
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (None, "row 1: column 'image' is empty (null)"),
        ({"bytes": None, "path": "elsewhere/a.png"}, "row 1: column 'image' has no image bytes (only the path 'elsewh"),
        (b"\x89PNG not really", "row 1: column 'image': cannot decode image: corrupt, truncated or not an image file"),
        (b"", "row 1: column 'image': cannot decode image: the file is empty"),
    ],
)
def test_a_bad_image_is_found_when_read_naming_its_row(tmp_path: Path, image: object, expected: str) -> None:
    if isinstance(image, dict) or image is None:
        cells = pa.array(
            [{"bytes": IMAGE, "path": None}, image], pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        )
    else:
        cells = pa.array([IMAGE, image], pa.binary())
    path = write_parquet(tmp_path / "t.parquet", {"image": cells, "label": [0, 1]})
    images = ParquetImages(path, "data.test")
    assert images.read([0], BIG)[1] == [hashlib.sha256(IMAGE).hexdigest()]
    with pytest.raises(DataError) as caught:
        images.read([1], BIG)
    assert expected in str(caught.value) and caught.value.file == str(path)


def test_max_pixels_is_checked_before_decoding(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", {"image": [png(0, 10, 9)], "label": [0]})
    with pytest.raises(DataError, match="row 0: column 'image': image has 90 pixels, over the limit of 50"):
        ParquetImages(path, "data.test").read([0], 50)


def test_what_is_not_a_parquet_file_or_set_is_refused(tmp_path: Path) -> None:
    (tmp_path / "noise.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="not a readable Parquet file") as caught:
        ParquetImages(tmp_path / "noise.parquet", "data.test")
    assert caught.value.file == str(tmp_path / "noise.parquet")
    (tmp_path / "t.csv").write_text("image,label\n")
    with pytest.raises(DataError, match="a .parquet file or a folder of them, not '.csv'"):
        ParquetImages(tmp_path / "t.csv", "data.test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet files in the folder"):
        ParquetImages(tmp_path / "empty", "data.test")
    with pytest.raises(DataError, match="not found") as caught:
        ParquetImages(tmp_path / "absent.parquet", "data.test")
    assert caught.value.field == "data.test.path"


def test_without_pyarrow_the_error_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    path = write_parquet(tmp_path / "t.parquet", {"image": [IMAGE], "label": [0]})
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match="format parquet needs pyarrow: pip install 'prunegate\\[parquet\\]'") as caught:
        ParquetImages(path, "data.test")
    assert caught.value.file == str(path) and caught.value.field == "data.test"


def test_the_policy_takes_label_map_and_refuses_the_other_formats_fields() -> None:
    DataSource.model_validate({"format": "parquet", "path": "t.parquet", "label_map": "m.json"})
    with pytest.raises(ValueError, match="format parquet does not read path_column"):
        DataSource.model_validate({"format": "parquet", "path": "t.parquet", "path_column": "x"})
