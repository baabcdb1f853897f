"""Render a corruption preset to disk (CIFAR-10-C layout) and draw a preview grid.

The random streams are keyed exactly as in `prunegate check` (seed, task name, sample index), so
a rendered set holds the very images a check with the same seed evaluates.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from prunegate import shifts
from prunegate.context import Preprocess, RunContext, Source, task_pixels
from prunegate.cpu_pool import run_jobs
from prunegate.data import ImageSet, batches
from prunegate.data.cifar_c import SEVERITY_FILE
from prunegate.errors import PrunegateError
from prunegate.plan import Task, corruption_tasks
from prunegate.policy import DEFAULT_MAX_PIXELS
from prunegate.shifts import NO_ASSETS, ShiftAssets


def corruption_context(
    images: ImageSet,
    indices: np.ndarray,
    *,
    preset: str,
    names: list[str],
    severities: list[int],
    seed: int,
    batch_size: int = 256,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    device: torch.device = torch.device("cpu"),
    assets: ShiftAssets = NO_ASSETS,
) -> RunContext:
    """The run context of rendering `names` x `severities` of `preset` on `images[indices]`:
    the same tasks, random streams and assets as a check with this seed."""
    size = shifts.get_preset(preset).image_size
    source = Source("test", images, indices, "--source")
    identity = Preprocess.create((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), device)  # renders pixels, never model inputs
    return RunContext(
        tuple(corruption_tasks(names, severities, preset)),
        (source,),
        identity,
        (size, size),
        seed,
        batch_size,
        workers,
        max_pixels,
        assets,
        device,
    )


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _layout(ctx: RunContext) -> tuple[str, list[str], list[int]]:
    """(preset, corruption names, severities) of a corruption context's tasks, in their order."""
    names = list(dict.fromkeys(t.shift or "" for t in ctx.tasks))
    severities = list(dict.fromkeys(t.severity or 0 for t in ctx.tasks))
    return ctx.tasks[0].preset or "", names, severities


def _render_job(
    ctx: RunContext, task: Task, x: torch.Tensor, sample_ids: torch.Tensor, out: np.ndarray, rows: np.ndarray
) -> None:
    """Write task's pixels of the samples x into rows `rows` of `out`."""
    out[rows] = _to_uint8(task_pixels(ctx, task, x, sample_ids, 0).pixels(ctx.pre))


def _first_of_each_shift_first(jobs: list[functools.partial]) -> list[functools.partial]:
    """The jobs with one of each corruption moved to the front: each corruption's one-off tables
    (frost's photographs take ~2 s) are then made while the other threads work on other jobs,
    not waited for by all of them at once."""
    first: dict[str, int] = {}
    for i, job in enumerate(jobs):
        first.setdefault(job.args[1].shift or "", i)
    front = set(first.values())
    return [jobs[i] for i in sorted(front)] + [job for i, job in enumerate(jobs) if i not in front]


def render(ctx: RunContext, out: Path, progress: Callable[[int], None] | None = None) -> dict:
    """Write `<name>.npy` (severity blocks of len(indices) rows each) and `labels.npy` into `out`.

    Everything is written into `<out>.partial` and renamed at the end: an interrupted run leaves
    no folder that looks complete."""
    if out.exists():
        raise PrunegateError("already exists; choose a new output folder", file=out)
    preset, names, severities = _layout(ctx)
    source = ctx.sources[0]
    indices, n = source.indices, len(source.indices)
    partial = out.with_name(out.name + ".partial")
    threads = torch.get_num_threads() if ctx.device.type == "cpu" else 1
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        np.save(partial / "labels.npy", np.tile(source.images.labels[indices], len(severities)))
        arrays = {
            name: np.lib.format.open_memmap(
                partial / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(len(severities) * n, *ctx.size, 3)
            )
            for name in names
        }
        for ids, batch, _, _ in batches(source.images, indices, ctx.size, ctx.batch_size, ctx.workers, ctx.max_pixels):
            rows = np.searchsorted(indices, ids.numpy())
            x = batch.to(ctx.device).permute(0, 3, 1, 2).float().div_(255.0)
            sample_ids = ids.to(ctx.device)
            # On the CPU a job is one task on one shift-sized chunk of the batch, and the jobs run
            # a thread per core (samples are independent, so the pixels are those of one call).
            step = shifts.chunk_size(x) if threads > 1 else max(1, len(ids))
            jobs = []
            for task in ctx.tasks:
                out_rows = severities.index(task.severity or 0) * n + rows
                for i in range(0, len(ids), step):
                    chunk = slice(i, i + step)
                    job = (ctx, task, x[chunk], sample_ids[chunk], arrays[task.shift or ""], out_rows[chunk])
                    jobs.append(functools.partial(_render_job, *job))
            run_jobs(_first_of_each_shift_first(jobs), threads)
            if progress:
                progress(len(ids))
        for array in arrays.values():
            array.flush()
        del arrays
        manifest: dict = {"preset": preset, "severities": severities, "seed": ctx.seed, "images": n, "names": names}
        for record in ctx.assets.records():  # what the corruptions overlaid (e.g. the user's photographs)
            manifest[record["name"]] = {k: v for k, v in record.items() if k != "name"}
        (partial / SEVERITY_FILE).write_text(json.dumps(manifest, indent=2))
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {"images": n, "names": len(names), "severities": severities, "size": ctx.size[0]}


def preview_png(ctx: RunContext, image: torch.Tensor, sample_id: int) -> bytes:
    """A grid of one image (uint8 HWC): a row per corruption, the clean image then each severity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preset, names, severities = _layout(ctx)
    x = image.permute(2, 0, 1)[None].float().div(255.0).to(ctx.device)
    ids = torch.tensor([sample_id], device=ctx.device)
    by_name = {(t.shift, t.severity): t for t in ctx.tasks}
    cols = 1 + len(severities)
    fig, axes = plt.subplots(len(names), cols, figsize=(1.6 * cols, 1.6 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        panels = [x] + [task_pixels(ctx, by_name[(name, s)], x, ids, 0).pixels(ctx.pre) for s in severities]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(_to_uint8(panel)[0], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("clean" if col == 0 else f"severity {severities[col - 1]}", fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"prunegate corruptions · preset {preset} · seed {ctx.seed}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (1.6 * len(names))))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
