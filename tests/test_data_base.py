from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2 as T2

from prunegate.data import CROP_FRACTION, Manifest, batches, fit_to_size, select
from prunegate.data.base import ImageSet, covering_size
from prunegate.errors import DataError


def reference_select(labels: np.ndarray, limit: int | None) -> list[int]:
    """Brute force: deal one sample per class in turn (classes in label order, samples in file
    order), round after round, until `limit` are dealt; return them in file order."""
    if limit is None or limit >= len(labels):
        return list(range(len(labels)))
    queues = {c: [i for i, label in enumerate(labels) if label == c] for c in sorted(set(labels.tolist()))}
    chosen: list[int] = []
    rank = 0
    while len(chosen) < limit:
        for c in queues:
            if rank < len(queues[c]) and len(chosen) < limit:
                chosen.append(queues[c][rank])
        rank += 1
    return sorted(chosen)


def shuffled_labels(per_class: list[int], seed: int) -> np.ndarray:
    labels = np.concatenate([np.full(count, c) for c, count in enumerate(per_class)])
    return np.random.default_rng(seed).permutation(labels).astype(np.int64)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("limit", [1, 7, 10, 33, 100, 149])
def test_select_matches_brute_force(seed: int, limit: int) -> None:
    labels = shuffled_labels([40, 25, 50, 35], seed)
    assert select(labels, limit).tolist() == reference_select(labels, limit)


@pytest.mark.parametrize("limit", [1, 9, 10, 11, 25, 99])
def test_select_is_class_balanced_with_exactly_limit_items(limit: int) -> None:
    labels = shuffled_labels([30, 30, 30, 30, 30, 30, 30, 30, 30, 30], seed=limit)
    chosen = select(labels, limit)
    assert len(chosen) == limit and len(set(chosen.tolist())) == limit
    counts = np.bincount(labels[chosen], minlength=10)
    assert set(counts.tolist()) <= {limit // 10, -(-limit // 10)}


def test_select_is_deterministic_and_in_file_order() -> None:
    labels = shuffled_labels([20, 20, 20], seed=3)
    first, second = select(labels, 31), select(labels.copy(), 31)
    assert first.tolist() == second.tolist()
    assert first.tolist() == sorted(first.tolist())


def test_select_takes_each_class_from_its_first_samples() -> None:
    labels = np.array([2, 0, 0, 1, 2, 1, 0, 2, 1, 0], dtype=np.int64)
    assert select(labels, 3).tolist() == [0, 1, 3]  # the first of each class
    assert select(labels, 6).tolist() == [0, 1, 2, 3, 4, 5]


def test_select_small_class_gives_way_to_the_others() -> None:
    labels = np.array([0] * 2 + [1] * 20 + [2] * 20, dtype=np.int64)
    chosen = select(labels, 12)
    assert np.bincount(labels[chosen]).tolist() == [2, 5, 5]


@pytest.mark.parametrize("limit", [None, 10, 11, 1000])
def test_select_without_a_binding_limit_takes_everything(limit: int | None) -> None:
    labels = shuffled_labels([4, 3, 3], seed=0)
    assert select(labels, limit).tolist() == list(range(10))


def test_fit_to_size_leaves_the_right_size_alone() -> None:
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    assert torch.equal(fit_to_size(image, 8), image)


@pytest.mark.parametrize("shape", [(3, 40, 40), (3, 40, 20), (3, 17, 53), (3, 4, 4), (3, 8, 12)])
def test_fit_to_size_is_resize_short_side_then_centre_crop(shape: tuple[int, int, int]) -> None:
    size = 8
    image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    result = fit_to_size(image, size)
    assert result.shape == (3, size, size) and result.dtype == torch.uint8
    short_side = round(size / 0.875)  # 9
    reference = T2.Compose([T2.Resize(short_side, antialias=True), T2.CenterCrop(size)])
    assert torch.equal(result, reference(image))
    # The classic transforms (float arithmetic, then rounding) agree to within one level.
    classic = T.Compose([T.Resize(short_side, antialias=True), T.CenterCrop(size)])(image.float())
    assert (result.float() - classic.round().clamp(0, 255)).abs().max() <= 1


def test_fit_to_size_uses_the_usual_256_for_224() -> None:
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    reference = T2.Compose([T2.Resize(256, antialias=True), T2.CenterCrop(224)])
    assert torch.equal(fit_to_size(image, 224), reference(image))


class ListImages(ImageSet):
    """An in-memory ImageSet: images of any size, a digest per image; `broken` indices raise."""

    format = "memory"

    def __init__(self, images: list[torch.Tensor], labels: list[int], broken: tuple[int, ...] = ()):
        super().__init__(Path("memory"), "data.test")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.broken = broken

    def read(self, indices: list[int], max_pixels: int) -> tuple[list[torch.Tensor], list[str]]:
        for i in indices:
            if i in self.broken:
                raise self.error("cannot decode image", Path(f"image-{i}.png"))
        return [self.images[i] for i in indices], [f"digest-{i}" for i in indices]


def memory_images(n: int, broken: tuple[int, ...] = ()) -> ListImages:
    generator = torch.Generator().manual_seed(1)
    sizes = [(8, 8), (16, 12), (5, 9)]
    images = [torch.randint(0, 256, (*sizes[i % 3], 3), dtype=torch.uint8, generator=generator) for i in range(n)]
    return ListImages(images, [i % 3 for i in range(n)], broken)


def test_batches_stream_in_order_with_a_partial_last_batch() -> None:
    images = memory_images(10)
    indices = np.array([0, 2, 3, 5, 6, 7, 9])
    out = list(batches(images, indices, size=8, batch_size=3, workers=0, max_pixels=10**6))
    assert [len(ids) for ids, *_ in out] == [3, 3, 1]
    assert torch.cat([ids for ids, *_ in out]).tolist() == indices.tolist()
    for ids, pictures, labels, digests in out:
        assert pictures.shape == (len(ids), 8, 8, 3) and pictures.dtype == torch.uint8
        assert labels.tolist() == [i % 3 for i in ids.tolist()]
        assert digests == [f"digest-{i}" for i in ids.tolist()]
        for i, picture in zip(ids.tolist(), pictures):
            expected = fit_to_size(images.images[i].permute(2, 0, 1), 8).permute(1, 2, 0)
            assert torch.equal(picture, expected)


def test_batches_in_a_worker_process_equal_batches_in_process() -> None:
    images = memory_images(7)
    indices = np.arange(7)
    inline = list(batches(images, indices, 8, 4, 0, 10**6))
    background = list(batches(images, indices, 8, 4, 1, 10**6))
    assert len(inline) == len(background) == 2
    for a, b in zip(inline, background):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) and a[3] == b[3]


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_raise_the_readers_data_error(workers: int) -> None:
    images = memory_images(6, broken=(4,))
    with pytest.raises(DataError) as caught:
        list(batches(images, np.arange(6), 8, 2, workers, 10**6))
    assert "image-4.png" in str(caught.value) and caught.value.field == "data.test"


def test_manifest_digest_pins_indices_and_contents() -> None:
    def digest(indices: list[int], contents: dict[int, str]) -> str:
        manifest = Manifest({"format": "memory"}, np.asarray(indices))
        manifest.add(torch.tensor(list(contents)), list(contents.values()))
        return manifest.to_dict()["sha256"]

    base = digest([0, 1, 2], {0: "a", 1: "b", 2: "c"})
    assert base == digest([0, 1, 2], {2: "c", 0: "a", 1: "b"})  # order of arrival does not matter
    assert base != digest([0, 1, 2], {0: "a", 1: "B", 2: "c"})
    assert base != digest([0, 1, 3], {0: "a", 1: "b", 3: "c"})
    manifest = Manifest({"format": "memory", "size": 5}, np.asarray([0, 1]))
    assert manifest.to_dict()["used"] == 2 and manifest.to_dict()["size"] == 5


# --- require_path: links that lead nowhere are named as such, not "not found" (issue #13) -------

import os  # noqa: E402

from prunegate.data.base import require_path  # noqa: E402


@pytest.mark.parametrize("directory", [False, True])
def test_require_path_names_a_link_loop_and_a_broken_link(tmp_path: Path, directory: bool) -> None:
    loop, broken = tmp_path / "loop", tmp_path / "broken.npz"
    os.symlink("loop", loop)
    os.symlink(tmp_path / "gone.npz", broken)
    with pytest.raises(DataError) as caught:
        require_path(loop, "data.test.path", directory=directory)
    assert caught.value.file == str(loop) and caught.value.detail == "is a symbolic link loop"
    with pytest.raises(DataError) as caught:
        require_path(broken, "data.test.path", directory=directory)
    assert caught.value.detail == f"is a broken symbolic link (points to {tmp_path / 'gone.npz'})"
    assert caught.value.field == "data.test.path"


def test_require_path_names_a_dead_link_above_the_path(tmp_path: Path) -> None:
    os.symlink(tmp_path / "unmounted", tmp_path / "data")
    with pytest.raises(DataError) as caught:
        require_path(tmp_path / "data" / "x.npz", "data.test.path", directory=False)
    assert caught.value.file == str(tmp_path / "data" / "x.npz")
    assert caught.value.detail == (
        f"not found: the folder {tmp_path / 'data'} is a broken symbolic link (points to {tmp_path / 'unmounted'})"
    )


def test_require_path_follows_good_links_and_still_says_not_found(tmp_path: Path) -> None:
    (tmp_path / "real.npz").write_bytes(b"x")
    os.symlink("real.npz", tmp_path / "link.npz")
    require_path(tmp_path / "link.npz", "data.test.path", directory=False)
    with pytest.raises(DataError, match="expected a folder"):
        require_path(tmp_path / "link.npz", "data.test.path", directory=True)
    with pytest.raises(DataError) as caught:
        require_path(tmp_path / "absent.npz", "data.test.path", directory=False)
    assert caught.value.detail == "not found"


@pytest.mark.parametrize(("image_hw", "size"), [((20, 10), (8, 6)), ((10, 20), (6, 8)), ((7, 9), (12, 5))])
def test_fit_to_size_covers_a_height_and_width_keeping_the_aspect_ratio(image_hw, size) -> None:
    image = torch.arange(3 * image_hw[0] * image_hw[1], dtype=torch.float32).view(3, *image_hw)
    fitted = fit_to_size(image, size)
    assert tuple(fitted.shape) == (3, *size)
    resized = covering_size(image_hw, size, CROP_FRACTION)
    assert resized[0] >= size[0] / CROP_FRACTION - 0.5 and resized[1] >= size[1] / CROP_FRACTION - 0.5
    # one scale for both sides (up to rounding), the smallest that covers the size / 0.875
    scale = max(size[0] / image_hw[0], size[1] / image_hw[1]) / CROP_FRACTION
    assert resized == [max(size[0], round(image_hw[0] * scale)), max(size[1], round(image_hw[1] * scale))]
    assert fit_to_size(image, (size[0], size[0]))[0].shape == fit_to_size(image, size[0])[0].shape
