"""Thumbnails of the inputs the pruned model newly gets wrong, rebuilt from the report alone.

A report records, for a few samples per task, the sample's index in its data set and the noise
draw (`TaskRecord.examples`). Every shift is a pure function of (policy seed, task, draw, sample
index), so the exact input both models saw can be made again: reopen the data set the report
names, re-read that image, fit it to the input size and apply the task's shift with
context.task_pixels, the very function the engine feeds the models from.
Nothing is stored in the report but indices; when the data is no longer where the report says (or
has changed), the gallery is simply left out, with a note saying why.

The gallery has one card per image (`select_cards`): an image several tasks broke is shown once,
as the first of those tasks fed it, with every task that broke it listed on its card, and named
by its file (`ImageSet.sample_name`), read when the data set is reopened.

A segmentation report has one panel instead: its worst image (`worst_segmentation_example`), the
input rebuilt as above with its ground-truth mask, and the two models' predicted masks, which the
report records for that image alone, each drawn as a colour overlay on the input.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunegate.errors import PrunegateError
from prunegate.plan import Task, TaskKind
from prunegate.report.render.common import failing_tasks
from prunegate.report.schema import Example, Report, SegmentationExample, TaskRecord

if TYPE_CHECKING:  # the gallery imports torch and the shifts only when it draws
    import numpy as np
    import torch

    from prunegate.context import RunContext
    from prunegate.data import ImageSet
    from prunegate.policy import Policy
    from prunegate.shifts import ShiftAssets

log = logging.getLogger(__name__)

Key = tuple[str, int, int]  # (task name, sample index, draw)
MAX_EXAMPLES = 48  # segmentation: recorded images listed in all
MAX_CARDS = 24  # images in the classification gallery
PER_TASK = 4  # the images a task may add to the gallery (it is listed on any card of an image it broke)
THUMBNAIL = 128  # largest side in pixels; smaller images are kept as they are (and scaled up in CSS)
PANEL_SIDE = 256  # largest side of the segmentation panel's pictures
OVERLAY_ALPHA = 0.5  # a mask's colour over its input pixel


@dataclass
class SegmentationPanel:
    """The worst image of a segmentation report as PNGs: the input the task fed the models, and
    the ground-truth, dense and pruned masks as colour overlays on it (None: not available)."""

    input: bytes | None = None
    truth: bytes | None = None
    dense: bytes | None = None
    pruned: bytes | None = None
    classes: list[int] = field(default_factory=list)  # the classes coloured in any of the three


@dataclass
class Gallery:
    """PNG thumbnails: the input a task fed the models, and the clean image it was made from."""

    images: dict[Key, bytes] = field(default_factory=dict)
    originals: dict[tuple[str, int], bytes] = field(default_factory=dict)  # (source, index) -> clean image
    names: dict[tuple[str, int], str] = field(default_factory=dict)  # (source, index) -> its file, for captions
    notes: list[str] = field(default_factory=list)
    panels: dict[Key, SegmentationPanel] = field(default_factory=dict)  # segmentation: the worst image

    @property
    def note(self) -> str | None:
        return "; ".join(self.notes) if self.notes else None


@dataclass(frozen=True)
class Card:
    """One image of the gallery (`source`, `index`) and every recorded example of it: the tasks
    (and noise draws) on which the pruned model newly got it wrong, the one the card shows first."""

    source: str
    index: int
    examples: list[tuple[TaskRecord, Example]]

    @property
    def shown(self) -> tuple[TaskRecord, Example]:
        return self.examples[0]


def ranked_tasks(report: Report) -> list[TaskRecord]:
    """The tasks that record examples: those that failed a rule first, then those that lose most
    accuracy (report order on ties)."""
    failing = failing_tasks(report)
    position = {t.name: i for i, t in enumerate(report.tasks)}
    return sorted(
        (t for t in report.tasks if t.examples),
        key=lambda t: (t.name not in failing, -(t.accuracy_drop or 0.0), position[t.name]),
    )


def select_cards(report: Report, limit: int = MAX_CARDS, per_task: int = PER_TASK) -> list[Card]:
    """The gallery's cards, one per image: the images of the first `per_task` examples of each
    task in `ranked_tasks` order, at most `limit`; each card lists every example of its image."""
    ranked = ranked_tasks(report)
    by_image: dict[tuple[str, int], list[tuple[TaskRecord, Example]]] = {}
    for task in ranked:
        for example in task.examples:
            by_image.setdefault((task.source or "test", example.index), []).append((task, example))
    chosen: list[tuple[str, int]] = []
    for task in ranked:
        for example in task.examples[:per_task]:
            image = (task.source or "test", example.index)
            if image not in chosen and len(chosen) < limit:
                chosen.append(image)
    return [Card(source, index, by_image[(source, index)]) for source, index in chosen]


def worst_segmentation_example(report: Report) -> tuple[TaskRecord, SegmentationExample] | None:
    """The image the segmentation panel shows: the example with predicted masks (the check records
    them for the report's worst image), else the first (largest drop) example of the task with the
    largest mIoU drop; None without examples."""
    for task in report.tasks:
        for example in task.segmentation_examples:
            if example.dense_mask is not None and example.pruned_mask is not None:
                return task, example
    tasks = [t for t in report.tasks if t.segmentation_examples]
    if not tasks:
        return None
    task = max(tasks, key=lambda t: -math.inf if t.miou_drop is None else t.miou_drop)
    return task, task.segmentation_examples[0]


@functools.cache
def voc_palette(size: int = 256) -> np.ndarray:
    """[size, 3] uint8: the PASCAL VOC colour map (each class index's bits interleaved into R, G, B)."""
    import numpy as np

    palette = np.zeros((size, 3), dtype=np.uint8)
    for label in range(size):
        value, colour = label, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
        palette[label] = colour
    return palette


def overlay(image_hwc: Any, mask_hw: Any, classes: int | None = None, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 HWC: the mask's classes blended over the image in the VOC palette. Ignored pixels
    (negative, as data.IGNORED) and values from `classes` on stay uncoloured."""
    import numpy as np

    image = np.asarray(image_hwc, dtype=np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    mask = np.asarray(mask_hw, dtype=np.int64)
    palette = voc_palette()
    limit = min(classes or len(palette), len(palette))
    coloured = (mask >= 0) & (mask < limit)
    out = image.astype(np.float32)
    colours = palette[np.clip(mask, 0, len(palette) - 1)].astype(np.float32)
    out[coloured] = (1.0 - alpha) * out[coloured] + alpha * colours[coloured]
    return np.rint(out).astype(np.uint8)


def decode_mask(data: str, shape: tuple[int, int]) -> np.ndarray:
    """A recorded base64 PNG of class indices -> HW int64; ValueError when it is not one of `shape`."""
    import numpy as np
    from PIL import Image

    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as exc:
        raise ValueError(f"not a base64 PNG ({exc})") from None
    try:
        with Image.open(io.BytesIO(raw), formats=("PNG",)) as picture:
            width, height = picture.size
            if (height, width) != shape:  # from the header: a report's PNG is never decoded at any size
                raise ValueError(f"{width}x{height} pixels, the input is {shape[1]}x{shape[0]}")
            mask = np.asarray(picture)
    except ValueError:
        raise
    except (OSError, Image.DecompressionBombError) as exc:  # bad base64, not a PNG, truncated
        raise ValueError(f"not a base64 PNG ({exc})") from None
    if mask.ndim != 2:
        raise ValueError("not a single-channel PNG of class indices")
    return mask.astype(np.int64)


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
    if report.policy.folder:
        policy._base_dir = Path(report.policy.folder)  # ... or where the ready policy ran
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


def _rebuild(report: Report, notes: list[str]) -> tuple[Policy, RunContext, bool] | None:
    """(the report's policy, its run context, whether the examples of shifts that take assets must
    be left out), or None with a note when the policy cannot be rebuilt here."""
    from prunegate.context import RunContext

    try:
        policy = _policy(report)
        assets, assets_missing = _assets(policy, report, notes)
        ctx = RunContext.build(policy, sources=(), assets=assets)
    except PrunegateError as exc:
        notes.append(f"the report's policy cannot be rebuilt here ({exc})")
        return None
    return policy, ctx, assets_missing


def build_gallery(
    report: Report, *, limit: int = MAX_CARDS, per_task: int = PER_TASK, side: int = THUMBNAIL
) -> Gallery:
    """Rebuild the thumbnails of `select_cards(report)`, the input each card shows (a segmentation
    report: the panel of `build_panel`). Never raises for missing or changed data: what cannot be
    rebuilt is left out and said in `notes`."""
    if report.task == "segmentation":
        return build_panel(report)
    return rebuild_inputs(report, [card.shown for card in select_cards(report, limit, per_task)], side)


def rebuild_inputs(report: Report, chosen: list[tuple[TaskRecord, Example]], side: int = THUMBNAIL) -> Gallery:
    """The thumbnails of these examples' inputs (and of the clean images of shifted ones), and
    their images' file names; what cannot be rebuilt is left out and said in `notes`."""
    gallery = Gallery()
    if not chosen:
        return gallery
    import torch

    from prunegate.context import task_pixels
    from prunegate.data import fit_to_size

    rebuilt = _rebuild(report, gallery.notes)
    if rebuilt is None:
        return gallery
    policy, ctx, assets_missing = rebuilt
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
            images = _open(policy, report, task, opened, gallery.notes)
            if images is None:
                continue
            indices = [e.index for e in examples if 0 <= e.index < len(images)]
            missing += len(examples) - len(indices)
            for index in indices:
                gallery.names[(task.source, index)] = images.sample_name(index)
            if not indices or (assets_missing and _takes_assets(task)):
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


def build_panel(report: Report, side: int = PANEL_SIDE) -> Gallery:
    """The panel of a segmentation report's worst image, when the report records its predicted
    masks; as `build_gallery`, what cannot be rebuilt is left out and said in `notes`."""
    gallery = Gallery()
    chosen = worst_segmentation_example(report)
    if chosen is None or chosen[1].dense_mask is None or chosen[1].pruned_mask is None:
        return gallery  # nothing to draw: the page shows the numbers
    record, example = chosen
    rebuilt = _rebuild(report, gallery.notes)
    if rebuilt is None:
        return gallery
    policy, ctx, assets_missing = rebuilt
    made = _panel_input(policy, ctx, report, record, example, assets_missing, gallery)
    if made is None:
        return gallery
    picture, truth = made
    classes = len(record.class_iou.dense) if record.class_iou is not None else None
    masks = {"truth": truth}
    for role in ("dense", "pruned"):
        try:
            masks[role] = decode_mask(getattr(example, f"{role}_mask"), picture.shape[:2])
        except ValueError as exc:
            gallery.notes.append(f"the {role} model's recorded mask of image #{example.index} is unusable: {exc}")
    panel = SegmentationPanel(input=png(picture, side))
    for role, mask in masks.items():
        setattr(panel, role, png(overlay(picture, mask, classes), side))
    panel.classes = _coloured(masks.values(), classes)
    gallery.panels[(record.name, example.index, example.draw)] = panel
    return gallery


def _panel_input(
    policy: Policy,
    ctx: RunContext,
    report: Report,
    record: TaskRecord,
    example: SegmentationExample,
    assets_missing: bool,
    gallery: Gallery,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(uint8 HWC: the input the task fed the models, HW: its ground-truth mask, ignored pixels
    negative) for one example, fitted as the engine fits them, and the image's file name in
    `gallery.names`; None with a note in `gallery.notes` when it cannot be."""
    import torch

    from prunegate.context import task_pixels
    from prunegate.data import SegmentationFolder

    notes = gallery.notes

    task = ctx.task(record.name)
    if task is None:
        notes.append(f"task {record.name!r} is not in the report's policy")
        return None
    if assets_missing and _takes_assets(task):
        return None
    images = _open(policy, report, task, {}, notes)
    if images is None:
        return None
    if not isinstance(images, SegmentationFolder):
        notes.append(f"data set {task.source!r} has no masks here")
        return None
    if not 0 <= example.index < len(images):
        notes.append(f"image #{example.index} is outside its data set")
        return None
    gallery.names[(task.source, example.index)] = images.sample_name(example.index)
    try:
        with torch.inference_mode():
            batch, truth, _ = images.read_batch([example.index], ctx.size, policy.data.max_pixels)
            x = batch.permute(0, 3, 1, 2).float().div(255.0)
            ids = torch.tensor([example.index], dtype=torch.int64)
            shown = task_pixels(ctx, task, x, ids, example.draw).pixels(ctx.pre)
    except (PrunegateError, OSError, ValueError, RuntimeError) as exc:
        # As the gallery: a failure here must not cost the page.
        log.debug("gallery: task %s", record.name, exc_info=True)
        notes.append(f"cannot rebuild image #{example.index} of {record.name!r} ({exc})")
        return None
    return _to_uint8(shown)[0].numpy(), truth[0].numpy()


def _coloured(masks: Any, classes: int | None) -> list[int]:
    """The class indices some mask colours (as `overlay` does)."""
    import numpy as np

    limit = min(classes or 256, 256)
    found: set[int] = set()
    for mask in masks:
        values = np.unique(mask)
        found.update(int(v) for v in values if 0 <= v < limit)
    return sorted(found)
