"""Segmentation tallies and metrics against independent references: numpy confusion matrices and
per-class pixel loops, torchmetrics' Jaccard index where installed, batch splits, a simulated
two-process all_reduce, non-finite logits, the bootstrap (noise draws, coverage of known
population values) and the tally's memory."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch

from prunegate.distributed import World
from prunegate.kinds import SegmentationTally
from prunegate.kinds.segmentation import (
    INTERVAL_METRICS,
    class_iou,
    class_iou_drop,
    miou,
    miou_drop,
    pixel_accuracy,
    pixel_accuracy_drop,
    pixel_agreement,
    segmentation_statistics,
)
from prunegate.metrics.intervals import Resampler

CPU = torch.device("cpu")
VOID = 255


def random_batch(
    images: int, classes: int, size: int = 12, seed: int = 0, void: float = 0.15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks using classes 0..classes-3 and void; logits where class classes-2 is never predicted
    (absent from truth and predictions) and class classes-1 is predicted but never true."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, classes - 2, (images, size, size), generator=g)
    masks[torch.rand(images, size, size, generator=g) < void] = VOID
    dense = torch.randn(images, classes, size, size, generator=g, dtype=torch.float64)
    pruned = dense + 0.8 * torch.randn(images, classes, size, size, generator=g, dtype=torch.float64)
    for logits in (dense, pruned):
        logits[:, classes - 2] = -100.0
        # lean towards the truth so that the IoUs are neither all 0 nor all 1
        onehot = torch.nn.functional.one_hot(masks.clamp(max=classes - 1), classes).permute(0, 3, 1, 2)
        logits += 1.5 * onehot
    return masks, dense, pruned


def filled_tally(masks: torch.Tensor, dense: torch.Tensor, pruned: torch.Tensor, batch: int = 3) -> SegmentationTally:
    tally = SegmentationTally.empty(len(masks), CPU, dense.shape[1])
    for start in range(0, len(masks), batch):
        positions = torch.arange(start, min(start + batch, len(masks)))
        tally.update(positions, masks[positions], dense[positions], pruned[positions])
    return tally


# --- the numpy reference -------------------------------------------------------------------------


def reference_predictions(logits: np.ndarray) -> np.ndarray:
    """[B, K, H, W] -> [B, H, W]; K (no class) where a pixel's logits are not all finite."""
    pred = np.argmax(np.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0), axis=1)
    pred[~np.isfinite(logits).all(axis=1)] = logits.shape[1]
    return pred


def reference_confusion(masks: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """[K, K + 1] over all valid pixels of all images, with np.add.at."""
    k = logits.shape[1]
    pred = reference_predictions(logits)
    valid = masks != VOID
    confusion = np.zeros((k, k + 1), dtype=np.int64)
    np.add.at(confusion, (masks[valid], pred[valid]), 1)
    return confusion


def reference_class_iou(masks: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Per class, TP / (TP + FP + FN) counted pixel by pixel; NaN for an empty union."""
    k = logits.shape[1]
    valid = masks != VOID
    true, pred = masks[valid], reference_predictions(logits)[valid]
    iou = np.full(k, np.nan)
    for c in range(k):
        tp = np.sum((true == c) & (pred == c))
        fp = np.sum((true != c) & (pred == c))
        fn = np.sum((true == c) & (pred != c))
        if tp + fp + fn > 0:
            iou[c] = tp / (tp + fp + fn)
    return iou


def reference_pixel_accuracy(masks: np.ndarray, logits: np.ndarray) -> float:
    valid = masks != VOID
    return float(np.mean(reference_predictions(logits)[valid] == masks[valid]))


# --- (a) metrics against the reference -----------------------------------------------------------


def test_metrics_equal_a_numpy_reference() -> None:
    classes = 6
    masks, dense, pruned = random_batch(7, classes, seed=1)
    tally = filled_tally(masks, dense, pruned)
    m = masks.numpy()
    for confusion, logits in ((tally.dense_confusion, dense), (tally.pruned_confusion, pruned)):
        summed = confusion.sum(dim=0)
        assert np.array_equal(summed.numpy(), reference_confusion(m, logits.numpy()))
        expected_iou = reference_class_iou(m, logits.numpy())
        assert np.isnan(expected_iou[classes - 2]) and expected_iou[classes - 1] == 0.0  # the data is as meant
        np.testing.assert_allclose(class_iou(summed), expected_iou, rtol=0, atol=1e-12, equal_nan=True)
        assert miou(summed) == pytest.approx(np.nanmean(expected_iou), abs=1e-12)
        assert pixel_accuracy(summed) == pytest.approx(reference_pixel_accuracy(m, logits.numpy()), abs=1e-12)

    dense_sum, pruned_sum = tally.dense_confusion.sum(dim=0), tally.pruned_confusion.sum(dim=0)
    dense_iou, pruned_iou = reference_class_iou(m, dense.numpy()), reference_class_iou(m, pruned.numpy())
    assert miou_drop(dense_sum, pruned_sum) == pytest.approx(np.nanmean(dense_iou) - np.nanmean(pruned_iou), abs=1e-12)
    expected_acc_drop = reference_pixel_accuracy(m, dense.numpy()) - reference_pixel_accuracy(m, pruned.numpy())
    assert pixel_accuracy_drop(dense_sum, pruned_sum) == pytest.approx(expected_acc_drop, abs=1e-12)
    drops = dense_iou - pruned_iou  # NaN where either union is empty
    drop, worst = class_iou_drop(dense_sum, pruned_sum)
    assert worst == int(np.nanargmax(drops)) and drop == pytest.approx(np.nanmax(drops), abs=1e-12)

    valid = m != VOID
    agree = reference_predictions(dense.numpy()) == reference_predictions(pruned.numpy())
    assert int(tally.valid.sum()) == valid.sum()
    assert int(tally.agree.sum()) == (agree & valid).sum()
    assert pixel_agreement(int(tally.agree.sum()), int(tally.valid.sum())) == pytest.approx(agree[valid].mean())

    summary, replicates = segmentation_statistics(tally, confidence=0.95, resampler=None, class_names=list("abcdef"))
    assert replicates == {} and summary["intervals"] == {}
    assert summary["n"] == 7
    assert summary["dense"]["miou"] == pytest.approx(np.nanmean(dense_iou), abs=1e-12)
    assert summary["pruned"]["pixel_accuracy"] == pytest.approx(reference_pixel_accuracy(m, pruned.numpy()))
    assert summary["worst_class_iou"]["label"] == worst and summary["worst_class_iou"]["name"] == "abcdef"[worst]
    assert summary["worst_class_iou"]["dense_iou"] - summary["worst_class_iou"]["pruned_iou"] == pytest.approx(drop)


def test_empty_confusion_has_no_metrics() -> None:
    empty = np.zeros((3, 4), dtype=np.int64)
    assert np.isnan(miou(empty)) and np.isnan(pixel_accuracy(empty)) and np.isnan(class_iou(empty)).all()
    assert class_iou_drop(empty, empty)[1] is None
    assert np.isnan(pixel_agreement(0, 0))


def test_torchmetrics_jaccard_index_agrees() -> None:
    classification = pytest.importorskip("torchmetrics.classification")
    classes = 5
    g = torch.Generator().manual_seed(3)
    masks = torch.randint(0, classes, (6, 16, 16), generator=g)
    masks[torch.rand(6, 16, 16, generator=g) < 0.1] = VOID
    dense = torch.randn(6, classes, 16, 16, generator=g)
    tally = SegmentationTally.empty(6, CPU, classes)
    tally.update(torch.arange(6), masks, dense, dense)
    metric = classification.MulticlassJaccardIndex(num_classes=classes, average="macro", ignore_index=VOID)
    expected = float(metric(dense.argmax(dim=1), masks))  # every class is in the truth: comparable
    assert miou(tally.dense_confusion.sum(dim=0)) == pytest.approx(expected, abs=1e-6)


# --- (b) batch splits and order -------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 5, 9])
def test_any_split_and_order_give_identical_tallies(batch: int) -> None:
    masks, dense, pruned = random_batch(9, 5, seed=2)
    whole = filled_tally(masks, dense, pruned, batch=9)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(batch))
    tally = SegmentationTally.empty(9, CPU, 5)
    for chunk in order.split(batch):
        tally.update(chunk, masks[chunk], dense[chunk], pruned[chunk])
    for name, tensor in whole.state().items():
        assert torch.equal(tally.state()[name], tensor), name


# --- (c) the merge across processes ---------------------------------------------------------------


def all_reduce_two(first: SegmentationTally, second: SegmentationTally) -> None:
    """Both tallies' all_reduce, as two processes would run it: each reduce call waits for the other
    process's tensor and leaves the sum of both in place (dist.all_reduce's SUM)."""
    barrier = threading.Barrier(2, timeout=30)
    slots: list[torch.Tensor | None] = [None, None]
    errors: list[BaseException | None] = [None, None]

    def reducer(rank: int) -> Callable[[torch.Tensor], None]:
        def reduce(tensor: torch.Tensor) -> None:
            slots[rank] = tensor
            barrier.wait()
            a, b = slots
            assert a is not None and b is not None
            total = a + b
            barrier.wait()
            tensor.copy_(total)

        return reduce

    def run(rank: int, tally: SegmentationTally) -> None:
        try:
            tally.all_reduce(reducer(rank))
        except BaseException as error:  # re-raised in the caller
            errors[rank] = error

    threads = [threading.Thread(target=run, args=(rank, t)) for rank, t in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        if error is not None:
            raise error


@pytest.mark.parametrize(("images", "draws", "sharding"), [(8, 1, "interleaved"), (7, 2, "contiguous")])
def test_all_reduce_of_two_processes_equals_one(images: int, draws: int, sharding: str) -> None:
    """Interleaved shards, and the engine's own layout: World.part's contiguous, unequal image
    ranges (4 and 3 of 7), each image's draws in slots image * draws + draw."""
    slots = images * draws
    masks, dense, pruned = random_batch(slots, 5, seed=4)
    single = filled_tally(masks, dense, pruned)
    parts = [SegmentationTally.empty(slots, CPU, 5), SegmentationTally.empty(slots, CPU, 5)]
    for rank, tally in enumerate(parts):
        if sharding == "interleaved":
            positions = torch.arange(rank, slots, 2)
        else:
            mine = World(rank, 2).part(np.arange(images))
            assert len(mine) == (4, 3)[rank]
            positions = torch.from_numpy(mine[:, None] * draws + np.arange(draws)).flatten()
        tally.update(positions, masks[positions], dense[positions], pruned[positions])
        assert int(tally.filled.sum()) == len(positions) < slots
    all_reduce_two(*parts)
    for tally in parts:
        assert bool(tally.filled.all())
        for name, tensor in single.state().items():
            assert torch.equal(tally.state()[name], tensor), name
    merged, _ = segmentation_statistics(parts[1], confidence=0.9, resampler=None, draws=draws)
    assert merged == segmentation_statistics(single, confidence=0.9, resampler=None, draws=draws)[0]


def test_a_slot_filled_by_two_processes_raises() -> None:
    masks, dense, pruned = random_batch(4, 5, seed=5)
    parts = [SegmentationTally.empty(4, CPU, 5), SegmentationTally.empty(4, CPU, 5)]
    parts[0].update(torch.arange(0, 3), masks[:3], dense[:3], pruned[:3])
    parts[1].update(torch.arange(2, 4), masks[2:], dense[2:], pruned[2:])  # slot 2 twice
    with pytest.raises(AssertionError, match="more than one process"):
        all_reduce_two(*parts)


def test_state_round_trip_and_refusal() -> None:
    masks, dense, pruned = random_batch(3, 4, seed=6)
    tally = filled_tally(masks, dense, pruned)
    restored = SegmentationTally.from_state(tally.state(), 3, CPU, 4)
    for name, tensor in tally.state().items():
        assert torch.equal(restored.state()[name], tensor)
    assert restored.n == 3 and restored.cpu().classes == 4
    with pytest.raises(ValueError, match="not one of 3 images of 5 classes"):
        SegmentationTally.from_state(tally.state(), 3, CPU, 5)
    with pytest.raises(ValueError):
        SegmentationTally.from_state({}, 3, CPU, 4)


def test_bad_batches_are_refused() -> None:
    tally = SegmentationTally.empty(2, CPU, 3)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="expected masks"):
        tally.update(torch.arange(2), masks, torch.zeros(2, 4, 4, 4), torch.zeros(2, 3, 4, 4))
    masks[0, 0, 0] = 3  # neither a class nor void
    with pytest.raises(ValueError, match="outside 0-2"):
        tally.update(torch.arange(2), masks, torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))


# --- (d) non-finite logits ------------------------------------------------------------------------


def test_nonfinite_logits_are_wrong_and_disagree() -> None:
    classes = 3
    masks = torch.tensor([[[0, 1, 2, 0], [1, 2, 0, VOID]]])  # [1, 2, 4]
    perfect = 10.0 * torch.nn.functional.one_hot(masks.clamp(max=classes - 1), classes).permute(0, 3, 1, 2).double()
    dense, pruned = perfect.clone(), perfect.clone()
    dense[0, 1, 0, 0] = float("nan")  # a class-0 pixel
    dense[0, 0, 0, 2] = float("inf")  # a class-2 pixel, where the argmax would be right anyway
    pruned[0, 2, 0, 2] = float("-inf")  # the same pixel, both models non-finite
    pruned[0, 0, 1, 1] = float("nan")  # a class-2 pixel
    dense[0, 0, 1, 3] = float("nan")  # a void pixel: not counted at all
    tally = SegmentationTally.empty(1, CPU, classes)
    tally.update(torch.arange(1), masks, dense, pruned)

    d, p = tally.dense_confusion[0], tally.pruned_confusion[0]
    assert d[:, classes].tolist() == [1, 0, 1] and p[:, classes].tolist() == [0, 0, 2]
    assert int(d.trace()) == 5 and int(p[:, :classes].trace()) == 5
    assert int(tally.valid[0]) == 7 and int(tally.agree[0]) == 4  # 3 pixels non-finite in either model
    np.testing.assert_allclose(class_iou(d), [2 / 3, 1.0, 1 / 2])  # misses, never false positives
    assert pixel_accuracy(d) == pytest.approx(5 / 7)
    summary, _ = segmentation_statistics(tally, confidence=0.95, resampler=None)
    assert summary["dense"]["nonfinite"] == 2 and summary["pruned"]["nonfinite"] == 2
    assert summary["pixel_agreement"] == pytest.approx(4 / 7)
    assert summary["pixel_accuracy_drop"] == pytest.approx(0.0)


# --- (e) the bootstrap ----------------------------------------------------------------------------


def drop_data(images: int, rate: float, seed: int) -> SegmentationTally:
    """A perfect dense model; the pruned one wrong on each valid pixel with probability `rate`."""
    classes, size = 4, 16
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, classes, (images, size, size), generator=g)
    masks[torch.rand(images, size, size, generator=g) < 0.1] = VOID
    truth = masks.clamp(max=classes - 1)
    wrong = torch.rand(images, size, size, generator=g) < rate
    pruned_pred = torch.where(wrong, (truth + 1) % classes, truth)
    dense = torch.nn.functional.one_hot(truth, classes).permute(0, 3, 1, 2).float()
    pruned = torch.nn.functional.one_hot(pruned_pred, classes).permute(0, 3, 1, 2).float()
    return filled_tally(masks, dense, pruned, batch=64)


def test_bootstrap_interval_covers_the_estimate_and_shrinks() -> None:
    widths = {}
    for images in (20, 320):
        tally = drop_data(images, 0.2, seed=images)
        summary, replicates = segmentation_statistics(
            tally, confidence=0.95, resampler=Resampler(seed=11, images=images, replicates=400)
        )
        assert set(replicates) == set(summary["intervals"])
        assert set(replicates) == set(INTERVAL_METRICS)
        assert all(len(values) == 400 for values in replicates.values())
        for metric, point in (
            ("miou_drop", summary["miou_drop"]),
            ("pixel_accuracy_drop", summary["pixel_accuracy_drop"]),
            ("pixel_agreement", summary["pixel_agreement"]),
            ("dense_miou", summary["dense"]["miou"]),
            ("pruned_miou", summary["pruned"]["miou"]),
        ):
            interval = summary["intervals"][metric]
            assert interval["method"] == "bootstrap"
            assert interval["low"] <= point <= interval["high"], metric
        assert summary["dense"]["miou"] == 1.0 and summary["intervals"]["dense_miou"]["low"] == 1.0
        assert summary["pixel_accuracy_drop"] == pytest.approx(0.2, abs=0.02)
        interval = summary["intervals"]["pixel_accuracy_drop"]
        widths[images] = interval["high"] - interval["low"]
    assert interval["low"] <= 0.2 <= interval["high"]  # the true drop, at 320 images
    assert widths[320] < 0.5 * widths[20]  # about 1/4: the width goes as 1/sqrt(images)


def test_a_replicate_is_the_metric_of_weighted_confusion_sums() -> None:
    tally = drop_data(30, 0.3, seed=8)
    resampler = Resampler(seed=5, images=30, replicates=20, chunk=7)
    _, replicates = segmentation_statistics(tally, confidence=0.9, resampler=resampler)
    weights = np.concatenate(list(resampler.weights()), axis=0).astype(np.int64)
    dense, pruned = tally.dense_confusion.numpy(), tally.pruned_confusion.numpy()
    for b in (0, 9, 19):
        w = weights[b][:, None, None]
        dense_sum, pruned_sum = (w * dense).sum(axis=0), (w * pruned).sum(axis=0)
        assert replicates["dense_miou"][b] == pytest.approx(miou(dense_sum), abs=1e-12)
        assert replicates["pruned_miou"][b] == pytest.approx(miou(pruned_sum), abs=1e-12)
        assert replicates["miou_drop"][b] == pytest.approx(miou_drop(dense_sum, pruned_sum), abs=1e-12)
        acc_drop = pixel_accuracy_drop(dense_sum, pruned_sum)
        assert replicates["pixel_accuracy_drop"][b] == pytest.approx(acc_drop, abs=1e-12)
        agreement = pixel_agreement(int(weights[b] @ tally.agree.numpy()), int(weights[b] @ tally.valid.numpy()))
        assert replicates["pixel_agreement"][b] == pytest.approx(agreement, abs=1e-12)


def test_replicates_are_reproducible_for_the_same_key() -> None:
    tally = drop_data(25, 0.2, seed=9)

    def replicates(seed: int) -> dict[str, np.ndarray]:
        return segmentation_statistics(tally, confidence=0.95, resampler=Resampler(seed=seed, images=25))[1]

    first, again, other = replicates(3), replicates(3), replicates(4)
    for metric in first:
        assert np.array_equal(first[metric], again[metric])
    assert not np.array_equal(first["miou_drop"], other["miou_drop"])
    with pytest.raises(ValueError, match="resampler is for 24 images"):
        segmentation_statistics(tally, confidence=0.95, resampler=Resampler(seed=3, images=24))


def test_noise_draws_are_resampled_with_their_image() -> None:
    """A noise task's tally holds images x draws slots (slot image * draws + draw, as the engine
    writes them); the bootstrap resamples images, each weight applying to all of its draws."""
    images, draws = 6, 3
    masks, dense, pruned = random_batch(images * draws, 5, seed=12)
    tally = filled_tally(masks, dense, pruned)
    resampler = Resampler(seed=7, images=images, replicates=40, chunk=15)
    indices = np.array([3, 5, 8, 13, 21, 34])  # the data set's indices of the six images
    summary, replicates = segmentation_statistics(
        tally, confidence=0.9, resampler=resampler, draws=draws, indices=indices
    )
    assert summary["n"] == images * draws and set(summary["intervals"]) <= set(replicates)
    pooled, _ = segmentation_statistics(tally, confidence=0.9, resampler=None)  # draws only change the bootstrap
    for metric in ("miou_drop", "pixel_accuracy_drop", "pixel_agreement", "class_iou_drop", "dense", "pruned"):
        assert summary[metric] == pooled[metric], metric

    weights = np.concatenate(list(resampler.weights()), axis=0).astype(np.int64)  # [replicates, images]
    slot_weights = np.repeat(weights, draws, axis=1)  # every draw of an image: its image's weight
    dense_c, pruned_c = tally.dense_confusion.numpy(), tally.pruned_confusion.numpy()
    for b in (0, 17, 39):
        w = slot_weights[b][:, None, None]
        dense_sum, pruned_sum = (w * dense_c).sum(axis=0), (w * pruned_c).sum(axis=0)
        assert replicates["miou_drop"][b] == pytest.approx(miou_drop(dense_sum, pruned_sum), abs=1e-12)
        assert replicates["pruned_miou"][b] == pytest.approx(miou(pruned_sum), abs=1e-12)
        agreement = pixel_agreement(slot_weights[b] @ tally.agree.numpy(), slot_weights[b] @ tally.valid.numpy())
        assert replicates["pixel_agreement"][b] == pytest.approx(agreement, abs=1e-12)

    # the worst examples name the image (through `indices`) and the draw of their slot
    dense_images = [miou(c) for c in dense_c]
    drops = [miou(d) - miou(p) for d, p in zip(dense_c, pruned_c)]
    for example in summary["segmentation_examples"]:
        slot = int(np.flatnonzero(indices == example["index"])[0]) * draws + example["draw"]
        assert example["drop"] == pytest.approx(drops[slot]) and example["dense_miou"] == pytest.approx(
            dense_images[slot]
        )
    assert summary["segmentation_examples"][0]["drop"] == pytest.approx(max(drops))

    with pytest.raises(ValueError, match="resampler is for 18 images, the tally holds 6"):
        segmentation_statistics(tally, confidence=0.9, resampler=Resampler(seed=7, images=18), draws=draws)


# Coverage: a generative model whose dataset-level values are known in closed form. Each image has
# its own dense error rate d ~ Beta(1, 9) and extra pruned error rate e ~ Beta(2, 8) (errors cluster
# by image, as real ones do: a per-pixel bootstrap would be too narrow). Classes are uniform over K;
# a pixel with u ~ U(0, 1) is wrong for the dense model when u < d, for the pruned one when
# u < d + e(1 - d), and a wrong pixel is predicted as class (truth + 1) mod K. Void pixels are
# independent of all that. Then, per class, E[TP] = m(1 - r)/K, E[true] = E[predicted] = m/K for a
# model of mean error rate r, so the population IoU of every class, and the mIoU, is
# (1 - r)/(1 + r); pixel accuracy is 1 - r, and the models agree wherever the pruned one is right.
DENSE_BETA, EXTRA_BETA = (1.0, 9.0), (2.0, 8.0)
MEAN_DENSE_ERROR = DENSE_BETA[0] / sum(DENSE_BETA)  # 0.1
MEAN_EXTRA_ERROR = EXTRA_BETA[0] / sum(EXTRA_BETA)  # 0.2
MEAN_PRUNED_ERROR = MEAN_DENSE_ERROR + MEAN_EXTRA_ERROR * (1 - MEAN_DENSE_ERROR)  # 0.28
TRUE_VALUES = {
    "dense_miou": (1 - MEAN_DENSE_ERROR) / (1 + MEAN_DENSE_ERROR),
    "pruned_miou": (1 - MEAN_PRUNED_ERROR) / (1 + MEAN_PRUNED_ERROR),
    "miou_drop": (1 - MEAN_DENSE_ERROR) / (1 + MEAN_DENSE_ERROR) - (1 - MEAN_PRUNED_ERROR) / (1 + MEAN_PRUNED_ERROR),
    "pixel_accuracy_drop": MEAN_PRUNED_ERROR - MEAN_DENSE_ERROR,
    "pixel_agreement": 1 - (MEAN_PRUNED_ERROR - MEAN_DENSE_ERROR),
}


def clustered_data(images: int, seed: int, size: int = 8, classes: int = 4) -> SegmentationTally:
    """A tally of `images` images drawn from the generative model above."""
    rng = np.random.default_rng(seed)
    dense_rate = rng.beta(*DENSE_BETA, size=(images, 1, 1))
    extra_rate = rng.beta(*EXTRA_BETA, size=(images, 1, 1))
    truth = rng.integers(0, classes, size=(images, size, size))
    u = rng.random((images, size, size))
    masks = np.where(rng.random((images, size, size)) < 0.1, VOID, truth)
    predictions = []
    for wrong in (u < dense_rate, u < dense_rate + extra_rate * (1 - dense_rate)):
        pred = torch.from_numpy(np.where(wrong, (truth + 1) % classes, truth))
        predictions.append(torch.nn.functional.one_hot(pred, classes).permute(0, 3, 1, 2).float())
    return filled_tally(torch.from_numpy(masks), *predictions, batch=images)


def test_the_model_has_the_stated_population_values() -> None:
    summary, _ = segmentation_statistics(clustered_data(20_000, seed=99), confidence=0.95, resampler=None)
    found = {
        "dense_miou": summary["dense"]["miou"],
        "pruned_miou": summary["pruned"]["miou"],
        "miou_drop": summary["miou_drop"],
        "pixel_accuracy_drop": summary["pixel_accuracy_drop"],
        "pixel_agreement": summary["pixel_agreement"],
    }
    for metric, value in TRUE_VALUES.items():
        assert value == pytest.approx(found[metric], abs=0.004), metric  # a few standard errors at 20,000 images


def test_bootstrap_intervals_cover_the_true_values_at_their_nominal_rate() -> None:
    datasets, images, confidence = 200, 25, 0.95
    covered = dict.fromkeys(TRUE_VALUES, 0)
    for seed in range(datasets):
        tally = clustered_data(images, seed=seed)
        summary, _ = segmentation_statistics(
            tally, confidence=confidence, resampler=Resampler(seed=10_000 + seed, images=images, replicates=1000)
        )
        for metric, value in TRUE_VALUES.items():
            interval = summary["intervals"][metric]
            covered[metric] += interval["low"] <= value <= interval["high"]
    rates = {metric: count / datasets for metric, count in covered.items()}
    # binomial sd at 200 trials is 0.015: 0.88 is more than four below 0.95, 0.99 nearly three above
    assert all(0.88 <= rate <= 0.99 for rate in rates.values()), rates


# --- (f) memory -----------------------------------------------------------------------------------


def test_update_keeps_no_per_pixel_state() -> None:
    classes, n = 21, 4
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, classes, (2, 513, 513), generator=g)
    masks[:, :10] = VOID
    dense = torch.randn(2, classes, 513, 513, generator=g)
    pruned = torch.randn(2, classes, 513, 513, generator=g)
    tally = SegmentationTally.empty(n, CPU, classes)
    before = {name: (t.shape, t.dtype) for name, t in tally.state().items()}
    tally.update(torch.tensor([1, 3]), masks, dense, pruned)
    state = tally.state()
    assert {name: (t.shape, t.dtype) for name, t in state.items()} == before
    elements = sum(t.numel() for t in state.values())
    assert elements == 2 * n * classes * (classes + 1) + 3 * n  # O(n K^2), nothing per pixel
    assert int(tally.valid.sum()) == 2 * 503 * 513
    assert int(tally.dense_confusion.sum()) == int(tally.valid.sum())
    assert tally.filled.tolist() == [False, True, False, True]


def test_pixel_predictions_are_numpy_argmax_and_mark_non_finite_pixels() -> None:
    from prunegate.kinds.segmentation import pixel_predictions

    g = torch.Generator().manual_seed(4)
    logits = torch.randint(0, 4, (3, 7, 9, 11), generator=g).float()  # many ties: the first maximum wins
    logits[0, 2, 1, 1], logits[1, 6, 2, 3], logits[2, 0, 4, 4] = float("nan"), float("inf"), float("-inf")
    found = pixel_predictions(logits).numpy()
    expected = np.argmax(logits.numpy(), axis=1)
    bad = ~np.isfinite(logits.numpy()).all(axis=1)
    assert bad.sum() == 3 and (found[bad] == 7).all()
    assert (found[~bad] == expected[~bad]).all()
