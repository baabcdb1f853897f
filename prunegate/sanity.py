"""Sanity before verdicts: a dense model that is no better than chance on its own clean test set
says that the labels or the class order are wrong, not that the pruned model may ship.

Two models that both score 0 % have an accuracy drop of 0, so a gate read through wrong labels
(an ImageNet validation folder whose image numbers were read as labels, an ImageNet subset in
sorted folder order instead of the model's) passes. This check runs on the clean task after the
pass and before any verdict, and stops the run (exit 2, no report) when

- the dense model is not shown to be above chance: the one-sided exact binomial test of
  "accuracy <= chance" is not rejected at ALPHA (0/200 at 1,000 classes trips it, so does any
  model at chance; a real model, however weak, is far above 1/K on a few hundred images, and 6/6
  right at 3 classes is enough). A set too small for even all right to reject it (chance^n >=
  ALPHA: 4 images at 3 classes) is not checked, and the record says so; or
- it is far below `models.expected_accuracy`: the one-sided upper confidence bound (Wilson, at
  1 - ALPHA) of its accuracy is below the expected value less `models.expected_accuracy_tolerance`.

Chance is the accuracy of a uniformly random prediction: 1/K, or under a label map the mean over
the samples of |label's set| / K (the binomial test at that mean is slightly conservative:
it trips a little more readily than the exact Poisson-binomial test). Segmentation is not
checked: pixel accuracy against chance is dominated by the background, and masks carry the
model's own class indices (no folder order can scramble them).
"""

from __future__ import annotations

import math
import re

import numpy as np

from prunegate.data.base import ImageSet
from prunegate.errors import DataError
from prunegate.metrics import TaskTally
from prunegate.metrics import functional as F
from prunegate.metrics.intervals import wilson
from prunegate.policy import DataSource, Models
from prunegate.report.schema import SanityRecord

ALPHA = 0.01  # the chance that a set read through wrong labels passes the check
DEFAULT_TOLERANCE = 0.2  # how far below models.expected_accuracy a real test set may lie
SKIPPED_OPTION = "--no-sanity-check"
_WNID = re.compile(r"^n\d{8}")
_IMAGENET_VAL = re.compile(r"^ILSVRC2012_val_\d{8}$")


def binomial_tail(successes: int, n: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(n, p), summed in log space (n in the millions is fine)."""
    if successes <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(successes, n + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def chance_level(labels: np.ndarray, classes: int, label_sets: np.ndarray | None = None) -> float:
    """The accuracy of a uniformly random prediction: 1/K, or with a label map (rows: the set's
    labels, columns: the model's classes) the mean of each sample's label-set size over K."""
    if label_sets is None:
        return 1.0 / classes
    sizes = label_sets.sum(axis=1)[labels]
    return float(sizes.mean()) / classes


def skipped(reason: str) -> SanityRecord:
    """The record of a check that did not run, and why."""
    return SanityRecord(checked=False, reason=reason)


def check_clean(
    tally: TaskTally, classes: int, models: Models, test: DataSource, images: ImageSet, field: str = "data.test"
) -> SanityRecord:
    """The check on the clean task's tally (its label map applied): its record, or a DataError
    naming the test set when the dense model is at chance or far below its expected accuracy."""
    # A non-finite output is not a prediction: the gate fails its rules and says so (gate.py); here
    # it would read as wrong labels.
    finite = (tally.dense_pred != F.NO_PREDICTION).cpu()
    dense = tally.correctness()[0].cpu()[finite]
    n = int(dense.numel())
    right = int(dense.sum())
    if n == 0:
        return skipped("no finite dense outputs on clean (the rules over it fail)")
    sets = tally.label_sets.cpu().numpy() if tally.label_sets is not None else None
    chance = chance_level(tally.labels.cpu()[finite].numpy(), classes, sets)
    p_value = binomial_tail(right, n, chance)
    upper = wilson(right, n, 1 - 2 * ALPHA)[1]
    expected = models.expected_accuracy
    tolerance = models.expected_accuracy_tolerance
    if expected is not None and tolerance is None:
        tolerance = DEFAULT_TOLERANCE
    record = SanityRecord(
        checked=True,
        task="clean",
        n=n,
        dense_correct=right,
        dense_accuracy=right / n,
        chance=chance,
        p_value=p_value,
        upper_bound=upper,
        expected_accuracy=expected,
        tolerance=tolerance,
    )
    if chance**n >= ALPHA:  # too few images: not even all right would be told from chance
        reason = f"{n} images cannot tell a model from chance ({100 * chance:.2f} %), even all right"
        return record.model_copy(update={"checked": False, "reason": reason})
    scored = f"the dense model gets {right}/{n} clean images right ({100 * right / n:.2f} %)"
    advice = (
        f"the labels or the class order (or models.input) must be wrong ({SKIPPED_OPTION} gates it anyway)"
        + _hint(test, images)
    )
    if p_value >= ALPHA:
        level = f"{100 * chance:.2f} % for {classes} classes"
        raise DataError(f"{scored}, no better than chance ({level}): {advice}", file=images.path, field=field)
    if expected is not None and tolerance is not None and upper < expected - tolerance:
        raise DataError(
            f"{scored}, at most {100 * upper:.1f} % at {100 * (1 - ALPHA):g} % confidence: far below "
            f"models.expected_accuracy {expected:g} (less its tolerance {tolerance:g}): {advice}",
            file=images.path,
            field=field,
        )
    return record


def _hint(test: DataSource, images: ImageSet) -> str:
    """What the test set's names suggest: ImageNet wnids without class_names, ImageNet validation
    file names (whose numbers are not labels), or a class_names file in another order."""
    if test.class_names:
        return "; check that class_names lists the model's classes in its output order"
    stems = [f.stem for f in getattr(images, "files", [])]
    folders = images.classes or []
    wnids = (
        "; the names look like ImageNet wnids (n01440764): set class_names to the model's class names "
        "in output order (for ImageNet the 1,000 wnids), so each name gets the model's label"
    )
    if any(_WNID.match(name) for name in folders):
        return wnids
    if any(_IMAGENET_VAL.match(stem) for stem in stems):
        return (
            "; the file names look like ImageNet validation images (ILSVRC2012_val_*), whose numbers are not "
            "labels: list them with their wnids (format filelist, from LOC_val_solution.csv) and set "
            "class_names to the model's class names in output order (for ImageNet the 1,000 wnids)"
        )
    if any(_WNID.match(stem) for stem in stems):
        return wnids
    return ""
