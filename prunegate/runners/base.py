"""What a model runner is, the facts recorded about each model file, and device choice."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional, Protocol

import torch

from prunegate.errors import DeviceError

# runtime.precision -> the autocast dtype (None: no autocast)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ModelInfo:
    """One model file as the report records it."""

    path: str
    sha256: str
    format: str  # onnx | torchscript | torch-export | state-dict | pickle
    parameters: int
    nonzero_parameters: int
    backend: str = ""  # torch | onnxruntime
    device: str = ""
    provider: Optional[str] = None  # the ONNX Runtime provider actually used
    arch: Optional[str] = None
    pickle_allowed: bool = False
    fixed_batch: Optional[int] = None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (torch autocast), as run
    channels_last: Optional[bool] = None  # torch: whether the model ran channels-last; None for ONNX Runtime
    backend_choice: Optional[dict] = None  # --backend auto: {"reason", "seconds_per_batch", "batch"}
    external_data: Optional[list] = None  # ONNX: [{"path", "sha256"}] of the weight files beside the model
    arch_source: Optional[dict] = None  # the arch code that built a state dict's network, pinned (see archsource)
    isolation: Optional[dict] = None  # how the model's process was isolated: {"process", "landlock_abi", ...}

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_parameters / self.parameters if self.parameters else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "sparsity": round(self.sparsity, 6)}


class Runner(Protocol):
    """Maps a float NCHW batch (normalised, on `device`) to logits [N, classes] on `device`."""

    info: ModelInfo
    device: torch.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def input_shape(self) -> Optional[list]:
        """The declared input shape, where the format declares one (ints or symbolic names)."""
        ...


@dataclass
class Counts:
    parameters: int = 0
    nonzero: int = 0

    def add(self, tensor: torch.Tensor) -> None:
        self.parameters += tensor.numel()
        self.nonzero += int(torch.count_nonzero(tensor))



def resolve_device(requested: str, allow_fallback: bool, file: Optional[object] = None) -> torch.device:
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


def check_precision(precision: str, device: torch.device, backend: str, file: Optional[object] = None) -> None:
    """Refuse a precision the chosen backend or device cannot run (`file`: the policy, named in
    the error with the field; --precision overrides it)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r} (--precision): expected fp32, bf16 or fp16",
                          file=file, field="runtime.precision")
    if precision == "fp32":
        return
    if backend == "onnx":
        raise DeviceError(f"precision {precision} (--precision) is not supported by the onnx backend: ONNX Runtime "
                          "runs the model as exported, in fp32; use --precision fp32, or run a torch model with "
                          "--backend torch", file=file, field="runtime.precision")
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError("precision fp16 (--precision) is not supported on CPU: torch's CPU autocast lacks float16 "
                          "kernels for some ops; use --precision bf16 or fp32 on CPU, or run on CUDA",
                          file=file, field="runtime.precision")


def run_in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, fixed: Optional[int]) -> torch.Tensor:
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


_BOILERPLATE = ("The following operation failed in the TorchScript interpreter",)


def first_line(exc: BaseException) -> str:
    """The line of an exception's text that says what went wrong, shortened. TorchScript puts its
    own traceback first and the error (e.g. 'RuntimeError: mat1 and mat2 shapes ...') last."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if lines[0].startswith(_BOILERPLATE) else lines[0]
    return line if len(line) <= 300 else line[:299] + "…"


