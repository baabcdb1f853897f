from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from prunegate.data import open_source
from prunegate.data.arrays import NpyImages, NpzImages
from prunegate.errors import DataError
from prunegate.policy import load_policy

BIG = 10**9


def arrays(n: int = 5, size: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), (np.arange(n) % 3).astype(np.int64)


def npz_error(path: Path, **keys) -> DataError:
    with pytest.raises(DataError) as caught:
        NpzImages(path, "data.test", **keys)
    return caught.value


def test_npz_reads_images_and_labels(tmp_path: Path) -> None:
    images, labels = arrays()
    path = tmp_path / "set.npz"
    np.savez_compressed(path, images=images, labels=labels.astype(np.uint8))
    data = NpzImages(path, "data.test")
    assert len(data) == 5 and data.labels.tolist() == labels.tolist() and data.labels.dtype == np.int64
    pictures, digests = data.read([4, 0], BIG)
    assert np.array_equal(pictures[0].numpy(), images[4]) and np.array_equal(pictures[1].numpy(), images[0])
    assert digests == [hashlib.sha256(path.read_bytes()).hexdigest()] * 2
    assert data.describe() == {"format": "npz", "path": str(path), "size": 5}


def test_npz_with_custom_keys(tmp_path: Path) -> None:
    images, labels = arrays()
    path = tmp_path / "set.npz"
    np.savez(path, x=images, y=labels)
    assert NpzImages(path, "data.test", "x", "y").labels.tolist() == labels.tolist()
    error = npz_error(path)  # default keys 'images' and 'labels' are not there
    assert "'images'" in str(error) and str(path) in str(error)


def test_greyscale_nhw_images_become_rgb(tmp_path: Path) -> None:
    images, labels = arrays()
    grey = images[..., 0]
    path = tmp_path / "grey.npz"
    np.savez(path, images=grey, labels=labels)
    picture = NpzImages(path, "data.test").read([2], BIG)[0][0].numpy()
    assert picture.shape == (6, 6, 3) and all(np.array_equal(picture[..., c], grey[2]) for c in range(3))


@pytest.mark.parametrize(
    ("images", "labels", "expected"),
    [
        (np.zeros((4, 6, 6, 3), np.uint8), np.zeros(3, np.int64), "4 images but 3 labels"),
        (np.zeros((4, 6, 6, 3), np.float32), np.zeros(4, np.int64), "uint8"),
        (np.zeros((4, 6, 6, 3), np.uint8), np.zeros(4, np.float32), "integer"),
        (np.zeros((4, 6, 6, 3), np.uint8), np.zeros((4, 1), np.int64), "1-D"),
        (np.zeros((4, 6, 6, 3), np.uint8), np.array([0, 1, -1, 2]), ">= 0"),
        (np.zeros((4, 3, 6, 6), np.uint8), np.zeros(4, np.int64), "NHWC"),
        (np.zeros((4, 6), np.uint8), np.zeros(4, np.int64), "NHWC"),
        (np.zeros((0, 6, 6, 3), np.uint8), np.zeros(0, np.int64), "empty"),
    ],
)
def test_unusable_arrays_are_data_errors_naming_the_file(tmp_path: Path, images, labels, expected: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, images=images, labels=labels)
    error = npz_error(path)
    assert expected in str(error) and str(path) in str(error) and error.field == "data.test"


@pytest.mark.parametrize("content", [b"", b"not a zip archive at all", b"PK\x03\x04truncated"])
def test_unreadable_npz_is_a_data_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    assert str(path) in str(npz_error(path))


def test_truncated_npz_is_a_data_error(tmp_path: Path) -> None:
    images, labels = arrays(20, 16)
    path = tmp_path / "cut.npz"
    np.savez(path, images=images, labels=labels)
    path.write_bytes(path.read_bytes()[:-200])
    assert str(path) in str(npz_error(path))


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, images=np.array([object()] * 2, dtype=object), labels=np.zeros(2, np.int64))
    assert str(path) in str(npz_error(path))


def test_missing_npz_and_folder_instead_of_file(tmp_path: Path) -> None:
    assert "not found" in str(npz_error(tmp_path / "absent.npz"))
    assert "folder" in str(npz_error(tmp_path))


def test_npy_pair(tmp_path: Path) -> None:
    images, labels = arrays()
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels.astype(np.int32))
    data = NpyImages(tmp_path / "x.npy", "data.test", tmp_path / "y.npy")
    assert data.labels.tolist() == labels.tolist()
    assert np.array_equal(data.read([3], BIG)[0][0].numpy(), images[3])
    before = data.read([0], BIG)[1][0]
    np.save(tmp_path / "y.npy", labels[::-1].copy())  # new labels, same images: a new digest
    assert NpyImages(tmp_path / "x.npy", "data.test", tmp_path / "y.npy").read([0], BIG)[1][0] != before


def test_npy_label_problems_name_the_labels_file(tmp_path: Path) -> None:
    images, labels = arrays()
    np.save(tmp_path / "x.npy", images)
    with pytest.raises(DataError) as caught:
        NpyImages(tmp_path / "x.npy", "data.test", tmp_path / "absent.npy")
    assert str(tmp_path / "absent.npy") in str(caught.value) and caught.value.field == "data.test.labels"
    (tmp_path / "y.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError) as caught:
        NpyImages(tmp_path / "x.npy", "data.test", tmp_path / "y.npy")
    assert str(tmp_path / "y.npy") in str(caught.value)
    np.save(tmp_path / "y.npy", labels[:4])
    with pytest.raises(DataError, match="5 images but 4 labels"):
        NpyImages(tmp_path / "x.npy", "data.test", tmp_path / "y.npy")


def test_open_source_resolves_paths_relative_to_the_policy(tmp_path: Path, write_policy) -> None:
    images, labels = arrays()
    (tmp_path / "conf" / "arrays").mkdir(parents=True)
    np.save(tmp_path / "conf" / "arrays" / "x.npy", images)
    np.save(tmp_path / "conf" / "arrays" / "y.npy", labels)
    np.savez(tmp_path / "conf" / "arrays" / "ood.npz", images=images[:2], labels=labels[:2])
    policy = load_policy(write_policy(
        tmp_path / "conf" / "policy.yaml",
        data={"test": {"format": "npy", "path": "arrays/x.npy", "labels": "arrays/y.npy"},
              "ood": [{"name": "o", "format": "npz", "path": "arrays/ood.npz"}]}))
    test = open_source(policy.data.test, policy.resolve, "data.test")
    ood = open_source(policy.data.ood[0], policy.resolve, "data.ood.0")
    assert isinstance(test, NpyImages) and len(test) == 5 and test.path == tmp_path / "conf" / "arrays" / "x.npy"
    assert isinstance(ood, NpzImages) and len(ood) == 2 and ood.field == "data.ood.0"
