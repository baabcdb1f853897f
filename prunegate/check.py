"""One gate run as a library call: policy in, Report out. No printing, no files written.

Order matters for the user: everything that can be wrong with the input (policy, data, models,
their fit to each other) is checked before the long pass starts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import torch

from prunegate import __version__
from prunegate.checkpoint import Checkpoint
from prunegate.data import open_source, select
from prunegate.data.cifar_c import CorruptedArrays
from prunegate.distributed import SINGLE, World, device_for, gather_objects, slowest
from prunegate.engine import Preprocess, Source, check_labels, evaluate_family, probe_classes
from prunegate.gate import Evidence, evaluate_rules, nonfinite_warnings, verdict
from prunegate.metrics.intervals import Resampler
from prunegate.plan import TEST_SOURCE, Task, build_plan
from prunegate.policy import ModelSpec, Policy
from prunegate.report.schema import Report
from prunegate.runners import Runner, load_runner, resolve_device, start_isolated
from prunegate.runners.isolated import InputArena, Zygote, hidden_files
from prunegate.runners.base import check_precision
from prunegate.shifts.rng import task_key
from prunegate.shifts.textures import TextureFolder, frost_textures_in_use, load_texture_folder

# Intervals are always reported; gate.confidence decides whether rules use them.
DEFAULT_CONFIDENCE = 0.95


class ProgressSink(Protocol):
    def start(self, total: int) -> None: ...

    def advance(self, count: int) -> None: ...


@dataclass(frozen=True)
class Overrides:
    """Command-line settings that replace the policy's."""

    dense: Optional[Path] = None
    pruned: Optional[Path] = None
    device: Optional[str] = None
    backend: Optional[str] = None
    batch_size: Optional[int] = None
    limit: Optional[int] = None
    workers: Optional[int] = None
    precision: Optional[str] = None


def apply_overrides(policy: Policy, o: Overrides) -> Policy:
    """The policy with the command line's settings in place; `overrides` lists them (the report
    records them, and `verify --policy` shows them)."""
    models, data, runtime = policy.models, policy.data, policy.runtime
    overrides: dict[str, object] = dict(policy.overrides)
    for which in ("dense", "pruned"):
        path = getattr(o, which)
        if path is not None:
            spec = models.spec(which)
            models = models.model_copy(update={which: ModelSpec(path=str(Path(path).resolve()), arch=spec.arch)})
            overrides[f"models.{which}.path"] = str(Path(path).resolve())
    if o.limit is not None:
        data = data.model_copy(update={"limit": o.limit})
        overrides["data.limit"] = o.limit
    updates = {k: v for k, v in (("device", o.device), ("backend", o.backend), ("batch_size", o.batch_size),
                                 ("workers", o.workers), ("precision", o.precision)) if v is not None}
    runtime = runtime.model_copy(update=updates)
    overrides.update({f"runtime.{k}": v for k, v in updates.items()})
    result = policy.model_copy(update={"models": models, "data": data, "runtime": runtime})
    result._file, result._sha256, result._overrides = policy.file, policy.sha256, overrides
    return result


def environment(device: torch.device) -> dict:
    import numpy
    import onnxruntime
    import PIL
    from PIL import features

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        # on the CPU, Pillow's libjpeg makes jpeg_compression and its BOX resize pixelate
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "device": str(device),
        "device_name": device_name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def open_sources(policy: Policy, tasks: list[Task]) -> list[Source]:
    test = open_source(policy.data.test, policy.resolve, "data.test")
    sources = [Source(TEST_SOURCE, test, select(test.labels, policy.data.limit))]
    for i, ood in enumerate(policy.data.ood):
        images = open_source(ood, policy.resolve, f"data.ood.{i}")
        sources.append(Source(ood.name, images, select(images.labels, policy.data.limit)))
    for task in tasks:
        if task.precomputed:
            folder = policy.resolve(policy.suite.corruptions.precomputed)
            images = CorruptedArrays(folder, task.shift, int(task.param), "suite.corruptions.precomputed")
            sources.append(Source(task.source, images, select(images.labels, policy.data.limit)))
    return sources


def input_files(policy: Policy, pruned: Optional[list[Path]] = None) -> dict[str, Path]:
    """Every file and folder the run reads, by the policy field that names it: what no output
    may overwrite. `pruned`: the members of `potential` (instead of models.pruned)."""
    found: dict[str, Path] = {}
    if policy.file is not None:
        found["the policy"] = policy.file
    specs = [("models.dense", policy.models.spec("dense"))]
    specs += [("models.pruned", policy.models.spec("pruned"))] if pruned is None else \
        [(f"--pruned.{i}", ModelSpec(path=str(p))) for i, p in enumerate(pruned)]
    for field, spec in specs:
        path = policy.resolve(spec.path)
        found[field] = path
        if path.suffix.lower() == ".onnx" and path.is_file():
            from prunegate.runners.onnx import external_locations

            for location in external_locations(path, field):
                found[f"{field} (its external data {location})"] = path.parent / location
        module = (spec.arch or "").partition(":")[0]
        if module.endswith(".py"):
            found[f"{field}.arch"] = policy.resolve(module)
    sources = [("data.test", policy.data.test)] + [(f"data.ood.{i}", o) for i, o in enumerate(policy.data.ood)]
    for field, source in sources:
        for key in ("path", "labels", "class_names"):
            value = getattr(source, key)
            if value:
                found[f"{field}.{key}"] = policy.resolve(value)
    corruptions = policy.suite.corruptions
    for key in ("precomputed", "frost_textures"):
        value = getattr(corruptions, key, None) if corruptions is not None else None
        if value:
            found[f"suite.corruptions.{key}"] = policy.resolve(value)
    return found


def _source_field(name: str, policy: Policy) -> str:
    if name == TEST_SOURCE:
        return "data.test"
    if name.startswith("corruption/"):
        return "suite.corruptions.precomputed"
    return f"data.ood.{[o.name for o in policy.data.ood].index(name)}"


def total_evaluations(tasks: list[Task], sources: list[Source]) -> int:
    sizes = {s.name: len(s.indices) for s in sources}
    return sum(sizes[t.source] * t.draws for t in tasks)


def task_statistics(tasks: list[Task], sources: list[Source], tallies: dict, classes: int, confidence: float,
                    policy: Policy) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every task's summary (metrics, intervals, examples) and bootstrap replicates. The tasks of
    one data set share its resamples, so aggregates over them are resampled jointly."""
    by_name = {s.name: s for s in sources}
    # A precomputed corruption block holds the test images, corrupted: it is resampled as the
    # test set is, so its tasks stay paired with the others (and match generated ones exactly).
    def stream(name: str) -> str:
        return f"bootstrap/{TEST_SOURCE if name.startswith('corruption/') else name}"

    resamplers = {s.name: Resampler(task_key(policy.suite.seed, stream(s.name)), len(s.indices), policy.gate.bootstrap)
                  for s in sources}
    summaries, replicates = {}, {}
    for t in tasks:
        source = by_name[t.source]
        summaries[t.name], replicates[t.name] = tallies[t.name].statistics(
            draws=t.draws, classes=classes, confidence=confidence, resampler=resamplers[t.source],
            indices=source.indices, class_names=source.images.classes)
    return summaries, replicates


def corruption_summary(tasks: list[Task], summaries: dict[str, dict]) -> Optional[dict]:
    """Per corruption: the errors summed over severities, the pruned model's over the dense
    model's (CE), and the same for errors in excess of each model's clean error (relative CE)."""
    names = list(dict.fromkeys(t.shift for t in tasks if t.kind == "corruption"))
    if not names:
        return None
    clean = summaries.get("clean")

    def error(summary: dict, which: str) -> float:
        return 1.0 - summary[which]["accuracy"]

    rows = []
    for name in names:
        chosen = [t for t in tasks if t.kind == "corruption" and t.shift == name]
        dense = sum(error(summaries[t.name], "dense") for t in chosen)
        pruned = sum(error(summaries[t.name], "pruned") for t in chosen)
        relative = None
        if clean is not None:
            dense_excess = dense - len(chosen) * error(clean, "dense")
            pruned_excess = pruned - len(chosen) * error(clean, "pruned")
            relative = pruned_excess / dense_excess if dense_excess > 0 else None
        rows.append({"name": name, "severities": [int(t.param) for t in chosen], "dense_error": dense,
                     "pruned_error": pruned, "ce": pruned / dense if dense > 0 else None, "relative_ce": relative})
    ces = [r["ce"] for r in rows if r["ce"] is not None]
    relatives = [r["relative_ce"] for r in rows if r["relative_ce"] is not None]
    return {"per_corruption": rows, "mce": sum(ces) / len(ces) if ces else None,
            "relative_mce": sum(relatives) / len(relatives) if relatives else None}


@dataclass(frozen=True)
class CheckpointPlan:
    """Keep the pass's progress in `folder` (every few minutes, and when it stops early);
    `resume`: continue from what is there."""

    folder: Path
    resume: bool = False


@dataclass
class Setup:
    """Everything the pass needs, loaded and checked against each other before it starts."""

    tasks: list[Task]
    sources: list[Source]
    device: torch.device
    dense: Runner
    pruned: list[Runner]
    classes: int
    world: World = SINGLE
    frost: Optional[TextureFolder] = None  # the policy's frost photographs, if it names some
    arena: Optional[InputArena] = None  # the models' shared input buffer, when they run isolated

    def close(self) -> None:
        close_runners([self.dense, *self.pruned], self.arena)

    def __enter__(self) -> Setup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def evaluate(self, policy: Policy, progress: Optional[ProgressSink] = None,
                 checkpoint: Optional[CheckpointPlan] = None):
        """One streaming pass: (a tally dict per pruned model, timings). Under torchrun this
        process evaluates its part of every source; the tallies come back merged. `checkpoint`:
        where to keep the pass's progress, and whether to continue from it."""
        runtime = policy.runtime
        for source in self.sources:
            source.part = self.world.part(source.indices)
        saver, restored = None, None
        if checkpoint is not None:
            saver = Checkpoint(checkpoint.folder, self.binding(policy), rank=self.world.rank)
            restored = saver.restore() if checkpoint.resume else None
        if progress and self.world.is_main:
            progress.start(total_evaluations(self.tasks, self.sources))
        with frost_textures_in_use(self.frost.photos if self.frost else None):
            family, timings = evaluate_family(
                self.tasks, self.sources, self.dense, self.pruned,
                pre=Preprocess.create(policy.models.input.mean, policy.models.input.std, self.device),
                size=policy.models.input.size, seed=policy.suite.seed, batch_size=runtime.batch_size,
                workers=runtime.workers, max_pixels=policy.data.max_pixels, device=self.device,
                progress=progress.advance if progress and self.world.is_main else None, world=self.world,
                classes=self.classes, checkpoint=saver, restored=restored,
            )
        if saver is not None:
            saver.discard()
        return family, slowest(timings, self.world)

    def binding(self, policy: Policy) -> dict:
        """What a checkpoint of this run is bound to (prunegate.checkpoint)."""
        document = policy.model_dump(mode="json")
        for setting in ("batch_size", "workers"):  # results do not depend on them: a resumed run may change them
            document["runtime"].pop(setting, None)
        document = json.dumps(document, sort_keys=True)
        binding: dict = {"prunegate": __version__, "policy": hashlib.sha256(document.encode()).hexdigest(),
                         "processes": self.world.size}
        for field, runner in [("models.dense", self.dense)] + [(f"models.pruned.{i}", r) for i, r in
                                                                enumerate(self.pruned)]:
            info = runner.info
            binding[field] = {"sha256": info.sha256, "external_data": info.external_data,
                              "arch": (info.arch_source or {}).get("sha256")}
            binding[f"{field} backend"] = info.backend
        for source in self.sources:
            binding[f"data {source.name}"] = source.images.fingerprint()
        if self.frost is not None:
            binding["frost textures"] = self.frost.record.get("sha256")
        return binding


FROST_FIELD = "suite.corruptions.frost_textures"


def _frost_folder(policy: Policy) -> Optional[Path]:
    """The frost photographs' folder, when the policy names one and generates frost tasks."""
    c = policy.suite.corruptions
    if c is None or not c.frost_textures or c.precomputed or "frost" not in c.corruption_names():
        return None
    return policy.resolve(c.frost_textures)


def load_frost_textures(policy: Policy) -> Optional[TextureFolder]:
    """The frost photographs the policy names (None: procedural textures)."""
    folder = _frost_folder(policy)
    return load_texture_folder(folder, FROST_FIELD) if folder is not None else None


def data_records(sources: list[Source], frost: Optional[TextureFolder]) -> list[dict]:
    """The report's `data`: every source, and the frost photographs the pass used, if any."""
    records = [{"name": s.name, **s.manifest.to_dict()} for s in sources]
    if frost is not None:
        records.append({"name": "frost_textures", **frost.record})
    return records


def prepare(policy: Policy, *, allow_pickle: bool = False, pruned: Optional[list[ModelSpec]] = None,
            pruned_field: str = "models.pruned", world: World = SINGLE, key_files: tuple[Path, ...] = (),
            allow_external_arch: bool = False) -> Setup:
    """Plan, open the data, load the models (the policy's pruned one, or each of `pruned`) and
    check that they fit: input size, class count, labels. Each model loads in a sandboxed process
    of its own (runtime.isolation), which may not read `key_files`."""
    runtime = policy.runtime
    isolated = runtime.isolation != "off"
    if isolated:
        Zygote.shared()  # the models' processes' parent imports torch meanwhile
    tasks = build_plan(policy)
    sources = open_sources(policy, tasks)
    frost = load_frost_textures(policy)
    device = device_for(world, resolve_device(runtime.device, runtime.allow_fallback, file=policy.file))
    check_precision(runtime.precision, device, runtime.backend, file=policy.file)  # per model again, once chosen
    arena = InputArena() if isolated else None
    hidden = hidden_files(key_files) if isolated else ()

    def load(spec: ModelSpec, field: str):
        options = dict(base_dir=policy.base_dir, backend=runtime.backend, device=device, allow_pickle=allow_pickle,
                       allow_fallback=runtime.allow_fallback, precision=runtime.precision,
                       channels_last=runtime.channels_last, input_size=policy.models.input.size,
                       batch_size=runtime.batch_size, settings=policy.file, allow_external_arch=allow_external_arch,
                       gather=(lambda measured: gather_objects(measured, world)) if world.size > 1 else None)
        if not isolated:
            runner = load_runner(spec, policy.resolve(spec.path), field, **options)
            runner.info.isolation = {"process": False}
            return runner
        return start_isolated(spec, policy.resolve(spec.path), field, arena=arena, hidden=hidden,
                              strict=runtime.isolation == "strict", **options)

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
        size = policy.models.input.size
        classes = 0
        for member in members:
            classes = probe_classes(dense, member, size)
        for source in sources:
            check_labels(source, classes, _source_field(source.name, policy))
    except BaseException:
        close_runners(runners, arena)
        raise
    return Setup(tasks, sources, device, dense, members, classes, world, frost=frost, arena=arena)


def close_runners(runners: list, arena: Optional[InputArena]) -> None:
    """End the models' processes (isolated runners) and free the shared input buffer."""
    for runner in runners:
        close = getattr(runner, "close", None)
        if close is not None:
            close()
    if arena is not None:
        arena.close()


def run_check(policy: Policy, *, allow_pickle: bool = False, progress: Optional[ProgressSink] = None,
              world: World = SINGLE, key_files: tuple[Path, ...] = (), allow_external_arch: bool = False,
              checkpoint: Optional[CheckpointPlan] = None) -> Report:
    """The gate. Under torchrun (`world` of several processes) every process returns the same
    report; the caller writes it from rank 0. `key_files`: files the models may not read;
    `checkpoint`: where the pass keeps its progress (and whether to resume from it)."""
    started = dt.datetime.now(dt.timezone.utc)
    clock = time.perf_counter()
    runtime = policy.runtime
    with prepare(policy, allow_pickle=allow_pickle, world=world, key_files=key_files,
                 allow_external_arch=allow_external_arch) as setup:
        family, timings = setup.evaluate(policy, progress, checkpoint)
    tasks, sources, device, classes = setup.tasks, setup.sources, setup.device, setup.classes
    runners = {"dense": setup.dense, "pruned": setup.pruned[0]}
    tallies = family[0]
    confidence = policy.gate.confidence or DEFAULT_CONFIDENCE
    summaries, replicates = task_statistics(tasks, sources, tallies, classes, confidence, policy)
    results = evaluate_rules(policy.gate.rules, Evidence(summaries, replicates, policy.gate.confidence))
    return Report(
        tool={"name": "prunegate", "version": __version__},
        verdict=verdict(results),
        policy={"name": policy.name, "path": str(policy.file) if policy.file else None, "sha256": policy.sha256,
                "document": policy.model_dump(mode="json"), "overrides": policy.overrides},
        models={which: runners[which].info.to_dict() for which in ("dense", "pruned")},
        data=data_records(sources, setup.frost),
        seed=policy.suite.seed,
        options={"device": str(device), "backend": runtime.backend, "precision": runtime.precision,
                 "channels_last": runtime.channels_last, "batch_size": runtime.batch_size,
                 "limit": policy.data.limit, "workers": runtime.workers, "allow_pickle": allow_pickle,
                 "allow_external_arch": allow_external_arch, "isolation": runtime.isolation, "processes": world.size},
        tasks=[{"name": t.name, "kind": t.kind, "group": t.group, "source": t.source, **summaries[t.name]} for t in tasks],
        rules=[r.to_dict() for r in results],
        confidence=confidence,
        corruption_summary=corruption_summary(tasks, summaries),
        warnings=nonfinite_warnings(summaries),
        environment=environment(device),
        timing={"started": started.isoformat(timespec="seconds"), "duration_s": round(time.perf_counter() - clock, 3),
                **{k: round(v, 3) for k, v in timings.items()}},
    )


def run_potential(policy: Policy, pruned: list[Path], *, delta: float, allow_pickle: bool = False,
                  progress: Optional[ProgressSink] = None, allow_external_arch: bool = False) -> dict:
    """Prune potential of a family: the dense model is evaluated once, every member on the same
    shifted batches. Errors are top-1 errors (1 - accuracy)."""
    from prunegate.potential import Member, analyse

    specs = [ModelSpec(path=str(Path(p).resolve()), arch=policy.models.spec("pruned").arch or policy.models.arch)
             for p in pruned]
    with prepare(policy, allow_pickle=allow_pickle, pruned=specs, pruned_field="--pruned",
                 allow_external_arch=allow_external_arch) as setup:
        family, timings = setup.evaluate(policy, progress)
    dense_errors = {t.name: 1.0 - family[0][t.name].summary(classes=setup.classes)["dense"]["accuracy"] for t in setup.tasks}
    member_errors = [{t.name: 1.0 - tallies[t.name].summary(classes=setup.classes)["pruned"]["accuracy"]
                      for t in setup.tasks} for tallies in family]
    members = [Member(r.info.path, r.info.sha256, r.info.parameters, r.info.nonzero_parameters) for r in setup.pruned]
    result = analyse(setup.tasks, dense_errors, member_errors, members, delta)
    result["dense"] = {"path": setup.dense.info.path, "sha256": setup.dense.info.sha256,
                       "parameters": setup.dense.info.parameters}
    result["policy"] = {"name": policy.name, "sha256": policy.sha256}
    result["n"] = {t.name: family[0][t.name].n for t in setup.tasks}
    result["timing"] = {k: round(v, 3) for k, v in timings.items()}
    return result
