"""Format `webdataset`: uncompressed `.tar` shards of samples, as the webdataset library writes
them. `path` is one shard or a brace pattern of several (`shards/train-{000..009}.tar`,
`{train,val}.tar`), expanded here, never globbed.

A sample is the members that share a key: the member's folder and its base name up to the first
dot (`n01440764/x.jpg` and `n01440764/x.cls` are sample `n01440764/x`). A sample has one image
member (`.jpg`, `.png`, ...) and one `.cls` member, its label as text: an integer, or with
`class_names` a class name. Members of other kinds (`.json`, `.txt`) are not read, and a member
whose base name has no key or no extension is no one's, as webdataset skips it.

A shard is data, not configuration: a link, a device or any member but a regular file or a
folder is refused, and so is a member path that is absolute or has a `..`, so that a shard only
ever yields its own bytes. Each shard is read once, in one pass, for its index (each image's
offset and size; labels are read there) and its sha256, which the report records
(`files_sha256`); images are then read by offset. Images decode as the folders' do, with the same
per-image sha256: a shard of a folder's images in the folder's order gives that folder's data digest.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import torch

from prunegate.data_layout import IMAGE_SUFFIXES
from prunegate.errors import DataError

from .base import ImageSet, files_key, require_path
from .imagefolder import UndecodableImage, decode_image
from .labels import BadLabel, class_index, label_of_text

IMAGE_EXTENSIONS = {suffix.lstrip(".") for suffix in IMAGE_SUFFIXES}
LABEL_EXTENSION = "cls"
MAX_LABEL_BYTES = 1024  # a class index or name; more is not a label
MAX_SHARDS = 100_000  # what a brace pattern may name
_RANGE = re.compile(r"(-?[0-9]+)\.\.(-?[0-9]+)")


class BadPattern(ValueError):
    """Why a brace pattern cannot be expanded."""


def expand_braces(pattern: str) -> list[str]:
    """Every name the pattern writes, in order: `{a,b}` lists alternatives, `{000..009}` a range
    of integers, zero-padded to the bounds' width where a bound has a leading zero; braces nest."""
    names, seen = _expand(pattern), set()
    for name in names:
        if name in seen:
            raise BadPattern(f"names the shard {name!r} twice")
        seen.add(name)
    return names


def _expand(pattern: str) -> list[str]:
    opening = pattern.find("{")
    closing = pattern.find("}")
    if opening < 0 or (0 <= closing < opening):
        if closing >= 0:
            raise BadPattern(f"a '}}' without its '{{' at character {closing + 1}")
        return [pattern]
    end = _closing_brace(pattern, opening)
    body, rest = pattern[opening + 1 : end], _expand(pattern[end + 1 :])
    alternatives = _alternatives(body)
    if len(alternatives) * len(rest) > MAX_SHARDS:
        raise BadPattern(f"names more than {MAX_SHARDS} shards")
    return [pattern[:opening] + alternative + tail for alternative in alternatives for tail in rest]


def _closing_brace(pattern: str, opening: int) -> int:
    depth = 0
    for at in range(opening, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[at], 0)
        if depth == 0:
            return at
    raise BadPattern(f"the '{{' at character {opening + 1} is not closed")


def _alternatives(body: str) -> list[str]:
    """The names one brace pair writes: its range, or its comma-separated (and expanded) parts."""
    bounds = _RANGE.fullmatch(body)
    if bounds:
        first, last = bounds.groups()
        low, high = int(first), int(last)
        if abs(high - low) >= MAX_SHARDS:
            raise BadPattern(f"{{{body}}} names more than {MAX_SHARDS} shards")
        padded = any(len(b.lstrip("-")) > 1 and b.lstrip("-").startswith("0") for b in (first, last))
        width = max(len(first), len(last)) if padded else 0
        step = 1 if high >= low else -1
        return [f"{n:0{width}d}" for n in range(low, high + step, step)]
    parts, depth, start = [], 0, 0
    for at, char in enumerate(body):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(body[start:at])
            start = at + 1
    parts.append(body[start:])
    if len(parts) == 1:
        raise BadPattern(f"{{{body}}} is neither a list {{a,b}} nor a range {{000..009}}")
    return [name for part in parts for name in _expand(part)]


def sample_key(member: str) -> tuple[str, str] | None:
    """(key, extension) of a member path, webdataset's way: the folder and the base name up to
    its first dot, and the rest, lower-cased; None for a name without a key or an extension."""
    folder, _, base = member.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not stem or not dot or not extension:
        return None
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


class _Hashing:
    """A binary file read through once, whose sha256 is taken from the bytes the reader reads."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        block = self.stream.read(size)
        self.digest.update(block)
        self.size += len(block)
        return block

    def finish(self) -> tuple[str, int]:
        """The file's sha256 and size, reading what the reader left (a tar's end padding)."""
        while self.read(1 << 20):
            pass
        return self.digest.hexdigest(), self.size


class _Sample:
    __slots__ = ("image", "label", "label_member", "offset", "size")

    def __init__(self) -> None:
        self.image: str | None = None
        self.label: int | None = None
        self.label_member: str | None = None
        self.offset = 0
        self.size = 0


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a FIFO"
    if member.issparse():
        return "a sparse file"
    return f"of tar type {member.type!r}"


class WebDataset(ImageSet):
    format = "webdataset"

    def __init__(self, path: Path, shards: list[Path], field: str, class_names: list[str] | None = None):
        """`path`: the pattern as resolved (the report's path); `shards`: the files it names."""
        super().__init__(path, field)
        self.shards = shards
        self.classes = class_names
        self._index = class_index(class_names)
        self.files_sha256: dict[str, str] = {}
        members: list[str] = []
        where: list[tuple[int, int, int]] = []  # (shard, offset, size) of each sample's image
        labels: list[int] = []
        for number, shard in enumerate(shards):
            require_path(shard, field + ".path", directory=False)
            if shard.suffix.lower() != ".tar":
                raise self.error(
                    "a webdataset shard is an uncompressed .tar file (read by offset), "
                    f"not {shard.suffix or 'no suffix'!r}",
                    shard,
                )
            digest, samples = self._index_shard(shard)
            self.files_sha256[str(shard)] = digest
            for sample in samples:
                assert sample.image is not None and sample.label is not None
                members.append(sample.image)
                where.append((number, sample.offset, sample.size))
                labels.append(sample.label)
        if not members:
            raise self.error("no samples in the shards (expected <key>.<image extension> and <key>.cls members)")
        self._members = members
        self._where = np.asarray(where, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)

    def _index_shard(self, shard: Path) -> tuple[str, list[_Sample]]:
        """The shard's sha256 and its samples in the order their keys first appear."""
        samples: dict[str, _Sample] = {}
        last, end = "", 0  # the last member read, and where its data ends
        try:
            with shard.open("rb") as raw:
                stream = _Hashing(raw)
                # Stream mode reads the shard front to back, the data too: one pass takes the digest.
                with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        last = member.name
                        self._add(shard, tar, member, samples)
                        end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                digest, size = stream.finish()
        except (tarfile.TarError, EOFError) as exc:
            after = f" after member {last!r}" if last else ""
            raise self.error(f"not a readable tar file{after} ({exc}): a corrupt or truncated shard", shard) from None
        except OSError as exc:
            raise self.error(f"cannot read the shard ({exc.strerror or exc})", shard) from None
        # tarfile ends an archive quietly at a bad or missing header after the first one: what
        # follows the last member must be the end-of-archive zeros, or members were lost.
        if size < end + tarfile.BLOCKSIZE:
            after = f"after member {last!r} (byte {end})" if last else "at its start"
            raise self.error(f"truncated: no end-of-archive block {after}, the shard was cut short", shard)
        if not self._zeros_from(shard, end):
            raise self.error(f"corrupt: after member {last!r} (byte {end}) comes what is not a tar header", shard)
        for key, sample in samples.items():
            if sample.image is None:
                raise self.error(
                    f"sample {key!r} has no image member ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                    + (f" beside {sample.label_member!r}" if sample.label_member else ""),
                    shard,
                )
            if sample.label is None:
                raise self.error(f"member {sample.image!r} has no label: no {key}.{LABEL_EXTENSION} member", shard)
        return digest, list(samples.values())

    @staticmethod
    def _zeros_from(shard: Path, start: int) -> bool:
        """Whether the shard holds only zero bytes from `start` on."""
        with shard.open("rb") as f:
            f.seek(start)
            while block := f.read(1 << 20):
                if block.strip(b"\0"):
                    return False
        return True

    def _add(self, shard: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, samples: dict[str, _Sample]) -> None:
        """Check one member and file it under its sample (a label is read here, while it streams by)."""
        name = member.name
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            raise self.error(f"member {name!r} leaves the shard: its path is absolute or has a '..'", shard)
        if member.isdir():
            return
        if not member.isfile() or member.issparse():
            raise self.error(
                f"member {name!r} is {_member_kind(member)}: a shard is data, and only regular files are read", shard
            )
        found = sample_key(path.as_posix())
        if found is None:
            return
        key, extension = found
        if extension in IMAGE_EXTENSIONS:
            sample = samples.setdefault(key, _Sample())
            if sample.image is not None:
                raise self.error(f"member {name!r}: sample {key!r} has a second image ({sample.image!r})", shard)
            sample.image, sample.offset, sample.size = name, member.offset_data, member.size
        elif extension == LABEL_EXTENSION:
            sample = samples.setdefault(key, _Sample())
            if sample.label_member is not None:
                raise self.error(f"member {name!r}: sample {key!r} has a second label ({sample.label_member!r})", shard)
            sample.label_member, sample.label = name, self._label(shard, tar, member)

    def _label(self, shard: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> int:
        if member.size > MAX_LABEL_BYTES:
            raise self.error(
                f"member {member.name!r}: {member.size} bytes, not a label (at most {MAX_LABEL_BYTES})", shard
            )
        data = tar.extractfile(member)
        assert data is not None  # a regular file
        try:
            text = data.read().decode("utf-8").strip()
            return label_of_text(text, "label", self.classes, self._index)
        except UnicodeDecodeError as exc:
            raise self.error(f"member {member.name!r}: the label is not UTF-8 text ({exc.reason})", shard) from None
        except BadLabel as exc:
            raise self.error(f"member {member.name!r}: {exc}", shard) from None

    def read(self, indices: list[int], max_pixels: int) -> tuple[list[torch.Tensor], list[str]]:
        images, digests = [], []
        with ExitStack() as stack:
            opened: dict[int, BinaryIO] = {}
            for i in indices:
                number, offset, size = (int(v) for v in self._where[i])
                shard, member = self.shards[number], self._members[i]
                if number not in opened:
                    try:
                        opened[number] = stack.enter_context(shard.open("rb"))
                    except OSError as exc:
                        raise self.error(f"cannot read the shard ({exc.strerror or exc})", shard) from None
                stream = opened[number]
                stream.seek(offset)
                raw = stream.read(size)
                if len(raw) != size:
                    raise self.error(f"member {member!r} is cut short: the shard changed since it was read", shard)
                try:
                    images.append(decode_image(raw, PurePosixPath(member).suffix, max_pixels))
                except UndecodableImage as exc:
                    raise self.error(f"member {member!r}: {exc}", shard) from None
                digests.append(hashlib.sha256(raw).hexdigest())
        return images, digests

    def sample_name(self, index: int) -> str:
        """The shard and the image member ('train-003.tar:n01440764/x.jpg')."""
        return f"{self.shards[int(self._where[index][0])].name}:{self._members[index]}"

    def describe(self) -> dict:
        return {**super().describe(), "files_sha256": self.files_sha256}

    def contents_key(self) -> str:
        return files_key(self.shards)


def open_webdataset(
    pattern: str, resolve_path: Callable[[str], Path], field: str, class_names: list[str] | None
) -> WebDataset:
    """The shards a policy's `path` names: its braces expanded, each path resolved as the policy's are."""
    try:
        names = expand_braces(pattern)
    except BadPattern as exc:
        raise DataError(
            f"the shard pattern {pattern!r} {exc}", file=resolve_path(pattern), field=field + ".path"
        ) from None
    return WebDataset(resolve_path(pattern), [resolve_path(name) for name in names], field, class_names)
