"""runners/opscan.py: the ops a model may execute."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper

from conftest import corrupt_torchscript
from prunegate.errors import ModelError
from prunegate.runners import opscan

FILE_ARGUMENTS = {"filename", "file", "path", "fname", "filepath", "file_name"}


def test_every_registered_op_that_takes_a_file_name_is_denied() -> None:
    """If a torch upgrade adds an op that opens a file in an allowed namespace, this fails."""
    opening = {
        s.name
        for s in torch._C._jit_get_all_schemas()
        if any(a.name in FILE_ARGUMENTS and "str" in str(a.type) for a in s.arguments)
        and opscan.torch_op_allowed(s.name)
    }
    assert opening == set()
    assert not opscan.torch_op_allowed("aten::from_file") and not opscan.torch_op_allowed("aten::save")
    assert not opscan.torch_op_allowed("prim::Print") and not opscan.torch_op_allowed("c10d::broadcast_")
    assert not opscan.torch_op_allowed("profiler::_record_function_enter")
    assert opscan.torch_op_allowed("aten::conv2d") and opscan.torch_op_allowed("quantized::conv2d")


class _Branchy(torch.nn.Module):
    """Prints only on a branch that the inputs never take: still refused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() < -1e9:
            for _ in range(2):
                print("never")
        return x.mean((2, 3))


class _Honest(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.shape[0] > 1:
            y = torch.relu(y)
        return y.mean((2, 3))


def _scripted(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(module).save(str(path))
    return path


def test_torchscript_ops_inside_branches_and_loops_are_found(tmp_path: Path) -> None:
    path = _scripted(_Branchy(), tmp_path / "branchy.pt")
    with pytest.raises(ModelError, match=r"prim::Print.*code/"):
        opscan.scan_torchscript_archive(path, "models.dense")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path))
    with pytest.raises(ModelError, match=r"prim::Print \(in forward\)"):
        opscan.scan_torchscript_module(module, path, "models.dense")


def test_an_honest_torchscript_model_passes_both_checks(tmp_path: Path) -> None:
    path = _scripted(_Honest(), tmp_path / "honest.pt")
    opscan.scan_torchscript_archive(path, "models.dense")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opscan.scan_torchscript_module(torch.jit.load(str(path)), path, "models.dense")


def test_unreadable_torchscript_code_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "garbled.pt"
    corrupt_torchscript(_scripted(_Honest(), tmp_path / "honest.pt"), target)
    with pytest.raises(ModelError, match="is not TorchScript source"):
        opscan.scan_torchscript_archive(target, "models.pruned")


def test_an_exported_program_with_a_denied_or_unknown_call_is_refused(tmp_path: Path) -> None:
    program = torch.export.export(_Honest(), (torch.rand(2, 3, 8, 8),))
    opscan.scan_export_program(program, tmp_path / "m.pt2", "models.dense")  # honest: passes
    graph = program.graph_module.graph
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        graph.call_function(torch.ops.aten.save.default, (output.args[0][0], "stolen.pt"))
    with pytest.raises(ModelError, match="aten::save"):
        opscan.scan_export_program(program, tmp_path / "m.pt2", "models.dense")


def _onnx_model(domain: str, functions: list | None = None, op: str = "Relu") -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], domain=domain, name="n0")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, functions=functions or [])


def test_onnx_custom_domains_are_refused_and_standard_ones_pass(tmp_path: Path) -> None:
    opscan.scan_onnx_model(_onnx_model(""), tmp_path / "m.onnx", "models.dense")
    opscan.scan_onnx_model(_onnx_model("com.microsoft", op="Gelu"), tmp_path / "m.onnx", "models.dense")
    with pytest.raises(ModelError, match=r"custom domain 'evil\.ops'"):
        opscan.scan_onnx_model(_onnx_model("evil.ops", op="ReadFile"), tmp_path / "m.onnx", "models.dense")


def test_onnx_local_functions_are_allowed_and_their_bodies_checked(tmp_path: Path) -> None:
    body = helper.make_function(
        "my.funcs", "Act", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])], [helper.make_opsetid("", 17)]
    )
    opscan.scan_onnx_model(_onnx_model("my.funcs", [body], op="Act"), tmp_path / "m.onnx", "models.dense")
    bad_body = helper.make_function(
        "my.funcs",
        "Act",
        ["a"],
        ["b"],
        [helper.make_node("Exec", ["a"], ["b"], domain="evil.ops")],
        [helper.make_opsetid("", 17), helper.make_opsetid("evil.ops", 1)],
    )
    with pytest.raises(ModelError, match="function my.funcs.Act"):
        opscan.scan_onnx_model(_onnx_model("my.funcs", [bad_body], op="Act"), tmp_path / "m.onnx", "models.dense")
