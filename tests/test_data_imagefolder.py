from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from prunegate.data import Manifest, batches, select
from prunegate.data.imagefolder import FlatImageFolder, ImageFolder
from prunegate.errors import DataError

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-test-jpeg"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BIG = 10**9  # a max_pixels that refuses nothing


def random_rgb(seed: int, height: int = 10, width: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(array).save(path, **options)
    return path


def pil_rgb(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """zebra/ (2 PNGs), ant/ (1 PNG, 1 JPEG, a text file), cat/ (1 PNG): classes sort to ant, cat, zebra."""
    root = tmp_path / "images"
    save(root / "zebra" / "b.png", random_rgb(0))
    save(root / "zebra" / "a.png", random_rgb(1, 16, 8))
    save(root / "ant" / "x.png", random_rgb(2))
    save(root / "ant" / "y.jpg", random_rgb(3), quality=90)
    (root / "ant" / "notes.txt").write_text("not an image")
    save(root / "cat" / "0.png", random_rgb(4, 6, 6))
    return root


def test_labels_and_classes_follow_sorted_folder_names(folder: Path) -> None:
    images = ImageFolder(folder, "data.test")
    assert images.classes == ["ant", "cat", "zebra"]
    assert [f.relative_to(folder).as_posix() for f in images.files] == [
        "ant/x.png", "ant/y.jpg", "cat/0.png", "zebra/a.png", "zebra/b.png"]
    assert images.labels.tolist() == [0, 0, 1, 2, 2] and len(images) == 5
    assert images.describe() == {"format": "imagefolder", "path": str(folder), "size": 5,
                                 "classes": ["ant", "cat", "zebra"]}


def test_png_decode_equals_pil_exactly(folder: Path) -> None:
    images = ImageFolder(folder, "data.test")
    pictures, digests = images.read(list(range(len(images))), BIG)
    for file, picture in zip(images.files, pictures):
        if file.suffix == ".png":
            assert np.array_equal(picture.numpy(), pil_rgb(file)), file
    assert len(set(digests)) == len(digests)


def test_jpeg_decode_is_close_to_pil(folder: Path) -> None:
    images = ImageFolder(folder, "data.test")
    picture = images.read([1], BIG)[0][0].numpy()
    assert picture.shape == (10, 12, 3)
    assert np.abs(picture.astype(int) - pil_rgb(folder / "ant" / "y.jpg")).max() <= 2


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_other_png_modes_decode_to_pils_rgb(tmp_path: Path, mode: str) -> None:
    file = tmp_path / "set" / "c" / "img.png"
    file.parent.mkdir(parents=True)
    PIL.Image.fromarray(random_rgb(5)).convert(mode).save(file)
    picture = ImageFolder(tmp_path / "set", "data.test").read([0], BIG)[0][0]
    assert np.array_equal(picture.numpy(), pil_rgb(file))


@pytest.mark.parametrize("suffix", ["bmp", "gif", "webp", "tif"])
def test_every_listed_suffix_decodes(tmp_path: Path, suffix: str) -> None:
    file = save(tmp_path / "set" / "c" / f"img.{suffix}", random_rgb(6), **({"lossless": True} if suffix == "webp" else {}))
    picture = ImageFolder(tmp_path / "set", "data.test").read([0], BIG)[0][0]
    assert np.array_equal(picture.numpy(), pil_rgb(file))


@pytest.mark.parametrize("name", ["a.png", "y.jpg"])
def test_truncated_image_is_a_data_error_naming_the_file(tmp_path: Path, name: str) -> None:
    file = save(tmp_path / "set" / "c" / name, random_rgb(7, 32, 32), **({"quality": 90} if name.endswith("jpg") else {}))
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(DataError) as caught:
        ImageFolder(tmp_path / "set", "data.test").read([0], BIG)
    assert str(file) in str(caught.value) and caught.value.field == "data.test"


@pytest.mark.parametrize("name", ["garbage.png", "garbage.bmp", "empty.jpg"])
def test_corrupt_image_is_a_data_error_naming_the_file(tmp_path: Path, name: str) -> None:
    file = tmp_path / "set" / "c" / name
    file.parent.mkdir(parents=True)
    file.write_bytes(b"" if name.startswith("empty") else b"\x89PNG not really" * 4)
    with pytest.raises(DataError) as caught:
        ImageFolder(tmp_path / "set", "data.test").read([0], BIG)
    assert str(file) in str(caught.value)


def test_corrupt_image_stops_the_stream_with_a_data_error(tmp_path: Path) -> None:
    save(tmp_path / "set" / "c" / "a.png", random_rgb(0))
    (tmp_path / "set" / "c" / "b.png").write_bytes(b"nonsense")
    images = ImageFolder(tmp_path / "set", "data.test")
    with pytest.raises(DataError, match="b.png"):
        list(batches(images, np.arange(2), 8, 1, 0, BIG))


def test_max_pixels_refuses_a_large_image(tmp_path: Path) -> None:
    big = save(tmp_path / "set" / "c" / "big.png", random_rgb(8, 20, 30))
    images = ImageFolder(tmp_path / "set", "data.test")
    with pytest.raises(DataError) as caught:
        images.read([0], 599)
    assert str(big) in str(caught.value) and "600" in str(caught.value)
    assert images.read([0], 600)[0][0].shape == (20, 30, 3)


@pytest.mark.parametrize("layout", ["empty", "empty class folders", "only text files"])
def test_folder_without_images_is_a_data_error(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "set"
    root.mkdir()
    if layout != "empty":
        (root / "cat").mkdir()
    if layout == "only text files":
        (root / "cat" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as caught:
        ImageFolder(root, "data.ood.0")
    assert str(root) in str(caught.value) and caught.value.field == "data.ood.0"


def test_missing_folder_and_file_instead_of_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as caught:
        ImageFolder(tmp_path / "absent", "data.test")
    assert str(tmp_path / "absent") in str(caught.value)
    file = tmp_path / "file.png"
    file.write_bytes(b"x")
    with pytest.raises(DataError, match="folder"):
        ImageFolder(file, "data.test")


def manifest_digest(root: Path) -> str:
    images = ImageFolder(root, "data.test")
    indices = np.arange(len(images))
    manifest = Manifest(images.describe(), indices)
    for ids, _, _, digests in batches(images, indices, 8, 2, 0, BIG):
        manifest.add(ids, digests)
    return manifest.to_dict()["sha256"]


def test_manifest_digest_changes_when_one_images_bytes_change(folder: Path) -> None:
    before = manifest_digest(folder)
    assert manifest_digest(folder) == before
    changed = random_rgb(0)
    changed[0, 0, 0] ^= 1
    save(folder / "zebra" / "b.png", changed)
    assert manifest_digest(folder) != before


def test_flat_folder_labels_come_from_file_names(tmp_path: Path) -> None:
    for name in ["cifar10_1_8.png", "cifar10_0_3.png", "other_12.jpg"]:
        save(tmp_path / name, random_rgb(len(name)))
    (tmp_path / "notes.txt").write_text("x")
    images = FlatImageFolder(tmp_path, "data.test")
    assert [f.name for f in images.files] == ["cifar10_0_3.png", "cifar10_1_8.png", "other_12.jpg"]
    assert images.labels.tolist() == [3, 8, 12] and images.classes is None
    assert images.describe()["format"] == "imagefolder-flat"


def test_flat_folder_file_without_a_label_is_a_data_error(tmp_path: Path) -> None:
    save(tmp_path / "img_1.png", random_rgb(0))
    bad = save(tmp_path / "photo.png", random_rgb(1))
    with pytest.raises(DataError) as caught:
        FlatImageFolder(tmp_path, "data.test")
    assert str(bad) in str(caught.value)


def test_empty_flat_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no image files"):
        FlatImageFolder(tmp_path, "data.test")


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason=f"real data not present at {SHARED_CIFAR}")
def test_real_cifar10_jpeg_folder() -> None:
    images = ImageFolder(SHARED_CIFAR, "data.test")
    assert len(images) == 10_000 and images.classes == CIFAR10_CLASSES
    assert np.bincount(images.labels).tolist() == [1000] * 10
    chosen = select(images.labels, 2000)
    assert len(chosen) == 2000 and np.bincount(images.labels[chosen]).tolist() == [200] * 10
    pictures, _ = images.read([int(chosen[0])], BIG)
    assert pictures[0].shape == (32, 32, 3)


# --- class names in the model's order (a folder holding some of the classes) -------------------

from prunegate.data import open_source  # noqa: E402
from prunegate.data.imagefolder import read_class_names  # noqa: E402
from prunegate.policy import DataSource  # noqa: E402


def test_class_names_give_the_models_label_indices(folder: Path, tmp_path: Path) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("bee\nzebra\nant\ndog\ncat\n")  # the model's order; bee and dog have no folder
    images = open_source(DataSource(format="imagefolder", path=str(folder), class_names=str(names)), Path, "data.test")
    assert images.labels.tolist() == [2, 2, 4, 1, 1]  # ant, ant, cat, zebra, zebra
    assert images.classes == ["bee", "zebra", "ant", "dog", "cat"]
    assert images.describe()["classes"] == images.classes


def test_flat_folders_use_the_name_prefix_with_class_names(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    save(root / "n02_robin.png", random_rgb(0))
    save(root / "n01_tench.png", random_rgb(1))
    names = tmp_path / "wnids.txt"
    names.write_text("n00\nn01\nn02\n")
    images = open_source(DataSource(format="imagefolder-flat", path=str(root), class_names=str(names)), Path, "data.ood.0")
    assert images.labels.tolist() == [1, 2] and images.classes == ["n00", "n01", "n02"]


@pytest.mark.parametrize(("text", "message"), [("a\n\nb\n", "line 2 is blank"), ("a\nb\na\n", "listed twice"),
                                               ("\n", "no class names")])
def test_bad_class_name_files_are_data_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        read_class_names(path, "data.test.class_names")
    assert "classes.txt" in str(error.value) and "data.test.class_names" in str(error.value)


def test_a_folder_missing_from_the_class_names_is_named(folder: Path, tmp_path: Path) -> None:
    names = tmp_path / "classes.txt"
    names.write_text("ant\ncat\n")
    with pytest.raises(DataError, match="'zebra' is not in the class_names file") as error:
        ImageFolder(folder, "data.test", read_class_names(names, "data.test.class_names"))
    assert "zebra" in str(error.value)


def test_class_names_only_for_image_folders() -> None:
    with pytest.raises(ValueError, match="class_names is for the imagefolder"):
        DataSource(format="npz", path="x.npz", class_names="classes.txt")
