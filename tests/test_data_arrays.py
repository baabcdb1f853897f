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
    policy = load_policy(
        write_policy(
            tmp_path / "conf" / "policy.yaml",
            data={
                "test": {"format": "npy", "path": "arrays/x.npy", "labels": "arrays/y.npy"},
                "ood": [{"name": "o", "format": "npz", "path": "arrays/ood.npz"}],
            },
        )
    )
    test = open_source(policy.data.test, policy.resolve, "data.test")
    ood = open_source(policy.data.ood[0], policy.resolve, "data.ood.0")
    assert isinstance(test, NpyImages) and len(test) == 5 and test.path == tmp_path / "conf" / "arrays" / "x.npy"
    assert isinstance(ood, NpzImages) and len(ood) == 2 and ood.field == "data.ood.0"


# --- lazy reading: memory maps, streamed compressed members, bounds (issue #13) ----------------

import os  # noqa: E402
import tracemalloc  # noqa: E402
import zipfile  # noqa: E402

from prunegate.data import arrays as arrays_module  # noqa: E402
from prunegate.data import batches, select  # noqa: E402
from prunegate.data.arrays import _StreamedRows  # noqa: E402


def streamed_npz(
    path: Path,
    n: int,
    side: int,
    compression: int = zipfile.ZIP_DEFLATED,
    *,
    fortran: bool = False,
    labels: np.ndarray | None = None,
) -> Path:
    """An npz of n zero images of side x side x 3, written in rows: a large array costs no memory
    to make (and, deflated, almost no disk)."""
    with zipfile.ZipFile(path, "w", compression=compression, compresslevel=1) as archive:
        with archive.open("images.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": fortran, "shape": (n, side, side, 3)}
            )
            row = bytes(side * side * 3)
            for _ in range(n):
                f.write(row)
        with archive.open("labels.npy", "w") as f:
            np.lib.format.write_array(f, labels if labels is not None else (np.arange(n) % 10).astype(np.int64))
    return path


@pytest.mark.parametrize("fortran", [False, True])
def test_stored_members_are_memory_mapped_and_compressed_ones_streamed(tmp_path: Path, fortran: bool) -> None:
    images, labels = arrays(7)
    saved = np.asfortranarray(images) if fortran else images
    np.savez(tmp_path / "stored.npz", images=saved, labels=labels)
    np.savez_compressed(tmp_path / "deflated.npz", images=saved, labels=labels)
    stored = NpzImages(tmp_path / "stored.npz", "data.test")
    deflated = NpzImages(tmp_path / "deflated.npz", "data.test")
    assert isinstance(stored.images, np.memmap)
    assert isinstance(deflated.images, np.ndarray if fortran else _StreamedRows)  # Fortran order: read whole
    for data in (stored, deflated):
        assert data.labels.tolist() == labels.tolist()
        for indices in ([0], [6, 2, 2, 0], [3, 4], [1], []):  # any order, repeats, backwards (a restart)
            pictures, _ = data.read(indices, BIG)
            assert [p.numpy().tolist() for p in pictures] == [images[i].tolist() for i in indices]


@pytest.mark.parametrize("grey", [False, True])
@pytest.mark.parametrize("fortran", [False, True])
def test_compressed_arrays_read_through_loader_workers(tmp_path: Path, grey: bool, fortran: bool) -> None:
    """Forked DataLoader workers each stream their own copy; greyscale and Fortran order too."""
    images, labels = arrays(23, 6)
    saved = images[..., 0] if grey else images
    np.savez_compressed(tmp_path / "set.npz", images=np.asfortranarray(saved) if fortran else saved, labels=labels)
    data = NpzImages(tmp_path / "set.npz", "data.test")
    data.read([20], BIG)  # the parent's stream is open, past most rows: the workers must not share it
    indices = select(data.labels, 17)
    seen = {}
    for ids, block, _, _digests in batches(data, indices, 6, 4, 2, BIG):
        seen.update({int(i): b for i, b in zip(ids, block)})
    expected = np.repeat(images[..., :1], 3, axis=-1) if grey else images
    assert sorted(seen) == indices.tolist()
    assert all(np.array_equal(seen[i].numpy(), expected[i]) for i in seen)


def test_a_large_compressed_or_stored_npz_costs_memory_for_the_images_read_only(tmp_path: Path) -> None:
    """A 1,000-image 224 px npz is 150 MB of pixels: deflated it is 1 MB on disk. Inflating it
    whole (as numpy's np.load does) raised the peak by 150 MB even for 20 selected images.
    tracemalloc sees what matters here: numpy reports its arrays' buffers to it, and zlib's
    output is Python bytes (pages of a memory map touched are not allocations, and are only the
    rows read)."""
    deflated = streamed_npz(tmp_path / "deflated.npz", 1000, 224)
    stored = streamed_npz(tmp_path / "stored.npz", 1000, 224, zipfile.ZIP_STORED)
    assert deflated.stat().st_size < 2_000_000 and stored.stat().st_size > 150_000_000
    for path in (deflated, stored):
        tracemalloc.start()
        try:
            data = NpzImages(path, "data.test")
            for _ in batches(data, select(data.labels, 20), 224, 8, 0, BIG):
                pass
            data.read([len(data) - 1], BIG)  # the last image: a compressed stream is decompressed to its end
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 20_000_000, (path.name, peak)  # a batch of 8 is 1.2 MB; the whole array 150 MB


@pytest.mark.parametrize("which", ["labels", "Fortran-ordered images"])
def test_compressed_members_read_whole_are_bounded(tmp_path: Path, monkeypatch, which: str) -> None:
    path = streamed_npz(tmp_path / "set.npz", 40, 4, fortran=which != "labels")
    monkeypatch.setattr(arrays_module, "INFLATE_LIMIT", 300 if which == "labels" else 1000)  # 40 x 8 B, 40 x 48 B
    error = npz_error(path)
    assert str(path) in str(error) and error.field == "data.test"
    assert "compressed" in error.detail and "np.savez" in error.detail and "format npy" in error.detail
    monkeypatch.setattr(arrays_module, "INFLATE_LIMIT", 1 << 30)
    assert len(NpzImages(path, "data.test")) == 40


def test_a_damaged_compressed_stream_is_a_data_error_when_read(tmp_path: Path) -> None:
    images, labels = arrays(40, 16)
    path = tmp_path / "set.npz"
    np.savez_compressed(path, images=images, labels=labels)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("images.npy")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 100 + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    data = NpzImages(path, "data.test")  # the member's header is intact
    with pytest.raises(DataError, match="cannot read the images") as caught:
        list(batches(data, np.arange(40), 16, 8, 0, BIG))
    assert caught.value.file == str(path) and caught.value.field == "data.test"


@pytest.mark.parametrize("member", ["x.npy", "y.npy"])
def test_truncated_npy_is_a_clear_data_error(tmp_path: Path, member: str) -> None:
    images, labels = arrays(10, 8)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    cut = tmp_path / member
    cut.write_bytes(cut.read_bytes()[:-30])
    with pytest.raises(DataError) as caught:
        NpyImages(tmp_path / "x.npy", "data.test", tmp_path / "y.npy")
    assert caught.value.file == str(cut) and "header claims shape" in caught.value.detail
    assert "truncated" in caught.value.detail


def test_a_memory_mapped_file_that_shrinks_is_a_data_error_not_a_crash(tmp_path: Path) -> None:
    """Reading a mapped page past the end of a file cut short kills the process (SIGBUS)."""
    images, labels = arrays(50, 32)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    data = NpyImages(tmp_path / "x.npy", "data.test", tmp_path / "y.npy")
    os.truncate(tmp_path / "x.npy", 1000)
    with pytest.raises(DataError, match="shrank") as caught:
        data.read([49], BIG)
    assert caught.value.file == str(tmp_path / "x.npy")


def test_a_stored_member_whose_header_claims_more_than_it_holds(tmp_path: Path) -> None:
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**6, 8, 8, 3)}
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("images.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(bytes(192))
        archive.writestr("labels.npy", b"")
    error = npz_error(path)
    assert "header claims shape (1000000, 8, 8, 3)" in error.detail and str(path) in str(error)
