from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from prunegate.data.base import fit_to_size, select
from prunegate.data.segfolder import SegmentationFolder, fit_pair
from prunegate.errors import DataError

SHARED_VOC = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc2012-val-14"
FIELD = "data.seg"
BIG = 10**9  # a max_pixels that refuses nothing


def rgb(seed: int, height: int = 6, width: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def index_mask(seed: int, height: int = 6, width: int = 8, classes: int = 3) -> np.ndarray:
    mask = np.random.default_rng(seed).integers(0, classes, (height, width), dtype=np.uint8)
    mask[0, 0] = 255
    return mask


def save(path: Path, image: PIL.Image.Image | np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(image)).save(path)
    return path


def palette(mask: np.ndarray) -> PIL.Image.Image:
    image = PIL.Image.fromarray(mask, mode="L").convert("P")  # identity palette, then recoloured
    image.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)])
    return image


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """b.png (palette mask), a.jpg (grey mask), c.png (grey mask): sorted a, b, c."""
    root = tmp_path / "seg"
    save(root / "images" / "b.png", rgb(0))
    save(root / "masks" / "b.png", palette(index_mask(0)))
    save(root / "images" / "a.jpg", rgb(1, 5, 7))
    save(root / "masks" / "a.png", index_mask(1, 5, 7))
    save(root / "images" / "c.png", rgb(2))
    save(root / "masks" / "c.png", index_mask(2))
    (root / "images" / "notes.txt").write_text("not an image")
    return root


def test_images_sorted_by_stem_with_zero_labels_and_class_names(folder: Path) -> None:
    data = SegmentationFolder(folder, FIELD, class_names=["bg", "cat", "dog"])
    assert [f.name for f in data.files] == ["a.jpg", "b.png", "c.png"]
    assert [m.name for m in data.masks] == ["a.png", "b.png", "c.png"]
    assert data.labels.tolist() == [0, 0, 0] and len(data) == 3
    assert data.classes == ["bg", "cat", "dog"] and data.ignore_index == 255
    assert data.describe()["format"] == "segmentation-folder"
    assert select(data.labels, 2).tolist() == [0, 1]  # the first images in file order


def test_read_gives_uint8_hwc_images_and_int64_masks(folder: Path) -> None:
    data = SegmentationFolder(folder, FIELD)
    images, digests = data.read([1, 0], BIG)
    assert images[0].dtype == torch.uint8 and images[0].shape == (6, 8, 3)
    assert torch.equal(images[0], torch.from_numpy(rgb(0)))
    assert images[1].shape == (5, 7, 3) and len(set(digests)) == 2
    masks = data.read_masks([1, 0])
    assert masks[0].dtype == torch.int64 and masks[0].shape == (6, 8)
    assert torch.equal(masks[0], torch.from_numpy(index_mask(0)).long())  # palette indices, not colours
    assert torch.equal(masks[1], torch.from_numpy(index_mask(1, 5, 7)).long())


def test_sixteen_bit_masks_are_read_as_indices(folder: Path) -> None:
    values = index_mask(2).astype(np.uint16) * 300
    save(folder / "masks" / "c.png", PIL.Image.fromarray(values))
    mask = SegmentationFolder(folder, FIELD).read_masks([2])[0]
    assert torch.equal(mask, torch.from_numpy(values.astype(np.int64)))


def test_the_digest_covers_the_mask(folder: Path) -> None:
    before = SegmentationFolder(folder, FIELD).read([2], BIG)[1][0]
    changed = index_mask(2)
    changed[1, 1] = (changed[1, 1] + 1) % 3
    save(folder / "masks" / "c.png", changed)
    after = SegmentationFolder(folder, FIELD).read([2], BIG)[1][0]
    assert before != after
    save(folder / "masks" / "c.png", index_mask(2))
    assert SegmentationFolder(folder, FIELD).read([2], BIG)[1][0] == before


def check(error: DataError, file: Path, *words: str) -> None:
    """The error names `file` and the field, on one line, and says each of `words`."""
    message = str(error)
    assert error.file == str(file) and error.field is not None and error.field.startswith(FIELD)
    assert "\n" not in message and str(file) in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("missing", ["images", "masks"])
def test_a_folder_without_images_or_masks_is_refused(folder: Path, missing: str) -> None:
    for file in (folder / missing).iterdir():
        file.unlink()
    (folder / missing).rmdir()
    with pytest.raises(DataError) as caught:
        SegmentationFolder(folder, FIELD)
    check(caught.value, folder / missing, f"no {missing}/")


def test_an_image_without_its_mask_names_the_missing_mask(folder: Path) -> None:
    (folder / "masks" / "b.png").unlink()
    with pytest.raises(DataError) as caught:
        SegmentationFolder(folder, FIELD)
    check(caught.value, folder / "masks" / "b.png", "b.png has no mask")


def test_a_mask_of_another_size_is_refused(folder: Path) -> None:
    save(folder / "masks" / "b.png", index_mask(0, 6, 9))
    data = SegmentationFolder(folder, FIELD)
    for call in (lambda: data.read([1], BIG), lambda: data.read_masks([1])):
        with pytest.raises(DataError) as caught:
            call()
        check(caught.value, folder / "masks" / "b.png", "9x6", "8x6")


def test_an_rgb_mask_is_refused(folder: Path) -> None:
    save(folder / "masks" / "b.png", rgb(5))
    with pytest.raises(DataError) as caught:
        SegmentationFolder(folder, FIELD).read_masks([1])
    check(caught.value, folder / "masks" / "b.png", "mode RGB", "index PNG is expected")


@pytest.mark.parametrize("which", ["images/c.png", "masks/c.png"])
def test_an_undecodable_image_or_mask_is_refused(folder: Path, which: str) -> None:
    (folder / which).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = SegmentationFolder(folder, FIELD)
    with pytest.raises(DataError) as caught:
        data.read([2], BIG)
    check(caught.value, folder / which, "cannot decode", "PNG")


def test_an_image_over_max_pixels_is_refused(folder: Path) -> None:
    with pytest.raises(DataError) as caught:
        SegmentationFolder(folder, FIELD).read([1], 47)
    check(caught.value, folder / "images" / "b.png", "48 pixels", "max_pixels")


def test_mask_labels_outside_the_classes_are_refused(folder: Path) -> None:
    data = SegmentationFolder(folder, FIELD)
    mask = data.read_masks([1])[0]
    data.check_mask_labels(mask, 3, data.masks[1])  # 0..2 and 255 pass
    with pytest.raises(DataError) as caught:
        data.check_mask_labels(mask, 2, data.masks[1])
    check(caught.value, data.masks[1], "mask value 2", "0-1", "ignore index 255")
    strict = SegmentationFolder(folder, FIELD, ignore_index=0)
    with pytest.raises(DataError) as caught:
        strict.check_mask_labels(mask, 3, data.masks[1])
    check(caught.value, data.masks[1], "mask value 255")


@pytest.mark.parametrize(("height", "width", "size"), [(6, 8, 4), (5, 7, 16), (40, 30, 12)])
def test_fit_pair_fits_the_image_as_fit_to_size_and_keeps_mask_values(height: int, width: int, size: int) -> None:
    image = torch.from_numpy(rgb(3, height, width)).permute(2, 0, 1)
    mask = torch.from_numpy(index_mask(3, height, width, classes=5)).long()
    fitted, fitted_mask = fit_pair(image, mask, size)
    assert fitted.shape == (3, size, size) and fitted_mask.shape == (size, size)
    assert torch.equal(fitted, fit_to_size(image, size, crop_fraction=1.0))  # no border cropped
    assert fitted_mask.dtype == torch.int64
    assert set(fitted_mask.unique().tolist()) <= set(mask.unique().tolist())


def test_fit_pair_leaves_a_fitting_pair_alone() -> None:
    image = torch.from_numpy(rgb(4, 8, 8)).permute(2, 0, 1)
    mask = torch.from_numpy(index_mask(4, 8, 8)).long()
    fitted, fitted_mask = fit_pair(image, mask, 8)
    assert fitted is image and fitted_mask is mask


@pytest.mark.parametrize(("height", "width", "size"), [(6, 8, 16), (513, 513, 224)])
def test_fit_pair_resizes_the_mask_as_pillow_nearest_does(height: int, width: int, size: int) -> None:
    """Pixel-centre nearest neighbour (NEAREST_EXACT), the same as Pillow's NEAREST: an independent reference."""
    mask = np.random.default_rng(5).integers(0, 21, (height, width)).astype(np.uint8)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    _, fitted = fit_pair(image, torch.from_numpy(mask).long(), size)
    short = size  # the short side to the size: only the long side is cropped
    new_w, new_h = (int(short * width / height), short) if height <= width else (short, int(short * height / width))
    resized = np.array(PIL.Image.fromarray(mask).resize((new_w, new_h), PIL.Image.Resampling.NEAREST))
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    expected = torch.from_numpy(resized[top : top + size, left : left + size]).long()

    def untied(old: int, new: int, offset: int) -> np.ndarray:
        """Output lines whose centre falls exactly on a source pixel border sample either side of
        it, by float rounding: compared only off those ties."""
        centres = (np.arange(offset, offset + size) + 0.5) * old / new
        return ~np.isclose(centres, np.round(centres))

    rows, cols = untied(height, new_h, top), untied(width, new_w, left)
    assert rows.mean() > 0.8 and cols.mean() > 0.8
    assert torch.equal(fitted[rows][:, cols], expected[rows][:, cols])


def test_the_real_voc_images() -> None:
    if not SHARED_VOC.exists():
        pytest.skip(f"real data not present: {SHARED_VOC} (../shared is provided in CI)")
    data = SegmentationFolder(SHARED_VOC, FIELD)
    assert len(data) == 14
    images, digests = data.read(list(range(14)), BIG)
    masks = data.read_masks(list(range(14)))
    assert len(set(digests)) == 14
    for image, mask, file in zip(images, masks, data.masks):
        assert image.shape == (513, 513, 3) and mask.shape == (513, 513)
        values = set(mask.unique().tolist())
        assert values <= set(range(21)) | {255}, file
        data.check_mask_labels(mask, 21, file)
    with PIL.Image.open(data.masks[0]) as picture:
        assert picture.mode in ("P", "L")
        assert torch.equal(masks[0], torch.from_numpy(np.asarray(picture).astype(np.int64)))
