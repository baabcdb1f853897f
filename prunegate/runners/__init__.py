"""Model runners, one file per backend; `load_runner` picks one for a model file."""

from __future__ import annotations

from pathlib import Path

from prunegate.errors import ModelError
from prunegate.policy import ModelSpec

import torch

from prunegate.digest import file_sha256

from .base import ModelInfo, Runner, resolve_device

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
) -> Runner:
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
    info = ModelInfo(path=str(path), sha256=file_sha256(path), format="", parameters=0, nonzero_parameters=0,
                     arch=spec.arch, pickle_allowed=allow_pickle)
    if chosen == "onnx":
        from .onnx import OnnxRunner

        info.format = "onnx"
        return OnnxRunner(path, field, device, info, allow_fallback)
    from .torch import TorchRunner, load_torch_module

    module, info.format, shape = load_torch_module(path, field, spec.arch, base_dir, allow_pickle)
    if info.format not in ("state-dict", "pickle"):
        info.arch = None
    return TorchRunner(module, device, info, shape)
