"""Assembling the report from a run's typed records: no models, no files."""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Literal

import torch

from prunegate import __version__
from prunegate.policy import Policy
from prunegate.report.schema import CorruptionSummary, ModelRecord, Report, RuleRecord, SanityRecord, TaskRecord

# Intervals are always reported; gate.confidence decides whether rules use them.
DEFAULT_CONFIDENCE = 0.95


def environment(device: torch.device) -> dict:
    """The software and machine the run used (the report's `environment`)."""
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


def policy_record(policy: Policy) -> dict:
    """The report's `policy`: its name, file, digest, the validated document and the overrides."""
    return {
        "name": policy.name,
        "path": str(policy.file) if policy.file else None,
        "sha256": policy.sha256,
        "folder": str(policy.paths_from) if policy.paths_from else None,
        "document": policy.model_dump(mode="json"),
        "overrides": policy.overrides,
    }


def run_options(
    policy: Policy,
    device: torch.device,
    *,
    allow_pickle: bool,
    allow_external_arch: bool,
    processes: int,
    batch: tuple[int, str] | None = None,
) -> dict:
    """The report's `options`: the settings the run used. `batch`: the batch size the pass used
    and how it was chosen (RunContext.batch_size, .batch_source)."""
    runtime = policy.runtime
    size, source = batch if batch is not None else (runtime.batch_size, "given")
    return {
        "device": str(device),
        "backend": runtime.backend,
        "precision": runtime.precision,
        "channels_last": runtime.channels_last,
        "batch_size": size,
        "batch_size_source": source,
        "limit": policy.data.limit,
        "workers": runtime.workers,
        "allow_pickle": allow_pickle,
        "allow_external_arch": allow_external_arch,
        "isolation": runtime.isolation,
        "processes": processes,
    }


@dataclass
class ReportBuilder:
    """Collects a run's records, from its start, and assembles the Report."""

    policy: Policy
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    clock: float = field(default_factory=time.perf_counter)

    @property
    def confidence(self) -> float:
        """The level of the report's intervals (gate.confidence, or DEFAULT_CONFIDENCE)."""
        return self.policy.gate.confidence or DEFAULT_CONFIDENCE

    def build(
        self,
        *,
        verdict: Literal["pass", "fail"],
        models: dict[str, ModelRecord],
        data: list[dict],
        tasks: list[TaskRecord],
        rules: list[RuleRecord],
        options: dict,
        corruption_summary: CorruptionSummary | None,
        warnings: list[str],
        device: torch.device,
        timings: dict[str, float],
        sequential: dict | None = None,
        sanity: SanityRecord | None = None,
    ) -> Report:
        """The report of a finished run; its duration runs from this builder's creation."""
        timing = {
            "started": self.started.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - self.clock, 3),
            **{k: round(v, 3) for k, v in timings.items()},
        }
        return Report(
            tool={"name": "prunegate", "version": __version__},
            task=self.policy.task,
            verdict=verdict,
            policy=policy_record(self.policy),
            models=models,
            data=data,
            seed=self.policy.suite.seed,
            options=options,
            tasks=tasks,
            rules=rules,
            sequential=sequential,
            sanity=sanity,
            confidence=self.confidence,
            corruption_summary=corruption_summary,
            warnings=warnings,
            environment=environment(device),
            timing=timing,
        )
