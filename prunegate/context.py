"""The run context: a validated policy (with its overrides) resolved once into what a run uses.

`RunContext.build(policy)` makes the plan's tasks, opens the data sources (each with the policy
field that names it), the preprocessing, the seed and the shift assets (folders of photographs
a corruption overlays).
The engine, `potential`, `corrupt` and the report's gallery take a context and nothing global.

`task_pixels(ctx, task, x, ids, draw)` is the one definition of what a model saw for a task: the
engine normalises it and feeds the models, the gallery turns it into thumbnails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from prunegate import shifts
from prunegate.data import ImageSet, Manifest, open_source, select
from prunegate.data.cifar_c import CorruptedArrays
from prunegate.plan import TEST_SOURCE, Task, TaskKind, build_plan
from prunegate.policy import DEFAULT_MAX_PIXELS, Policy
from prunegate.shifts import NO_ASSETS, SampleRNG, ShiftAssets, task_key

CORRUPTIONS_FIELD = "suite.corruptions"
PRECOMPUTED_FIELD = f"{CORRUPTIONS_FIELD}.precomputed"


@dataclass
class Source:
    """One image set as the pass reads it: the reader, the chosen indices, what was read."""

    name: str
    images: ImageSet
    indices: np.ndarray
    policy_field: str = "data.test"  # the policy field that names it, for errors
    part: np.ndarray | None = None  # the indices this process reads (torchrun); None: all
    manifest: Manifest = field(init=False)

    def __post_init__(self) -> None:
        self.manifest = Manifest(self.images.describe(), self.indices)


@dataclass
class Preprocess:
    """float [0, 1] NCHW -> the model's normalised input."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def create(cls, mean: Sequence[float], std: Sequence[float], device: torch.device) -> Preprocess:
        """The normalisation by the policy's mean and std, as [1, C, 1, 1] tensors on `device`."""

        def column(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)

        return cls(column(mean), column(std))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """A normalised input back in pixel units (not clamped)."""
        return x * self.std + self.mean


def source_images(policy: Policy, name: str, task: Task | None = None) -> tuple[ImageSet, str]:
    """The reader of source `name` (the test set, an ood set, or a precomputed corruption block
    `task` reads), and the policy field that names it."""
    if task is not None and task.precomputed:
        corruptions = policy.suite.corruptions
        assert corruptions is not None and corruptions.precomputed and task.shift and task.severity
        folder = policy.resolve(corruptions.precomputed)
        return CorruptedArrays(folder, task.shift, task.severity, PRECOMPUTED_FIELD), PRECOMPUTED_FIELD
    if name == TEST_SOURCE:
        return open_source(policy.data.test, policy.resolve, "data.test"), "data.test"
    index = [o.name for o in policy.data.ood].index(name)
    where = f"data.ood.{index}"
    return open_source(policy.data.ood[index], policy.resolve, where), where


def open_sources(policy: Policy, tasks: Sequence[Task]) -> list[Source]:
    """Every source the tasks read, opened, with its class-balanced selection (data.limit)."""
    names = [TEST_SOURCE, *(o.name for o in policy.data.ood)]
    sources = []
    for name in names:
        images, where = source_images(policy, name)
        sources.append(Source(name, images, select(images.labels, policy.data.limit), where))
    for task in tasks:
        if task.precomputed:
            images, where = source_images(policy, task.source, task)
            sources.append(Source(task.source, images, select(images.labels, policy.data.limit), where))
    return sources


def load_assets(policy: Policy) -> ShiftAssets:
    """The shift assets the policy names (none: the shifts use their procedural defaults)."""
    corruptions = policy.suite.corruptions
    folders = corruptions.asset_folders() if corruptions is not None else {}
    return ShiftAssets.load(
        {name: policy.resolve(value) for name, value in folders.items()}, lambda name: f"{CORRUPTIONS_FIELD}.{name}"
    )


@dataclass(frozen=True)
class RunContext:
    """Everything a run derives from its policy, resolved once."""

    tasks: tuple[Task, ...]
    sources: tuple[Source, ...]
    pre: Preprocess
    size: tuple[int, int]  # models.input.size as (height, width)
    seed: int = 0  # suite.seed: every random draw is keyed by it
    batch_size: int = 256
    workers: int = 0  # background decoding processes
    max_pixels: int = DEFAULT_MAX_PIXELS  # data.max_pixels
    assets: ShiftAssets = NO_ASSETS
    device: torch.device = torch.device("cpu")
    policy: Policy | None = None  # what it was built from

    @classmethod
    def build(
        cls,
        policy: Policy,
        *,
        device: torch.device = torch.device("cpu"),
        sources: Sequence[Source] | None = None,
        assets: ShiftAssets | None = None,
    ) -> RunContext:
        """The context of `policy` on `device`: its plan, its sources opened (unless given), its
        assets loaded (unless given). Bad data or assets raise a DataError naming the field."""
        tasks = build_plan(policy)
        opened = open_sources(policy, tasks) if sources is None else list(sources)
        found = load_assets(policy) if assets is None else assets
        pre = Preprocess.create(policy.models.input.mean, policy.models.input.std, device)
        runtime = policy.runtime
        return cls(
            tuple(tasks),
            tuple(opened),
            pre,
            policy.models.input.shape,
            policy.suite.seed,
            runtime.batch_size,
            runtime.workers,
            policy.data.max_pixels,
            found,
            device,
            policy,
        )

    def on(self, device: torch.device) -> RunContext:
        """The same context with its preprocessing on `device`."""
        pre = Preprocess(self.pre.mean.to(device), self.pre.std.to(device))
        return dataclasses.replace(self, pre=pre, device=device)

    def task(self, name: str) -> Task | None:
        """The task called `name`, if the plan has one."""
        return next((t for t in self.tasks if t.name == name), None)

    def source_tasks(self, source: Source) -> list[Task]:
        """The tasks that read `source`, in plan order."""
        return [t for t in self.tasks if t.source == source.name]

    def data_records(self) -> list[dict]:
        """The report's `data`: every source, and the assets the pass used."""
        return [{"name": s.name, **s.manifest.to_dict()} for s in self.sources] + self.assets.records()


@dataclass(frozen=True)
class Shifted:
    """One task's batch as the shift made it: pixels in [0, 1], or (for noise that lives in the
    model's input space) already normalised."""

    values: torch.Tensor
    normalized: bool = False

    def model_input(self, pre: Preprocess) -> torch.Tensor:
        """What the models are fed."""
        return self.values if self.normalized else pre(self.values)

    def pixels(self, pre: Preprocess) -> torch.Tensor:
        """The same batch as float [0, 1] images, for display."""
        return pre.inverse(self.values).clamp(0.0, 1.0) if self.normalized else self.values


def stream_name(task: Task, draw: int) -> str:
    """The random stream of a task's draw: the task's name, plus `#draw` for repeated draws."""
    return task.name if task.draws == 1 else f"{task.name}#{draw}"


def task_pixels(ctx: RunContext, task: Task, x: torch.Tensor, sample_ids: torch.Tensor, draw: int) -> Shifted:
    """What the models saw for `task` and `draw`, from the clean batch `x` (float [0, 1] NCHW)
    of samples `sample_ids`: every random draw keyed by (seed, task, draw, sample index)."""
    if not task.shifted:
        return Shifted(x)
    rng = SampleRNG(task_key(ctx.seed, stream_name(task, draw)), sample_ids, device=x.device)
    if task.kind is TaskKind.NOISE:
        assert task.shift is not None and task.level is not None
        noise = shifts.get_noise(task.shift)
        if noise.space == "normalized":
            return Shifted(noise.apply(ctx.pre(x), task.level, rng), normalized=True)
        return Shifted(noise.apply(x, task.level, rng))
    assert task.shift is not None and task.severity is not None
    return Shifted(
        shifts.corrupt(x, task.shift, task.severity, rng, preset=task.preset or "imagenet-c", assets=ctx.assets)
    )
