"""The streaming pass: source batches -> task_pixels on the device -> both models -> the kind's tallies.

Each source batch is read and decoded once (in background workers), moved to the device once,
and every task's shift of it is made there (context.task_pixels) and fed to both models. The
decoding and shifting run in a producer thread a few inputs ahead of the models (prunegate.ahead),
so they overlap with inference instead of adding to it. Random
draws are keyed by (seed, task, draw, sample index), so results do not depend on batch size or
order. What a model's output is and how it is tallied belongs to the prediction kind (kinds/).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from prunegate.ahead import Ahead
from prunegate.allocator import HeapTrimmer
from prunegate.cache import DenseCache, ImagesEntry, TaskEntry
from prunegate.checkpoint import Checkpoint
from prunegate.context import RunContext, Shifted, Source, task_pixels
from prunegate.data import Size, as_shape, batches
from prunegate.distributed import SINGLE, World, gather_digests, merge_tallies
from prunegate.errors import ModelError, PrunegateError
from prunegate.kinds import CLASSIFICATION, PredictionKind, Tally
from prunegate.metrics import TaskTally
from prunegate.plan import Task, TaskKind
from prunegate.runners import Runner
from prunegate.runners.base import first_line
from prunegate.sequential_gate import SequentialGate

Progress = Callable[[int], None]  # called with the number of (task, sample) evaluations just done


def _shape(out: object) -> object:
    return list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__


def probe_classes(dense: Runner, pruned: Runner, size: Size, kind: PredictionKind = CLASSIFICATION) -> int:
    """Run both models on a tiny batch: they must accept the input size (a side, or height and
    width), give the kind's output and agree on the number of classes. Returns that number."""
    size = as_shape(size)
    height, width = size
    fed = f"[N, 3, {height}, {width}]"
    policy_size = str(height) if height == width else f"[{height}, {width}]"
    probe = torch.zeros(2, 3, height, width)
    counts = {}
    for which, runner in (("dense", dense), ("pruned", pruned)):
        field_name = f"models.{which}"
        declared = runner.input_shape()
        if declared is not None:
            if len(declared) != 4:
                raise ModelError(
                    f"expects a rank-{len(declared)} input {declared}; prunegate feeds NCHW images",
                    file=runner.record.path,
                    field=field_name,
                )
            fixed = [d for d in declared[1:] if isinstance(d, int)]
            wanted = [3, height, width]
            mismatch = [(d, w) for d, w in zip(declared[1:], wanted) if isinstance(d, int) and d != w]
            if fixed and mismatch:
                raise ModelError(
                    f"expects input {declared} but the policy's models.input.size is {policy_size} (fed as {fed})",
                    file=runner.record.path,
                    field=field_name,
                )
        try:
            out = runner(probe.to(runner.device))
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"fails on a [2, 3, {height}, {width}] input ({first_line(exc)})",
                file=runner.record.path,
                field=field_name,
            ) from None
        classes = kind.output_size(out, 2, size)
        if classes is None:
            raise ModelError(
                f"output {_shape(out)} is not {kind.describe('batch', None, size)}{_other_kind(out, size, kind)}",
                file=runner.record.path,
                field=field_name,
            )
        counts[which] = classes
    if counts["dense"] != counts["pruned"]:
        raise ModelError(
            f"dense outputs {counts['dense']} classes but pruned outputs {counts['pruned']}",
            file=pruned.record.path,
            field="models.pruned",
        )
    return counts["dense"]


def _other_kind(out: object, size: tuple[int, int], kind: PredictionKind) -> str:
    """A hint when the output is another kind's: the policy's `task` is probably wrong."""
    from prunegate.kinds import KINDS

    for other in KINDS.values():
        if other.name != kind.name and other.output_size(out, 2, size) is not None:
            return (
                f" (the policy's task is {kind.name}; this looks like a {other.name} model: set `task: {other.name}`)"
            )
    return ""


def model_outputs(
    runner: Runner,
    inputs: torch.Tensor,
    classes: int | None,
    where: tuple[str, str, torch.Tensor],
    field_name: str,
    kind: PredictionKind = CLASSIFICATION,
) -> torch.Tensor:
    """The runner's outputs for one batch, checked by the kind: every batch must give one output
    of `classes` per input (a model that answers one row for the batch, or changes its class
    count mid-run, is an error naming the model and the batch, never a broadcast verdict)."""
    source, task, ids = where

    def batch() -> str:
        span = f"sample {int(ids[0])}" if len(ids) == 1 else f"samples {int(ids[0])}-{int(ids[-1])}"
        return f"{task} on {len(ids)} images of {source} ({span})"

    try:
        out = runner(inputs)
    except PrunegateError as exc:
        raise ModelError(
            f"{exc.detail} (at {batch()})", file=exc.file or runner.record.path, field=exc.field or field_name
        ) from None
    except Exception as exc:
        raise ModelError(f"fails at {batch()} ({first_line(exc)})", file=runner.record.path, field=field_name) from None
    spatial = (int(inputs.shape[2]), int(inputs.shape[3]))
    found = kind.output_size(out, int(inputs.shape[0]), spatial)
    if found is None or (classes and found != classes):
        raise ModelError(
            f"output {_shape(out)} at {batch()} is not {kind.describe(inputs.shape[0], classes, spatial)}",
            file=runner.record.path,
            field=field_name,
        )
    return out


def check_labels(source: Source, classes: int, kind: PredictionKind = CLASSIFICATION) -> None:
    """Refuse a source whose labels the models cannot predict (the kind decides); a source with a
    label map, one whose map names a class the models do not have (its labels were matched to
    the map when it was read)."""
    if source.label_map is not None:
        source.label_map.check_model_classes(classes)
        return
    kind.check_labels(source, source.images.labels[source.indices], classes, source.images.path)


def source_key(source: Source) -> dict:
    """What a source's tasks' dense outputs depend on of its data: its fingerprint and selection
    (prunegate.cache); computed once per source (a folder's fingerprint lists its files)."""
    selection = hashlib.sha256(np.asarray(source.indices, dtype=np.int64).tobytes()).hexdigest()
    return {"name": source.name, "fingerprint": source.images.fingerprint(), "selection": selection}


def task_key(task: Task, data: dict) -> dict:
    """What a task's dense outputs depend on besides the run's models and preprocessing: the
    task's definition and the data it reads (source_key)."""
    definition = {
        "name": task.name,
        "kind": str(task.kind),
        "shift": task.shift,
        "severity": task.severity,
        "level": task.level,
        "preset": task.preset,
        "draws": task.draws,
        "precomputed": task.precomputed,
    }
    return {"task": definition, "source": data}


AHEAD = 3  # model inputs made ahead of the models (one task's shift of one batch each)


@dataclass(frozen=True)
class _Batch:
    """One decoded source batch on the device."""

    ids: torch.Tensor  # sample indices (CPU)
    digests: list[str]
    labels: torch.Tensor
    positions: torch.Tensor  # rows of the samples in the source's selection
    rows: np.ndarray  # the same, as numpy


@dataclass(frozen=True)
class _TaskInput:
    """What the models get next: `task`'s shift (draw `draw`) of `batch`. `first`: the batch's
    first item; `last`: its last (every task done). A source without tasks gives one item per
    batch with `task` None."""

    batch: _Batch
    task: Task | None
    draw: int
    inputs: torch.Tensor | None
    first: bool
    last: bool


def _task_inputs(
    ctx: RunContext,
    source: Source,
    reads: np.ndarray,
    tasks: list[Task],
    timings: dict[str, float],
    cached: dict[str, ImagesEntry],
) -> Iterator[_TaskInput]:
    """The producer side of the pass (run ahead of the models, prunegate.ahead): decode each
    batch of `reads`, move it to the device, and make every task's inputs of it in plan order
    (a corruption's from the cache's shifted images, `cached`, when it holds them). Adds its own time to
    `timings` data_s and shift_s."""
    device = ctx.device
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # CUDA's current device is per thread: this one's is the run's
    if device.type == "cpu":
        # One core's worth of torch ops (the count is per thread): the models, beside it, keep
        # theirs. Splitting each small shift op over cores the models are using made the shifts
        # ~5x slower and slowed the models (MobileNetV2 at 224 px, bench/RESULTS.md).
        torch.set_num_threads(1)
    steps: list[tuple[Task | None, int]] = [(task, draw) for task in tasks for draw in range(task.draws)]
    steps = steps or [(None, 0)]
    tick = time.perf_counter()
    for ids, images, labels, digests in batches(
        source.images, reads, ctx.size, ctx.batch_size, ctx.workers, ctx.max_pixels
    ):
        x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        positions = torch.from_numpy(np.searchsorted(source.indices, ids.numpy()))
        batch = _Batch(ids, digests, labels.to(device), positions.to(device), positions.numpy())
        sample_ids = ids.to(device)
        timings["data_s"] += time.perf_counter() - tick
        for step, (task, draw) in enumerate(steps):
            tick = time.perf_counter()
            inputs = None
            if task is not None:
                shifted = _shifted(ctx, task, x, sample_ids, batch, draw, cached.get(task.name))
                inputs = shifted.model_input(ctx.pre)
            timings["shift_s"] += time.perf_counter() - tick
            yield _TaskInput(batch, task, draw, inputs, step == 0, step == len(steps) - 1)
        tick = time.perf_counter()


def _shifted(
    ctx: RunContext,
    task: Task,
    x: torch.Tensor,
    sample_ids: torch.Tensor,
    batch: _Batch,
    draw: int,
    kept: ImagesEntry | None,
) -> Shifted:
    """task_pixels of the batch, taken from (or kept in) the cache's shifted images when given."""
    if kept is None:
        return task_pixels(ctx, task, x, sample_ids, draw)
    ids = batch.ids.numpy()
    found = kept.take(batch.rows, ids, batch.digests, draw)
    if found is not None:  # in the clean batch's memory layout, as a shift makes it (the models' sums then match)
        return Shifted(torch.empty_like(x).copy_(found))
    shifted = task_pixels(ctx, task, x, sample_ids, draw)
    kept.put(batch.rows, ids, batch.digests, draw, shifted.values)
    return shifted


def _keep_evaluated(ctx: RunContext, tallies: list[dict[str, Tally]], sequential: SequentialGate) -> None:
    """After a sequential pass (its tallies merged): each source keeps the images the gate's
    sequences were fed (in data-set order), and each task's tally the slots of those images."""
    for source in ctx.sources:
        ids = np.sort(sequential.kept(source.name))
        if len(ids) == len(source.indices):
            continue
        positions = np.searchsorted(source.indices, ids)
        for task in ctx.source_tasks(source):
            slots = (positions[:, None] * task.draws + np.arange(task.draws)[None, :]).reshape(-1)
            for member in tallies:
                tally = member[task.name]
                assert isinstance(tally, TaskTally)
                member[task.name] = tally.select(torch.from_numpy(slots))
        source.indices = source.indices[positions]
        source.manifest.indices = source.indices


def total_evaluations(ctx: RunContext) -> int:
    """(task, sample) evaluations of one pass: its progress bar's total."""
    sizes = {s.name: len(s.indices) for s in ctx.sources}
    return sum(sizes[t.source] * t.draws for t in ctx.tasks)


def evaluate(
    ctx: RunContext, dense: Runner, pruned: Runner, **options: Any
) -> tuple[dict[str, Tally], dict[str, float]]:
    """Run every task on both models (options as evaluate_family's); returns the tallies (on CPU)
    and timings in seconds."""
    family, timings = evaluate_family(ctx, dense, [pruned], **options)
    return family[0], timings


def evaluate_family(
    ctx: RunContext,
    dense: Runner,
    members: Sequence[Runner],
    *,
    kind: PredictionKind = CLASSIFICATION,
    progress: Progress | None = None,
    world: World = SINGLE,
    classes: int | None = None,
    fields: list[str] | None = None,
    checkpoint: Checkpoint | None = None,
    restored: dict | None = None,
    cache: DenseCache | None = None,
    sequential: SequentialGate | None = None,
) -> tuple[list[dict[str, Tally]], dict[str, float]]:
    """Run every task on the dense model once and on each pruned member; one tally dict per
    member (on CPU), and timings in seconds. Under torchrun each process reads its part of every
    source and the tallies are merged across processes. `classes`: the class count every output
    must have (the probe's); `fields`: the models' names in errors (dense first). `checkpoint`:
    saved every few minutes and when the pass stops early; `restored`: a checkpoint's state to
    continue from (prunegate.checkpoint); `cache`: where the dense model's outputs are kept between
    runs (prunegate.cache): a batch it holds is not run through the dense model again.
    `sequential`: read each source in its seeded order and stop it when the gate's looks say
    (prunegate.sequential_gate); the sources then keep only the images evaluated."""
    fields = fields or [
        "models.dense",
        *(["models.pruned"] if len(members) == 1 else [f"--pruned.{i}" for i in range(len(members))]),
    ]
    restored = restored or {}
    device = ctx.device
    count = classes or probe_classes(dense, members[0], ctx.size, kind)
    tallies: list[dict[str, Tally]] = [{} for _ in members]
    timings = {"data_s": 0.0, "shift_s": 0.0, "models_s": 0.0, "wait_s": 0.0}
    done: dict[str, list[np.ndarray]] = {source.name: [] for source in ctx.sources}
    entries: dict[str, TaskEntry] = {}
    images: dict[str, ImagesEntry] = {}  # the cache's shifted images, by task
    trimmer = HeapTrimmer()

    def state() -> dict:
        """What a checkpoint keeps: the samples evaluated (whole batches) and every tally."""
        saved = {}
        for source in ctx.sources:
            ids = np.concatenate(done[source.name]) if done[source.name] else np.zeros(0, dtype=np.int64)
            saved[source.name] = {
                "done": torch.from_numpy(ids.astype(np.int64)),
                "digests": [source.manifest.digests[int(i)] for i in ids],
            }
        return {"sources": saved, "tallies": [{name: t.state() for name, t in member.items()} for member in tallies]}

    try:
        for source in ctx.sources:
            source_tasks = ctx.source_tasks(source)
            for task in source_tasks:
                for index, member in enumerate(tallies):
                    n = len(source.indices) * task.draws
                    kept = restored.get("tallies", [{}] * len(tallies))[index].get(task.name)
                    try:
                        member[task.name] = (
                            kind.restore_tally(kept, n, device, count) if kept else kind.new_tally(n, device, count)
                        )
                    except ValueError:
                        raise PrunegateError(
                            "the checkpoint does not fit this run (damaged?): remove it to start over", field="--resume"
                        ) from None
            # the dense outputs a cache holds (single process only: a part would never fill an entry)
            if cache is not None and world.size == 1:
                data = source_key(source)
                entries.update({t.name: cache.entry(task_key(t, data), source.indices, t.draws) for t in source_tasks})
                pixels = 3 * ctx.size[0] * ctx.size[1]  # (uint8 RGB)
                for t in source_tasks:
                    if t.kind is TaskKind.CORRUPTION and t.shifted:
                        found = cache.images_entry(task_key(t, data), source.indices, t.draws, pixels)
                        if found is not None:
                            images[t.name] = found
            reads = source.indices if source.part is None else source.part
            if sequential is not None:  # this process's share of every prefix of the seeded order
                reads = sequential.order(source.name, source.indices)
            earlier = restored.get("sources", {}).get(source.name)
            if earlier is not None and len(earlier["done"]):
                ids = earlier["done"].numpy()
                source.manifest.add(earlier["done"], list(earlier["digests"]))
                done[source.name].append(ids)
            if sequential is not None and restored:  # the sequences see the images already done, in read order
                replay = reads[np.isin(reads, np.concatenate(done[source.name] or [np.zeros(0, np.int64)]))]
                sequential.feed(source.name, tallies[0], np.searchsorted(source.indices, replay))  # type: ignore[arg-type]
            if earlier is not None and len(earlier["done"]):
                reads = reads[~np.isin(reads, earlier["done"].numpy())]
                if progress:
                    progress(len(ids) * sum(t.draws for t in source_tasks))
            with Ahead(_task_inputs(ctx, source, reads, source_tasks, timings, images), depth=AHEAD) as ahead:
                for item in ahead:
                    batch, shifted = item.batch, item.task
                    if item.first:
                        source.manifest.add(batch.ids, batch.digests)
                    if shifted is not None and item.inputs is not None:
                        tick = time.perf_counter()
                        where = (source.name, shifted.name, batch.ids)
                        entry = entries.get(shifted.name)
                        ids = batch.ids.numpy()
                        dense_kept = entry.take(batch.rows, ids, batch.digests, item.draw) if entry else None
                        if dense_kept is None:
                            dense_kept = kind.keep(model_outputs(dense, item.inputs, classes, where, fields[0], kind))
                            if entry is not None:
                                entry.put(batch.rows, ids, batch.digests, item.draw, dense_kept)
                        else:
                            dense_kept = dense_kept.to(device)
                        outputs = [
                            kind.keep(model_outputs(member, item.inputs, classes, where, field, kind))
                            for member, field in zip(members, fields[1:])
                        ]
                        timings["models_s"] += time.perf_counter() - tick
                        slots = batch.positions * shifted.draws + item.draw
                        for member, pruned_kept in zip(tallies, outputs):
                            member[shifted.name].record(slots, batch.labels, dense_kept, pruned_kept)
                        if progress and item.draw == shifted.draws - 1:
                            progress(len(ids) * shifted.draws)
                    if item.last:
                        trimmer.maybe_trim()  # (prunegate.allocator: the two threads fragment the heap)
                        done[source.name].append(batch.ids.numpy())
                        if checkpoint is not None and checkpoint.due():
                            checkpoint.save(state())
                        if sequential is not None:
                            looked = sequential.look(source.name, tallies[0], batch.rows)  # type: ignore[arg-type]
                            if looked != "continue":
                                break  # (leaving the `with` stops the producer)
                else:  # read all of this process's share: look on with the others until they have too
                    if sequential is not None:
                        sequential.drain(source.name, tallies[0])  # type: ignore[arg-type]
            timings["wait_s"] += ahead.waited_s
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
    if cache is not None:
        cache.save()
    if sequential is not None:
        _keep_evaluated(ctx, tallies, sequential)
    result = []
    for member in tallies:
        finished = {}
        for name, tally in member.items():
            tally = tally.cpu()
            if not bool(tally.filled.all()):
                raise AssertionError(f"task {name}: {int((~tally.filled).sum())} samples were never evaluated")
            finished[name] = tally
        result.append(finished)
    return result, timings
