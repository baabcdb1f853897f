"""Fine-tuning a pruned model with its masks held fixed, and the paper's iterative prune-retrain.

What pruning removed stays removed: the masks are taken from the pruned model when fine-tuning
starts (`prune.prune_masks`), the masked entries' gradients are zeroed before every optimizer
step and the entries are set back to exact zeros after it (momentum and weight decay would move
them otherwise). SGD with Nesterov momentum 0.9, weight decay 1e-4 and a cosine learning rate.

Seeded and deterministic on the CPU: one generator, seeded from the seed and the prune step,
draws the shuffle and the augmentation (random crop with padding, horizontal flip); the global
RNG (dropout) is seeded inside a fork of it, and deterministic algorithms are asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunegate.data import ImageSet, Size
from prunegate.errors import DataError
from prunegate.policy import DEFAULT_MAX_PIXELS
from prunegate.prune import prune_masks

DEFAULT_LIMIT = 5000  # training images a run uses by default: minutes on a laptop CPU, not hours


@dataclass(frozen=True)
class RetrainOptions:
    """The training budget and the input preprocessing. `mean`/`std` None: the model takes [0, 1]
    pixels as they are."""

    size: Size
    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = True
    momentum: float = 0.9
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class TrainSet:
    """The images to train on: a reader and the indices of the samples used."""

    images: ImageSet
    indices: np.ndarray
    field: str = "--retrain"

    def batches_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.indices) / batch_size)


Progress = Callable[[int], None]  # called with the batches just done


def schedule(ratio: float, iterations: int) -> list[float]:
    """The prune ratio after each of `iterations` steps: 1 - (1 - r)^(k/K), geometric, so every
    step removes the same fraction of what is left; the last is `ratio` itself."""
    return [1 - (1 - ratio) ** (k / iterations) for k in range(1, iterations)] + [ratio]


def prune_retrain(
    model: nn.Module,
    ratio: float,
    prune_fn: Callable[[nn.Module, float], nn.Module],
    data: TrainSet,
    options: RetrainOptions,
    iterations: int = 1,
    progress: Progress | None = None,
    step_done: Callable[[int, float, float], None] | None = None,
) -> nn.Module:
    """Iterative prune-retrain (as in the paper): at each step k of K, prune to ratio_k (see
    `schedule`), then fine-tune with the masks fixed. `step_done(k, ratio_k, mean loss)` after each."""
    for k, step_ratio in enumerate(schedule(ratio, iterations), start=1):
        model = prune_fn(model, step_ratio)
        loss = fine_tune(model, data, options, step=k, progress=progress)
        if step_done is not None:
            step_done(k, step_ratio, loss)
    return model


@contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Deterministic algorithms and a seeded global RNG inside; the caller's settings after."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def fine_tune(
    model: nn.Module, data: TrainSet, options: RetrainOptions, step: int = 1, progress: Progress | None = None
) -> float:
    """Train `model` in place on `data` with its pruning masks fixed; returns the mean loss of the
    last epoch. The model is left in eval mode."""
    masks = prune_masks(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=options.lr, momentum=options.momentum, nesterov=True, weight_decay=options.weight_decay
    )
    total = options.epochs * data.batches_per_epoch(options.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    generator = torch.Generator().manual_seed(options.seed * 1_000_003 + step)
    loss_sum, seen = 0.0, 0
    with _deterministic(options.seed + step):
        model.train()
        for _ in range(options.epochs):
            loss_sum, seen = 0.0, 0
            order = data.indices[torch.randperm(len(data.indices), generator=generator).numpy()]
            for start in range(0, len(order), options.batch_size):
                chosen = [int(i) for i in order[start : start + options.batch_size]]
                inputs, labels = batch_inputs(data, chosen, options, generator)
                loss = _train_step(model, optimizer, masks, inputs, labels, data.field)
                scheduler.step()
                loss_sum, seen = loss_sum + loss * len(chosen), seen + len(chosen)
                if progress is not None:
                    progress(1)
        model.eval()
    return loss_sum / max(seen, 1)


def _train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    masks: list[tuple[torch.Tensor, torch.Tensor]],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    field: str,
) -> float:
    """One SGD step; the masked entries get no gradient and are exact zeros after it."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(inputs)
    if logits.ndim != 2:
        raise DataError(f"retraining needs class logits [N, classes]; the model returned {list(logits.shape)}")
    if int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
        raise DataError(
            f"labels run from {int(labels.min())} to {int(labels.max())} but the model has {logits.shape[1]} "
            "outputs (give the model's class names with --class-names)",
            field=field,
        )
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    with torch.no_grad():
        for param, keep in masks:
            if param.grad is not None:
                param.grad.masked_fill_(~keep, 0.0)
        optimizer.step()
        for param, keep in masks:
            param.masked_fill_(~keep, 0.0)
    return float(loss.detach())


def batch_inputs(
    data: TrainSet, indices: list[int], options: RetrainOptions, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float NCHW model inputs and int64 labels for these samples: read at `options.size`, scaled
    to [0, 1], augmented (when `options.augment` and a `generator` is given: training) and
    normalised by `options.mean`/`std`. The retraining batches and `prune`'s calibration batch
    (no generator: the images as they are) are both made here, so they are preprocessed alike."""
    images, labels, _ = data.images.read_batch(indices, options.size, DEFAULT_MAX_PIXELS)
    if labels.ndim != 1:
        raise DataError("needs one class label per image (this set has per-pixel labels)", field=data.field)
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if options.augment and generator is not None:
        x = _augment(x, generator)
    if options.mean is not None or options.std is not None:
        mean = torch.tensor(options.mean or (0.0,)).view(-1, 1, 1)
        std = torch.tensor(options.std or (1.0,)).view(-1, 1, 1)
        x = (x - mean) / std
    return x, labels.long()


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding of 1/8 of the side (4 px at 32), and a horizontal flip."""
    n, _, height, width = x.shape
    pad = max(1, min(height, width) // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    cropped = torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)])
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), cropped.flip(3), cropped)


__all__ = ["DEFAULT_LIMIT", "RetrainOptions", "TrainSet", "batch_inputs", "fine_tune", "prune_retrain", "schedule"]
