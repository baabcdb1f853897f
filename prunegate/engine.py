"""The streaming pass: source batches -> shifts on the device -> both models -> tallies.

Each source batch is read and decoded once (in background workers), moved to the device once,
and every task's shift of it is made there and fed to both models. Random draws are keyed by
(seed, task, draw, sample index), so results do not depend on batch size or order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from prunegate import shifts
from prunegate.checkpoint import Checkpoint
from prunegate.data import ImageSet, Manifest, batches
from prunegate.distributed import SINGLE, World, gather_digests, merge_tallies
from prunegate.errors import DataError, ModelError, PrunegateError
from prunegate.metrics import TaskTally
from prunegate.plan import Task
from prunegate.runners import Runner
from prunegate.runners.base import first_line
from prunegate.shifts.rng import SampleRNG, task_key

Progress = Callable[[int], None]  # called with the number of (task, sample) evaluations just done


@dataclass
class Source:
    """One image set as the pass reads it: the reader, the chosen indices, what was read."""

    name: str
    images: ImageSet
    indices: np.ndarray
    part: Optional[np.ndarray] = None  # the indices this process reads (torchrun); None: all
    manifest: Manifest = field(init=False)

    def __post_init__(self) -> None:
        self.manifest = Manifest(self.images.describe(), self.indices)


@dataclass
class Preprocess:
    """float [0, 1] NCHW -> the model's normalised input."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def create(cls, mean, std, device: torch.device) -> Preprocess:
        def column(values):
            return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)

        return cls(column(mean), column(std))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def task_input(task: Task, x: torch.Tensor, sample_ids: torch.Tensor, draw: int, seed: int, pre: Preprocess) -> torch.Tensor:
    """The model input for one task and draw, from the clean batch `x` (float [0, 1] NCHW)."""
    if task.kind in ("clean", "ood") or task.precomputed:
        return pre(x)
    stream = task.name if task.draws == 1 else f"{task.name}#{draw}"
    rng = SampleRNG(task_key(seed, stream), sample_ids, device=x.device)
    if task.kind == "noise":
        noise = shifts.get_noise(task.shift)
        if noise.space == "normalized":
            return noise.fn(pre(x), task.param, rng)
        return pre(noise.fn(x, task.param, rng))
    return pre(shifts.corrupt(x, task.shift, int(task.param), rng, preset=task.preset))


def probe_classes(dense: Runner, pruned: Runner, size: int) -> int:
    """Run both models on a tiny batch: they must accept the input size and agree on the number
    of classes. Returns that number."""
    probe = torch.zeros(2, 3, size, size)
    counts = {}
    for which, runner in (("dense", dense), ("pruned", pruned)):
        field_name = f"models.{which}"
        declared = runner.input_shape()
        if declared is not None:
            if len(declared) != 4:
                raise ModelError(f"expects a rank-{len(declared)} input {declared}; prunegate feeds NCHW images",
                                 file=runner.info.path, field=field_name)
            fixed = [d for d in declared[1:] if isinstance(d, int)]
            wanted = [3, size, size]
            mismatch = [(d, w) for d, w in zip(declared[1:], wanted) if isinstance(d, int) and d != w]
            if fixed and mismatch:
                raise ModelError(f"expects input {declared} but the policy's models.input.size is {size} "
                                 f"(fed as [N, 3, {size}, {size}])", file=runner.info.path, field=field_name)
        try:
            out = runner(probe.to(runner.device))
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"fails on a [2, 3, {size}, {size}] input ({first_line(exc)})",
                             file=runner.info.path, field=field_name) from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"output {shape} is not [batch, classes] logits", file=runner.info.path, field=field_name)
        counts[which] = int(out.shape[1])
    if counts["dense"] != counts["pruned"]:
        raise ModelError(f"dense outputs {counts['dense']} classes but pruned outputs {counts['pruned']}",
                         file=pruned.info.path, field="models.pruned")
    return counts["dense"]


def logits(runner: Runner, inputs: torch.Tensor, classes: Optional[int], where: tuple[str, str, torch.Tensor],
           field_name: str) -> torch.Tensor:
    """The runner's logits for one batch, checked: every batch must give one row of `classes`
    logits per input (a model that answers one row for the batch, or changes its class count
    mid-run, is an error naming the model and the batch, never a broadcast verdict)."""
    source, task, ids = where

    def batch() -> str:
        span = f"sample {int(ids[0])}" if len(ids) == 1 else f"samples {int(ids[0])}-{int(ids[-1])}"
        return f"{task} on {len(ids)} images of {source} ({span})"

    try:
        out = runner(inputs)
    except PrunegateError as exc:
        raise ModelError(f"{exc.detail} (at {batch()})", file=exc.file or runner.info.path,
                         field=exc.field or field_name) from None
    except Exception as exc:
        raise ModelError(f"fails at {batch()} ({first_line(exc)})", file=runner.info.path, field=field_name) from None
    wanted = [int(inputs.shape[0]), classes] if classes else None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != inputs.shape[0] or \
            (wanted is not None and list(out.shape) != wanted):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        expected = f"[{inputs.shape[0]}, {classes}]" if classes else f"[{inputs.shape[0]}, classes]"
        raise ModelError(f"output {shape} at {batch()} is not {expected} logits", file=runner.info.path,
                         field=field_name)
    return out


def check_labels(source: Source, classes: int, field_name: str) -> None:
    labels = source.images.labels[source.indices]
    if len(labels) == 0:
        raise DataError("the dataset is empty", file=source.images.path, field=field_name)
    top = int(labels.max())
    if top >= classes:
        raise DataError(f"label {top} is outside the models' {classes} classes (0-{classes - 1})",
                        file=source.images.path, field=field_name)


def evaluate(
    tasks: list[Task],
    sources: list[Source],
    dense: Runner,
    pruned: Runner,
    **options,
) -> tuple[dict[str, TaskTally], dict[str, float]]:
    """Run every task on both models; returns the tallies (on CPU) and timings in seconds."""
    family, timings = evaluate_family(tasks, sources, dense, [pruned], **options)
    return family[0], timings


def evaluate_family(
    tasks: list[Task],
    sources: list[Source],
    dense: Runner,
    members: list[Runner],
    *,
    pre: Preprocess,
    size: int,
    seed: int,
    batch_size: int,
    workers: int,
    max_pixels: int,
    device: torch.device,
    progress: Optional[Progress] = None,
    world: World = SINGLE,
    classes: Optional[int] = None,
    fields: Optional[list[str]] = None,
    checkpoint: Optional[Checkpoint] = None,
    restored: Optional[dict] = None,
) -> tuple[list[dict[str, TaskTally]], dict[str, float]]:
    """Run every task on the dense model once and on each pruned member; one tally dict per
    member (on CPU), and timings in seconds. Under torchrun each process reads its part of every
    source and the tallies are merged across processes. `classes`: the class count every output
    must have (the probe's); `fields`: the models' names in errors (dense first). `checkpoint`:
    saved every few minutes and when the pass stops early; `restored`: a checkpoint's state to
    continue from (prunegate.checkpoint)."""
    fields = fields or ["models.dense", *(["models.pruned"] if len(members) == 1 else
                                           [f"--pruned.{i}" for i in range(len(members))])]
    restored = restored or {}
    tallies: list[dict[str, TaskTally]] = [{} for _ in members]
    timings = {"data_s": 0.0, "shift_s": 0.0, "models_s": 0.0}
    done: dict[str, list[np.ndarray]] = {source.name: [] for source in sources}

    def state() -> dict:
        """What a checkpoint keeps: the samples evaluated (whole batches) and every tally."""
        saved = {}
        for source in sources:
            ids = np.concatenate(done[source.name]) if done[source.name] else np.zeros(0, dtype=np.int64)
            saved[source.name] = {"done": torch.from_numpy(ids.astype(np.int64)),
                                  "digests": [source.manifest.digests[int(i)] for i in ids]}
        return {"sources": saved, "tallies": [{name: t.state() for name, t in member.items()} for member in tallies]}

    try:
        for source in sources:
            source_tasks = [t for t in tasks if t.source == source.name]
            for task in source_tasks:
                for index, member in enumerate(tallies):
                    n = len(source.indices) * task.draws
                    kept = restored.get("tallies", [{}] * len(tallies))[index].get(task.name)
                    try:
                        member[task.name] = TaskTally.from_state(kept, n, device) if kept else TaskTally.empty(n, device)
                    except ValueError:
                        raise PrunegateError("the checkpoint does not fit this run (damaged?): remove it to start "
                                             "over", field="--resume") from None
            reads = source.indices if source.part is None else source.part
            earlier = restored.get("sources", {}).get(source.name)
            if earlier is not None and len(earlier["done"]):
                ids = earlier["done"].numpy()
                source.manifest.add(earlier["done"], list(earlier["digests"]))
                done[source.name].append(ids)
                reads = reads[~np.isin(reads, ids)]
                if progress:
                    progress(len(ids) * sum(t.draws for t in source_tasks))
            tick = time.perf_counter()
            for ids, images, labels, digests in batches(source.images, reads, size, batch_size, workers, max_pixels):
                source.manifest.add(ids, digests)
                x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
                labels = labels.to(device)
                positions = torch.from_numpy(np.searchsorted(source.indices, ids.numpy())).to(device)
                sample_ids = ids.to(device)
                timings["data_s"] += time.perf_counter() - tick
                for task in source_tasks:
                    for draw in range(task.draws):
                        tick = time.perf_counter()
                        inputs = task_input(task, x, sample_ids, draw, seed, pre)
                        timings["shift_s"] += time.perf_counter() - tick
                        tick = time.perf_counter()
                        where = (source.name, task.name, ids)
                        dense_logits = logits(dense, inputs, classes, where, fields[0])
                        outputs = [logits(member, inputs, classes, where, field)
                                   for member, field in zip(members, fields[1:])]
                        timings["models_s"] += time.perf_counter() - tick
                        for member, pruned_logits in zip(tallies, outputs):
                            member[task.name].update(positions * task.draws + draw, labels, dense_logits, pruned_logits)
                    if progress:
                        progress(len(ids) * task.draws)
                done[source.name].append(ids.numpy())
                if checkpoint is not None and checkpoint.due():
                    checkpoint.save(state())
                tick = time.perf_counter()
            source.manifest.merge(gather_digests(source.manifest.digests, world))
    except BaseException as exc:
        # Interrupted (Ctrl-C, SIGTERM) or failed for a reason outside the inputs (out of memory,
        # a lost GPU): keep what is done. A bad input is not worth it: fixing it changes what the
        # checkpoint is bound to.
        if checkpoint is not None and not isinstance(exc, PrunegateError):
            try:
                checkpoint.save(state())
            except Exception:
                pass  # the run's own error is the one to report
        raise
    merge_tallies(tallies, world)
    result = []
    for member in tallies:
        done = {}
        for name, tally in member.items():
            tally = tally.cpu()
            if not bool(tally.filled.all()):
                raise AssertionError(f"task {name}: {int((~tally.filled).sum())} samples were never evaluated")
            done[name] = tally
        result.append(done)
    return result, timings
