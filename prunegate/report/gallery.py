"""Thumbnails of the inputs the pruned model newly gets wrong, rebuilt from the report alone.

A report records, for a few samples per task, the sample's index in its data set and the noise
draw (`TaskRecord.examples`). Every shift is a pure function of (policy seed, task, draw, sample
index), so the exact input both models saw can be made again: reopen the data set the report
names, re-read that image, fit it to the input size and apply the task's shift with
context.task_pixels, the very function the engine feeds the models from.
Nothing is stored in the report but indices; when the data is no longer where the report says (or
has changed), the gallery is simply left out, with a note saying why.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunegate.errors import PrunegateError
from prunegate.plan import Task, TaskKind
from prunegate.report.render.common import failing_tasks
from prunegate.report.schema import Example, Report, TaskRecord

if TYPE_CHECKING:  # the gallery imports torch and the shifts only when it draws
    import torch

    from prunegate.data import ImageSet
    from prunegate.policy import Policy
    from prunegate.shifts import ShiftAssets

log = logging.getLogger(__name__)

Key = tuple[str, int, int]  # (task name, sample index, draw)
MAX_EXAMPLES = 48  # in the whole gallery
PER_TASK = 4
THUMBNAIL = 128  # largest side in pixels; smaller images are kept as they are (and scaled up in CSS)


@dataclass
class Gallery:
    """PNG thumbnails: the input a task fed the models, and the clean image it was made from."""

    images: dict[Key, bytes] = field(default_factory=dict)
    originals: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (source, index) -> clean image
    notes: list[str] = field(default_factory=list)

    @property
    def note(self) -> str | None:
        return "; ".join(self.notes) if self.notes else None


def select_examples(
    report: Report, limit: int = MAX_EXAMPLES, per_task: int = PER_TASK
) -> list[tuple[TaskRecord, Example]]:
    """The examples the gallery shows: tasks that failed a rule first, then the tasks that lose
    most accuracy; at most `per_task` from each and `limit` in all."""
    failing = failing_tasks(report)
    position = {t.name: i for i, t in enumerate(report.tasks)}
    ordered = sorted(
        (t for t in report.tasks if t.examples),
        key=lambda t: (t.name not in failing, -t.accuracy_drop, position[t.name]),
    )
    chosen: list[tuple[TaskRecord, Example]] = []
    for task in ordered:
        for example in task.examples[:per_task]:
            if len(chosen) == limit:
                return chosen
            chosen.append((task, example))
    return chosen


def png(image_hwc: Any, side: int = THUMBNAIL) -> bytes:
    """uint8 HWC (torch or numpy) -> PNG bytes, shrunk to at most `side` pixels a side."""
    import numpy as np
    from PIL import Image

    array = np.ascontiguousarray(np.asarray(image_hwc, dtype=np.uint8))
    picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if max(picture.size) > side:
        picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [0, 1] NCHW -> uint8 NHWC, rounded (as the corruptions quantise)."""
    import torch

    return x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1)


def _policy(report: Report) -> Policy:
    from prunegate.policy import policy_from_dict

    where = report.policy.path or "the report's policy"
    policy = policy_from_dict(report.policy.document, file=where)
    if report.policy.path:
        policy._file = Path(report.policy.path)  # relative data paths resolve against the policy's folder
    return policy


def _open(policy: Policy, report: Report, task: Task, opened: dict, notes: list[str]) -> ImageSet | None:
    """The image set a task reads (cached), or None with a note when it cannot be opened."""
    from prunegate.context import source_images

    if task.source in opened:
        return opened[task.source]
    images: ImageSet | None = None
    try:
        images, _ = source_images(policy, task.source, task)
        record = next((d for d in report.data if d.name == task.source), None)
        if record is not None and len(images) != record.size:
            notes.append(
                f"data set {task.source!r} has {len(images)} images now, the report read {record.size}: "
                "it has changed, its examples are not shown"
            )
            images = None
    except PrunegateError as exc:
        notes.append(f"data set {task.source!r} is not readable here ({exc})")
        images = None
    opened[task.source] = images
    return images


def _assets(policy: Policy, report: Report, notes: list[str]) -> tuple[ShiftAssets, bool]:
    """(the shift assets the report's pass used, whether the examples of shifts that take assets
    must be left out because those assets are not here as they were)."""
    from prunegate.context import load_assets
    from prunegate.shifts import NO_ASSETS
    from prunegate.shifts.assets import ASSET_NAMES

    recorded = {d.name: d.sha256 for d in report.data if d.name in ASSET_NAMES}
    try:
        assets = load_assets(policy)
    except PrunegateError as exc:
        notes.append(
            f"the policy's shift assets are not readable here ({exc}): the examples of shifts that "
            "overlay them are left out"
        )
        return NO_ASSETS, True
    if {r["name"]: r["sha256"] for r in assets.records()} != recorded:
        notes.append(
            f"the shift assets ({', '.join(sorted(recorded) or ASSET_NAMES)}) differ from the ones the "
            "report used: the examples of shifts that overlay them are left out"
        )
        return NO_ASSETS, True
    return assets, False


def build_gallery(
    report: Report, *, limit: int = MAX_EXAMPLES, per_task: int = PER_TASK, side: int = THUMBNAIL
) -> Gallery:
    """Rebuild the thumbnails of `select_examples(report)`. Never raises for missing or changed
    data: what cannot be rebuilt is left out and said in `notes`."""
    gallery = Gallery()
    chosen = select_examples(report, limit, per_task)
    if not chosen:
        return gallery
    try:
        import torch

        from prunegate.context import RunContext, task_pixels
        from prunegate.data import fit_to_size

        policy = _policy(report)
        assets, assets_missing = _assets(policy, report, gallery.notes)
        ctx = RunContext.build(policy, sources=(), assets=assets)
    except PrunegateError as exc:
        gallery.notes.append(f"the report's policy cannot be rebuilt here ({exc})")
        return gallery
    opened: dict = {}
    groups: dict[tuple[str, int], list[Example]] = {}
    for record, example in chosen:
        groups.setdefault((record.name, example.draw), []).append(example)
    missing = 0
    with torch.inference_mode():
        for (name, draw), examples in groups.items():
            task = ctx.task(name)
            if task is None:
                gallery.notes.append(f"task {name!r} is not in the report's policy")
                continue
            if assets_missing and _takes_assets(task):
                continue
            images = _open(policy, report, task, opened, gallery.notes)
            if images is None:
                continue
            indices = [e.index for e in examples if 0 <= e.index < len(images)]
            missing += len(examples) - len(indices)
            if not indices:
                continue
            try:
                pictures, _ = images.read(indices, policy.data.max_pixels)
                fitted = [fit_to_size(p.permute(2, 0, 1), ctx.size) for p in pictures]
                x = torch.stack(fitted).float().div(255.0)
                shown = task_pixels(ctx, task, x, torch.tensor(indices, dtype=torch.int64), draw).pixels(ctx.pre)
                made, clean = _to_uint8(shown), _to_uint8(x)
            except (PrunegateError, OSError, ValueError, RuntimeError) as exc:
                # The gallery only illustrates the report: a failure here must not cost the page.
                log.debug("gallery: task %s", name, exc_info=True)
                gallery.notes.append(f"cannot rebuild the examples of {name!r} ({exc})")
                continue
            for i, index in enumerate(indices):
                gallery.images[(name, index, draw)] = png(made[i].numpy(), side)
                if task.shifted:
                    gallery.originals.setdefault((task.source, index), png(clean[i].numpy(), side))
    if missing:
        gallery.notes.append(f"{missing} example(s) name images outside their data set")
    return gallery


def _takes_assets(task: Task) -> bool:
    """Whether the task's shift overlays shift assets (e.g. frost's photographs)."""
    from prunegate import shifts

    return task.kind is TaskKind.CORRUPTION and task.shift is not None and shifts.get_shift(task.shift).takes_assets
