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
        "ant/x.png",
        "ant/y.jpg",
        "cat/0.png",
        "zebra/a.png",
        "zebra/b.png",
    ]
    assert images.labels.tolist() == [0, 0, 1, 2, 2] and len(images) == 5
    assert images.describe() == {
        "format": "imagefolder",
        "path": str(folder),
        "size": 5,
        "classes": ["ant", "cat", "zebra"],
    }


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
    options = {"lossless": True} if suffix == "webp" else {}
    file = save(tmp_path / "set" / "c" / f"img.{suffix}", random_rgb(6), **options)
    picture = ImageFolder(tmp_path / "set", "data.test").read([0], BIG)[0][0]
    assert np.array_equal(picture.numpy(), pil_rgb(file))


@pytest.mark.parametrize("name", ["a.png", "y.jpg"])
def test_truncated_image_is_a_data_error_naming_the_file(tmp_path: Path, name: str) -> None:
    options = {"quality": 90} if name.endswith("jpg") else {}
    file = save(tmp_path / "set" / "c" / name, random_rgb(7, 32, 32), **options)
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
    source = DataSource(format="imagefolder-flat", path=str(root), class_names=str(names))
    images = open_source(source, Path, "data.ood.0")
    assert images.labels.tolist() == [1, 2] and images.classes == ["n00", "n01", "n02"]


@pytest.mark.parametrize(
    ("text", "message"), [("a\n\nb\n", "line 2 is blank"), ("a\nb\na\n", "listed twice"), ("\n", "no class names")]
)
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
    with pytest.raises(ValueError, match="class_names is for the formats imagefolder, imagefolder-flat"):
        DataSource(format="npz", path="x.npz", class_names="classes.txt")


# --- multi-frame images: only the first frame is decoded (issue #13) ---------------------------

import io  # noqa: E402
import os  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from prunegate.data import imagefolder as imagefolder_module  # noqa: E402


def many_frame_gif(side: int, frames: int) -> bytes:
    """A side x side GIF of `frames` frames, every frame after the first a 1 x 1 patch: a few KB
    on disk, frames x side x side x 3 bytes to a decoder that composes every frame (torchvision's
    decode_image: 900 MB for 300 frames of 1000 px)."""
    first = io.BytesIO()
    PIL.Image.new("L", (side, side), 0).save(first, format="GIF")
    assert first.getvalue().endswith(b";")
    patch = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control extension: 10 ms
        + b"\x2c"
        + struct.pack("<4H", 0, 0, 1, 1)
        + b"\x00"  # image descriptor: 1 x 1 at (0, 0)
        + b"\x02\x02\x4c\x01\x00"
    )  # LZW, minimum code size 2: clear, pixel 1, end
    return first.getvalue()[:-1] + patch * (frames - 1) + b";"


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak resident set from /proc")
def test_a_many_frame_gif_decodes_its_first_frame_only(tmp_path: Path) -> None:
    """Peak memory of a fresh process (VmHWM, reset just before: C decoders' allocations count,
    which tracemalloc does not see) while reading a 300-frame 1000 x 1000 GIF, named .gif and .jpg."""
    gif = many_frame_gif(1000, 300)
    with PIL.Image.open(io.BytesIO(gif)) as check:
        assert check.n_frames == 300 and check.size == (1000, 1000)
    (tmp_path / "set" / "c").mkdir(parents=True)
    (tmp_path / "set" / "c" / "a.gif").write_bytes(gif)
    (tmp_path / "set" / "c" / "b.jpg").write_bytes(gif)  # the decoder follows the content, not the name
    script = (
        "import re, sys\nfrom pathlib import Path\nfrom prunegate.data.imagefolder import ImageFolder\n"
        "images = ImageFolder(Path(sys.argv[1]), 'data.test')\n"
        "def peak():  # VmHWM, the peak resident set, in KiB\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "def current():\n"
        "    return int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # the peak starts again from now\n"
        "before = current()\n"
        "pictures, _ = images.read([0, 1], 10**9)\n"
        "grown = (peak() - before) / 1024\n"
        "print(([tuple(p.shape) for p in pictures], grown))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "set")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    shapes, grown_mb = eval(done.stdout.strip().splitlines()[-1])
    assert shapes == [(1000, 1000, 3)] * 2
    assert grown_mb < 150, grown_mb  # 13 MB measured; every frame: 900 MB


def frames_file(fmt: str, colours: list[tuple[int, int, int]]) -> bytes:
    frames = [PIL.Image.new("RGB", (7, 6), colour) for colour in colours]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format=fmt, save_all=True, append_images=frames[1:], **({"lossless": True} if fmt == "WEBP" else {})
    )
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("GIF", "a.gif"), ("WEBP", "a.webp"), ("PNG", "a.png"), ("TIFF", "a.tif"), ("GIF", "a.jpg"), ("PNG", "a.jpeg")],
)
def test_multi_frame_files_give_their_first_frame_decoded_by_pillow(
    tmp_path: Path, monkeypatch, fmt: str, name: str
) -> None:
    raw = frames_file(fmt, [(200, 0, 0), (0, 200, 0), (0, 0, 200)])
    with PIL.Image.open(io.BytesIO(raw)) as check:
        assert check.n_frames == 3
    (tmp_path / "set" / "c").mkdir(parents=True)
    (tmp_path / "set" / "c" / name).write_bytes(raw)
    calls = []
    monkeypatch.setattr(imagefolder_module, "decode_jpeg", lambda *a, **k: calls.append(a))  # JPEG data only
    picture = ImageFolder(tmp_path / "set", "data.test").read([0], BIG)[0][0]
    assert picture.shape == (6, 7, 3) and calls == []
    assert abs(int(picture[0, 0, 0]) - 200) <= 4 and int(picture[0, 0, 1:].max()) <= 4


def test_jpeg_data_goes_to_torchvisions_decoder_whatever_its_name(tmp_path: Path, monkeypatch) -> None:
    file = save(tmp_path / "set" / "c" / "a.png", random_rgb(3), format="JPEG", quality=90)
    calls = []
    real = imagefolder_module.decode_jpeg
    monkeypatch.setattr(imagefolder_module, "decode_jpeg", lambda *a, **k: calls.append(1) or real(*a, **k))
    picture = ImageFolder(tmp_path / "set", "data.test").read([0], BIG)[0][0]
    assert calls == [1] and np.abs(picture.numpy().astype(int) - pil_rgb(file)).max() <= 2


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "PCX"])
def test_formats_the_suffixes_do_not_name_are_not_decoded(tmp_path: Path, fmt: str) -> None:
    """Pillow would try its ~40 readers on any content (some with their own bombs or helpers)."""
    file = save(tmp_path / "set" / "c" / "a.png", random_rgb(4), format=fmt)
    with pytest.raises(DataError, match="cannot decode image") as caught:
        ImageFolder(tmp_path / "set", "data.test").read([0], BIG)
    assert caught.value.file == str(file) and "not a PNG, JPEG, GIF, WebP, BMP or TIFF image" in caught.value.detail
    assert "0x" not in caught.value.detail  # not "<_io.BytesIO object at 0x7f...>"


def test_a_gif_whose_first_frame_is_larger_than_its_screen_is_bounded_by_the_frame(tmp_path: Path) -> None:
    """The logical screen says 4 x 4; the first frame's descriptor says 40 x 40 (Pillow widens the
    canvas to it): the 1600 pixels are what max_pixels is checked against."""
    buffer = io.BytesIO()
    PIL.Image.new("L", (4, 4), 0).save(buffer, format="GIF")
    raw = buffer.getvalue()
    at = raw.index(b"\x2c\x00\x00\x00\x00\x04\x00\x04\x00")
    wide = raw[:at] + b"\x2c\x00\x00\x00\x00" + struct.pack("<2H", 40, 40) + raw[at + 9 :]
    (tmp_path / "set" / "c").mkdir(parents=True)
    (tmp_path / "set" / "c" / "wide.gif").write_bytes(wide)
    with pytest.raises(DataError, match="1600 pixels, over the limit of 1000"):
        ImageFolder(tmp_path / "set", "data.test").read([0], 1000)


# --- symbolic links that lead nowhere are errors, not skipped files (issue #13) -----------------


@pytest.mark.parametrize("kind", ["broken", "loop"])
@pytest.mark.parametrize("layout", ["imagefolder", "imagefolder-flat", "class folder"])
def test_a_dead_link_where_an_image_or_class_could_be_is_a_data_error(tmp_path: Path, kind: str, layout: str) -> None:
    root = tmp_path / "set"
    images = root if layout == "imagefolder-flat" else root / "c"
    save(images / "good_0.png", random_rgb(0))
    link = (root if layout == "class folder" else images) / ("dogs" if layout == "class folder" else "gone_1.png")
    os.symlink(link.name if kind == "loop" else tmp_path / "nowhere.png", link)
    reader = FlatImageFolder if layout == "imagefolder-flat" else ImageFolder
    with pytest.raises(DataError) as caught:
        reader(root, "data.test")
    assert caught.value.file == str(link) and caught.value.field == "data.test"
    gone = tmp_path / "nowhere.png"
    expected = "symbolic link loop" if kind == "loop" else f"broken symbolic link (points to {gone})"
    assert expected in caught.value.detail


def test_links_to_real_images_and_folders_are_read_and_dead_links_to_other_files_ignored(tmp_path: Path) -> None:
    elsewhere = save(tmp_path / "elsewhere" / "real.png", random_rgb(5))
    root = tmp_path / "set"
    save(root / "a" / "own.png", random_rgb(6))
    os.symlink(elsewhere, root / "a" / "linked.png")
    os.symlink(tmp_path / "elsewhere", root / "b")  # a class folder that is a link
    os.symlink(tmp_path / "nowhere.txt", root / "a" / "notes.txt")  # not an image name: not an image lost
    images = ImageFolder(root, "data.test")
    assert [f.relative_to(root).as_posix() for f in images.files] == ["a/linked.png", "a/own.png", "b/real.png"]
    pictures, _ = images.read([0, 2], BIG)
    assert np.array_equal(pictures[0].numpy(), random_rgb(5)) and np.array_equal(pictures[1].numpy(), random_rgb(5))


def test_an_unlistable_class_folder_is_a_data_error(tmp_path: Path, monkeypatch) -> None:
    save(tmp_path / "set" / "c" / "a.png", random_rgb(0))
    listing = Path.iterdir

    def iterdir(self):
        if self.name == "c":
            raise PermissionError(13, "Permission denied")
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(DataError, match="cannot list the folder \\(Permission denied\\)") as caught:
        ImageFolder(tmp_path / "set", "data.test")
    assert caught.value.file == str(tmp_path / "set" / "c")
