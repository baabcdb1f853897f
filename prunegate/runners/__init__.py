"""Model runners, one file per backend; `load_runner` picks one for a model file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from prunegate.errors import ModelError
from prunegate.policy import ModelSpec

import torch

from prunegate.digest import file_sha256

from .base import ModelInfo, Runner, check_precision, resolve_device

__all__ = ["ModelInfo", "Runner", "load_runner", "resolve_device"]


def load_runner(
    spec: ModelSpec,
    path: Path,
    field: str,
    *,
    base_dir: Path,
    backend: str,
    device: torch.device,
    allow_pickle: bool,
    allow_fallback: bool,
    precision: str = "fp32",
    channels_last: str = "auto",
    input_size: Optional[int] = None,
    batch_size: int = 64,
    settings: Optional[Path] = None,
    gather: Optional[Callable[[dict], list]] = None,
) -> Runner:
    """A runner for one model file. backend auto: an .onnx file runs on ONNX Runtime; a torch
    model on whichever of torch and ONNX Runtime (on its in-memory export) runs `input_size`
    batches faster (runners.auto). `settings`: the policy file, named in errors about its
    runtime fields; `gather` (torchrun): every process's auto measurement, so all choose alike."""
    if not path.exists():
        raise ModelError("model file not found", file=path, field=field)
    if path.is_dir():
        raise ModelError("is a folder, expected a model file", file=path, field=field)
    is_onnx = path.suffix.lower() == ".onnx"
    chosen = backend if backend != "auto" else ("onnx" if is_onnx else "torch")
    if chosen == "onnx" and not is_onnx:
        raise ModelError("the onnx backend runs .onnx files; export the model to ONNX or use --backend torch", file=path, field=field)
    if chosen == "torch" and is_onnx:
        raise ModelError("the torch backend cannot run .onnx files; use --backend onnx or auto", file=path, field=field)
    check_precision(precision, device, chosen, file=settings)
    info = ModelInfo(path=str(path), sha256=file_sha256(path), format="", parameters=0, nonzero_parameters=0,
                     arch=spec.arch, pickle_allowed=allow_pickle)
    if chosen == "onnx":
        from .onnx import OnnxRunner

        info.format = "onnx"
        runner = OnnxRunner(path, field, device, info, allow_fallback)
        if backend == "auto":
            info.backend_choice = {"reason": "an ONNX file runs on ONNX Runtime", "seconds_per_batch": {},
                                   "batch": None}
        return runner
    from .torch import TorchRunner, load_torch_module

    module, info.format, shape = load_torch_module(path, field, spec.arch, base_dir, allow_pickle)
    if info.format not in ("state-dict", "pickle"):
        info.arch = None
    if backend == "auto":
        from .auto import choose

        return choose(module, info, shape, path=path, field=field, device=device, precision=precision,
                      channels_last=channels_last, input_size=input_size, batch_size=batch_size, gather=gather)
    return TorchRunner(module, device, info, shape, precision=precision, channels_last=channels_last)
