"""What data format a path holds, from its layout alone (names and suffixes; no image is read and
torch is not imported, so `policy init` stays fast). `--data` and `policy init --data` use it."""

from __future__ import annotations

from pathlib import Path

from prunegate.errors import PolicyError, missing_reason

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LIST_DELIMITERS = {".csv": ",", ".tsv": "\t"}  # a file list (one image path and label a row), by suffix
CIFAR_BATCHES = ("test_batch.bin", "data_batch_1.bin")
SCAN = 2000  # entries looked at per folder: enough to tell the layout of any real set


def _entries(folder: Path) -> list[Path]:
    found = []
    for entry in folder.iterdir():
        if not entry.name.startswith("."):
            found.append(entry)
            if len(found) >= SCAN:
                break
    return found


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def guess_format(path: Path, option: str = "--data") -> str:
    """The format (a policy `data.test.format`) of the file or folder at `path`."""
    if not path.exists():
        raise PolicyError(missing_reason(path, "data file or folder"), file=path, field=option)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz"
        if path.suffix.lower() == ".bin":
            return "cifar10-binary"
        if path.suffix.lower() in LIST_DELIMITERS:
            return "filelist"
        if path.suffix.lower() == ".tar":
            return "webdataset"
        if path.suffix.lower() == ".parquet":
            return "parquet"
        raise PolicyError(
            "cannot tell the data format of this file (an .npz archive, a CIFAR-10 .bin batch, a "
            ".csv/.tsv file list, a webdataset .tar shard or a .parquet file; "
            "for other formats write the policy's data.test)",
            file=path,
            field=option,
        )
    if any((path / name).is_file() for name in CIFAR_BATCHES):
        return "cifar10-binary"
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return "segmentation-folder"
    entries = _entries(path)
    if any(entry.suffix.lower() == ".parquet" and entry.is_file() for entry in entries):
        return "parquet"
    if any(_is_image(entry) for entry in entries):
        return "imagefolder-flat"
    folders = [entry for entry in entries if entry.is_dir()]
    if any(any(_is_image(item) for item in _entries(folder)[:50]) for folder in folders[:20]):
        return "imagefolder"
    raise PolicyError(
        "cannot tell the data format of this folder: expected images in one sub-folder per class "
        "(imagefolder), images (imagefolder-flat), images/ + masks/ (segmentation-folder), "
        "test_batch.bin (cifar10-binary) or .parquet files (parquet)",
        file=path,
        field=option,
    )
