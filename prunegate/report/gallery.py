"""Thumbnails of the inputs the pruned model newly gets wrong, rebuilt from the report alone.

A report records, for a few samples per task, the sample's index in its data set and the noise
draw (`TaskRecord.examples`). Every shift is a pure function of (policy seed, task, draw, sample
index), so the exact input both models saw can be made again: reopen the data set the report
names, re-read that image, fit it to the input size and apply the task's shift as the engine does.
Nothing is stored in the report but indices; when the data is no longer where the report says (or
has changed), the gallery is simply left out, with a note saying why.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from prunegate.errors import PrunegateError
from prunegate.report.render.common import failing_tasks
from prunegate.report.schema import Example, Report, TaskRecord
from prunegate.shifts.textures import frost_textures_in_use

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
    def note(self) -> Optional[str]:
        return "; ".join(self.notes) if self.notes else None


def select_examples(report: Report, limit: int = MAX_EXAMPLES, per_task: int = PER_TASK) -> list[tuple[TaskRecord, Example]]:
    """The examples the gallery shows: tasks that failed a rule first, then the tasks that lose
    most accuracy; at most `per_task` from each and `limit` in all."""
    failing = failing_tasks(report)
    position = {t.name: i for i, t in enumerate(report.tasks)}
    ordered = sorted((t for t in report.tasks if t.examples),
                     key=lambda t: (t.name not in failing, -t.accuracy_drop, position[t.name]))
    chosen: list[tuple[TaskRecord, Example]] = []
    for task in ordered:
        for example in task.examples[:per_task]:
            if len(chosen) == limit:
                return chosen
            chosen.append((task, example))
    return chosen


def png(image_hwc, side: int = THUMBNAIL) -> bytes:
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


def shifted(task, x, sample_ids, draw: int, seed: int, mean, std):
    """The image a task showed the models, as float [0, 1] NCHW (before normalisation).

    Mirrors prunegate.engine.task_input: the same random stream names and keys. Noise that lives
    in the normalised input space is added there and mapped back to pixels for display."""
    from prunegate import shifts
    from prunegate.shifts.rng import SampleRNG, task_key

    if task.kind in ("clean", "ood") or task.precomputed:
        return x
    stream = task.name if task.draws == 1 else f"{task.name}#{draw}"
    rng = SampleRNG(task_key(seed, stream), sample_ids, device=x.device)
    if task.kind == "noise":
        noise = shifts.get_noise(task.shift)
        if noise.space == "normalized":
            return (noise.fn((x - mean) / std, task.param, rng) * std + mean).clamp(0.0, 1.0)
        return noise.fn(x, task.param, rng)
    return shifts.corrupt(x, task.shift, int(task.param), rng, preset=task.preset)


def _to_uint8(x):
    """float [0, 1] NCHW -> uint8 NHWC, rounded (as the corruptions quantise)."""
    import torch

    return x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1)


def _policy(report: Report):
    from prunegate.policy import policy_from_dict

    where = report.policy.path or "the report's policy"
    policy = policy_from_dict(report.policy.document, file=where)
    if report.policy.path:
        policy._file = Path(report.policy.path)  # relative data paths resolve against the policy's folder
    return policy


def _open(policy, report: Report, task, opened: dict, notes: list[str]):
    """The image set a task reads (cached), or None with a note when it cannot be opened."""
    from prunegate.data import open_source
    from prunegate.data.cifar_c import CorruptedArrays

    if task.source in opened:
        return opened[task.source]
    images = None
    try:
        if task.precomputed:
            folder = policy.resolve(policy.suite.corruptions.precomputed)
            images = CorruptedArrays(folder, task.shift, int(task.param), "suite.corruptions.precomputed")
        elif task.kind == "ood":
            spec = next(o for o in policy.data.ood if o.name == task.source)
            images = open_source(spec, policy.resolve, f"data.ood.{task.source}")
        else:
            images = open_source(policy.data.test, policy.resolve, "data.test")
        record = next((d for d in report.data if d.name == task.source), None)
        if record is not None and len(images) != record.size:
            notes.append(f"data set {task.source!r} has {len(images)} images now, the report read {record.size}: "
                         "it has changed, its examples are not shown")
            images = None
    except PrunegateError as exc:
        notes.append(f"data set {task.source!r} is not readable here ({exc})")
        images = None
    opened[task.source] = images
    return images


def _frost_textures(policy, report: Report, notes: list[str]):
    """(the frost photographs the report's pass used, or None for procedural ones; whether frost
    examples must be left out because those photographs are not here as they were)."""
    from prunegate.check import load_frost_textures

    recorded = next((d for d in report.data if d.name == "frost_textures"), None)
    try:
        folder = load_frost_textures(policy)
    except PrunegateError as exc:
        notes.append(f"the policy's frost photographs are not readable here ({exc}): frost examples are left out")
        return None, True
    if (folder.record["sha256"] if folder else None) != (recorded.sha256 if recorded else None):
        notes.append("the frost photographs differ from the ones the report used: frost examples are left out")
        return None, True
    return (folder.photos if folder else None), False


def build_gallery(report: Report, *, limit: int = MAX_EXAMPLES, per_task: int = PER_TASK,
                  side: int = THUMBNAIL) -> Gallery:
    """Rebuild the thumbnails of `select_examples(report)`. Never raises for missing or changed
    data: what cannot be rebuilt is left out and said in `notes`."""
    gallery = Gallery()
    chosen = select_examples(report, limit, per_task)
    if not chosen:
        return gallery
    try:
        import torch

        from prunegate.data import fit_to_size
        from prunegate.plan import build_plan

        policy = _policy(report)
        plan = {t.name: t for t in build_plan(policy)}
    except PrunegateError as exc:
        gallery.notes.append(f"the report's policy cannot be rebuilt here ({exc})")
        return gallery
    size, seed = policy.models.input.size, policy.suite.seed
    mean = torch.tensor(policy.models.input.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(policy.models.input.std, dtype=torch.float32).view(1, -1, 1, 1)
    frost, frost_missing = _frost_textures(policy, report, gallery.notes)
    opened: dict = {}
    groups: dict[tuple[str, int], list[Example]] = {}
    for record, example in chosen:
        groups.setdefault((record.name, example.draw), []).append(example)
    missing = 0
    with torch.inference_mode(), frost_textures_in_use(frost):
        for (name, draw), examples in groups.items():
            task = plan.get(name)
            if task is None:
                gallery.notes.append(f"task {name!r} is not in the report's policy")
                continue
            if frost_missing and task.shift == "frost":
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
                fitted = [fit_to_size(p.permute(2, 0, 1), size) for p in pictures]
                x = torch.stack(fitted).float().div(255.0)
                made = _to_uint8(shifted(task, x, torch.tensor(indices, dtype=torch.int64), draw, seed, mean, std))
                clean = _to_uint8(x)
            except (PrunegateError, OSError, ValueError, RuntimeError) as exc:
                # The gallery only illustrates the report: a failure here must not cost the page.
                log.debug("gallery: task %s", name, exc_info=True)
                gallery.notes.append(f"cannot rebuild the examples of {name!r} ({exc})")
                continue
            for i, index in enumerate(indices):
                gallery.images[(name, index, draw)] = png(made[i].numpy(), side)
                if task.kind in ("noise", "corruption") and not task.precomputed:
                    gallery.originals.setdefault((task.source, index), png(clean[i].numpy(), side))
    if missing:
        gallery.notes.append(f"{missing} example(s) name images outside their data set")
    return gallery
