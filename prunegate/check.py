"""One gate run as a library call: policy in, Report out. No printing, no files written.

Order matters for the user: everything that can be wrong with the input (policy, data, models,
their fit to each other) is checked before the long pass starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from prunegate import __version__
from prunegate.cache import DenseCache
from prunegate.checkpoint import Checkpoint
from prunegate.context import PRECOMPUTED_FIELD, RunContext, Source, task_pixels
from prunegate.data.groups import check_group_classes
from prunegate.distributed import SINGLE, World, device_for, gather_objects, slowest
from prunegate.engine import check_labels, evaluate_family, model_outputs, probe_classes, total_evaluations
from prunegate.errors import PolicyError, PrunegateError
from prunegate.gate import Evidence, evaluate_rules, nonfinite_warnings, verdict
from prunegate.kinds import CLASSIFICATION, SEGMENTATION, PredictionKind, Tally, get_kind
from prunegate.kinds.segmentation import prediction_png
from prunegate.metrics import TaskTally
from prunegate.metrics.intervals import Resampler
from prunegate.metrics.paired import StatisticsOptions
from prunegate.plan import TEST_SOURCE
from prunegate.policy import (
    DEFAULT_COVERAGE,
    FORMAT_FIELDS,
    DataSource,
    ModelSpec,
    Policy,
    arch_name,
    sequential_problems,
)
from prunegate.report.builder import ReportBuilder, run_options
from prunegate.report.schema import Isolation, Report, SanityRecord, TaskRecord
from prunegate.runners import LoadOptions, Runner, load_runner, resolve_device, start_isolated
from prunegate.runners.base import check_precision
from prunegate.runners.isolated import InputArena, Zygote, hidden_files
from prunegate.sanity import SKIPPED_OPTION, check_clean, skipped
from prunegate.sequential_gate import SequentialGate
from prunegate.shifts.assets import ASSET_NAMES
from prunegate.shifts.rng import task_key


class ProgressSink(Protocol):
    def start(self, total: int) -> None: ...

    def advance(self, count: int) -> None: ...


@dataclass(frozen=True)
class Overrides:
    """Command-line settings that replace the policy's."""

    dense: Path | None = None
    pruned: Path | None = None
    device: str | None = None
    backend: str | None = None
    batch_size: int | None = None
    limit: int | None = None
    workers: int | None = None
    precision: str | None = None
    cache: Path | None = None
    data: Path | None = None  # the test set (its format read from its layout)
    providers: list[str] | None = None  # ONNX Runtime providers (runtime.providers)
    sequential: bool | None = None  # gate.sequential


def apply_overrides(policy: Policy, o: Overrides) -> Policy:
    """The policy with the command line's settings in place; `overrides` lists them (the report
    records them, and `verify --policy` shows them)."""
    models, data, runtime = policy.models, policy.data, policy.runtime
    overrides: dict[str, object] = dict(policy.overrides)
    for which in ("dense", "pruned"):
        path = getattr(o, which)
        if path is not None:
            spec = models.spec(which)
            own = getattr(models, which)
            output = own.output if isinstance(own, ModelSpec) else None  # (models.output stays the default)
            moved = ModelSpec(path=str(Path(path).resolve()), arch=spec.arch, output=output)
            models = models.model_copy(update={which: moved})
            overrides[f"models.{which}.path"] = str(Path(path).resolve())
    if o.data is not None:
        test = _test_set(data.test, Path(o.data).resolve())
        data = data.model_copy(update={"test": test})
        overrides["data.test"] = test.model_dump(mode="json", exclude_defaults=True)
    if o.limit is not None:
        data = data.model_copy(update={"limit": o.limit})
        overrides["data.limit"] = o.limit
    updates = {
        k: v
        for k, v in (
            ("device", o.device),
            ("backend", o.backend),
            ("batch_size", o.batch_size),
            ("workers", o.workers),
            ("precision", o.precision),
            ("cache", str(Path(o.cache).resolve()) if o.cache is not None else None),
            ("providers", list(o.providers) if o.providers else None),
        )
        if v is not None
    }
    runtime = runtime.model_copy(update=updates)
    overrides.update({f"runtime.{k}": v for k, v in updates.items()})
    gate = policy.gate
    if o.sequential is not None and o.sequential != gate.sequential:
        gate = gate.model_copy(update={"sequential": o.sequential})
        for _, reason, _ in sequential_problems(gate):
            raise PolicyError(reason, file=policy.file, field="--sequential")
        overrides["gate.sequential"] = o.sequential
    result = policy.model_copy(update={"models": models, "data": data, "runtime": runtime, "gate": gate})
    result._file, result._sha256, result._overrides = policy.file, policy.sha256, overrides
    result._base_dir = policy.paths_from
    return result


def _test_set(policy_test: DataSource, path: Path) -> DataSource:
    """The policy's test set moved to `path` (`--data`): its format read from the layout; the
    policy's other settings kept where that format has them."""
    from prunegate.data_layout import guess_format

    fmt = guess_format(path)
    if fmt == policy_test.format:
        return policy_test.model_copy(update={"path": str(path)})
    # What describes the models' classes carries over to the new format where it reads it; what
    # describes the old file (npy's labels file, npz's keys, a list's columns) does not.
    kept = {
        name: getattr(policy_test, name)
        for name in ("class_names", "label_map", "ignore_index")
        if getattr(policy_test, name) is not None and fmt in FORMAT_FIELDS[name]
    }
    return DataSource(format=fmt, path=str(path), **kept)  # type: ignore[arg-type]


def input_files(policy: Policy, pruned: list[Path] | None = None) -> dict[str, Path]:
    """Every file and folder the run reads, by the policy field that names it: what no output
    may overwrite. `pruned`: the members of `potential` (instead of models.pruned)."""
    found: dict[str, Path] = {}
    if policy.file is not None:
        found["the policy"] = policy.file
    specs = [("models.dense", policy.models.spec("dense"))]
    specs += (
        [("models.pruned", policy.models.spec("pruned"))]
        if pruned is None
        else [(f"--pruned.{i}", ModelSpec(path=str(p))) for i, p in enumerate(pruned)]
    )
    for field, spec in specs:
        path = policy.resolve(spec.path)
        found[field] = path
        if path.suffix.lower() == ".onnx" and path.is_file():
            from prunegate.runners.onnx import external_locations

            for location in external_locations(path, field):
                found[f"{field} (its external data {location})"] = path.parent / location
        if path.is_dir():  # a Hugging Face folder: the files in it that the model reads
            from prunegate.hf_folder import CONFIG, WEIGHTS

            for name in (CONFIG, WEIGHTS):
                found[f"{field} (its {name})"] = path / name
        module = (arch_name(spec.arch) or "").partition(":")[0]
        if module.endswith(".py"):
            found[f"{field}.arch"] = policy.resolve(module)
    sources = [("data.test", policy.data.test)] + [(f"data.ood.{i}", o) for i, o in enumerate(policy.data.ood)]
    for field, source in sources:
        for key in ("path", "labels", "class_names", "label_map"):
            value = getattr(source, key)
            if value:
                found[f"{field}.{key}"] = policy.resolve(value)
    if isinstance(policy.data.groups, str):
        found["data.groups"] = policy.resolve(policy.data.groups)
    corruptions = policy.suite.corruptions
    for key in ("precomputed", *ASSET_NAMES):
        value = getattr(corruptions, key, None) if corruptions is not None else None
        if value:
            found[f"suite.corruptions.{key}"] = policy.resolve(value)
    return found


def labelled(tally: Tally, source: Source, classes: int) -> tuple[Tally, int]:
    """The tally as its source's labels judge it, and how many labels (per-class statistics) there
    are: with a label map the data set's own, a prediction right when in its label's set."""
    if source.label_map is None or not isinstance(tally, TaskTally):
        return tally, classes
    sets = source.label_map.matrix(classes)
    return dataclasses.replace(tally, label_sets=sets), int(sets.shape[0])


def task_records(
    ctx: RunContext,
    tallies: dict[str, Tally],
    classes: int,
    confidence: float,
    bootstrap: int,
    kind: PredictionKind = CLASSIFICATION,
) -> tuple[dict[str, TaskRecord], dict[str, dict]]:
    """Every task's record (metrics, intervals, examples) and bootstrap replicates. The tasks of
    one data set share its resamples, so aggregates over them are resampled jointly."""
    by_name = {s.name: s for s in ctx.sources}

    # A precomputed corruption block holds the test images, corrupted: it is resampled as the
    # test set is, so its tasks stay paired with the others (and match generated ones exactly).
    def stream(source: Source) -> str:
        return f"bootstrap/{TEST_SOURCE if source.policy_field == PRECOMPUTED_FIELD else source.name}"

    resamplers = {s.name: Resampler(task_key(ctx.seed, stream(s)), len(s.indices), bootstrap) for s in ctx.sources}
    records, replicates = {}, {}
    for t in ctx.tasks:
        source = by_name[t.source]
        tally, labels = labelled(tallies[t.name], source, classes)
        records[t.name], replicates[t.name] = kind.task_record(
            t,
            tally,
            classes=labels,
            confidence=confidence,
            resampler=resamplers[t.source],
            indices=source.indices,
            class_names=source.images.classes,
            options=StatisticsOptions(coverages(ctx.policy), source.groups),
        )
    return records, replicates


def groups_file(policy: Policy) -> Path | None:
    """Where data.groups is written: its own file, or the policy's."""
    spec = policy.data.groups
    return policy.resolve(spec) if isinstance(spec, str) else policy.file


def coverages(policy: Policy | None) -> tuple[float, ...]:
    """The selective-risk coverages a report gives: the default, and any a rule asks for."""
    rules = policy.gate.rules if policy is not None else []
    return tuple(sorted({DEFAULT_COVERAGE, *(r.coverage for r in rules if r.coverage is not None)}))


@dataclass(frozen=True)
class CheckpointPlan:
    """Keep the pass's progress in `folder` (every few minutes, and when it stops early);
    `resume`: continue from what is there."""

    folder: Path
    resume: bool = False


@dataclass
class Setup:
    """Everything the pass needs, loaded and checked against each other before it starts."""

    ctx: RunContext
    dense: Runner
    pruned: list[Runner]
    classes: int
    world: World = SINGLE
    arena: InputArena | None = None  # the models' shared input buffer, when they run isolated
    kind: PredictionKind = CLASSIFICATION
    cache: DenseCache | None = None  # runtime.cache, once the pass has opened it

    def close(self) -> None:
        """End the models' processes and free their input buffer."""
        close_runners([self.dense, *self.pruned], self.arena)

    def __enter__(self) -> Setup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def evaluate(
        self,
        progress: ProgressSink | None = None,
        checkpoint: CheckpointPlan | None = None,
        sequential: SequentialGate | None = None,
    ) -> tuple[list[dict[str, Tally]], dict[str, float]]:
        """One streaming pass: (a tally dict per pruned model, timings). Under torchrun this
        process evaluates its part of every source; the tallies come back merged. `checkpoint`:
        where to keep the pass's progress, and whether to continue from it; `sequential`: the
        looks that may stop it early (gate.sequential)."""
        for source in self.ctx.sources:
            source.part = self.world.part(source.indices)
        saver, restored = None, None
        if checkpoint is not None:
            saver = Checkpoint(checkpoint.folder, self.binding(), rank=self.world.rank)
            restored = saver.restore() if checkpoint.resume else None
        policy = self.ctx.policy
        if policy is not None and policy.runtime.cache and self.world.size == 1:
            self.cache = DenseCache.open(policy.resolve(policy.runtime.cache), self.cache_key(), self.pixels_key())
        shown = progress if self.world.is_main else None  # only rank 0 draws the bar
        if shown is not None:
            shown.start(total_evaluations(self.ctx))
        family, timings = evaluate_family(
            self.ctx,
            self.dense,
            self.pruned,
            kind=self.kind,
            progress=shown.advance if shown is not None else None,
            world=self.world,
            classes=self.classes,
            checkpoint=saver,
            restored=restored,
            cache=self.cache,
            sequential=sequential,
        )
        if saver is not None:
            saver.discard()
        return family, slowest(timings, self.world)

    def cache_key(self) -> dict:
        """What the dense model's outputs depend on, for every task (prunegate.cache; each task
        adds its definition and data): the dense model as loaded and run (and the output read), the preprocessing, the
        seed, the shift assets and the class count."""
        model = self.dense.record
        return {
            "kind": self.kind.name,
            "dense": self.binding()["models.dense"],
            "backend": model.backend,
            "provider": model.provider,
            "precision": model.precision,
            "channels_last": model.channels_last,
            "output": model.output,  # (models.output: another output of the same file is another model)
            "device": self.ctx.device.type,
            "input": list(self.ctx.size),
            "mean": self.ctx.pre.mean.flatten().tolist(),
            "std": self.ctx.pre.std.flatten().tolist(),
            "seed": self.ctx.seed,
            "assets": self.ctx.assets.records(),
            "classes": self.classes,
        }

    def pixels_key(self) -> dict:
        """What a corruption's shifted images depend on besides the task and its data
        (prunegate.cache): the input size, the seed, the shift assets and the device type."""
        return {
            "device": self.ctx.device.type,
            "input": list(self.ctx.size),
            "seed": self.ctx.seed,
            "assets": self.ctx.assets.records(),
        }

    def binding(self) -> dict:
        """What a checkpoint of this run is bound to (prunegate.checkpoint)."""
        assert self.ctx.policy is not None
        document = self.ctx.policy.model_dump(mode="json")
        # Results do not depend on these: a resumed run may change them.
        for setting in ("batch_size", "memory_budget", "workers", "cache"):
            document["runtime"].pop(setting, None)
        text = json.dumps(document, sort_keys=True)
        binding: dict = {
            "prunegate": __version__,
            "policy": hashlib.sha256(text.encode()).hexdigest(),
            "processes": self.world.size,
        }
        for name, runner in [("models.dense", self.dense)] + [
            (f"models.pruned.{i}", r) for i, r in enumerate(self.pruned)
        ]:
            model = runner.record
            external = [e.model_dump() for e in model.external_data] if model.external_data else None
            arch = model.arch_source
            binding[name] = {
                "sha256": model.sha256,
                "external_data": external,
                "arch": arch.sha256 if arch else None,
            }
            if arch is not None and (arch.args or arch.kwargs):  # what the arch was called with
                binding[name]["arch_call"] = {"args": arch.args, "kwargs": arch.kwargs}
            binding[f"{name} backend"] = model.backend
        for source in self.ctx.sources:
            binding[f"data {source.name}"] = source.images.fingerprint()
            if source.label_map is not None:
                binding[f"label map {source.name}"] = source.label_map.sha256
        for record in self.ctx.assets.records():
            binding[f"asset {record['name']}"] = record.get("sha256")
        return binding


def prepare(
    policy: Policy,
    *,
    allow_pickle: bool = False,
    pruned: list[ModelSpec] | None = None,
    pruned_field: str = "models.pruned",
    world: World = SINGLE,
    key_files: tuple[Path, ...] = (),
    allow_external_arch: bool = False,
) -> Setup:
    """Build the run context (plan, data, assets), load the models (the policy's pruned one, or
    each of `pruned`) and check that they fit: input size, class count, labels. Each model loads
    in a sandboxed process of its own (runtime.isolation), which may not read `key_files`."""
    runtime = policy.runtime
    kind = get_kind(policy.task)
    isolated = runtime.isolation != "off"
    if isolated:
        Zygote.shared()  # the models' processes' parent imports torch meanwhile
    ctx = RunContext.build(policy)  # the data and assets are checked before the device
    device = device_for(world, resolve_device(runtime.device, runtime.allow_fallback, file=policy.file))
    ctx = ctx.on(device, models=1 + (1 if pruned is None else len(pruned)))  # batch_size: auto resolves here
    check_precision(runtime.precision, device, runtime.backend, file=policy.file)  # per model again, once chosen
    arena = InputArena() if isolated else None
    hidden = hidden_files(key_files) if isolated else ()

    options = LoadOptions(
        base_dir=policy.base_dir,
        backend=runtime.backend,
        device=device,
        allow_pickle=allow_pickle,
        allow_fallback=runtime.allow_fallback,
        providers=tuple(runtime.providers) if runtime.providers else None,
        precision=runtime.precision,
        channels_last=runtime.channels_last,
        input_size=policy.models.input.shape,
        kind=policy.task,
        batch_size=ctx.batch_size,
        settings=policy.file,
        allow_external_arch=allow_external_arch,
        gather=(lambda measured: gather_objects(measured, world)) if world.size > 1 else None,
    )

    def load(spec: ModelSpec, field: str) -> Runner:
        output_field = policy.models.output_field("dense" if field == "models.dense" else "pruned")
        if arena is None:  # runtime.isolation: off
            return load_runner(
                spec,
                policy.resolve(spec.path),
                field,
                options,
                isolation=Isolation(process=False),
                output_field=output_field,
            )
        return start_isolated(
            spec,
            policy.resolve(spec.path),
            field,
            options,
            arena=arena,
            hidden=hidden,
            strict=runtime.isolation == "strict",
            output_field=output_field,
        )

    wanted = [(policy.models.spec("dense"), "models.dense")]
    if pruned is None:
        wanted.append((policy.models.spec("pruned"), "models.pruned"))
    else:
        wanted += [(spec, f"{pruned_field}.{i}") for i, spec in enumerate(pruned)]
    runners: list = []
    try:
        for spec, field in wanted:  # model processes start together, then load in order
            runners.append(load(spec, field))
        if isolated:
            runners = [runner.finish_loading() for runner in runners]
        dense, members = runners[0], runners[1:]
        classes = 0
        for member in members:
            classes = probe_classes(dense, member, ctx.size, kind)
        for source in ctx.sources:
            check_labels(source, classes, kind)
            check_group_classes(source.groups, classes, groups_file(ctx.policy) if ctx.policy else None)
    except BaseException:
        close_runners(runners, arena)
        raise
    return Setup(ctx, dense, members, classes, world, arena=arena, kind=kind)


def sequential_gate(policy: Policy, setup: Setup) -> SequentialGate:
    """The looks of a sequential pass over the setup's data sets (their label maps judge it)."""
    sources = setup.ctx.sources
    sets = {s.name: s.label_map.matrix(setup.classes) if s.label_map is not None else None for s in sources}
    indices = {s.name: s.indices for s in sources}
    return SequentialGate(policy, list(setup.ctx.tasks), indices, sets, setup.world, setup.ctx.batch_size)


def close_runners(runners: list, arena: InputArena | None) -> None:
    """End the models' processes (isolated runners) and free the shared input buffer."""
    for runner in runners:
        close = getattr(runner, "close", None)
        if close is not None:
            close()
    if arena is not None:
        arena.close()


def run_check(
    policy: Policy,
    *,
    allow_pickle: bool = False,
    progress: ProgressSink | None = None,
    world: World = SINGLE,
    key_files: tuple[Path, ...] = (),
    allow_external_arch: bool = False,
    checkpoint: CheckpointPlan | None = None,
    sanity_check: bool = True,
) -> Report:
    """The gate. Under torchrun (`world` of several processes) every process returns the same
    report; the caller writes it from rank 0. `key_files`: files the models may not read;
    `checkpoint`: where the pass keeps its progress (and whether to resume from it);
    `sanity_check`: stop (DataError) when the dense model is at chance on the clean task
    (prunegate.sanity), before any verdict."""
    builder = ReportBuilder(policy)
    with prepare(
        policy, allow_pickle=allow_pickle, world=world, key_files=key_files, allow_external_arch=allow_external_arch
    ) as setup:
        sequential = sequential_gate(policy, setup) if policy.gate.sequential else None
        family, timings = setup.evaluate(progress, checkpoint, sequential)
        ctx, kind = setup.ctx, setup.kind
        sanity = clean_sanity(setup, family[0]) if sanity_check else skipped(SKIPPED_OPTION)
        records, replicates = task_records(
            ctx, family[0], setup.classes, builder.confidence, policy.gate.bootstrap, kind
        )
        if kind.name == SEGMENTATION.name:
            records = with_worst_image_masks(setup, records)
    ordered = [records[t.name] for t in ctx.tasks]
    anytime = sequential.anytime_intervals() if sequential is not None else None
    rules = evaluate_rules(policy.gate.rules, Evidence(ordered, replicates, policy.gate.confidence, anytime))
    options = run_options(
        policy,
        ctx.device,
        allow_pickle=allow_pickle,
        allow_external_arch=allow_external_arch,
        processes=world.size,
        batch=(ctx.batch_size, ctx.batch_source),
    )
    warnings = nonfinite_warnings(ordered)
    if setup.cache is not None:
        options["cache"] = setup.cache.record()
        warnings += setup.cache.problems()
    elif policy.runtime.cache:
        warnings.append("runtime.cache was not used: under torchrun each process reads only its part of the data")
    return builder.build(
        verdict=verdict(rules),
        models={"dense": setup.dense.record, "pruned": setup.pruned[0].record},
        data=ctx.data_records(),
        tasks=ordered,
        rules=rules,
        options=options,
        corruption_summary=kind.corruption_summary(ctx.tasks, records),
        sequential=sequential.record() if sequential is not None else None,
        sanity=sanity,
        warnings=warnings,
        device=ctx.device,
        timings=timings,
    )


def clean_sanity(setup: Setup, tallies: dict[str, Tally]) -> SanityRecord:
    """prunegate.sanity on the clean task (every plan has one), as its labels judge it; segmentation is
    not checked (prunegate.sanity says why)."""
    ctx = setup.ctx
    if setup.kind.name == SEGMENTATION.name:
        return skipped("segmentation: masks hold the model's own class indices")
    if ctx.policy is None:
        return skipped("no policy: no test set to name")
    clean = next(t for t in ctx.tasks if t.name == "clean")
    source = next(s for s in ctx.sources if s.name == clean.source)
    tally, _ = labelled(tallies[clean.name], source, setup.classes)
    assert isinstance(tally, TaskTally)
    policy = ctx.policy
    return check_clean(tally, setup.classes, policy.models, policy.data.test, source.images, source.policy_field)


def with_worst_image_masks(setup: Setup, records: dict[str, TaskRecord]) -> dict[str, TaskRecord]:
    """The records, the worst image's predictions added: on the task that loses most mIoU, the
    image that loses most, run again through both models (one image: nothing per pixel was kept
    from the pass) and stored as PNGs of class indices, so the HTML report can draw them offline."""
    ranked = [r for r in records.values() if r.segmentation_examples and r.miou_drop is not None]
    if not ranked:
        return records
    worst = max(ranked, key=lambda r: r.miou_drop or 0.0)
    task = setup.ctx.task(worst.name)
    source = next(s for s in setup.ctx.sources if s.name == worst.source)
    example = worst.segmentation_examples[0]
    assert task is not None
    ctx = setup.ctx
    images, _, _ = source.images.read_batch([example.index], ctx.size, ctx.max_pixels)
    x = images.to(ctx.device).permute(0, 3, 1, 2).float().div_(255.0)
    ids = torch.tensor([example.index], device=ctx.device)
    inputs = task_pixels(ctx, task, x, ids, example.draw).model_input(ctx.pre)
    where = (source.name, task.name, ids.cpu())
    masks = [
        prediction_png(model_outputs(runner, inputs, setup.classes, where, field, setup.kind))
        for runner, field in ((setup.dense, "models.dense"), (setup.pruned[0], "models.pruned"))
    ]
    shown = example.model_copy(update={"dense_mask": masks[0], "pruned_mask": masks[1]})
    updated = worst.model_copy(update={"segmentation_examples": [shown, *worst.segmentation_examples[1:]]})
    return {**records, worst.name: updated}


def run_potential(
    policy: Policy,
    pruned: list[Path],
    *,
    delta: float,
    metric: str = "error",
    allow_pickle: bool = False,
    progress: ProgressSink | None = None,
    allow_external_arch: bool = False,
) -> dict:
    """Prune potential of a family: the dense model is evaluated once, every member on the same
    shifted batches. Errors are the kind's (top-1 errors, 1 - accuracy; segmentation: 1 - mIoU);
    with another `metric` (potential.POTENTIAL_METRICS), each member's value of it against the
    dense model, the dense model's being its value against itself (0, or 1 for a similarity)."""
    from prunegate.gate import metric_value
    from prunegate.potential import DEFAULT_METRIC, Member, analyse, annotate, potential_metric

    try:
        key, better = potential_metric(metric, policy.task)
    except ValueError as error:
        raise PrunegateError(str(error), field="--metric") from None
    if key == "group_accuracy_drop" and policy.data.groups is None:
        raise PrunegateError("group_accuracy_drop needs data.groups in the policy", field="--metric")
    coverage = key.partition("@")[2]
    options = StatisticsOptions(tuple(sorted({DEFAULT_COVERAGE, *([float(coverage)] if coverage else [])})))
    pruned_spec = policy.models.spec("pruned")  # every member is read as models.pruned would be
    specs = [ModelSpec(path=str(Path(p).resolve()), arch=pruned_spec.arch, output=pruned_spec.output) for p in pruned]
    with prepare(
        policy,
        allow_pickle=allow_pickle,
        pruned=specs,
        pruned_field="--pruned",
        allow_external_arch=allow_external_arch,
    ) as setup:
        family, timings = setup.evaluate(progress)
    tasks, classes, kind = list(setup.ctx.tasks), setup.classes, setup.kind
    sources = {s.name: s for s in setup.ctx.sources}
    ideal = 1.0 if better == "higher" else 0.0  # a paired metric of the dense model against itself

    def values(tallies: dict[str, Tally]) -> dict[str, tuple[float, float]]:
        """Each task's (dense, pruned) value: the kind's error (1 - accuracy, 1 - mIoU), or the metric."""
        found = {}
        for t in tasks:
            source = sources[t.source]
            tally, labels = labelled(tallies[t.name], source, classes)
            record, _ = kind.task_record(
                t,
                tally,
                classes=labels,
                confidence=0.95,
                resampler=None,
                indices=source.indices,
                class_names=None,
                options=StatisticsOptions(options.coverages, source.groups) if kind is CLASSIFICATION else None,
            )
            if key != DEFAULT_METRIC:
                found[t.name] = (ideal, metric_value(record, key))
                continue
            dense, pruned = kind.error(record.dense), kind.error(record.pruned)
            found[t.name] = (float("nan") if dense is None else dense, float("nan") if pruned is None else pruned)
        return found

    per_member = [values(tallies) for tallies in family]
    dense_errors = {name: pair[0] for name, pair in per_member[0].items()}
    member_errors = [{name: pair[1] for name, pair in member.items()} for member in per_member]
    members = [
        Member(r.record.path, r.record.sha256, r.record.parameters, r.record.nonzero_parameters) for r in setup.pruned
    ]
    dense = setup.dense.record
    result = analyse(tasks, dense_errors, member_errors, members, delta, key, better)
    result["dense"] = {"path": dense.path, "sha256": dense.sha256, "parameters": dense.parameters}
    result["policy"] = {"name": policy.name, "sha256": policy.sha256}
    result["n"] = {t.name: family[0][t.name].n for t in tasks}
    result["timing"] = {k: round(v, 3) for k, v in timings.items()}
    return annotate(result, policy.task)
