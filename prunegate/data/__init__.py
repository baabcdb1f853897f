"""Image sets by format: `open_source(spec, policy, field)` picks the reader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prunegate.policy import DataSource

from .arrays import NpyImages, NpzImages
from .base import CROP_FRACTION, IGNORED, ImageSet, Manifest, Size, as_shape, batches, fit_to_size, select
from .cifar import Cifar10Binary
from .filelist import FileList
from .imagefolder import FlatImageFolder, ImageFolder, read_class_names
from .segfolder import SegmentationFolder
from .webdataset import open_webdataset

__all__ = [
    "CROP_FRACTION",
    "IGNORED",
    "ImageSet",
    "Manifest",
    "SegmentationFolder",
    "Size",
    "as_shape",
    "batches",
    "fit_to_size",
    "open_source",
    "select",
]


def open_source(spec: DataSource, resolve: Callable[[str], Path], field: str) -> ImageSet:
    """The reader for `spec`; `resolve` turns the spec's paths into real ones (the policy
    resolves them relative to its own folder)."""
    path = resolve(spec.path)
    # With a label map the data set's labels are its own (folder names, numbers), matched to the
    # model's classes by the map; class_names then names the model's classes for the map's values.
    names = (
        read_class_names(resolve(spec.class_names), field + ".class_names")
        if spec.class_names and not spec.label_map
        else None
    )
    if spec.format == "imagefolder":
        return ImageFolder(path, field, names)
    if spec.format == "imagefolder-flat":
        return FlatImageFolder(path, field, names)
    if spec.format == "npz":
        return NpzImages(path, field, spec.images_key, spec.labels_key)
    if spec.format == "npy":
        return NpyImages(path, field, resolve(spec.labels or ""))
    if spec.format == "cifar10-binary":
        return Cifar10Binary(path, field)
    if spec.format == "filelist":
        return FileList(path, field, names, *spec.columns)
    if spec.format == "webdataset":
        return open_webdataset(spec.path, resolve, field, names)
    if spec.format == "parquet":
        from .parquet import ParquetImages  # imports pyarrow, an optional dependency

        return ParquetImages(path, field, names, *spec.columns)
    if spec.format == "segmentation-folder":
        return SegmentationFolder(path, field, names, spec.mask_ignore)
    raise AssertionError(f"unhandled data format {spec.format}")
