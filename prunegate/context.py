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
from prunegate.data.groups import read_groups_file, resolve_groups
from prunegate.data.imagefolder import read_class_names
from prunegate.data.label_map import LabelMap, read_label_map
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
    label_map: LabelMap | None = None  # data.label_map: which model classes are right for each label
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # data.groups: name -> label indices
    manifest: Manifest = field(init=False)

    def __post_init__(self) -> None:
        described = self.images.describe()
        if self.label_map is not None:
            described["label_map"] = self.label_map.sha256
        self.manifest = Manifest(described, self.indices)


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


def _label_map(policy: Policy, name: str, images: ImageSet) -> LabelMap | None:
    """The label map of source `name` (a precomputed block: the test set's), read and matched to
    the set's labels."""
    spec = policy.data.test if name == TEST_SOURCE else next((o for o in policy.data.ood if o.name == name), None)
    if spec is None or not spec.label_map:
        return None
    where = "data.test" if name == TEST_SOURCE else f"data.ood.{policy.data.ood.index(spec)}"  # type: ignore[arg-type]
    model_names = (
        read_class_names(policy.resolve(spec.class_names), where + ".class_names") if spec.class_names else None
    )
    return read_label_map(
        policy.resolve(spec.label_map), where + ".label_map", images.labels, images.classes, model_names
    )


def _groups(policy: Policy, images: ImageSet) -> dict[str, np.ndarray]:
    """data.groups as label indices of `images` (class names looked up in its classes)."""
    spec = policy.data.groups
    if spec is None:
        return {}
    if isinstance(spec, str):
        path = policy.resolve(spec)
        return resolve_groups(read_groups_file(path), images.classes, file=path)
    return resolve_groups(spec, images.classes, file=policy.file)  # inline: the policy file is where it is


def open_sources(policy: Policy, tasks: Sequence[Task]) -> list[Source]:
    """Every source the tasks read, opened, with its class-balanced selection (data.limit)."""
    names = [TEST_SOURCE, *(o.name for o in policy.data.ood)]
    sources = []
    for name in names:
        images, where = source_images(policy, name)
        label_map = _label_map(policy, name, images)
        selection = select(images.labels, policy.data.limit)
        sources.append(Source(name, images, selection, where, label_map=label_map, groups=_groups(policy, images)))
    for task in tasks:
        if task.precomputed:
            images, where = source_images(policy, task.source, task)
            label_map = _label_map(policy, TEST_SOURCE, images)
            selection = select(images.labels, policy.data.limit)
            groups = _groups(policy, images)
            sources.append(Source(task.source, images, selection, where, label_map=label_map, groups=groups))
    return sources


def load_assets(policy: Policy) -> ShiftAssets:
    """The shift assets the policy names (none: the shifts use their procedural defaults)."""
    corruptions = policy.suite.corruptions
    folders = corruptions.asset_folders() if corruptions is not None else {}
    return ShiftAssets.load(
        {name: policy.resolve(value) for name, value in folders.items()}, lambda name: f"{CORRUPTIONS_FIELD}.{name}"
    )


# runtime.batch_size: auto. A batch's working set grows with its pixels: the source batch and every
# task's shift of it in prunegate's process, and each model's activations in the model's own
# process. Measured on MobileNetV2 at 224 px under ONNX Runtime (bench/memory.py, bench/RESULTS.md):
# about 80 bytes per input pixel in prunegate's process and 330 in each model's. Rounded up: the
# shifts run in chunks of 64 images with float64 intermediates on CUDA, and other models are wider.
SHIFT_BYTES_PER_PIXEL = 256
MODEL_BYTES_PER_PIXEL = 384
CPU_BUDGET_MIB = 1024  # the working set's budget on the CPU unless runtime.memory_budget says
CUDA_FREE_FRACTION = 0.5  # ... and on CUDA: this share of the device's free memory
MAX_AUTO_BATCH = 256  # more gains no speed, at any size (32 px CIFAR runs at this)


@dataclass(frozen=True)
class BatchChoice:
    """The batch size a run uses, and how it was chosen (the report's options record both)."""

    size: int
    source: str


def choose_batch_size(
    requested: int | str,
    shape: tuple[int, int],
    device: torch.device,
    *,
    budget_mib: int | None = None,
    models: int = 2,
) -> BatchChoice:
    """runtime.batch_size as a number. A number is used as it is ("given"); `auto` takes as many
    images as fit the memory budget at the input's `shape` (height, width) with `models` models
    holding their activations: the largest power of two in [1, MAX_AUTO_BATCH] within budget_mib
    (runtime.memory_budget), else CPU_BUDGET_MIB on the CPU, CUDA_FREE_FRACTION of the free
    memory on CUDA. Nothing runs a model: the batch is needed before they load (backend auto
    times them with it)."""
    if requested != "auto":  # (from the policy or --batch-size: the report's policy.overrides says which)
        return BatchChoice(int(requested), "given")
    height, width = shape
    if budget_mib is not None:
        budget, where = budget_mib << 20, f"runtime.memory_budget {budget_mib} MiB"
    elif device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * CUDA_FREE_FRACTION)
        where = f"{CUDA_FREE_FRACTION:.0%} of {free >> 20} MiB free on {device}"
    else:
        budget, where = CPU_BUDGET_MIB << 20, f"{CPU_BUDGET_MIB} MiB on the CPU"
    per_image = height * width * (SHIFT_BYTES_PER_PIXEL + MODEL_BYTES_PER_PIXEL * max(models, 1))
    fits = max(1, min(MAX_AUTO_BATCH, budget // per_image))
    size = 1 << (fits.bit_length() - 1)
    return BatchChoice(size, f"auto: budget {where}, {height}x{width} input, {models} models")


@dataclass(frozen=True)
class RunContext:
    """Everything a run derives from its policy, resolved once."""

    tasks: tuple[Task, ...]
    sources: tuple[Source, ...]
    pre: Preprocess
    size: tuple[int, int]  # models.input.size as (height, width)
    seed: int = 0  # suite.seed: every random draw is keyed by it
    batch_size: int = 256  # runtime.batch_size, resolved (auto: choose_batch_size)
    workers: int = 0  # background decoding processes
    max_pixels: int = DEFAULT_MAX_PIXELS  # data.max_pixels
    assets: ShiftAssets = NO_ASSETS
    device: torch.device = torch.device("cpu")
    policy: Policy | None = None  # what it was built from
    batch_source: str = "given"  # how batch_size was chosen (BatchChoice.source)

    @classmethod
    def build(
        cls,
        policy: Policy,
        *,
        device: torch.device = torch.device("cpu"),
        sources: Sequence[Source] | None = None,
        assets: ShiftAssets | None = None,
        models: int = 2,
    ) -> RunContext:
        """The context of `policy` on `device`: its plan, its sources opened (unless given), its
        assets loaded (unless given), its batch size resolved for `models` models on `device`.
        Bad data or assets raise a DataError naming the field."""
        tasks = build_plan(policy)
        opened = open_sources(policy, tasks) if sources is None else list(sources)
        found = load_assets(policy) if assets is None else assets
        pre = Preprocess.create(policy.models.input.mean, policy.models.input.std, device)
        runtime = policy.runtime
        batch = _batch_choice(policy, device, models)
        return cls(
            tuple(tasks),
            tuple(opened),
            pre,
            policy.models.input.shape,
            policy.suite.seed,
            batch.size,
            runtime.workers,
            policy.data.max_pixels,
            found,
            device,
            policy,
            batch.source,
        )

    def on(self, device: torch.device, models: int | None = None) -> RunContext:
        """The same context with its preprocessing on `device`, and an `auto` batch size chosen
        again for `device` (and `models` models, when given)."""
        pre = Preprocess(self.pre.mean.to(device), self.pre.std.to(device))
        moved = dataclasses.replace(self, pre=pre, device=device)
        if self.policy is not None and (device != self.device or models is not None):
            batch = _batch_choice(self.policy, device, 2 if models is None else models)
            moved = dataclasses.replace(moved, batch_size=batch.size, batch_source=batch.source)
        return moved

    def task(self, name: str) -> Task | None:
        """The task called `name`, if the plan has one."""
        return next((t for t in self.tasks if t.name == name), None)

    def source_tasks(self, source: Source) -> list[Task]:
        """The tasks that read `source`, in plan order."""
        return [t for t in self.tasks if t.source == source.name]

    def data_records(self) -> list[dict]:
        """The report's `data`: every source, and the assets the pass used."""
        return [{"name": s.name, **s.manifest.to_dict()} for s in self.sources] + self.assets.records()


def _batch_choice(policy: Policy, device: torch.device, models: int) -> BatchChoice:
    runtime = policy.runtime
    return choose_batch_size(
        runtime.batch_size,
        policy.models.input.shape,
        device,
        budget_mib=runtime.memory_budget,
        models=models,
    )


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
