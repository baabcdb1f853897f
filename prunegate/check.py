"""One gate run as a library call: policy in, Report out. No printing, no files written.

Order matters for the user: everything that can be wrong with the input (policy, data, models,
their fit to each other) is checked before the long pass starts.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import torch

from prunegate import __version__
from prunegate.data import open_source, select
from prunegate.data.cifar_c import CorruptedArrays
from prunegate.engine import Preprocess, Source, check_labels, evaluate, probe_classes
from prunegate.gate import evaluate_rules, verdict
from prunegate.plan import TEST_SOURCE, Task, build_plan
from prunegate.policy import ModelSpec, Policy
from prunegate.report.schema import Report
from prunegate.runners import load_runner, resolve_device


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


def apply_overrides(policy: Policy, o: Overrides) -> Policy:
    models, data, runtime = policy.models, policy.data, policy.runtime
    for which in ("dense", "pruned"):
        path = getattr(o, which)
        if path is not None:
            spec = models.spec(which)
            models = models.model_copy(update={which: ModelSpec(path=str(Path(path).resolve()), arch=spec.arch)})
    if o.limit is not None:
        data = data.model_copy(update={"limit": o.limit})
    updates = {k: v for k, v in (("device", o.device), ("backend", o.backend), ("batch_size", o.batch_size),
                                 ("workers", o.workers)) if v is not None}
    runtime = runtime.model_copy(update=updates)
    result = policy.model_copy(update={"models": models, "data": data, "runtime": runtime})
    result._file, result._sha256 = policy.file, policy.sha256
    return result


def environment(device: torch.device) -> dict:
    import numpy
    import onnxruntime

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


def _source_field(name: str, policy: Policy) -> str:
    if name == TEST_SOURCE:
        return "data.test"
    if name.startswith("corruption/"):
        return "suite.corruptions.precomputed"
    return f"data.ood.{[o.name for o in policy.data.ood].index(name)}"


def total_evaluations(tasks: list[Task], sources: list[Source]) -> int:
    sizes = {s.name: len(s.indices) for s in sources}
    return sum(sizes[t.source] * t.draws for t in tasks)


def run_check(policy: Policy, *, allow_pickle: bool = False, progress: Optional[ProgressSink] = None) -> Report:
    started = dt.datetime.now(dt.timezone.utc)
    clock = time.perf_counter()
    runtime = policy.runtime
    tasks = build_plan(policy)
    sources = open_sources(policy, tasks)
    device = resolve_device(runtime.device, runtime.allow_fallback)
    runners = {}
    for which in ("dense", "pruned"):
        spec = policy.models.spec(which)
        runners[which] = load_runner(spec, policy.resolve(spec.path), f"models.{which}", base_dir=policy.base_dir,
                                     backend=runtime.backend, device=device, allow_pickle=allow_pickle,
                                     allow_fallback=runtime.allow_fallback)
    size = policy.models.input.size
    classes = probe_classes(runners["dense"], runners["pruned"], size)
    for source in sources:
        check_labels(source, classes, _source_field(source.name, policy))

    if progress:
        progress.start(total_evaluations(tasks, sources))
    tallies, timings = evaluate(
        tasks, sources, runners["dense"], runners["pruned"],
        pre=Preprocess.create(policy.models.input.mean, policy.models.input.std, device),
        size=size, seed=policy.suite.seed, batch_size=runtime.batch_size, workers=runtime.workers,
        max_pixels=policy.data.max_pixels, device=device, progress=progress.advance if progress else None,
    )
    summaries = {t.name: tallies[t.name].summary() for t in tasks}
    results = evaluate_rules(policy.gate.rules, summaries)
    return Report(
        tool={"name": "prunegate", "version": __version__},
        verdict=verdict(results),
        policy={"name": policy.name, "path": str(policy.file) if policy.file else None, "sha256": policy.sha256,
                "document": policy.model_dump(mode="json")},
        models={which: runners[which].info.to_dict() for which in ("dense", "pruned")},
        data=[{"name": s.name, **s.manifest.to_dict()} for s in sources],
        seed=policy.suite.seed,
        options={"device": str(device), "backend": runtime.backend, "batch_size": runtime.batch_size,
                 "limit": policy.data.limit, "workers": runtime.workers, "allow_pickle": allow_pickle},
        tasks=[{"name": t.name, "kind": t.kind, "group": t.group, "source": t.source, **summaries[t.name]} for t in tasks],
        rules=[r.to_dict() for r in results],
        environment=environment(device),
        timing={"started": started.isoformat(timespec="seconds"), "duration_s": round(time.perf_counter() - clock, 3),
                **{k: round(v, 3) for k, v in timings.items()}},
    )
