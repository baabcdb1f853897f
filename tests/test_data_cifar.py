from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prunegate.data import open_source
from prunegate.data.cifar import Cifar10Binary
from prunegate.errors import DataError
from prunegate.policy import load_policy

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_record(label: int, image: np.ndarray) -> bytes:
    """The documented layout: a label byte, then the 1024 red, 1024 green and 1024 blue bytes of
    the 32x32 image, each plane row by row."""
    return bytes([label]) + b"".join(image[:, :, c].tobytes() for c in range(3))


def write_cifar(path: Path, n: int = 6, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = [(7 * i) % 10 for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(cifar_record(label, image) for label, image in zip(labels, images)))
    return images, labels


def test_binary_batch_gives_hwc_images_labels_and_classes(tmp_path: Path) -> None:
    path = tmp_path / "test_batch.bin"
    images, labels = write_cifar(path)
    data = Cifar10Binary(path, "data.test")
    assert data.labels.tolist() == labels and data.classes == CLASSES
    pictures, digests = data.read(list(range(6)), 10**9)
    for picture, image in zip(pictures, images):
        assert picture.shape == (32, 32, 3) and np.array_equal(picture.numpy(), image)
    assert len(set(digests)) == 1 and data.describe()["format"] == "cifar10-binary"


def test_folder_path_reads_its_test_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-bin" / "test_batch.bin", n=3)
    data = Cifar10Binary(tmp_path / "cifar-10-batches-bin", "data.test")
    assert len(data) == 3 and data.path.name == "test_batch.bin"


@pytest.mark.parametrize("cut", [1, 3072, 3073 + 5])
def test_partial_record_is_a_data_error_naming_the_file(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "test_batch.bin"
    write_cifar(path, n=2)
    path.write_bytes(path.read_bytes()[: 2 * 3073 - cut] if cut < 3073 else path.read_bytes()[:cut])
    with pytest.raises(DataError) as caught:
        Cifar10Binary(path, "data.test")
    assert str(path) in str(caught.value) and "3073" in str(caught.value)


def test_empty_file_and_bad_label_byte_are_data_errors(tmp_path: Path) -> None:
    path = tmp_path / "test_batch.bin"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="3073"):
        Cifar10Binary(path, "data.test")
    black = np.zeros((32, 32, 3), np.uint8)
    path.write_bytes(cifar_record(3, black) + cifar_record(12, black))
    with pytest.raises(DataError, match="12") as caught:
        Cifar10Binary(path, "data.test")
    assert str(path) in str(caught.value)


def test_folder_without_test_batch_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as caught:
        Cifar10Binary(tmp_path, "data.test")
    assert "test_batch.bin" in str(caught.value)


def test_open_source_picks_the_cifar_reader(tmp_path: Path, write_policy) -> None:
    write_cifar(tmp_path / "cifar" / "test_batch.bin", n=2)
    data = {"test": {"format": "cifar10-binary", "path": "cifar"}}
    policy = load_policy(write_policy(tmp_path / "policy.yaml", data=data))
    data = open_source(policy.data.test, policy.resolve, "data.test")
    assert isinstance(data, Cifar10Binary) and len(data) == 2
