"""Refuse model graphs that do more than compute: every op a model will execute is checked
before it runs, against an allow-list of op namespaces less a deny-list of the ops in them that
touch files or the console.

A TorchScript archive is checked twice: its code (the `code/` members, TorchScript source that
torch compiles on load) before loading, because loading already runs a module's
`__setstate__`; then every method of every submodule, inlined, once loaded. A torch.export
program: every node of its graph and of its subgraphs (cond, while_loop bodies). An ONNX model:
every node's domain, in the main graph, its subgraphs and its local functions.

The model's process is sandboxed as well (runners/sandbox.py): a graph that gets past this check
still cannot write files or reach the network. This check makes the refusal clear and early,
naming the op, and holds where the kernel cannot sandbox.
"""

from __future__ import annotations

import ast
import operator
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prunegate.errors import ModelError

if TYPE_CHECKING:
    import torch
    from onnx import GraphProto, ModelProto, NodeProto

# TorchScript and torch.export ops: namespaces of computation (torch's own kernels, quantized and
# oneDNN ones, torchvision's detection ops)...
TORCH_NAMESPACES = frozenset(
    {
        "aten",
        "prim",
        "prims",
        "quantized",
        "_quantized",
        "prepacked",
        "mkldnn",
        "mkldnn_prepacked",
        "onednn",
        "quantization",
        "torchvision",
        "higher_order",
    }
)
# ...less the ops in them that read or write files or print (torch.from_file, torch.save, print).
# Warnings (aten::warn) are allowed: they go to the model process's stderr, which the console
# never shows. tests/test_opscan.py checks that no other registered op takes a file name.
DENIED_OPS = frozenset({"aten::from_file", "aten::save", "aten::_print", "prim::Print", "prim::PythonOp"})
# TorchScript source names the same ops as torch.<op>, ops.<ns>.<op>, torch.ops.<ns>.<op> or print().
_DENIED_SOURCE = frozenset({"from_file", "save", "_print", "Print", "PythonOp"})
# Python callables a torch.export graph may hold besides ops: symbolic-shape arithmetic.
_EXPORT_PYTHON = frozenset(
    {
        operator.getitem,
        operator.add,
        operator.sub,
        operator.mul,
        operator.floordiv,
        operator.truediv,
        operator.mod,
        operator.pow,
        operator.neg,
        operator.eq,
        operator.ne,
        operator.lt,
        operator.le,
        operator.gt,
        operator.ge,
        operator.and_,
        operator.or_,
    }
)
# ONNX domains ONNX Runtime implements itself; anything else is a custom op (a shared library).
ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training", "com.microsoft"})

_HOW = "prunegate runs only models that compute: refusing to run it"


def _refuse(op: str, where: str, path: Path, field: str) -> ModelError:
    return ModelError(
        f"the model calls {op} ({where}), which reads or writes files, prints or is not a known computation; {_HOW}",
        file=path,
        field=field,
    )


def torch_op_allowed(kind: str) -> bool:
    """Whether a TorchScript/torch.export op ('aten::conv2d') may run."""
    namespace = kind.split("::", 1)[0]
    return namespace in TORCH_NAMESPACES and kind not in DENIED_OPS


# --- TorchScript -------------------------------------------------------------------------------


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _source_ops(tree: ast.AST) -> Iterator[str]:
    """The ops a TorchScript source refers to, as 'namespace::name'."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            yield "prim::Print"
        if not isinstance(node, ast.Attribute):
            continue
        dotted = _dotted(node).split(".")
        if dotted[:2] == ["torch", "ops"]:
            dotted = dotted[1:]
        if dotted[0] == "ops" and len(dotted) >= 3:
            yield f"{dotted[1]}::{dotted[2]}"
        elif dotted[0] == "torch" and len(dotted) == 2 and dotted[1] in _DENIED_SOURCE:
            yield f"aten::{dotted[1]}"


def scan_torchscript_archive(path: Path, field: str) -> None:
    """Before loading: the archive's TorchScript code must not name a denied op (loading runs
    `__setstate__` methods, so the graph check after loading would come too late for them)."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if "/code/" not in name or not name.endswith(".py"):
                continue
            text = archive.read(name).decode("utf-8", errors="replace")
            try:
                tree = ast.parse(text)
            except (SyntaxError, ValueError):
                raise ModelError(
                    f"cannot load the torchscript model: its code {name} is not TorchScript source "
                    "(a damaged or crafted archive)",
                    file=path,
                    field=field,
                ) from None
            for op in _source_ops(tree):
                if op in DENIED_OPS or (op.split("::")[0] not in TORCH_NAMESPACES):
                    raise _refuse(op, f"in {name}", path, field)


def _graph_kinds(graph: torch.Graph) -> Iterator[str]:
    """The op kind of every node, sub-blocks (if/loop bodies) included."""
    stack = [graph.nodes()]
    while stack:
        for node in stack.pop():
            yield node.kind()
            stack.extend(block.nodes() for block in node.blocks())


def scan_torchscript_module(module: torch.nn.Module, path: Path, field: str) -> None:
    """After loading: every method of every submodule, with the functions it calls inlined."""
    import torch

    for name, submodule in module.named_modules():
        scripted = getattr(submodule, "_c", None)
        if scripted is None:
            continue
        for method_name in scripted._method_names():
            graph = scripted._get_method(method_name).graph.copy()
            torch._C._jit_pass_inline(graph)
            for kind in _graph_kinds(graph):
                if not torch_op_allowed(kind):
                    where = f"in {name + '.' if name else ''}{method_name}"
                    raise _refuse(kind, where, path, field)


# --- torch.export ------------------------------------------------------------------------------


def _export_target(target: object) -> str:
    namespace = getattr(target, "namespace", None)
    if namespace is not None:  # an OpOverload, OpOverloadPacket or HigherOrderOperator
        name = getattr(target, "_name", None) or getattr(target, "__name__", str(target))
        return f"{namespace}::{str(name).split('::')[-1]}"
    return ""


def scan_export_program(program: torch.export.ExportedProgram, path: Path, field: str) -> None:
    """Every call in an ExportedProgram's graph and its subgraphs is an allowed op (or shape
    arithmetic); a call_module or call_method would run Python the program does not show."""
    import torch

    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            if node.op != "call_function":
                raise _refuse(f"{node.op} {node.target}", f"node {node.name}", path, field)
            target = node.target
            if (
                target in _EXPORT_PYTHON
                or getattr(target, "__module__", None) == "torch"
                and str(getattr(target, "__name__", "")).startswith("sym_")
            ):
                continue
            kind = _export_target(target)
            if not kind or not torch_op_allowed(kind):
                raise _refuse(kind or repr(target), f"node {node.name}", path, field)


# --- ONNX --------------------------------------------------------------------------------------


def _onnx_nodes(model: ModelProto) -> Iterator[tuple[NodeProto, str]]:
    """(node, where) for every node of the main graph, its subgraphs and its local functions."""

    def graph_nodes(graph: GraphProto, where: str) -> Iterable[tuple[NodeProto, str]]:
        for node in graph.node:
            yield node, where
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    yield from graph_nodes(attribute.g, f"{where} > {node.op_type} {attribute.name}")
                for sub in attribute.graphs:
                    yield from graph_nodes(sub, f"{where} > {node.op_type} {attribute.name}")

    yield from graph_nodes(model.graph, "main graph")
    for function in model.functions:
        yield from graph_nodes(function, f"function {function.domain}.{function.name}")


def scan_onnx_model(model: ModelProto, path: Path, field: str) -> None:
    """Every node is an op of a domain ONNX Runtime implements, or a call of a function the
    model defines (whose body is checked too): a custom domain would load a shared library."""
    local = {(f.domain, f.name) for f in model.functions}
    for node, where in _onnx_nodes(model):
        if node.domain in ONNX_DOMAINS or (node.domain, node.op_type) in local:
            continue
        raise ModelError(
            f"node {node.name or node.op_type!r} ({where}) is op {node.op_type!r} of the custom domain "
            f"{node.domain!r}, which ONNX Runtime does not implement itself (a custom op library "
            f"would run native code); {_HOW}",
            file=path,
            field=field,
        )
