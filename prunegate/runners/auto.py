"""--backend auto for torch models: export to ONNX in memory, time a few batches on both
backends, run on the faster one.

The report keeps describing the user's file (its sha256, format and parameter counts, from the
torch module); `backend` says what ran it and `backend_choice` why. Whatever stops the ONNX
route (a precision ONNX Runtime does not run, an export that fails, ONNX Runtime unable to use
the device, logits that differ from torch's) leaves the model on torch, with that reason.
"""

from __future__ import annotations

import io
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from prunegate.data import as_shape
from prunegate.errors import PrunegateError
from prunegate.report.schema import BackendChoice

from .base import Counts, LoadOptions, ModelFile, first_line
from .torch import TorchRunner

if TYPE_CHECKING:
    from onnx import ModelProto

    from .onnx import OnnxRunner

TIMING_BATCH = 64  # at most this many images per timed batch
WARMUP, ROUNDS = 2, 3  # untimed calls per backend (allocations, cuDNN/ORT set-up), then timed rounds
# The export must compute the same function: its logits on the timing batch may differ from torch's
# only by rounding (TF32 convolutions on CUDA included), relative to the logits' size.
AGREEMENT = 1e-2


class _NoModeSwitch(torch.nn.Module):
    """Wraps a module that refuses train()/eval() (a torch.export program's), which the exporter
    calls; such a module is fixed in inference mode anyway."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.training = False

    def train(self, mode: bool = True) -> _NoModeSwitch:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def export_onnx(module: torch.nn.Module, size: tuple[int, int], fixed_batch: int | None) -> ModelProto:
    """The module as an ONNX ModelProto, exported in memory (TorchScript exporter) with a dynamic
    batch, or the model's own fixed one. A model with several outputs is exported with only the
    one that holds the logits (runners.outputs), as torch runs it."""
    import onnx

    from .outputs import OutputSelector

    if isinstance(module, OutputSelector):
        module = module.exportable()
    try:
        module.train(module.training)
    except (NotImplementedError, RuntimeError):
        module = _NoModeSwitch(module)
    example = torch.zeros(fixed_batch or 2, 3, *size)
    dynamic = None if fixed_batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and exporter notices
        try:
            torch.onnx.export(
                module,
                (example,),
                buffer,  # type: ignore[arg-type]  # (a file object)
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes=dynamic,
            )
        except TypeError:  # a torch without the `dynamo` switch: its default is this exporter
            buffer = io.BytesIO()
            torch.onnx.export(
                module,
                (example,),
                buffer,  # type: ignore[arg-type]
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes=dynamic,
            )
    return onnx.load_from_string(buffer.getvalue())


def probe_problem(
    module: torch.nn.Module, size: tuple[int, int], fixed_batch: int | None, kind_name: str
) -> str | None:
    """Why the model's output on a probe of 2 images (or its fixed batch) is not of the kind the
    run needs, or why the probe failed; None when it fits. Runs before any export or timing, so a
    model of the wrong kind costs two images, not full timed batches of them."""
    from prunegate.kinds import get_kind

    kind = get_kind(kind_name)
    batch = fixed_batch or 2
    try:
        with torch.inference_mode():
            out = module(torch.zeros(batch, 3, *size))
    except Exception as exc:
        return f"not timed: the model fails on a probe of {batch} images ({first_line(exc)})"
    if kind.output_size(out, batch, size) is None:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return f"not timed: its output {shape} on a probe is not {kind.describe('batch', None, size)}"
    return None


def _seconds_per_batch(runners: dict[str, Callable], x: torch.Tensor, device: torch.device) -> tuple[dict, dict]:
    """The median time of one batch on each runner (rounds interleaved, so a change in the
    machine's load hits both alike), and each runner's logits."""

    def once(runner: Callable) -> tuple[float, torch.Tensor]:
        tick = time.perf_counter()
        out = runner(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - tick, out

    outputs = {}
    for name, runner in runners.items():
        for _ in range(WARMUP):
            outputs[name] = once(runner)[1]
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(ROUNDS):
        for name, runner in runners.items():
            samples[name].append(once(runner)[0])
    return {name: statistics.median(values) for name, values in samples.items()}, outputs


def _differ(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """Why the export's logits `b` are not torch's `a`, or None when they agree."""
    if not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return f"shape {list(getattr(b, 'shape', []))} instead of {list(a.shape)}"
    a, b = a.float(), b.float().to(a.device)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return "non-finite logits"
    gap = float((a - b).abs().max())
    scale = max(1.0, float(a.abs().max()))
    return f"largest difference {gap:.3g}" if gap > AGREEMENT * scale else None


def choose(
    module: torch.nn.Module, file: ModelFile, shape: list | None, *, path: Path, field: str, options: LoadOptions
) -> TorchRunner | OnnxRunner:
    """The faster runner for a torch model: its TorchRunner, or ONNX Runtime on its export.

    `options.gather` (under torchrun) collects every process's measurement, so that all of them
    run the model on the same backend: ONNX Runtime only where every process can, when it is
    faster on average."""
    from .onnx import OnnxRunner

    device, precision = options.device, options.precision
    input_size = as_shape(options.input_size) if options.input_size else None
    fixed = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
    reason: str | None = None
    exported: ModelProto | None = None
    if precision != "fp32":
        reason = f"precision {precision} runs on torch only (ONNX Runtime runs fp32)"
    elif not input_size:
        reason = "no input size to export and time the model with"
    elif (problem := probe_problem(module, input_size, fixed, options.kind)) is not None:
        reason = problem  # checks before cost: the gate's own probe then refuses the model, in seconds
    else:
        try:
            exported = export_onnx(module, input_size, fixed)  # before the runner moves the module
        except Exception as exc:
            reason = f"the export to ONNX failed ({first_line(exc)})"
    torch_runner = TorchRunner(module, device, file, shape, precision=precision, channels_last=options.channels_last)
    onnx_runner: OnnxRunner | None = None
    seconds: dict[str, float] = {}
    batch: int | None = None
    if exported is not None:
        counts = Counts(torch_runner.record.parameters, torch_runner.record.nonzero_parameters)  # the user's file's
        try:
            onnx_runner = OnnxRunner(
                path,
                field,
                device,
                file,
                allow_fallback=False,
                model=exported,
                counts=counts,
                providers=options.providers,
            )
        except PrunegateError as exc:  # ONNX Runtime cannot load the export, or cannot use this device
            reason = f"ONNX Runtime cannot run the export ({exc.detail})"
    if onnx_runner is not None and input_size:
        batch = fixed or max(1, min(options.batch_size, TIMING_BATCH))
        x = torch.randn(batch, 3, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
        try:
            seconds, outputs = _seconds_per_batch({"torch": torch_runner, "onnx": onnx_runner}, x, device)
            difference = _differ(outputs["torch"], outputs["onnx"])
        except Exception as exc:  # a model that fails here fails again, with its own message, in the probe
            reason = f"timing a batch of {batch} failed ({first_line(exc)})"
        else:
            if difference:
                reason = f"the ONNX export's logits differ from torch's ({difference})"
    measured = {"reason": reason, "seconds": seconds, "batch": batch}
    backend, choice = decide([measured] if options.gather is None else options.gather(measured))
    runner: TorchRunner | OnnxRunner = torch_runner
    if backend == "onnx" and onnx_runner is not None:  # (onnx is chosen only when its runner ran)
        runner = onnx_runner
    runner.record = runner.record.model_copy(update={"backend_choice": BackendChoice.model_validate(choice)})
    return runner


SWITCH_MARGIN = 0.15  # ONNX Runtime must be at least this much faster than torch to be chosen


def decide(measured: list[dict]) -> tuple[str, dict]:
    """(torch | onnx, the report's backend_choice) from each process's measurement: torch when
    any process could not use the export, else ONNX Runtime if clearly faster on average."""
    for rank, m in enumerate(measured):
        if m["reason"]:
            where = f" (in process {rank})" if len(measured) > 1 else ""
            return "torch", _choice(m["reason"] + where, m["seconds"], m["batch"])
    seconds = {name: statistics.fmean(m["seconds"][name] for m in measured) for name in ("torch", "onnx")}
    # Leave the file's own runtime only for a clear gain: backends within the margin would
    # otherwise swap from run to run on timing noise, and with them the last bits of the logits.
    faster = "onnx" if seconds["onnx"] < seconds["torch"] * (1 - SWITCH_MARGIN) else "torch"
    slower = "torch" if faster == "onnx" else "onnx"
    batch = measured[0]["batch"]
    reason = (
        f"faster: {faster} {1e3 * seconds[faster]:.3g} ms vs {slower} {1e3 * seconds[slower]:.3g} ms "
        f"per batch of {batch}" + (f" (mean of {len(measured)} processes)" if len(measured) > 1 else "")
    )
    return faster, _choice(reason, seconds, batch)


def _choice(reason: str, seconds: dict | None = None, batch: int | None = None) -> dict:
    return {"reason": reason, "seconds_per_batch": {k: round(v, 6) for k, v in (seconds or {}).items()}, "batch": batch}
