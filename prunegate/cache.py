"""The dense model's outputs, kept between runs: a second `check` of another pruned candidate
against the same dense model and policy does not run the dense model again.

What is kept per task is what the task's tally reads of the dense model (`kind.keep`: the logits
of a classifier, the per-pixel classes of a segmentation model), one row per (sample, draw), in a
`.npy` file beside a small JSON index. An entry's name is the sha256 of everything the outputs
depend on (the key): the dense file's (and its external data's and arch's) digests, its backend,
precision and device type, the preprocessing and input size, the seed, the task's definition,
the data set's fingerprint and selection, the shift assets, and prunegate's version. The index
holds each sample's content digest, as the pass reads it: a batch is taken from the cache only
when its images are those the entry was made from, and the `.npy` file only when its sha256 is
the one the index records; anything else (a changed image, a damaged or edited file) is computed
again and the entry rewritten. The report lists what came from the cache and under which key.

The same folder keeps each corruption task's shifted images (`images-<key>` entries, uint8, one
row per sample and draw), when they fit IMAGES_LIMIT: the pruned model must see them every run,
and at 32 px they cost more than both models together (bench/RESULTS.md). Their key is what the
pixels depend on (the task, the data, the input size, the seed, the shift assets, the device type
and prunegate's version), not the models; they are kept only when the pass's float images are
exactly their uint8 values (so a reused row feeds the models the same bits).

A cache is the user's own folder, written by their earlier runs: the report says which tasks'
dense outputs and images it supplied, so a reviewer who does not trust that folder reruns
without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from prunegate import __version__
from prunegate.errors import PrunegateError
from prunegate.files import write_atomic

INDEX_SUFFIX, ARRAY_SUFFIX = ".json", ".npy"
CHUNK = 1 << 20  # bytes read at a time for a file's digest
IMAGES_PREFIX = "images-"
IMAGES_LIMIT = 256 << 20  # bytes of one task's shifted images, at most, kept (10,000 at 224 px: 1.5 GB)


def key_digest(key: Mapping) -> str:
    """The entry name of a key: sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class TaskEntry:
    """One task's cached dense outputs: read (when a valid entry exists) and written (rows the
    pass computed), by sample index and draw."""

    folder: Path
    key: dict
    indices: np.ndarray  # the samples of the task's source, in pass order
    draws: int
    prefix: str = ""  # IMAGES_PREFIX for shifted images, "" for dense outputs
    found: np.ndarray | None = None  # the cached rows, [len(indices) * draws, ...] (memory-mapped)
    digests: dict[int, str] = field(default_factory=dict)  # sample -> content digest, of the cached rows
    problem: str | None = None  # why an entry on disk was not used
    rows: np.ndarray | None = None  # what this pass computed (to write), allocated on first use
    computed: np.ndarray | None = None  # [len(indices)] bool: samples whose rows this pass computed
    new_digests: dict[int, str] = field(default_factory=dict)
    reused: int = 0  # samples taken from the cache

    @property
    def name(self) -> str:
        return key_digest(self.key)

    def _paths(self) -> tuple[Path, Path]:
        stem = self.prefix + self.name
        return self.folder / f"{stem}{INDEX_SUFFIX}", self.folder / f"{stem}{ARRAY_SUFFIX}"

    def load(self) -> None:
        """Read the entry, if one exists and is intact; otherwise say why in `problem`."""
        index_path, array_path = self._paths()
        if not index_path.is_file():
            return
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            if index.get("key") != self.key:
                raise ValueError("its key is not this run's")
            if file_sha256(array_path) != index.get("sha256"):
                raise ValueError("its outputs' sha256 is not the one recorded (damaged or edited)")
            found = np.load(array_path, mmap_mode="r", allow_pickle=False)
            digests = {int(i): str(d) for i, d in index["digests"].items()}
            if found.shape[0] != len(self.indices) * self.draws or list(index["indices"]) != self.indices.tolist():
                raise ValueError("it holds other samples")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.problem = f"cache entry {self.name[:16]} not used: {exc}"
            return
        self.found, self.digests = found, digests

    def take(self, positions: np.ndarray, ids: np.ndarray, digests: list[str], draw: int) -> torch.Tensor | None:
        """The cached rows of these samples for one draw, when every one is cached from the same
        image content; None otherwise."""
        if self.found is None:
            return None
        if any(self.digests.get(int(i)) != d for i, d in zip(ids, digests)):
            return None
        self.reused += len(ids) if draw == 0 else 0
        return torch.from_numpy(np.ascontiguousarray(self.found[positions * self.draws + draw]))

    def put(self, positions: np.ndarray, ids: np.ndarray, digests: list[str], draw: int, kept: torch.Tensor) -> None:
        """Keep rows the pass computed, to write at the end."""
        values = kept.detach().cpu().numpy()
        if self.rows is None:
            self.rows = np.zeros((len(self.indices) * self.draws, *values.shape[1:]), dtype=values.dtype)
            self.computed = np.zeros(len(self.indices), dtype=bool)
        assert self.computed is not None
        self.rows[positions * self.draws + draw] = values
        if draw == self.draws - 1:
            self.computed[positions] = True
            self.new_digests.update({int(i): d for i, d in zip(ids, digests)})

    def complete(self) -> bool:
        """Whether this pass computed every sample's rows (then the entry is written)."""
        return self.computed is not None and bool(self.computed.all())

    def save(self) -> None:
        """Write the entry: the array first, the index (which names the array's sha256) last."""
        if self.rows is None:
            return
        index_path, array_path = self._paths()
        staged = array_path.with_name(f".{array_path.name}.{os.getpid()}.tmp")
        try:
            with staged.open("wb") as stream:
                np.save(stream, self.rows, allow_pickle=False)
            os.replace(staged, array_path)
            index = {
                "key": self.key,
                "indices": self.indices.tolist(),
                "digests": {str(i): d for i, d in sorted(self.new_digests.items())},
                "sha256": file_sha256(array_path),
            }
            write_atomic(index_path, json.dumps(index, sort_keys=True))
        except (OSError, PrunegateError) as exc:  # the run's results stand; the cache just misses next time
            self.problem = f"cache entry {self.name[:16]} not written: {getattr(exc, 'strerror', None) or exc}"
        finally:
            staged.unlink(missing_ok=True)


UNQUANTISED = "the shifted images are not 8-bit values: not kept"


def quantised(pixels: torch.Tensor) -> torch.Tensor | None:
    """Float [0, 1] images as uint8, when `as_float` of that gives back exactly these values."""
    levels = pixels.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return levels if torch.equal(as_float(levels), pixels) else None


def as_float(levels: torch.Tensor) -> torch.Tensor:
    """uint8 images as the float [0, 1] values a pass computes (the engine's own conversion)."""
    return levels.float().div_(255.0)


@dataclass
class ImagesEntry:
    """One corruption task's shifted images in the cache (a TaskEntry of uint8 rows)."""

    entry: TaskEntry

    def take(self, positions: np.ndarray, ids: np.ndarray, digests: list[str], draw: int) -> torch.Tensor | None:
        """The cached images (float [0, 1]) of these samples for one draw, or None."""
        levels = self.entry.take(positions, ids, digests, draw)
        return None if levels is None else as_float(levels)

    def put(self, positions: np.ndarray, ids: np.ndarray, digests: list[str], draw: int, pixels: torch.Tensor) -> None:
        """Keep the images the pass computed, unless they are not exactly 8-bit (then none of the
        task's are kept)."""
        if self.entry.problem == UNQUANTISED:
            return
        levels = quantised(pixels)
        if levels is None:
            self.entry.problem, self.entry.rows, self.entry.computed = UNQUANTISED, None, None
            return
        self.entry.put(positions, ids, digests, draw, levels)


@dataclass
class DenseCache:
    """A folder of TaskEntry files (see the module's docstring)."""

    folder: Path
    base: dict  # the key's part shared by every task of the run (models, preprocessing, seed, ...)
    pixels: dict = field(default_factory=dict)  # the part the shifted images depend on (no models)
    entries: dict[str, TaskEntry] = field(default_factory=dict)
    images: dict[str, ImagesEntry] = field(default_factory=dict)

    @classmethod
    def open(cls, folder: Path, base: dict, pixels: dict | None = None) -> DenseCache:
        """The cache in `folder` (made if missing); a PrunegateError when it cannot be. `pixels`:
        what shifted images depend on besides their task and data (None: images are not kept)."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PrunegateError(
                f"cannot make the cache folder ({exc.strerror})", file=folder, field="--cache"
            ) from None
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise PrunegateError("the cache folder is not a writable folder", file=folder, field="--cache")
        version = {"prunegate": __version__}
        return cls(folder, {**version, **base}, {**version, **pixels} if pixels is not None else {})

    def entry(self, task_key: dict, indices: np.ndarray, draws: int) -> TaskEntry:
        """The entry of one task (its definition and data in `task_key`), loaded when valid."""
        key = {**self.base, **task_key}
        entry = TaskEntry(self.folder, key, np.asarray(indices, dtype=np.int64), draws)
        entry.load()
        self.entries[task_key["task"]["name"]] = entry
        return entry

    def images_entry(self, task_key: dict, indices: np.ndarray, draws: int, image_bytes: int) -> ImagesEntry | None:
        """The shifted images' entry of one corruption task, loaded when valid; None when this
        cache keeps no images or the task's would pass IMAGES_LIMIT (`image_bytes` each)."""
        if not self.pixels or len(indices) * draws * image_bytes > IMAGES_LIMIT:
            return None
        key = {**self.pixels, "kept": "shifted images", **task_key}
        entry = TaskEntry(self.folder, key, np.asarray(indices, dtype=np.int64), draws, prefix=IMAGES_PREFIX)
        entry.load()
        self.images[task_key["task"]["name"]] = found = ImagesEntry(entry)
        return found

    def _all(self) -> list[tuple[str, TaskEntry]]:
        return [*self.entries.items(), *((name, e.entry) for name, e in self.images.items())]

    def save(self) -> None:
        """Write every entry this pass computed in full."""
        for _, entry in self._all():
            if entry.complete():
                entry.save()

    def record(self) -> dict:
        """What the report says of the cache: where, under which keys, what came from it."""
        found = {
            "path": str(self.folder),
            "entries": {name: e.name for name, e in self.entries.items()},
            "reused": {name: e.reused for name, e in self.entries.items() if e.reused},
        }
        if self.images:
            found["images"] = {name: e.entry.name for name, e in self.images.items()}
            found["images_reused"] = {name: e.entry.reused for name, e in self.images.items() if e.entry.reused}
        return found

    def problems(self) -> list[str]:
        """One line per entry on disk that was not used (and why), or not kept."""
        return [f"{name}: {e.problem}" for name, e in self._all() if e.problem]
