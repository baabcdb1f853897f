"""Segmentation: logits [B, K, H, W] and masks [B, H, W] -> per-image confusion matrices.

Each image keeps, per model, its confusion matrix over valid pixels, rows the true class and
columns the prediction, [K, K + 1]: the extra last column counts pixels whose logits hold a NaN or
an Inf, a prediction that is never the true class (a miss for its true class and no class's false
positive). It also keeps the valid pixels on which both models predict the same class (a
non-finite pixel of either model is a disagreement) and the valid pixels. Nothing per pixel
outlives the batch: a tally is O(images x K^2).

Metrics are pure functions of summed confusion matrices (dataset-level mIoU, pixel accuracy and
per-class IoU); a bootstrap replicate is the same function of image-weighted sums. Every metric
needs only per-class true positives, true counts and predicted counts, which are linear in the
matrix, so the bootstrap resamples those columns rather than whole matrices.

Slots merge as metrics/tally.py's do: exactly one process fills each image, the merge sums what
each process filled and `filled` counts the writers (more than one is a bug).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from prunegate.data import IGNORED, SegmentationFolder
from prunegate.errors import DataError
from prunegate.metrics.intervals import Resampler, percentile_interval
from prunegate.metrics.tally import Reduce, all_reduce_slots
from prunegate.plan import Task
from prunegate.report.schema import CorruptionSummary, ModelSide, TaskRecord

from .base import SourceLike
from .corruptions import summarise_corruptions

IGNORE_INDEX = 255
INTERVAL_METRICS = (
    "miou_drop",
    "pixel_accuracy_drop",
    "pixel_agreement",
    "dense_miou",
    "pruned_miou",
    "dense_pixel_accuracy",
    "pruned_pixel_accuracy",
    "class_iou_drop",
)


@dataclass
class SegmentationTally:
    """One task's per-image confusion matrices for the dense and one pruned model."""

    dense_confusion: torch.Tensor  # [n, K, K + 1] int64; the last column: non-finite predictions
    pruned_confusion: torch.Tensor  # [n, K, K + 1] int64
    agree: torch.Tensor  # [n] int64: valid pixels where both models predict the same class
    valid: torch.Tensor  # [n] int64: pixels whose mask is not ignore_index
    filled: torch.Tensor  # [n] bool: every slot must be written exactly once
    ignore_index: int = IGNORE_INDEX

    STATES = ("dense_confusion", "pruned_confusion", "agree", "valid")
    FIELDS = (*STATES, "filled")

    @classmethod
    def empty(cls, n: int, device: torch.device, classes: int, ignore_index: int = IGNORE_INDEX) -> SegmentationTally:
        """A tally of `n` unwritten images of `classes` classes on `device`."""
        confusion = (n, classes, classes + 1)
        return cls(
            dense_confusion=torch.zeros(confusion, dtype=torch.int64, device=device),
            pruned_confusion=torch.zeros(confusion, dtype=torch.int64, device=device),
            agree=torch.zeros(n, dtype=torch.int64, device=device),
            valid=torch.zeros(n, dtype=torch.int64, device=device),
            filled=torch.zeros(n, dtype=torch.bool, device=device),
            ignore_index=ignore_index,
        )

    @property
    def n(self) -> int:
        """The number of slots (images)."""
        return int(self.valid.shape[0])

    @property
    def classes(self) -> int:
        """K, the number of classes."""
        return int(self.dense_confusion.shape[1])

    def update(
        self, positions: torch.Tensor, masks: torch.Tensor, dense_logits: torch.Tensor, pruned_logits: torch.Tensor
    ) -> None:
        """Write one batch's confusion matrices and pixel counts into the slots at `positions`."""
        k = self.classes
        expected = (masks.shape[0], k, *masks.shape[1:])
        if tuple(dense_logits.shape) != expected or tuple(pruned_logits.shape) != expected:
            raise ValueError(
                f"expected masks [B, H, W] and logits {list(expected)}, found masks {list(masks.shape)}, "
                f"dense {list(dense_logits.shape)}, pruned {list(pruned_logits.shape)}"
            )
        self.record(positions, masks, pixel_predictions(dense_logits), pixel_predictions(pruned_logits))

    def record(
        self, positions: torch.Tensor, masks: torch.Tensor, dense_pred: torch.Tensor, pruned_pred: torch.Tensor
    ) -> None:
        """The same from each model's per-pixel classes ([B, H, W]; K: non-finite logits)."""
        k = self.classes
        if masks.ndim != 3 or dense_pred.shape != masks.shape or pruned_pred.shape != masks.shape:
            raise ValueError(
                f"expected masks [B, H, W] and predictions of their shape, found masks {list(masks.shape)}, "
                f"dense {list(dense_pred.shape)}, pruned {list(pruned_pred.shape)}"
            )
        masks = masks.long()
        valid = masks != self.ignore_index
        if bool((valid & ((masks < 0) | (masks >= k))).any()):
            raise ValueError(f"a mask holds a class outside 0-{k - 1} that is not the ignore index {self.ignore_index}")
        dense_pred, pruned_pred = dense_pred.long(), pruned_pred.long()
        agree = valid & (dense_pred == pruned_pred) & (dense_pred < k)
        self.dense_confusion[positions] = batch_confusion(masks, dense_pred, valid, k)
        self.pruned_confusion[positions] = batch_confusion(masks, pruned_pred, valid, k)
        self.agree[positions] = agree.sum(dim=(1, 2))
        self.valid[positions] = valid.sum(dim=(1, 2))
        self.filled[positions] = True

    def all_reduce(self, reduce: Reduce) -> None:
        """Merge every process's part in place by summing what each filled (metrics.tally's
        mechanism; counts need no offset); each slot must have been filled by exactly one process."""
        all_reduce_slots(self, dict.fromkeys(self.STATES, 0), reduce)

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors, on the CPU, for a checkpoint."""
        return {name: getattr(self, name).cpu() for name in self.FIELDS}

    @classmethod
    def from_state(
        cls, state: dict, n: int, device: torch.device, classes: int, ignore_index: int = IGNORE_INDEX
    ) -> SegmentationTally:
        """A tally from `state`; ValueError unless it is one of `n` images of `classes` classes."""
        empty = cls.empty(n, device, classes, ignore_index)
        tensors: dict[str, Any] = {}
        for name in cls.FIELDS:
            found = state.get(name)
            like = getattr(empty, name)
            if not isinstance(found, torch.Tensor) or found.shape != like.shape:
                raise ValueError(f"a checkpoint's tally is not one of {n} images of {classes} classes")
            tensors[name] = found.to(device, like.dtype)
        return replace(empty, **tensors)

    def cpu(self) -> SegmentationTally:
        """The same tally on the CPU."""
        return replace(self, **{name: getattr(self, name).cpu() for name in self.FIELDS})


def pixel_predictions(logits: torch.Tensor) -> torch.Tensor:
    """[B, K, H, W] logits -> [B, H, W] int64 classes (the first of equal maxima, as argmax); K
    where a pixel's logits hold a NaN or an Inf.

    A running maximum over the K class planes, each read whole and in order: on the CPU,
    `argmax(dim=1)` and `isfinite().all(dim=1)` are strided reductions across the planes, about
    twice as slow at 21 x 513 x 513, and this is the segmentation pass's hottest loop."""
    k = logits.shape[1]
    best = logits[:, 0].clone()
    pred = torch.zeros(best.shape, dtype=torch.int64, device=logits.device)
    finite = torch.isfinite(best)
    for c in range(1, k):
        plane = logits[:, c]
        better = plane > best  # never for a NaN: such a pixel is marked below
        best = torch.where(better, plane, best)
        pred.masked_fill_(better, c)
        finite &= torch.isfinite(plane)
    return pred.masked_fill_(~finite, k)


def batch_confusion(masks: torch.Tensor, pred: torch.Tensor, valid: torch.Tensor, classes: int) -> torch.Tensor:
    """[B, K, K + 1] int64 confusion per image over valid pixels (one bincount, offset by image)."""
    batch = masks.shape[0]
    cells = classes * (classes + 1)
    image = torch.arange(batch, device=masks.device).view(-1, 1, 1).expand_as(masks)
    index = image * cells + masks * (classes + 1) + pred
    counts = torch.bincount(index[valid], minlength=batch * cells)
    return counts.view(batch, classes, classes + 1)


def prediction_png(logits: torch.Tensor) -> str:
    """One image's logits [1, K, H, W] -> its predicted classes as a base64 PNG (8-bit grey, or
    16-bit for more than 255 classes; non-finite pixels: the largest value)."""
    pred = pixel_predictions(logits.detach().float().cpu())[0].numpy()
    k = logits.shape[1]
    if k < 255:
        picture = PIL.Image.fromarray(np.where(pred >= k, 255, pred).astype(np.uint8), mode="L")
    else:
        picture = PIL.Image.fromarray(np.where(pred >= k, 65535, pred).astype(np.uint16))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- pure metrics: per-class counts (rows: replicates) -> metrics -----------------------------------


def _counts(confusion: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[..., K, K or K + 1] confusion -> per-class (true positives, true pixels, predicted pixels),
    each [..., K] float64; columns past K are predictions that are no class."""
    c = confusion.cpu().numpy() if isinstance(confusion, torch.Tensor) else np.asarray(confusion)
    c = c.astype(np.float64)
    k = c.shape[-2]
    tp = np.diagonal(c[..., :k], axis1=-2, axis2=-1)
    return tp, c.sum(axis=-1), c[..., :k].sum(axis=-2)


def _class_iou(tp: np.ndarray, true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    union = true + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def _miou(tp: np.ndarray, true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    iou = _class_iou(tp, true, pred)
    present = np.isfinite(iou)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present.any(axis=-1), np.where(present, iou, 0.0).sum(axis=-1) / present.sum(axis=-1), np.nan)


def _pixel_accuracy(tp: np.ndarray, true: np.ndarray) -> np.ndarray:
    total = true.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, tp.sum(axis=-1) / total, np.nan)


def _worst_class(dense_iou: np.ndarray, pruned_iou: np.ndarray) -> tuple[float, int | None]:
    both = np.isfinite(dense_iou) & np.isfinite(pruned_iou)
    if not both.any():
        return float("nan"), None
    drops = np.where(both, dense_iou - pruned_iou, -np.inf)
    worst = int(np.argmax(drops))
    return float(drops[worst]), worst


def class_iou(confusion: np.ndarray | torch.Tensor) -> np.ndarray:
    """[K] IoU per class, TP / (TP + FP + FN); NaN where the class is in neither truth nor predictions."""
    return _class_iou(*_counts(confusion))


def miou(confusion: np.ndarray | torch.Tensor) -> float:
    """Mean IoU over the classes with a non-empty union (NaN when there is none)."""
    return float(_miou(*_counts(confusion)))


def pixel_accuracy(confusion: np.ndarray | torch.Tensor) -> float:
    """Correct valid pixels over valid pixels (NaN when there is none)."""
    tp, true, _ = _counts(confusion)
    return float(_pixel_accuracy(tp, true))


def miou_drop(dense: np.ndarray | torch.Tensor, pruned: np.ndarray | torch.Tensor) -> float:
    """The dense model's mIoU minus the pruned model's."""
    return miou(dense) - miou(pruned)


def pixel_accuracy_drop(dense: np.ndarray | torch.Tensor, pruned: np.ndarray | torch.Tensor) -> float:
    """The dense model's pixel accuracy minus the pruned model's."""
    return pixel_accuracy(dense) - pixel_accuracy(pruned)


def pixel_agreement(agree: int | float, valid: int | float) -> float:
    """Valid pixels where both models predict the same class over valid pixels (NaN when there is none)."""
    return float(agree) / float(valid) if valid > 0 else float("nan")


def class_iou_drop(dense: np.ndarray | torch.Tensor, pruned: np.ndarray | torch.Tensor) -> tuple[float, int | None]:
    """The largest per-class IoU drop among classes with a non-empty union for both models, and that
    class (NaN, None when there is none)."""
    return _worst_class(class_iou(dense), class_iou(pruned))


def per_image_columns(tally: SegmentationTally) -> np.ndarray:
    """[images, 5K + 2] float64: true pixels, dense TP, dense predicted, pruned TP, pruned predicted
    (each K per image), then agreeing and valid pixels."""
    dense_tp, true, dense_pred = _counts(tally.dense_confusion)
    pruned_tp, _, pruned_pred = _counts(tally.pruned_confusion)
    extra = np.stack([tally.agree.cpu().numpy(), tally.valid.cpu().numpy()], axis=1).astype(np.float64)
    return np.concatenate([true, dense_tp, dense_pred, pruned_tp, pruned_pred, extra], axis=1)


def metrics_from_sums(sums: np.ndarray, classes: int) -> dict[str, np.ndarray]:
    """sums: [r, 5K + 2] column sums (r = 1 for the estimate, replicates for the bootstrap)."""
    k = classes
    true, dense_tp, dense_pred, pruned_tp, pruned_pred = (sums[:, i * k : (i + 1) * k] for i in range(5))
    agree, valid = sums[:, 5 * k], sums[:, 5 * k + 1]
    dense_miou, pruned_miou = _miou(dense_tp, true, dense_pred), _miou(pruned_tp, true, pruned_pred)
    dense_accuracy, pruned_accuracy = _pixel_accuracy(dense_tp, true), _pixel_accuracy(pruned_tp, true)
    dense_iou, pruned_iou = _class_iou(dense_tp, true, dense_pred), _class_iou(pruned_tp, true, pruned_pred)
    both = np.isfinite(dense_iou) & np.isfinite(pruned_iou)
    worst_drop = np.where(both, dense_iou - pruned_iou, -np.inf).max(axis=-1, initial=-np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(valid > 0, agree / valid, np.nan)
    return {
        "miou_drop": dense_miou - pruned_miou,
        "pixel_accuracy_drop": dense_accuracy - pruned_accuracy,
        "pixel_agreement": agreement,
        "dense_miou": dense_miou,
        "pruned_miou": pruned_miou,
        "dense_pixel_accuracy": dense_accuracy,
        "pruned_pixel_accuracy": pruned_accuracy,
        "class_iou_drop": np.where(np.isfinite(worst_drop), worst_drop, np.nan),
    }


def weighted_sums(resampler: Resampler, columns: np.ndarray) -> np.ndarray:
    """columns: [images, k] per-image counts -> [replicates, k] resampled sums, in float64 (pixel
    counts pass float32's exact range, so Resampler.weighted_sums' float32 product would round)."""
    columns = np.asarray(columns, dtype=np.float64).reshape(resampler.images, -1)
    return np.concatenate([w.astype(np.float64) @ columns for w in resampler.weights()], axis=0)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


EXAMPLES = 3  # images with the largest mIoU drop kept per task


def image_miou(confusion: np.ndarray | torch.Tensor) -> np.ndarray:
    """[n, K, K + 1] per-image confusion -> [n] each image's own mIoU (NaN for an image with no valid pixel)."""
    return _miou(*_counts(confusion))


def segmentation_statistics(
    tally: SegmentationTally,
    *,
    confidence: float,
    resampler: Resampler | None,
    draws: int = 1,
    indices: np.ndarray | None = None,
    class_names: list[str] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """The task's metrics (dataset-level, over the images' summed confusion matrices), the images
    with the largest mIoU drop, and the bootstrap replicates of each metric in INTERVAL_METRICS
    (empty without a resampler). Slots are image x draws (noise draws); the bootstrap resamples
    images, each with all its draws. `indices` maps image positions to data-set indices."""
    tally = tally.cpu()
    k = tally.classes
    dense, pruned = tally.dense_confusion.sum(dim=0), tally.pruned_confusion.sum(dim=0)
    agree, valid = int(tally.agree.sum()), int(tally.valid.sum())
    dense_iou, pruned_iou = class_iou(dense), class_iou(pruned)
    drop, worst = _worst_class(dense_iou, pruned_iou)
    images = tally.n // draws
    if indices is None:
        indices = np.arange(images)

    replicates: dict[str, np.ndarray] = {}
    if resampler is not None:
        if resampler.images != images:
            raise ValueError(f"the resampler is for {resampler.images} images, the tally holds {images}")
        columns = per_image_columns(tally).reshape(images, draws, -1).sum(axis=1)
        replicates = metrics_from_sums(weighted_sums(resampler, columns), k)
    intervals = {}
    for metric, values in replicates.items():
        low, high = percentile_interval(values, confidence)
        if np.isfinite(low):
            intervals[metric] = {"low": low, "high": high, "method": "bootstrap"}

    def model(confusion: torch.Tensor) -> dict:
        return {
            "miou": _finite(miou(confusion)),
            "pixel_accuracy": _finite(pixel_accuracy(confusion)),
            "nonfinite": int(confusion[:, k].sum()),
        }

    def listed(iou: np.ndarray) -> list[float | None]:
        return [_finite(float(v)) for v in iou]

    dense_images, pruned_images = image_miou(tally.dense_confusion), image_miou(tally.pruned_confusion)
    drops = dense_images - pruned_images
    order = np.argsort(np.where(np.isfinite(drops), -drops, np.inf), kind="stable")[:EXAMPLES]
    examples = [
        {
            "index": int(indices[slot // draws]),
            "draw": int(slot % draws),
            "dense_miou": _finite(float(dense_images[slot])),
            "pruned_miou": _finite(float(pruned_images[slot])),
            "drop": _finite(float(drops[slot])),
        }
        for slot in order
        if np.isfinite(drops[slot])
    ]
    summary = {
        "n": tally.n,
        "pixels": valid,
        "dense": model(dense),
        "pruned": model(pruned),
        "miou_drop": _finite(miou_drop(dense, pruned)),
        "pixel_accuracy_drop": _finite(pixel_accuracy_drop(dense, pruned)),
        "pixel_agreement": _finite(pixel_agreement(agree, valid)),
        "class_iou_drop": _finite(drop),
        "worst_class_iou": None
        if worst is None
        else {
            "label": worst,
            "name": class_names[worst] if class_names and worst < len(class_names) else None,
            "dense_iou": float(dense_iou[worst]),
            "pruned_iou": float(pruned_iou[worst]),
            "drop": drop,
        },
        "class_iou": {"dense": listed(dense_iou), "pruned": listed(pruned_iou)},
        "segmentation_examples": examples,
        "intervals": intervals,
    }
    return summary, replicates


class Segmentation:
    """Semantic segmentation: logits [N, K, H, W] at the input's size, one index mask per image
    (data/segfolder.py; ignored pixels arrive as data.IGNORED)."""

    name = "segmentation"
    output_names: tuple[str, ...] = (
        "logits",
        "out",
    )  # Hugging Face's name; torchvision's DeepLab and FCN return {"out", "aux"}

    def output_size(self, out: object, batch: int, spatial: tuple[int, int]) -> int | None:
        """K for logits [batch, K, height, width] at the input's height and width; None otherwise."""
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != batch:
            return None
        if tuple(out.shape[2:]) != tuple(spatial):
            return None
        return int(out.shape[1])

    def describe(self, batch: object, classes: int | None, spatial: tuple[int, int]) -> str:
        """`[batch, classes, height, width] logits at the input's size`."""
        return f"[{batch}, {classes if classes else 'classes'}, {spatial[0]}, {spatial[1]}] logits (the input's size)"

    def check_labels(self, source: SourceLike, labels: np.ndarray, classes: int, path: str | Path | None) -> None:
        """Every mask value must be a class index or the ignore index; class names, if given, one per class."""
        images = getattr(source, "images", None)
        if not isinstance(images, SegmentationFolder):
            raise DataError(
                "a segmentation policy reads segmentation-folder data (images/ and masks/)",
                file=path,
                field=source.policy_field,
            )
        if images.classes is not None and len(images.classes) != classes:
            raise DataError(
                f"{len(images.classes)} class names for models with {classes} classes",
                file=path,
                field=f"{source.policy_field}.class_names",
            )
        for mask, values in images.mask_values([int(i) for i in source.indices]):
            images.check_mask_labels(values, classes, mask)

    def keep(self, out: torch.Tensor) -> torch.Tensor:
        """Each pixel's class (K where its logits are not finite): all the tally needs, and
        K x 4 times smaller than the logits (int16 below 32,767 classes)."""
        pred = pixel_predictions(out)
        return pred.to(torch.int16) if out.shape[1] < 32767 else pred

    def new_tally(self, n: int, device: torch.device, classes: int) -> SegmentationTally:
        """An empty tally of `n` images."""
        return SegmentationTally.empty(n, device, classes, IGNORED)

    def restore_tally(self, state: dict, n: int, device: torch.device, classes: int) -> SegmentationTally:
        """A tally from a checkpoint."""
        return SegmentationTally.from_state(state, n, device, classes, IGNORED)

    def task_record(
        self,
        task: Task,
        tally: object,
        *,
        classes: int,
        confidence: float,
        resampler: object,
        indices: np.ndarray,
        class_names: list[str] | None,
        options: object = None,
    ) -> tuple[TaskRecord, dict]:
        """The task's dataset-level metrics, intervals and worst images, as its report record."""
        # options (selective-risk coverages, subgroups) are classification statistics
        assert isinstance(tally, SegmentationTally)
        assert resampler is None or isinstance(resampler, Resampler)
        summary, replicates = segmentation_statistics(
            tally,
            confidence=confidence,
            resampler=resampler,
            draws=task.draws,
            indices=indices,
            class_names=class_names,
        )
        record = TaskRecord(name=task.name, kind=task.kind, group=task.group, source=task.source, **summary)
        return record, replicates

    def error(self, side: ModelSide) -> float | None:
        """1 - mIoU."""
        return None if side.miou is None else 1.0 - side.miou

    def corruption_summary(self, tasks: Sequence[Task], records: dict[str, TaskRecord]) -> CorruptionSummary | None:
        """Per corruption, errors as 1 - mIoU summed over severities (CE, relative CE), as
        classification's are 1 - accuracy."""
        return summarise_corruptions(tasks, records, self.error)


SEGMENTATION = Segmentation()
