"""Arrays of images: `npz` (one archive with images and labels) and `npy` (two files).

Images are uint8 NHWC with 3 channels (or NHW greyscale); labels are integers, one per image.

Images are read lazily, so memory stays flat in the size of the set and the number of images
selected (`data.limit`):

- an `.npy` file, and an `.npz` member stored uncompressed (`np.savez`), are memory-mapped: a
  batch touches only its own rows' pages;
- an `.npz` member compressed with deflate (`np.savez_compressed`; bzip2 and lzma too) cannot be
  mapped, and inflating it whole is a decompression bomb (a 1.2 MB archive inflated to 2.1 GB,
  even with `limit: 20`). Its rows are streamed instead (`_StreamedRows`): each process
  decompresses the member from its start, once, keeping only the rows asked for. Batches come in
  index order, so a process's stream only moves forward (a request behind it restarts it), and
  memory is one batch of rows plus the decompressor's window. The cost is CPU: each loader
  worker decompresses up to the last row it reads (a one-process run: once). Refusing compressed
  archives over a size bound instead would still inflate up to that bound in every process, and
  refuse real sets that are simply big; streaming has neither limit.

What is read whole is bounded: the labels (every label is needed up front, for `select`) and
the rare Fortran-ordered compressed images array, whose rows are not contiguous in the stream,
are inflated only up to `INFLATE_LIMIT` bytes. Every array's header is checked against the bytes
that can hold it (the file, or the archive member's size) before anything is mapped or read:
a header may claim any shape.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import IO

import numpy as np
import torch

from prunegate.digest import file_sha256
from prunegate.errors import DataError

from .base import ImageSet, require_path

MIXED_SIZES = (
    "holds an object array, not one uint8 array (images of different sizes?): {format} needs the "
    "images as one uint8 array [N, H, W, 3] of same-size images; use imagefolder for images of any size"
)
INFLATE_LIMIT = 1 << 30  # bytes a compressed member read whole may take in memory
_INT64_MAX = np.iinfo(np.int64).max
_ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader: 30 bytes
_SKIP_CHUNK = 1 << 20  # rows skipped in a compressed stream are decompressed and dropped this much at a time


@dataclass(frozen=True)
class _Header:
    """An .npy header: what it claims, and where the data starts (bytes after the magic)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int

    @property
    def nbytes(self) -> int:  # Python integers: a claimed shape may overflow int64
        return prod(int(n) for n in self.shape) * self.dtype.itemsize


def _read_header(stream: IO[bytes]) -> _Header:
    """Raises ValueError (or numpy's SyntaxError, TokenError... on a damaged header)."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version in ((2, 0), (3, 0)):  # 3.0 differs only in utf-8 field names: no plain dtype has any
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unknown .npy format version {version}")
    if dtype.hasobject:
        raise ValueError("object arrays cannot be loaded")
    if any(int(n) < 0 for n in shape):  # numpy's parser lets them through
        raise ValueError(f"the header's shape {tuple(shape)} has a negative dimension")
    return _Header(tuple(int(n) for n in shape), dtype, bool(fortran), stream.tell())


def _claims_too_much(header: _Header, available: int, where: str) -> str | None:
    if header.nbytes <= available:
        return None
    return (
        f"{where}: its header claims shape {header.shape} ({header.nbytes} bytes) but {max(available, 0)} bytes "
        f"follow the header (a truncated or damaged file?)"
    )


class _StreamedRows:
    """The rows of a compressed .npz member, decompressed on demand (see the module's docstring).

    Looks enough like an array for `ArrayImages`: `shape`, `dtype`, `ndim`, and `rows[indices]` for a
    list of indices, in any order. The open stream belongs to the process that opened it (a forked
    loader worker opens its own: a file offset shared with the parent would interleave reads) and
    is not pickled."""

    def __init__(self, path: Path, member: str, header: _Header):
        self.path, self.member, self.header = path, member, header
        self.shape, self.dtype = header.shape, header.dtype
        self._state: tuple[int, zipfile.ZipFile, IO[bytes], int] | None = None  # pid, archive, stream, next row
        self._lock = threading.Lock()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def with_channel_axis(self) -> _StreamedRows:
        """NHW -> NHW1: the same bytes per row."""
        rows = _StreamedRows(self.path, self.member, self.header)
        rows.shape = (*self.shape, 1)
        return rows

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_state": None, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __getitem__(self, indices: list[int]) -> np.ndarray:
        n, row_shape = self.shape[0], self.shape[1:]
        row_bytes = prod(row_shape) * self.dtype.itemsize
        block = np.empty((len(indices), *row_shape), dtype=self.dtype)
        slots: dict[int, list[int]] = {}
        for slot, index in enumerate(indices):
            if not 0 <= index < n:
                raise IndexError(f"index {index} is out of range for {n} images")
            slots.setdefault(int(index), []).append(slot)
        if not slots:
            return block
        with self._lock:
            try:
                archive, stream, position = self._stream_at(min(slots))
                for index in sorted(slots):
                    self._skip(stream, (index - position) * row_bytes)
                    row = np.frombuffer(self._read(stream, row_bytes), dtype=self.dtype).reshape(row_shape)
                    for slot in slots[index]:
                        block[slot] = row
                    position = index + 1
                self._state = (os.getpid(), archive, stream, position)
            except (
                OSError,
                EOFError,
                RuntimeError,
                NotImplementedError,
                zipfile.BadZipFile,
                zlib.error,
                lzma.LZMAError,
            ) as exc:  # a damaged stream; the file rewritten since it was opened
                self._close()
                text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"array {self.member!r}: {text}") from None
        return block

    def _stream_at(self, first: int) -> tuple[zipfile.ZipFile, IO[bytes], int]:
        """(archive, stream, the row it is at): the open stream, restarted from the member's start
        if it is past row `first` or was opened by another process (the parent of a forked worker)."""
        if self._state is not None:
            pid, archive, stream, position = self._state
            if pid == os.getpid() and position <= first:
                return archive, stream, position
            self._close()
        archive = zipfile.ZipFile(self.path)
        try:
            stream = archive.open(self.member)
            self._skip(stream, self.header.offset)
        except BaseException:
            archive.close()
            raise
        self._state = (os.getpid(), archive, stream, 0)
        return archive, stream, 0

    def _close(self) -> None:
        if self._state is not None:
            _, archive, stream, _ = self._state
            self._state = None
            stream.close()  # in a forked child: its own copy of the descriptor
            archive.close()

    @staticmethod
    def _read(stream: IO[bytes], count: int) -> bytes:
        data = stream.read(count)
        if len(data) != count:
            raise EOFError("the archive member ends before the rows its header claims")
        return data

    @classmethod
    def _skip(cls, stream: IO[bytes], count: int) -> None:
        while count > 0:
            step = min(count, _SKIP_CHUNK)
            cls._read(stream, step)
            count -= step


_Images = np.ndarray | _StreamedRows


class ArrayImages(ImageSet):
    """A set whose images are one uint8 NHWC array: memory-mapped, in memory, or streamed rows."""

    images: _Images
    digest: str
    _mapped: tuple[str, int] | None = None  # a memory-mapped file and its size when it was opened

    def contents_key(self) -> str:
        return self.digest  # the file's sha256, taken when it was opened

    def _set_arrays(self, images: _Images, labels: np.ndarray, where: Path) -> None:
        if images.dtype == object:
            raise self.error(MIXED_SIZES.format(format=self.format), where)
        if images.ndim == 3:
            images = images.with_channel_axis() if isinstance(images, _StreamedRows) else images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise self.error(f"images must be uint8 NHWC with 1 or 3 channels; found shape {images.shape}", where)
        if images.dtype != np.uint8:
            raise self.error(f"images must be uint8; found {images.dtype}", where)
        if 0 in images.shape[1:3]:
            raise self.error(f"images must be at least 1 x 1 pixels; found shape {images.shape}", where)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise self.error(f"labels must be a 1-D integer array; found {labels.dtype} {labels.shape}", where)
        if len(labels) != images.shape[0]:
            raise self.error(f"{images.shape[0]} images but {len(labels)} labels", where)
        if len(labels) == 0:
            raise self.error("the dataset is empty", where)
        if labels.min() < 0:
            raise self.error(f"labels must be >= 0; found {labels.min()}", where)
        if labels.max() > _INT64_MAX:  # an unsigned label too large for int64 would turn negative
            raise self.error(f"label {labels.max()} is too large", where)
        if isinstance(images, np.memmap) and images.filename:
            self._mapped = (images.filename, os.path.getsize(images.filename))
        self.images, self.labels = images, labels.astype(np.int64)

    def read(self, indices: list[int], max_pixels: int) -> tuple[list[torch.Tensor], list[str]]:
        height, width = self.images.shape[1:3]
        if height * width > max_pixels:
            raise self.error(
                f"images have {height * width} pixels ({height} x {width}), over the limit of "
                f"{max_pixels} (data.max_pixels)"
            )
        if self._mapped:  # touching a mapped page past a shrunk file's end kills the process (SIGBUS)
            name, size = self._mapped
            now = os.path.getsize(name) if os.path.exists(name) else 0
            if now < size:
                raise self.error(
                    f"cannot read the images: the file shrank from {size} to {now} bytes after it "
                    f"was opened (rewritten during the run?)",
                    Path(name),
                )
        try:
            block = torch.from_numpy(np.ascontiguousarray(self.images[indices]))
        except (OSError, ValueError) as exc:  # a damaged compressed stream; a file that changed under us
            raise self.error(f"cannot read the images ({_first_line(exc)})") from None
        if block.shape[-1] == 1:
            block = block.expand(-1, -1, -1, 3)
        return list(block), [self.digest] * len(indices)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def load_npy(path: Path, field_error: Callable[[str, Path], DataError], format: str = "npy") -> np.ndarray:
    """A memory map of an .npy file, after checking that the file holds what its header claims
    (numpy's own error for a short file is "mmap length is greater than file size")."""
    try:
        with path.open("rb") as stream:
            if stream.read(4) == b"PK\x03\x04":  # an .npz archive given as .npy
                raise field_error("not a .npy array (an .npz archive? use format npz)", path)
            stream.seek(0)
            header = _read_header(stream)
        size = path.stat().st_size
    except DataError:
        raise
    except ValueError as exc:
        if "object" in str(exc).lower():  # numpy: "Python objects in dtype" / "Object arrays cannot be loaded"
            raise field_error(MIXED_SIZES.format(format=format), path) from None
        raise field_error(f"not a readable .npy array ({_first_line(exc)})", path) from None
    except Exception as exc:  # numpy also raises SyntaxError, tokenize.TokenError... on a damaged header
        raise field_error(f"not a readable .npy array ({_first_line(exc)})", path) from None
    problem = _claims_too_much(header, size - header.offset, "not a complete .npy array")
    if problem:
        raise field_error(problem, path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # the file changed since the header was read, or numpy disagrees with it
        raise field_error(f"not a readable .npy array ({_first_line(exc)})", path) from None
    if not isinstance(array, np.ndarray):
        if hasattr(array, "close"):
            array.close()
        raise field_error("not a .npy array (an .npz archive? use format npz)", path)
    return array


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start in the archive file: after its local header, whose name and
    extra field may differ in length from the central directory's."""
    with path.open("rb") as f:
        f.seek(info.header_offset)
        fixed = f.read(_ZIP_LOCAL_HEADER.size)
    if len(fixed) != _ZIP_LOCAL_HEADER.size or fixed[:4] != b"PK\x03\x04":
        raise ValueError(f"member {info.filename!r}: bad local file header")
    fields = _ZIP_LOCAL_HEADER.unpack(fixed)
    return info.header_offset + _ZIP_LOCAL_HEADER.size + fields[10] + fields[11]


class NpzImages(ArrayImages):
    format = "npz"

    def __init__(self, path: Path, field: str, images_key: str = "images", labels_key: str = "labels"):
        super().__init__(path, field)
        require_path(path, field + ".path", directory=False)
        try:
            with zipfile.ZipFile(path) as archive:
                keys = [n[: -len(".npy")] if n.endswith(".npy") else n for n in archive.namelist()]
                missing = [k for k in (images_key, labels_key) if k not in keys]
                if missing:
                    raise self.error(f"no array {missing[0]!r} in the archive; it has {keys}")
                images = self._member(archive, images_key, whole=False)
                labels = np.asarray(self._member(archive, labels_key, whole=True))
        except DataError:
            raise
        except ValueError as exc:
            if "object" in str(exc).lower():
                raise self.error(MIXED_SIZES.format(format="npz")) from None
            raise self.error(f"not a readable .npz archive ({_first_line(exc)})") from None
        except Exception as exc:  # zipfile, zlib and numpy raise many kinds (BadZipFile, zlib.error, SyntaxError...)
            raise self.error(f"not a readable .npz archive ({_first_line(exc)})") from None
        self._set_arrays(images, labels, path)
        self.digest = file_sha256(path)

    def _member(self, archive: zipfile.ZipFile, name: str, *, whole: bool) -> _Images:
        """One array of the archive, read as lazily as its storage allows (see the module's
        docstring); `whole`: an array needed in memory at once (the labels)."""
        member = name if name in archive.namelist() else name + ".npy"
        info = archive.getinfo(member)
        with archive.open(member) as stream:
            header = _read_header(stream)
        problem = _claims_too_much(header, info.file_size - header.offset, f"array {name!r}")
        if problem:
            raise ValueError(problem)
        if info.compress_type == zipfile.ZIP_STORED:  # its bytes are in the file as they are: map them
            member_start = _member_data_offset(self.path, info)
            start = member_start + header.offset
            end = min(member_start + info.compress_size, self.path.stat().st_size)  # its own bytes, in the file
            problem = _claims_too_much(header, end - start, f"array {name!r}")
            if problem:
                raise ValueError(problem)
            if header.nbytes == 0:
                return np.zeros(header.shape, header.dtype)
            return np.memmap(
                self.path,
                dtype=header.dtype,
                mode="r",
                offset=start,
                shape=header.shape,
                order="F" if header.fortran else "C",
            )
        if not whole and not header.fortran:
            return _StreamedRows(self.path, member, header)
        in_memory = header.nbytes
        if whole:  # the labels become int64
            in_memory = max(in_memory, prod(header.shape) * np.dtype(np.int64).itemsize)
        if in_memory > INFLATE_LIMIT:
            why = "a Fortran-ordered compressed array is read whole" if not whole else "the labels are read whole"
            raise self.error(
                f"array {name!r} is compressed and would take {in_memory} bytes in memory (shape "
                f"{header.shape}), over the limit of {INFLATE_LIMIT} ({why}): save the archive with "
                f"np.savez (uncompressed, read in place) or use format npy"
            )
        with archive.open(member) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False)


class NpyImages(ArrayImages):
    format = "npy"

    def __init__(self, path: Path, field: str, labels_path: Path):
        super().__init__(path, field)
        require_path(path, field + ".path", directory=False)
        require_path(labels_path, field + ".labels", directory=False)
        images = load_npy(path, self.error)
        labels = np.asarray(load_npy(labels_path, self.error))
        self._set_arrays(images, labels, path)
        self.labels_path = labels_path
        self.digest = hashlib.sha256((file_sha256(path) + file_sha256(labels_path)).encode()).hexdigest()
