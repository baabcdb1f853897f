"""torch models: TorchScript archives, torch.export programs (.pt2), and state dicts with an
`arch` that builds the network.

Weights load with `weights_only=True`. A file that needs unpickling arbitrary objects (a whole
pickled module) is refused unless the user passes --allow-pickle, which the report records.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Callable, Optional

import torch

from prunegate.errors import ModelError

from .base import Counts, ModelInfo, first_line, run_in_chunks


def sniff_format(path: Path) -> str:
    """torchscript | torch-export | torch-save, from the archive's members."""
    if path.suffix == ".pt2":
        return "torch-export"
    if not zipfile.is_zipfile(path):
        return "torch-save"  # the legacy (non-zip) torch.save format, or not a torch file at all
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "torch-export"
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "torch-save"


def _import_arch(arch: str, base_dir: Path, field: str, file: Path) -> Callable[[], torch.nn.Module]:
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(f"arch {arch!r} must look like 'package.module:function' or 'file.py:function'", file=file, field=field)
    try:
        if module_name.endswith(".py"):
            source = Path(module_name) if Path(module_name).is_absolute() else base_dir / module_name
            if not source.is_file():
                raise ModelError(f"arch file {source} not found", file=file, field=field)
            spec = importlib.util.spec_from_file_location(f"prunegate_arch_{abs(hash(source))}", source)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        builder = getattr(module, attr)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot import arch {arch!r} ({first_line(exc)})", file=file, field=field) from None
    return builder


def _unwrap_state_dict(obj: object) -> Optional[dict]:
    """The tensors of a state dict, also inside the common {'state_dict': ...} wrappers, with a
    DataParallel 'module.' prefix removed."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and all(isinstance(k, str) for k in tensors):
            if all(k.startswith("module.") for k in tensors):
                tensors = {k[len("module.") :]: v for k, v in tensors.items()}
            return tensors
    return None


def _module_from_state_dict(state: dict, arch: Optional[str], base_dir: Path, path: Path, field: str) -> torch.nn.Module:
    if not arch:
        raise ModelError(
            "is a state dict: set 'arch' ('module:function' that builds the network) for this model",
            file=path,
            field=field,
        )
    builder = _import_arch(arch, base_dir, field + ".arch", path)
    try:
        module = builder()
    except Exception as exc:
        raise ModelError(f"arch {arch!r} failed to build ({first_line(exc)})", file=path, field=field) from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"arch {arch!r} returned {type(module).__name__}, not a torch.nn.Module", file=path, field=field)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit raise even with strict=False
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:3]) or first_line(exc)
        raise ModelError(f"weights do not fit arch {arch!r}: {detail}", file=path, field=field) from None
    problems = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
    if problems:
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ModelError(f"weights do not fit arch {arch!r}: {shown}", file=path, field=field)
    return module


def load_torch_module(
    path: Path, field: str, arch: Optional[str], base_dir: Path, allow_pickle: bool
) -> tuple[torch.nn.Module, str, Optional[list]]:
    """(module, format, declared input shape or None)."""
    kind = sniff_format(path)
    try:
        if kind == "torchscript":
            return torch.jit.load(str(path), map_location="cpu"), "torchscript", None
        if kind == "torch-export":
            program = torch.export.load(str(path))
            shape = None
            placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
            if placeholders and "val" in placeholders[0].meta:
                shape = [d if isinstance(d, int) else str(d) for d in placeholders[0].meta["val"].shape]
            return program.module(), "torch-export", shape
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load {kind} model ({first_line(exc)})", file=path, field=field) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        fmt = "state-dict"
    except pickle.UnpicklingError:
        if not allow_pickle:
            raise ModelError(
                "needs unpickling arbitrary Python objects, which can run code; "
                "re-run with --allow-pickle only if you trust this file",
                file=path,
                field=field,
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelError(f"cannot unpickle ({first_line(exc)})", file=path, field=field) from None
        fmt = "pickle"
    except Exception as exc:
        raise ModelError(f"not a readable torch model file ({first_line(exc)})", file=path, field=field) from None
    if isinstance(obj, torch.nn.Module):
        return obj, fmt, None
    state = _unwrap_state_dict(obj)
    if state is None:
        raise ModelError(f"holds a {type(obj).__name__}, neither a module nor a state dict", file=path, field=field)
    return _module_from_state_dict(state, arch, base_dir, path, field), fmt, None


class TorchRunner:
    def __init__(self, module: torch.nn.Module, device: torch.device, info: ModelInfo, shape: Optional[list]):
        counts = Counts()
        for tensor in module.parameters():
            counts.add(tensor.detach())
        info.parameters, info.nonzero_parameters = counts.parameters, counts.nonzero
        try:
            module.eval()
        except (NotImplementedError, RuntimeError):
            pass  # exported programs are fixed at export time and refuse .eval()
        self.module = module.to(device)
        self.device = device
        self._shape = shape
        batch = shape[0] if shape else None
        info.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        info.backend, info.device = "torch", str(device)
        self.info = info

    def input_shape(self) -> Optional[list]:
        return self._shape

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif isinstance(out, dict):
            out = out.get("logits", next(iter(out.values())))
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return run_in_chunks(self._run, x, self.info.fixed_batch)
