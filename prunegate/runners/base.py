"""What a model runner is, the facts recorded about each model file, how to load one, and device
choice."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from prunegate.errors import DeviceError, first_line  # noqa: F401  (first_line: re-exported)
from prunegate.report.schema import ArchSource, BackendChoice, ExternalData, Isolation, ModelRecord

# runtime.precision -> the autocast dtype (None: no autocast)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model file: what load_runner and start_isolated take besides the file."""

    base_dir: Path  # the policy's folder: relative arch files, and arch code that needs no opt-in
    backend: str  # auto | torch | onnx
    device: torch.device
    allow_pickle: bool  # the user's opt-in for files that unpickle arbitrary objects (--allow-pickle)
    allow_fallback: bool  # a CUDA request may run on the CPU (runtime.allow_fallback)
    precision: str = "fp32"  # fp32 | bf16 | fp16 (torch autocast)
    channels_last: str = "auto"  # auto | on | off (torch)
    input_size: int | tuple[int, int] | None = (
        None  # backend auto: the side, or (height, width), to export and time with
    )
    batch_size: int = 64  # backend auto: at most this many images per timed batch
    settings: Path | None = None  # the policy file, named in errors about its runtime fields
    allow_external_arch: bool = False  # the opt-in for arch code outside the policy's folder and installed packages
    gather: Callable[[dict], list] | None = None  # torchrun: every process's backend auto measurement
    kind: str = "classification"  # the prediction kind the outputs must be (kinds/): checked before any timing
    providers: tuple[str, ...] | None = None  # ONNX Runtime providers asked for (runtime.providers)


STATE_DICT = "state-dict"
PRUNING_STATE_DICT = "state-dict (pruning reparametrised)"  # torch.nn.utils.prune's *_orig + *_mask, folded
SAFETENSORS = "safetensors"
PRUNING_SAFETENSORS = "safetensors (pruning reparametrised)"
TORCH_SAVE, SAFETENSORS_FILE = "torch-save", "safetensors"  # as sniffed, before loading tells more


def built_by_arch(fmt: str) -> bool:
    """Whether a model of this format is built by its arch code (the other formats hold their code)."""
    return fmt in (STATE_DICT, PRUNING_STATE_DICT, SAFETENSORS, PRUNING_SAFETENSORS, "pickle")


def needs_arch(sniffed: str) -> bool:
    """Whether a file of this sniffed format may be weights that an arch builds (runners.torch.sniff_format)."""
    return sniffed in (TORCH_SAVE, SAFETENSORS_FILE)


@dataclass(frozen=True)
class ModelFile:
    """What the report records of a model file whichever backend runs it: its part of the ModelRecord."""

    path: str
    sha256: str
    format: str  # onnx | torchscript | torch-export | state-dict | state-dict (pruning reparametrised) | pickle
    arch: str | None = None
    pickle_allowed: bool = False
    external_data: list[ExternalData] | None = None  # ONNX: the weight files beside the model, pinned
    arch_source: ArchSource | None = None  # the arch code that built a state dict's network, pinned


def sparsity(parameters: int, nonzero_parameters: int) -> float:
    """The report's sparsity: 1 - nonzero / parameters, rounded to 6 places (0.0 without parameters)."""
    return round(1.0 - nonzero_parameters / parameters, 6) if parameters else 0.0


def model_record(
    file: ModelFile,
    *,
    parameters: int,
    nonzero_parameters: int,
    backend: str,
    device: str,
    provider: str | None = None,
    providers: list[str] | None = None,
    fixed_batch: int | None = None,
    precision: str = "fp32",
    channels_last: bool | None = None,
    backend_choice: BackendChoice | None = None,
    isolation: Isolation | None = None,
    quantisation: str | None = None,
    output: str | int | None = None,
) -> ModelRecord:
    """The report's record of `file` as it was loaded: its parameter counts and how it runs."""
    return ModelRecord(
        path=file.path,
        sha256=file.sha256,
        format=file.format,
        parameters=parameters,
        nonzero_parameters=nonzero_parameters,
        sparsity=sparsity(parameters, nonzero_parameters),
        backend=backend,
        device=device,
        provider=provider,
        providers=providers,
        arch=file.arch,
        pickle_allowed=file.pickle_allowed,
        fixed_batch=fixed_batch,
        precision=precision,
        channels_last=channels_last,
        backend_choice=backend_choice,
        external_data=file.external_data,
        arch_source=file.arch_source,
        quantisation=quantisation,
        isolation=isolation,
        output=output,
    )


class Runner(Protocol):
    """Maps a float NCHW batch (normalised, on `device`) to logits [N, classes] on `device`."""

    record: ModelRecord  # the model as the report records it
    device: torch.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def input_shape(self) -> list | None:
        """The declared input shape, where the format declares one (ints or symbolic names)."""
        ...


@dataclass
class Counts:
    """Parameters and how many of them are nonzero."""

    parameters: int = 0
    nonzero: int = 0

    def add(self, tensor: torch.Tensor) -> None:
        """Count one tensor's elements."""
        self.parameters += tensor.numel()
        self.nonzero += int(torch.count_nonzero(tensor))


def resolve_device(requested: str, allow_fallback: bool, file: Path | None = None) -> torch.device:
    """auto -> cuda when present; an explicit cuda request without CUDA is an error unless the
    policy allows falling back (a silent CPU run would hide a broken GPU set-up). `file`: the
    policy, named in the error."""
    available = torch.cuda.is_available()
    if requested == "auto":
        return torch.device("cuda" if available else "cpu")
    if requested == "cuda" and not available:
        if allow_fallback:
            return torch.device("cpu")
        raise DeviceError(
            "CUDA was requested (runtime.device or --device) but torch has no CUDA device here "
            "(set runtime.allow_fallback: true to run on CPU)",
            file=file,
            field="runtime.device",
        )
    return torch.device(requested)


def check_precision(precision: str, device: torch.device, backend: str, file: Path | None = None) -> None:
    """Refuse a precision the chosen backend or device cannot run (`file`: the policy, named in
    the error with the field; --precision overrides it)."""
    if precision not in PRECISIONS:
        raise DeviceError(
            f"unknown precision {precision!r} (--precision): expected fp32, bf16 or fp16",
            file=file,
            field="runtime.precision",
        )
    if precision == "fp32":
        return
    if backend == "onnx":
        raise DeviceError(
            f"precision {precision} (--precision) is not supported by the onnx backend: ONNX Runtime "
            "runs the model as exported, in fp32; use --precision fp32, or run a torch model with "
            "--backend torch",
            file=file,
            field="runtime.precision",
        )
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError(
            "precision fp16 (--precision) is not supported on CPU: torch's CPU autocast lacks float16 "
            "kernels for some ops; use --precision bf16 or fp32 on CPU, or run on CUDA",
            file=file,
            field="runtime.precision",
        )


def run_in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, fixed: int | None) -> torch.Tensor:
    """Run a model whose file fixes the batch size, padding the last chunk."""
    if not fixed or x.shape[0] == fixed:
        return fn(x)
    outputs = []
    for start in range(0, x.shape[0], fixed):
        chunk = x[start : start + fixed]
        short = fixed - chunk.shape[0]
        if short:
            chunk = torch.cat([chunk, chunk[-1:].expand(short, *chunk.shape[1:])])
        outputs.append(fn(chunk)[: fixed - short])
    return torch.cat(outputs)
