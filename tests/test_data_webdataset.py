"""Format `webdataset`: .tar shards of <key>.<image> + <key>.cls members, indexed once, read by offset."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from prunegate.data import Manifest, batches, open_source, select
from prunegate.data.imagefolder import ImageFolder
from prunegate.data.webdataset import BadPattern, WebDataset, expand_braces, sample_key
from prunegate.errors import DataError
from prunegate.policy import DataSource
from tests.test_data_imagefolder import BIG, pil_rgb, random_rgb, save

CLASSES = ["ant", "cat", "zebra"]


def png(seed: int, height: int = 8, width: int = 9) -> bytes:
    buffer = io.BytesIO()
    import PIL.Image

    PIL.Image.fromarray(random_rgb(seed, height, width)).save(buffer, format="PNG")
    return buffer.getvalue()


def member(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def write_shard(path: Path, members: list[tuple[str, bytes]] | list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A tar of these members, in this order: (name, bytes) for a regular file, or a TarInfo."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name_or_info, data in members:
            info = member(name_or_info, data)[0] if isinstance(name_or_info, str) else name_or_info
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """An image folder of PNGs and a JPEG in three classes (ant 3, cat 1, zebra 2 images)."""
    folder = tmp_path / "tree"
    names = ["ant/a.png", "ant/b.jpg", "ant/c.png", "cat/d.png", "zebra/e.png", "zebra/f.jpg"]
    for i, name in enumerate(names):
        save(folder / name, random_rgb(i, 8 + i, 10), **({"quality": 90} if name.endswith(".jpg") else {}))
    return folder


def shard_of(folder: ImageFolder, path: Path, label_text=lambda label, classes: str(label)) -> Path:
    """A shard of the folder's images in its order: <class>/<stem>.<ext> and <class>/<stem>.cls."""
    members = []
    for file, label in zip(folder.files, folder.labels):
        name = file.relative_to(folder.path).as_posix()
        key = name.rsplit(".", 1)[0]
        members += [(name, file.read_bytes()), (f"{key}.cls", label_text(int(label), folder.classes).encode())]
    return write_shard(path, members)


def test_a_shard_of_a_folders_images_is_that_folder(tree: Path, tmp_path: Path) -> None:
    reference = ImageFolder(tree, "data.test")
    shard = shard_of(reference, tmp_path / "s.tar")
    images = WebDataset(shard, [shard], "data.test")
    assert np.array_equal(images.labels, reference.labels) and len(images) == 6
    everything = list(range(6))
    pictures, digests = images.read(everything, BIG)
    assert digests == reference.read(everything, BIG)[1]
    for picture, file in zip(pictures, reference.files):
        if file.suffix == ".png":
            assert np.array_equal(picture.numpy(), pil_rgb(file))  # Pillow, the independent reference
        assert np.array_equal(picture.numpy(), reference.read([reference.files.index(file)], BIG)[0][0].numpy())
    assert select(images.labels, 4).tolist() == select(reference.labels, 4).tolist() == [0, 1, 3, 4]

    def data_digest(reader) -> str:
        manifest = Manifest(reader.describe(), select(reader.labels, 4))
        chosen = manifest.indices.tolist()
        manifest.add(np.asarray(chosen), reader.read(chosen, BIG)[1])
        return manifest.to_dict()["sha256"]

    assert data_digest(images) == data_digest(reference)
    assert images.describe() == {
        "format": "webdataset",
        "path": str(shard),
        "size": 6,
        "files_sha256": {str(shard): hashlib.sha256(shard.read_bytes()).hexdigest()},
    }
    assert images.sample_name(3) == "s.tar:cat/d.png"


def test_a_pattern_names_shards_relative_to_the_policy_and_each_is_pinned(tree: Path, tmp_path: Path) -> None:
    reference = ImageFolder(tree, "data.test")
    whole = shard_of(reference, tmp_path / "whole.tar")
    with tarfile.open(whole) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    first = write_shard(tmp_path / "shards" / "part-08.tar", members[:6])
    second = write_shard(tmp_path / "shards" / "part-09.tar", members[6:])
    (tmp_path / "names.txt").write_text("\n".join(CLASSES))
    spec = DataSource.model_validate({"format": "webdataset", "path": "shards/part-{08..09}.tar"})
    images = open_source(spec, lambda name: tmp_path / name, "data.test")
    assert isinstance(images, WebDataset) and images.shards == [first, second]
    assert np.array_equal(images.labels, reference.labels)
    assert images.read([2, 3], BIG)[1] == reference.read([2, 3], BIG)[1]
    assert images.describe()["path"] == str(tmp_path / "shards/part-{08..09}.tar")
    assert images.describe()["files_sha256"] == {
        str(first): hashlib.sha256(first.read_bytes()).hexdigest(),
        str(second): hashlib.sha256(second.read_bytes()).hexdigest(),
    }
    assert images.sample_name(5) == "part-09.tar:zebra/f.jpg"

    from prunegate.report.schema import DataRecord

    record = DataRecord.model_validate({"name": "test", **Manifest(images.describe(), np.arange(6)).to_dict()})
    assert record.model_dump()["files_sha256"] == images.describe()["files_sha256"]
    older = {"name": "test", "format": "imagefolder", "path": "x", "size": 1, "used": 1, "sha256": "0" * 64}
    assert "files_sha256" not in DataRecord.model_validate(older).model_dump()  # written as before


def test_class_names_label_the_cls_members(tree: Path, tmp_path: Path) -> None:
    reference = ImageFolder(tree, "data.test")
    shard = shard_of(reference, tmp_path / "s.tar", lambda label, classes: classes[label] + "\n")
    names = ["zebra", "cat", "ant", "dog"]  # the model's order, not the folders'
    images = WebDataset(shard, [shard], "data.test", names)
    assert images.labels.tolist() == [2, 2, 2, 1, 0, 0] and images.describe()["classes"] == names
    with pytest.raises(DataError, match="member 'ant/a.cls': class 'ant' is not in the class_names file"):
        WebDataset(shard, [shard], "data.test", ["cat", "zebra"])


def test_other_members_folders_and_dotted_names_are_not_samples(tmp_path: Path) -> None:
    shard = write_shard(
        tmp_path / "s.tar",
        [
            member("d/", kind=tarfile.DIRTYPE),
            ("./d/x.y.png", png(0)),  # key d/x, extension y.png: no image of webdataset's
            ("d/x.cls", b"0"),
            ("d/one.PNG", png(1)),
            ("d/one.json", b"{}"),
            ("d/one.cls", b" 7\n"),
            ("d/.hidden", b"?"),
            ("README", b"no extension"),
        ],
    )
    with pytest.raises(DataError, match="sample 'd/x' has no image member"):
        WebDataset(shard, [shard], "data.test")
    kept = [member("d/", kind=tarfile.DIRTYPE), ("./d/one.PNG", png(1)), ("d/one.json", b"{}"), ("d/one.cls", b" 7\n")]
    shard = write_shard(tmp_path / "t.tar", [*kept, ("README", b"x")])
    images = WebDataset(shard, [shard], "data.test")
    assert images.labels.tolist() == [7] and images.read([0], BIG)[1] == [hashlib.sha256(png(1)).hexdigest()]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("s.tar", ["s.tar"]),
        ("s-{000..002}.tar", ["s-000.tar", "s-001.tar", "s-002.tar"]),
        ("s-{8..10}.tar", ["s-8.tar", "s-9.tar", "s-10.tar"]),
        ("s-{2..0}.tar", ["s-2.tar", "s-1.tar", "s-0.tar"]),
        ("{train,val}/s-{0..1}.tar", ["train/s-0.tar", "train/s-1.tar", "val/s-0.tar", "val/s-1.tar"]),
        ("s{,-extra}.tar", ["s.tar", "s-extra.tar"]),
        ("{a,b{1..2}}.tar", ["a.tar", "b1.tar", "b2.tar"]),
        ("s*.tar", ["s*.tar"]),  # never globbed
    ],
)
def test_brace_patterns_expand_like_the_shell(pattern: str, expected: list[str]) -> None:
    assert expand_braces(pattern) == expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("s-{0..2.tar", "the '{' at character 3 is not closed"),
        ("s-0..2}.tar", "a '}' without its '{' at character 7"),
        ("s-{x}.tar", "{x} is neither a list {a,b} nor a range {000..009}"),
        ("s-{0..1000000}.tar", "names more than 100000 shards"),
        ("{a,a}.tar", "names the shard 'a.tar' twice"),
    ],
)
def test_a_bad_pattern_says_what_is_wrong(pattern: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(BadPattern, match=message.replace("{", "\\{").replace(".", "\\.")):
        expand_braces(pattern)
    spec = DataSource.model_validate({"format": "webdataset", "path": pattern})
    with pytest.raises(DataError) as caught:
        open_source(spec, lambda name: tmp_path / name, "data.test")
    assert caught.value.field == "data.test.path" and message in str(caught.value)


def test_sample_keys_are_the_folder_and_the_name_before_its_first_dot() -> None:
    assert sample_key("a/b/c.d.JPG") == ("a/b/c", "d.jpg")
    assert sample_key("c.cls") == ("c", "cls")
    assert sample_key("a/.c.png") is None and sample_key("a/c") is None and sample_key("a/c.") is None


IMAGE = png(3)
BAD_RECORDS = [
    ([("a.cls", b"0")], "sample 'a' has no image member (bmp, gif, jpeg, jpg, png, tif, tiff, webp) beside 'a.cls'"),
    ([("a.png", IMAGE), ("b.png", IMAGE), ("b.cls", b"1")], "member 'a.png' has no label: no a.cls member"),
    ([("a.png", IMAGE), ("a.cls", b"cat")], "member 'a.cls': label 'cat' is not a non-negative integer label"),
    ([("a.png", IMAGE), ("a.cls", b"-1")], "member 'a.cls': label '-1' is not a non-negative integer label"),
    ([("a.png", IMAGE), ("a.cls", b"1.5")], "member 'a.cls': label '1.5' is not a non-negative integer label"),
    ([("a.png", IMAGE), ("a.cls", b"99999999999")], "member 'a.cls': label '99999999999' is too large"),
    ([("a.png", IMAGE), ("a.cls", b"\xff")], "member 'a.cls': the label is not UTF-8 text"),
    ([("a.png", IMAGE), ("a.cls", b"1" * 2000)], "member 'a.cls': 2000 bytes, not a label (at most 1024)"),
    ([("a.png", IMAGE), ("a.jpg", IMAGE), ("a.cls", b"0")], "member 'a.jpg': sample 'a' has a second image ('a.png')"),
    ([("a.png", IMAGE), ("a.cls", b"0"), ("a.cls", b"1")], "member 'a.cls': sample 'a' has a second label ('a.cls')"),
    (
        [member("a.png", kind=tarfile.SYMTYPE, link="/etc/passwd")],
        "member 'a.png' is a symbolic link (to '/etc/passwd')",
    ),
    ([("b.png", IMAGE), member("a.png", kind=tarfile.LNKTYPE, link="b.png")], "member 'a.png' is a hard link"),
    ([member("a.png", kind=tarfile.CHRTYPE)], "member 'a.png' is a device: a shard is data"),
    ([member("a.png", kind=tarfile.FIFOTYPE)], "member 'a.png' is a FIFO"),
    ([("../a.png", IMAGE)], "member '../a.png' leaves the shard: its path is absolute or has a '..'"),
    ([("d/../../a.cls", b"0")], "member 'd/../../a.cls' leaves the shard"),
    ([("/a.png", IMAGE)], "member '/a.png' leaves the shard"),
    ([("README.txt", b"only metadata")], "no samples in the shards"),
]


@pytest.mark.parametrize(("members", "expected"), BAD_RECORDS)
def test_a_bad_record_is_one_line_naming_the_shard_and_the_member(tmp_path: Path, members: list, expected: str) -> None:
    shard = write_shard(tmp_path / "s.tar", members)
    with pytest.raises(DataError) as caught:
        WebDataset(shard, [shard], "data.test")
    assert expected in str(caught.value)
    assert caught.value.file == str(shard) and caught.value.field == "data.test"
    assert "\n" not in str(caught.value)


def test_a_corrupt_or_truncated_shard_is_refused_not_cut_short(tmp_path: Path) -> None:
    good = write_shard(tmp_path / "good.tar", [(f"{i}.{ext}", png(i) if ext == "png" else b"0")
                                              for i in range(3) for ext in ("png", "cls")])  # fmt: skip
    data = good.read_bytes()
    with tarfile.open(good) as tar:
        third = [m for m in tar][2]  # 1.png: its header is garbled below
    cases = {
        "empty.tar": (b"", "not a readable tar file (empty file)"),
        "noise.tar": (bytes(range(256)) * 8, "not a readable tar file"),
        "cut.tar": (
            data[: third.offset_data + 100],
            "after member '1.png' (unexpected end of data): a corrupt or trunc",
        ),
        "cut_at_a_member.tar": (data[: third.offset], "truncated: no end-of-archive block after member '0.cls'"),
        "garbled.tar": (
            data[: third.offset] + b"\x07" * 512 + data[third.offset + 512 :],
            "corrupt: after member '0.cls'",
        ),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as caught:
            WebDataset(tmp_path / name, [tmp_path / name], "data.test")
        assert expected in str(caught.value) and caught.value.file == str(tmp_path / name), name
    assert len(WebDataset(good, [good], "data.test")) == 3


def test_an_image_is_checked_against_max_pixels_and_decoded_when_read(tmp_path: Path) -> None:
    shard = write_shard(tmp_path / "s.tar", [("a.png", png(0, 10, 9)), ("a.cls", b"0"),
                                              ("b.png", b"\x89PNG not really"), ("b.cls", b"1")])  # fmt: skip
    images = WebDataset(shard, [shard], "data.test")
    with pytest.raises(DataError, match="member 'a.png': image has 90 pixels, over the limit of 50") as caught:
        images.read([0], 50)
    assert caught.value.file == str(shard)
    with pytest.raises(DataError, match="member 'b.png': cannot decode image: corrupt, truncated or not a PNG"):
        images.read([1], BIG)


def test_shards_that_are_not_tar_files_or_not_there_are_refused(tmp_path: Path) -> None:
    (tmp_path / "s.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="an uncompressed .tar file \\(read by offset\\), not '.gz'"):
        WebDataset(tmp_path / "s.tar.gz", [tmp_path / "s.tar.gz"], "data.test")
    with pytest.raises(DataError, match="not found") as caught:
        WebDataset(tmp_path / "s-{0..1}.tar", [tmp_path / "s-0.tar", tmp_path / "s-1.tar"], "data.test")
    assert caught.value.field == "data.test.path" and caught.value.file == str(tmp_path / "s-0.tar")


def test_batches_read_in_workers_give_the_digests(tree: Path, tmp_path: Path) -> None:
    reference = ImageFolder(tree, "data.test")
    shard = shard_of(reference, tmp_path / "s.tar")
    images = WebDataset(shard, [shard], "data.test")
    got = [digest for batch in batches(images, np.arange(6), 8, 4, 1, BIG) for digest in batch[3]]
    assert got == reference.read(list(range(6)), BIG)[1]


def test_the_policy_takes_class_names_and_label_map_but_no_other_formats_fields() -> None:
    DataSource.model_validate({"format": "webdataset", "path": "s.tar", "class_names": "c.txt", "label_map": "m.json"})
    with pytest.raises(ValueError, match="format webdataset does not read images_key"):
        DataSource.model_validate({"format": "webdataset", "path": "s.tar", "images_key": "x"})
