"""Which of a model's outputs holds its logits (models.output).

A model may return a dict (a Hugging Face ModelOutput is one, torchvision's DeepLab returns
{"out", "aux"}), a tuple, an object with attributes, or have several ONNX outputs. The policy
names the one to read: a dict key or attribute, an ONNX output name, or a tuple index. Without
one, the only output is read, else the first of the kind's conventional names (`logits`) that
the model has; anything else is an error listing what the model returns.

The choice is made in the model's own process: prunegate's only ever receives the one tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from prunegate.errors import ModelError

Key = str | int  # a dict key, attribute or ONNX output name; a tuple index
SHOWN = 10  # names listed in an error, at most


def _listed(names: Sequence[object]) -> str:
    shown = ", ".join(str(n) for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def describe(out: object) -> str:
    """What a model returned, for errors: `a dict with keys features, logits`, `a tuple of 3 outputs`."""
    kind = type(out).__name__
    if isinstance(out, Mapping):
        name = "dict" if type(out) is dict else f"{kind} (a dict)"
        return f"a {name} with keys {_listed(list(out.keys()))}" if out else f"an empty {name}"
    if isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", None)  # a named tuple
        named = f" ({kind}: {_listed(list(fields))})" if fields else ""
        return f"a {'list' if isinstance(out, list) else 'tuple'} of {len(out)} outputs{named}"
    return f"a {kind}, not a tensor, dict or tuple"


def _default_key(out: object, preferred: Sequence[str], file: str | Path, field: str) -> Key:
    """The output read when the policy names none: the only one, else the first preferred name present."""
    if isinstance(out, Mapping):
        if len(out) == 1:
            return next(iter(out))
        found = next((name for name in preferred if name in out), None)
    else:
        found = next((name for name in preferred if hasattr(out, name)), None)
        if found is None and isinstance(out, (tuple, list)) and len(out) == 1:
            return 0
    if found is None:
        raise ModelError(f"the model returns {describe(out)}: {_advice(out, field)}", file=file, field=field)
    return found


def _advice(out: object, field: str) -> str:
    if isinstance(out, Mapping):
        return f"set {field} to one of them"
    if isinstance(out, (tuple, list)) and out:
        return f"set {field} to the index of the logits (0-{len(out) - 1})"
    return f"set {field} to the attribute that holds the logits"


def _entry(out: object, key: Key, file: str | Path, field: str) -> object:
    """The output `key` names: a tuple index for an int; a dict key, else an attribute, for a str."""
    missing = ModelError(
        f"{key!r} is not among the model's outputs: it returns {describe(out)}", file=file, field=field
    )
    if isinstance(key, int):
        if not isinstance(out, (tuple, list)):
            raise ModelError(
                f"{key} is a tuple index, but the model returns {describe(out)}: name the output instead",
                file=file,
                field=field,
            )
        if key >= len(out):
            raise missing
        return out[key]
    if isinstance(out, Mapping):
        if key not in out:
            raise missing
        return out[key]
    if not hasattr(out, key):
        raise missing
    return getattr(out, key)


def select(
    out: object, wanted: Key | None, preferred: Sequence[str], *, file: str | Path, field: str
) -> tuple[torch.Tensor, Key | None]:
    """(the tensor of `out` that holds the logits, the key it was found under). A model that
    returns one tensor gives it, whatever `wanted` says (it has nothing else): key None."""
    if isinstance(out, torch.Tensor):
        return out, None
    key = wanted if wanted is not None else _default_key(out, preferred, file, field)
    value = _entry(out, key, file, field)
    if not isinstance(value, torch.Tensor):
        raise ModelError(
            f"the model's output {key!r} is a {type(value).__name__}, not a tensor of logits "
            f"(it returns {describe(out)})",
            file=file,
            field=field,
        )
    return value, key


class OutputSelector(torch.nn.Module):
    """The model, returning only the output that holds its logits: what both backends run (the
    ONNX export of backend auto traces this). `used`: the key of the last output read (None: the
    model returned one tensor); `seen`: whether it has run."""

    def __init__(
        self, inner: torch.nn.Module, wanted: Key | None, preferred: Sequence[str], *, file: str | Path, field: str
    ):
        super().__init__()
        self.inner = inner
        # prunegate only evaluates: in eval mode before any probe (a training-mode forward moves batch
        # norms' running statistics), and the exporter's train(self.training) keeps it there.
        self.training = False
        try:
            inner.eval()
        except (NotImplementedError, RuntimeError):
            pass  # exported programs are fixed at export time and refuse .eval()
        self.wanted, self.preferred = wanted, tuple(preferred)
        self.file, self.field = file, field
        self.seen = False
        self.used: Key | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensor, self.used = select(self.inner(x), self.wanted, self.preferred, file=self.file, field=self.field)
        self.seen = True
        return tensor

    def exportable(self) -> torch.nn.Module:
        """What the ONNX exporter can trace: this module, or for a TorchScript model (which a
        trace cannot enter) the model itself or a scripted selection of the output it returned."""
        if not isinstance(self.inner, torch.jit.ScriptModule):
            return self
        if self.used is None:
            return self.inner
        entry = (
            _ScriptedIndex(self.inner, self.used) if isinstance(self.used, int) else _ScriptedKey(self.inner, self.used)
        )
        return torch.jit.script(entry)


class _ScriptedKey(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, key: str):
        super().__init__()
        self.inner = inner
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[self.key]


class _ScriptedIndex(torch.nn.Module):
    __constants__ = ["index"]  # TorchScript indexes a tuple only with a constant

    def __init__(self, inner: torch.nn.Module, index: int):
        super().__init__()
        self.inner = inner
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[self.index]


def onnx_output(
    names: Sequence[str], wanted: Key | None, preferred: Sequence[str], *, file: str | Path, field: str
) -> tuple[int, Key | None]:
    """(the index of the ONNX graph output that holds the logits, the key to record: None for
    the only output when the policy names none). A name must be one of the graph's outputs."""
    if isinstance(wanted, int):
        if wanted >= len(names):
            raise ModelError(
                f"output index {wanted} is out of range: the model has {len(names)} "
                f"output{'s' if len(names) > 1 else ''} ({_listed(list(names))})",
                file=file,
                field=field,
            )
        return wanted, wanted
    if wanted is not None:
        if wanted not in names:
            raise ModelError(
                f"{wanted!r} is not an output of the model: its outputs are {_listed(list(names))}",
                file=file,
                field=field,
            )
        return list(names).index(wanted), wanted
    if len(names) == 1:
        return 0, None
    found = next((name for name in preferred if name in names), None)
    if found is None:
        raise ModelError(
            f"the model has outputs {_listed(list(names))}: set {field} to one of them", file=file, field=field
        )
    return list(names).index(found), found
