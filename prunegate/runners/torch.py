"""torch models: TorchScript archives, torch.export programs (.pt2), and state dicts with an
`arch` that builds the network.

Weights load with `weights_only=True`. A file that needs unpickling arbitrary objects (a whole
pickled module) is refused unless the user passes --allow-pickle, which the report records.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch

from prunegate.errors import ModelError
from prunegate.policy import Arch, arch_call, arch_text
from prunegate.report.schema import ModelRecord

from . import huggingface
from .base import (
    PRECISIONS,
    PRUNING_SAFETENSORS,
    PRUNING_STATE_DICT,
    SAFETENSORS,
    STATE_DICT,
    Counts,
    ModelFile,
    first_line,
    model_record,
    run_in_chunks,
)
from .opscan import scan_export_program, scan_torchscript_archive, scan_torchscript_module

ZIP_MAGIC = b"PK\x03\x04"
DAMAGED = "the file is truncated or corrupt: re-save or re-download it"


def sniff_format(path: Path, field: str = "model") -> str:
    """torchscript | torch-export | torch-save | safetensors, from the file's first bytes and, for a
    zip archive, its members. Every torch format
    but the legacy torch.save one is a zip archive: one that starts as a zip but is not a whole
    one is damaged, whatever its name says. A folder: a Hugging Face export (runners.huggingface)."""
    if path.is_dir():
        return huggingface.FORMAT
    with open(path, "rb") as f:
        head = f.read(9)
    starts_as_zip = head[:4] == ZIP_MAGIC
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 2**32:
        return "safetensors"  # an 8-byte little-endian header length, then the JSON header
    names = None
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        pass
    if names is None:
        if starts_as_zip:
            raise ModelError(f"{DAMAGED} (an incomplete zip archive, the format torch saves)", file=path, field=field)
        return "torch-export" if path.suffix == ".pt2" else "torch-save"  # legacy torch.save, or not torch at all
    if path.suffix == ".pt2":
        return "torch-export"
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "torch-export"
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "torch-save"


def _import_arch(arch: str, base_dir: Path, field: str, file: Path) -> Callable[..., torch.nn.Module]:
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(
            f"arch {arch!r} must look like 'package.module:function' or 'file.py:function'", file=file, field=field
        )
    try:
        if module_name.endswith(".py"):
            source = Path(module_name) if Path(module_name).is_absolute() else base_dir / module_name
            if not source.is_file():
                raise ModelError(f"arch file {source} not found", file=file, field=field)
            spec = importlib.util.spec_from_file_location(f"prunegate_arch_{abs(hash(source))}", source)
            assert spec is not None and spec.loader is not None  # a .py file always has a spec and a loader
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


def _unwrap_state_dict(obj: object) -> dict | None:
    """The tensors of a state dict, also inside the common {'state_dict': ...} wrappers (a wrapper's
    key prefix, DataParallel's `module.`, is matched to the arch later: align_key_prefix)."""
    if isinstance(obj, dict):
        state: dict = obj
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        if tensors and all(isinstance(k, str) for k in tensors):
            return tensors
    return None


def fold_pruning_masks(state: dict, wanted: set[str], path: Path, field: str) -> dict:
    """`state` with torch.nn.utils.prune's reparametrisation undone: each `NAME_orig` + `NAME_mask`
    pair becomes `NAME = NAME_orig * NAME_mask` (what prune's forward hook computes) where the
    arch has a plain `NAME` and no `NAME_orig` (an arch that applies pruning itself loads the pair
    as it is). What `torch.save(model.state_dict())` gives after `prune.l1_unstructured` or
    `prune.global_unstructured`, without `prune.remove`."""
    folded = dict(state)
    for key in [k for k in state if k.endswith("_orig")]:
        name = key[: -len("_orig")]
        mask = state.get(name + "_mask")
        if mask is None or name not in wanted or key in wanted or name in state:
            continue
        orig = state[key]
        if mask.shape != orig.shape:
            raise ModelError(
                f"pruning mask {name}_mask has shape {list(mask.shape)}, but {key} has {list(orig.shape)}",
                file=path,
                field=field,
            )
        folded[name] = orig * mask.to(orig.dtype)
        del folded[key], folded[name + "_mask"]
    return folded


def _shared_prefix(keys: list[str]) -> str | None:
    """The first dotted component every key starts with (`module.`), or None."""
    first = keys[0].split(".", 1)[0] + "." if keys and "." in keys[0] else None
    return first if first and all(k.startswith(first) for k in keys) else None


def _unwrapped(name: str) -> str:
    """A parameter name without prune's reparametrisation suffixes, for matching keys."""
    for suffix in ("_orig", "_mask"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def align_key_prefix(state: dict, wanted: set[str]) -> tuple[dict, str | None]:
    """`state` with a wrapper's key prefix removed or added where that alone makes its keys the
    arch's: `module.` (DataParallel / DistributedDataParallel), `model.` or `m.` (a Lightning or EMA
    wrapper) on one side only. Returns the state and a note saying what differs when a prefix
    explains only part of a mismatch (for the error); (state, None) when nothing is changed."""
    keys, arch_keys = list(state), sorted(wanted)
    plain = {_unwrapped(k) for k in keys}
    if not keys or plain <= wanted:
        return state, None
    theirs, ours = _shared_prefix(keys), _shared_prefix(arch_keys)
    if theirs and theirs != ours:
        stripped = {k[len(theirs) :]: v for k, v in state.items()}
        if {_unwrapped(k) for k in stripped} <= wanted:
            return stripped, None
        return state, f"every key in the file starts with {theirs!r} and the arch's do not"
    if ours and ours != theirs:
        added = {ours + k: v for k, v in state.items()}
        if {_unwrapped(k) for k in added} <= wanted:
            return added, None
        return state, f"every key of the arch starts with {ours!r} and the file's do not"
    return state, None


def _module_from_state_dict(
    state: dict, spec: Arch | None, base_dir: Path, path: Path, field: str
) -> tuple[torch.nn.Module, bool]:
    """The arch's module with `state` loaded, and whether pruning masks were folded into it."""
    if not spec:
        raise ModelError(
            "is a state dict: set 'arch' ('module:function' that builds the network) for this model",
            file=path,
            field=field,
        )
    fn, args, kwargs = arch_call(spec)
    arch = arch_text(spec)
    builder = _import_arch(fn, base_dir, field + ".arch", path)
    try:
        module = builder(*args, **kwargs)
    except Exception as exc:
        raise ModelError(f"arch {arch!r} failed to build ({first_line(exc)})", file=path, field=field) from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(
            f"arch {arch!r} returned {type(module).__name__}, not a torch.nn.Module", file=path, field=field
        )
    wanted = set(module.state_dict())
    state, prefix_note = align_key_prefix(state, wanted)
    folded = fold_pruning_masks(state, wanted, path, field)
    try:
        result = module.load_state_dict(folded, strict=False)
    except RuntimeError as exc:  # shapes that do not fit raise even with strict=False
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:3]) or first_line(exc)
        raise ModelError(f"weights do not fit arch {arch!r}: {detail}", file=path, field=field) from None
    problems = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
    if problems:
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        note = f" ({prefix_note})" if prefix_note else ""
        raise ModelError(f"weights do not fit arch {arch!r}{note}: {shown}", file=path, field=field)
    return module, len(folded) < len(state)


def _read_safetensors(path: Path, field: str) -> dict:
    """A .safetensors file's tensors (plain data: reading it runs no code)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(
            f"not a readable safetensors file: {DAMAGED} ({first_line(exc)})", file=path, field=field
        ) from None
    if not state:
        raise ModelError("the safetensors file holds no tensors", file=path, field=field)
    return dict(state)


def load_torch_module(
    path: Path, field: str, arch: Arch | None, base_dir: Path, allow_pickle: bool
) -> tuple[torch.nn.Module, str, list | None]:
    """(module, format, declared input shape or None), the module in eval mode: an arch builds it
    in training mode, where even a probe's forward would move its batch norms' running statistics
    (inference_mode allows that in-place update) and an export would keep training behaviour."""
    module, fmt, shape = _read_torch_module(path, field, arch, base_dir, allow_pickle)
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):
        pass  # exported programs are fixed at export time and refuse .eval()
    return module, fmt, shape


def _read_torch_module(
    path: Path, field: str, arch: Arch | None, base_dir: Path, allow_pickle: bool
) -> tuple[torch.nn.Module, str, list | None]:
    """(module, format, declared input shape or None), as the file holds it."""
    kind = sniff_format(path, field)
    if kind == huggingface.FORMAT:
        return huggingface.load_module(path, field), kind, None
    try:
        if kind == "torchscript":
            scan_torchscript_archive(path, field)  # loading runs __setstate__: its code is checked first
            with warnings.catch_warnings():  # torch 2.9+ calls TorchScript deprecated, on every load
                warnings.filterwarnings("ignore", r".*torch\.jit\.\w+` is deprecated", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
            scan_torchscript_module(module, path, field)
            return module, "torchscript", None
        if kind == "torch-export":
            with contextlib.nullcontext() if allow_pickle else refuse_unpickling(), _quiet_torch_export():
                program = torch.export.load(str(path))
            scan_export_program(program, path, field)
            shape = None
            inputs = program.graph_signature.user_inputs
            placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in inputs]
            if placeholders and "val" in placeholders[0].meta:
                shape = [d if isinstance(d, int) else str(d) for d in placeholders[0].meta["val"].shape]
            return program.module(), "torch-export", shape
    except ModelError:
        raise
    except Exception as exc:
        needs = needs_unpickling(exc)
        if kind == "torch-export" and needs is not None:
            raise ModelError(
                f"needs unpickling arbitrary Python objects ({needs.group(1)}) in the .pt2 archive, "
                "which can run code; re-run with --allow-pickle only if you trust this file",
                file=path,
                field=field,
            ) from None
        raise ModelError(
            f"cannot load the {kind} model: {DAMAGED}, or it needs another torch version ({first_line(exc)})",
            file=path,
            field=field,
        ) from None
    if kind == "safetensors":
        module, folded = _module_from_state_dict(_read_safetensors(path, field), arch, base_dir, path, field)
        return module, PRUNING_SAFETENSORS if folded else SAFETENSORS, None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        fmt = STATE_DICT
    except pickle.UnpicklingError as exc:
        # weights_only refuses two things: a pickled object (a class it does not allow, named
        # after "Unsupported global"), and bytes that are no pickle at all.
        needs = needs_unpickling(exc)
        if needs is None:
            raise ModelError(
                f"not a torch model file: {DAMAGED}, or in another format ({_weights_only_reason(exc)})",
                file=path,
                field=field,
            ) from None
        if not allow_pickle:
            raise ModelError(
                f"needs unpickling arbitrary Python objects ({needs.group(1)}), which can run code; "
                "re-run with --allow-pickle only if you trust this file",
                file=path,
                field=field,
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelError(f"cannot unpickle ({first_line(exc)})", file=path, field=field) from None
        fmt = "pickle"
    except (EOFError, RuntimeError, OSError, ValueError) as exc:
        reason = first_line(exc) if str(exc).strip() else "it ends too early"
        raise ModelError(f"not a readable torch model file: {DAMAGED} ({reason})", file=path, field=field) from None
    except Exception as exc:
        raise ModelError(f"not a readable torch model file ({first_line(exc)})", file=path, field=field) from None
    if isinstance(obj, torch.nn.Module):
        return obj, fmt, None
    state = _unwrap_state_dict(obj)
    if state is None:
        raise ModelError(f"holds a {type(obj).__name__}, neither a module nor a state dict", file=path, field=field)
    module, folded = _module_from_state_dict(state, arch, base_dir, path, field)
    return module, PRUNING_STATE_DICT if folded and fmt == STATE_DICT else fmt, None


@contextlib.contextmanager
def _quiet_torch_export() -> Iterator[None]:
    """torch.export.load logs a warning with a whole traceback (on logger torch.export) when it
    cannot read the archive, then raises: the ModelError that follows says it in one line. Its
    loggers are quiet for the call, unless prunegate logs at debug level (--debug)."""
    if logging.getLogger("prunegate").isEnabledFor(logging.DEBUG):
        yield
        return
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


_UNPICKLE = re.compile(r"unsupported (?:global: )?GLOBAL ([\w.]+|<[^>]*>)", re.IGNORECASE)


def needs_unpickling(exc: BaseException) -> re.Match | None:
    """The match naming the global a weights-only load refused (torch words it two ways), or None
    when the load failed for another reason (a damaged file)."""
    return _UNPICKLE.search(str(exc))


@contextlib.contextmanager
def refuse_unpickling() -> Iterator[None]:
    """torch.export.load unpickles parts of a .pt2 archive without weights_only (its fallback
    when a weights-only load fails, weights saved with use_pickle, opaque constants): any of them
    can run code. Within this, torch.load is weights-only and plain unpickling is refused."""
    real_load, real_loads = torch.load, pickle.loads
    real_load_obj = getattr(torch._C, "_pickle_load_obj", None)

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise pickle.UnpicklingError("Unsupported global: GLOBAL <a pickled object>")

    torch.load, pickle.loads = weights_only_load, refuse
    if real_load_obj is not None:
        torch._C._pickle_load_obj = refuse
    try:
        yield
    finally:
        torch.load, pickle.loads = real_load, real_loads
        if real_load_obj is not None:
            torch._C._pickle_load_obj = real_load_obj


def _weights_only_reason(exc: BaseException) -> str:
    """torch's weights-only error buries its reason in advice about trusting the file."""
    match = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
    return match.group(1).strip()[:200] if match else first_line(exc)


def has_conv_weights(module: torch.nn.Module) -> bool:
    """A 4-D parameter is a 2-D convolution's weight: the models channels-last can speed up."""
    return any(p.dim() == 4 for p in module.parameters())


class TorchRunner:
    """A torch module under inference mode; `precision` bf16/fp16 runs it under autocast (logits
    come back float32); `channels_last` (auto: on CUDA for models with 2-D convolutions) converts
    the module's 4-D weights and every input to the channels-last memory format."""

    def __init__(
        self,
        module: torch.nn.Module,
        device: torch.device,
        file: ModelFile,
        shape: list | None,
        *,
        precision: str = "fp32",
        channels_last: str = "auto",
    ):
        counts = Counts()
        for tensor in module.parameters():
            counts.add(tensor.detach())
        try:
            module.eval()
        except (NotImplementedError, RuntimeError):
            pass  # exported programs are fixed at export time and refuse .eval()
        self.module = module.to(device)
        self.device = device
        self._shape = shape
        self._autocast = PRECISIONS[precision]
        self.channels_last = self._use_channels_last(channels_last, file.path)
        batch = shape[0] if shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.record: ModelRecord = model_record(
            file,
            parameters=counts.parameters,
            nonzero_parameters=counts.nonzero,
            backend="torch",
            device=str(device),
            fixed_batch=self.fixed_batch,
            precision=precision,
            channels_last=self.channels_last,
        )

    def _use_channels_last(self, setting: str, path: str) -> bool:
        """auto: on CUDA, for a model with 2-D convolutions (cuDNN's NHWC kernels, tensor cores);
        off on CPU, where it is rarely faster. on/off: as asked."""
        wanted = setting == "on" or (setting == "auto" and self.device.type == "cuda" and has_conv_weights(self.module))
        if not wanted:
            return False
        try:
            self.module = self.module.to(memory_format=torch.channels_last)
        except Exception as exc:  # some module kinds cannot be converted
            if setting == "on":
                raise ModelError(
                    f"cannot convert the model to channels-last ({first_line(exc)}); set runtime.channels_last: off",
                    file=path,
                    field="runtime.channels_last",
                ) from None
            return False
        return True

    def input_shape(self) -> list | None:
        return self._shape

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self._autocast)
            if self._autocast is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self.module(x)  # one tensor: a model with several outputs runs in a runners.outputs.OutputSelector
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.dtype != torch.float32:
            out = out.float()  # autocast (or a half-precision model) gives bf16/fp16 logits
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return run_in_chunks(self._run, x, self.fixed_batch)
