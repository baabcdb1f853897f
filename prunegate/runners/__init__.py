"""Model runners, one file per backend; `load_runner` picks one for a model file."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from prunegate.errors import ModelError
from prunegate.policy import ModelSpec

import torch
from torch import get_num_threads  # (the name `torch` here becomes the submodule .torch once that is imported)

from prunegate.digest import file_sha256

from .base import ModelInfo, Runner, check_precision, resolve_device

__all__ = ["ModelInfo", "Runner", "load_runner", "resolve_device", "start_isolated"]


def _backend_for(path: Path, field: str, backend: str, precision: str, device: torch.device,
                 settings: Optional[Path]) -> str:
    """The backend that will run `path` (torch | onnx), after the checks every loader shares."""
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
    return chosen


def _pin_arch(spec: ModelSpec, path: Path, field: str, base_dir: Path, fmt: str,
              allow_external_arch: bool) -> Optional[dict]:
    """The arch's pinned source, for a file that may be a state dict: located (not imported) and
    checked against the opt-in before any of its code runs (runners.archsource)."""
    if fmt != "torch-save" or not spec.arch:
        return None
    from .archsource import locate_arch

    return locate_arch(spec.arch, base_dir, file=path, field=field + ".arch", allow_external=allow_external_arch)


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
    allow_external_arch: bool = False,
) -> Runner:
    """A runner for one model file, in this process. backend auto: an .onnx file runs on ONNX
    Runtime; a torch model on whichever of torch and ONNX Runtime (on its in-memory export) runs
    `input_size` batches faster (runners.auto). `settings`: the policy file, named in errors
    about its runtime fields; `gather` (torchrun): every process's auto measurement, so all
    choose alike. The gate runs models through `start_isolated` instead: this is what the
    model's own process calls."""
    chosen = _backend_for(path, field, backend, precision, device, settings)
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
    from .torch import TorchRunner, load_torch_module, sniff_format

    info.arch_source = _pin_arch(spec, path, field, base_dir, sniff_format(path, field), allow_external_arch)
    module, info.format, shape = load_torch_module(path, field, spec.arch, base_dir, allow_pickle)
    if info.format not in ("state-dict", "pickle"):
        info.arch, info.arch_source = None, None
    if backend == "auto":
        from .auto import choose

        return choose(module, info, shape, path=path, field=field, device=device, precision=precision,
                      channels_last=channels_last, input_size=input_size, batch_size=batch_size, gather=gather)
    return TorchRunner(module, device, info, shape, precision=precision, channels_last=channels_last)


def start_isolated(
    spec: ModelSpec,
    path: Path,
    field: str,
    *,
    arena,
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
    hidden: tuple[str, ...] = (),
    strict: bool = False,
    allow_external_arch: bool = False,
):
    """Start loading one model file in a sandboxed process of its own (runners.isolated); call
    `finish_loading()` on the result for the Runner. Everything that pins the model — its sha256,
    its external data, its arch — is established here, in prunegate's process."""
    from .host import LoadRequest
    from .isolated import IsolatedRunner
    from .torch import sniff_format

    chosen = _backend_for(path, field, backend, precision, device, settings)
    fmt = "onnx" if chosen == "onnx" else sniff_format(path, field)
    info = ModelInfo(path=str(path), sha256=file_sha256(path), format="" if fmt == "torch-save" else fmt,
                     parameters=0, nonzero_parameters=0, arch=spec.arch if fmt == "torch-save" else None,
                     pickle_allowed=allow_pickle,
                     arch_source=_pin_arch(spec, path, field, base_dir, fmt, allow_external_arch))
    if chosen == "onnx":
        from .onnx import external_data_digests

        info.external_data = external_data_digests(path, field)
    request = LoadRequest(path=str(path), field=field, arch=spec.arch, base_dir=str(base_dir), backend=backend,
                          device=str(device), allow_pickle=allow_pickle, allow_fallback=allow_fallback,
                          precision=precision, channels_last=channels_last, input_size=input_size,
                          batch_size=batch_size, settings=str(settings) if settings else None, hidden=hidden,
                          strict=strict, gather=gather is not None, allow_external_arch=allow_external_arch,
                          threads=get_num_threads())
    return IsolatedRunner(request, info, device, arena, gather)
