from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from conftest import SIZE, tiny_parameter_count
from prunegate.errors import DeviceError, ModelError
from prunegate.policy import ArchCall, ModelSpec
from prunegate.runners import LoadOptions, load_runner, resolve_device
from prunegate.runners.base import run_in_chunks

CPU = torch.device("cpu")
ZEROED = 3 * 9  # weights of the first conv filter, set to zero below


def load(
    path: Path,
    arch: str | ArchCall | None = None,
    *,
    backend: str = "auto",
    allow_pickle: bool = False,
    device: torch.device = CPU,
    allow_fallback: bool = False,
):
    return load_runner(
        ModelSpec(path=path.name, arch=arch),
        path,
        "models.pruned",
        LoadOptions(
            base_dir=path.parent,
            backend=backend,
            device=device,
            allow_pickle=allow_pickle,
            allow_fallback=allow_fallback,
        ),
    )


def model_error(path: Path, arch: str | ArchCall | None = None, **options) -> ModelError:
    with pytest.raises(ModelError) as caught:
        load(path, arch, **options)
    return caught.value


@pytest.fixture(scope="module")
def net(random_net) -> torch.nn.Module:
    model = random_net(seed=3)
    with torch.no_grad():
        model.conv.weight[0].zero_()
    return model


@pytest.fixture(scope="module")
def saved(
    tmp_path_factory, net, save_torchscript, save_onnx, save_export, write_arch_file
) -> dict[str, tuple[Path, str | None]]:
    """The same network in every supported format: name -> (path, arch). Tests must not change
    these files (copy them first)."""
    folder = tmp_path_factory.mktemp("models")
    torch.save(net.state_dict(), folder / "weights.pth")
    torch.save(
        {"best_prec1": 0.9, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
        folder / "checkpoint.th",
    )
    write_arch_file(folder)
    return {
        "torchscript": (save_torchscript(net, folder / "net.pt"), None),
        "torch-export": (save_export(net, folder / "net.pt2"), None),
        "state-dict": (folder / "weights.pth", "tiny_arch.py:build"),
        "wrapped-state-dict": (folder / "checkpoint.th", "tiny_arch.py:build"),
        "onnx": (save_onnx(net, folder / "net.onnx"), None),
    }


def test_every_format_gives_the_same_logits_and_counts(saved, net) -> None:
    x = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(x)
    for name, (path, arch) in saved.items():
        runner = load(path, arch)
        torch.testing.assert_close(runner(x), expected, rtol=1e-5, atol=1e-5, msg=name)
        info = runner.record
        assert info.format == name.removeprefix("wrapped-"), name
        assert info.parameters == tiny_parameter_count(), name
        assert info.nonzero_parameters == tiny_parameter_count() - ZEROED, name
        assert info.sparsity == round(ZEROED / tiny_parameter_count(), 6), name
        assert info.path == str(path) and len(info.sha256) == 64
        assert info.backend == ("onnxruntime" if name == "onnx" else "torch") and info.device == "cpu"
        assert info.arch == arch and info.pickle_allowed is False


def test_onnx_runner_records_its_provider_and_input_shape(saved) -> None:
    runner = load(saved["onnx"][0])
    assert runner.record.provider == "CPUExecutionProvider"
    assert runner.input_shape()[1:] == [3, SIZE, SIZE] and runner.record.fixed_batch is None


def test_fixed_batch_onnx_model_runs_any_batch(tmp_path: Path, net) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(4, 3, SIZE, SIZE),), str(tmp_path / "fixed.onnx"), dynamo=False)
    runner = load(tmp_path / "fixed.onnx")
    assert runner.record.fixed_batch == 4
    x = torch.rand(7, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), net(x), rtol=1e-5, atol=1e-5)


def test_run_in_chunks_pads_the_last_chunk() -> None:
    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.sum(dim=1, keepdim=True)

    x = torch.arange(10.0).view(5, 2)
    assert torch.equal(run_in_chunks(model, x, 2), x.sum(dim=1, keepdim=True))
    assert calls == [2, 2, 2]
    assert torch.equal(run_in_chunks(model, x, None), x.sum(dim=1, keepdim=True))


def test_pickled_module_is_refused_unless_allowed(tmp_path: Path, net) -> None:
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    error = model_error(path)
    assert "--allow-pickle" in str(error) and str(path) in str(error) and error.field == "models.pruned"
    runner = load(path, allow_pickle=True)
    assert runner.record.format == "pickle" and runner.record.pickle_allowed is True
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), net(x))


@pytest.mark.parametrize("name", ["net.onnx", "net.pt", "net.pt2", "weights.pth"])
def test_truncated_model_file_is_a_model_error_naming_the_file(
    saved, tmp_path: Path, write_arch_file, name: str
) -> None:
    original = next(p for p, _ in saved.values() if p.name == name)
    path = tmp_path / name
    path.write_bytes(original.read_bytes()[: original.stat().st_size // 2])
    write_arch_file(tmp_path)
    error = model_error(path, "tiny_arch.py:build")
    assert str(path) in str(error) and error.field == "models.pruned"


@pytest.mark.parametrize("content", [b"", b"definitely not a model"])
def test_garbage_model_files_are_model_errors(tmp_path: Path, content: bytes) -> None:
    for name in ("junk.onnx", "junk.pt"):
        (tmp_path / name).write_bytes(content)
        assert str(tmp_path / name) in str(model_error(tmp_path / name))


def test_missing_model_and_folder_are_model_errors(tmp_path: Path) -> None:
    assert "not found" in str(model_error(tmp_path / "absent.onnx"))
    folder = tmp_path / "model.pt"
    folder.mkdir()
    assert "folder" in str(model_error(folder))


def test_state_dict_without_arch_asks_for_arch(saved) -> None:
    path, _ = saved["state-dict"]
    error = model_error(path)
    assert "arch" in str(error) and str(path) in str(error)


def test_arch_whose_keys_do_not_fit_is_a_model_error(saved) -> None:
    path, _ = saved["state-dict"]
    (path.parent / "other_arch.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())\n"
    )
    error = model_error(path, "other_arch.py:build")
    assert "do not fit" in str(error) and "conv.weight" in str(error) and str(path) in str(error)


def test_arch_whose_shapes_do_not_fit_is_a_model_error(saved, write_arch_file) -> None:
    path, _ = saved["state-dict"]
    write_arch_file(path.parent, "ten_classes.py", classes=10)
    error = model_error(path, "ten_classes.py:build")
    assert str(path) in str(error) and "head.weight" in str(error)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("no_colon", "must look like"),
        ("absent.py:build", "not found"),
        ("tiny_arch.py:missing", "missing"),
        ("no_such_module_xyz:build", "no_such_module_xyz"),
        ("broken_arch.py:build", "failed to build"),
        ("broken_arch.py:not_a_module", "not a torch.nn.Module"),
    ],
)
def test_bad_arch_is_a_model_error(saved, arch: str, expected: str) -> None:
    path, _ = saved["state-dict"]
    (path.parent / "broken_arch.py").write_text(
        "def build():\n    raise ValueError('boom')\n\ndef not_a_module():\n    return 42\n"
    )
    error = model_error(path, arch)
    assert expected in str(error) and str(path) in str(error)


def test_arch_from_an_importable_module(tmp_path: Path) -> None:
    from prunegate.archs.cifar_resnet import resnet20

    torch.save(resnet20().state_dict(), tmp_path / "r20.pth")
    runner = load(tmp_path / "r20.pth", "prunegate.archs.cifar_resnet:resnet20")
    assert runner.record.parameters == 269_722  # the published count of the CIFAR ResNet-20
    assert runner(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


WIDE_ARCH = """
import torch


def build(width, num_classes=3, *, scale=1.0, log=None):
    if log is not None:
        log.append("changed")  # a builder that changes its arguments changes nothing of the policy's
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(width, num_classes),
    )
    net.scale = scale
    return net
"""


def test_an_arch_call_builds_with_its_args_and_kwargs_and_is_recorded(tmp_path: Path) -> None:
    (tmp_path / "wide.py").write_text(WIDE_ARCH)
    namespace: dict = {}
    exec(WIDE_ARCH, namespace)
    torch.manual_seed(0)
    reference = namespace["build"](6, num_classes=5).eval()
    torch.save(reference.state_dict(), tmp_path / "wide.pth")
    call = ArchCall(fn="wide.py:build", args=[6], kwargs={"num_classes": 5, "scale": 2.5, "log": []})
    runner = load(tmp_path / "wide.pth", call, backend="torch")
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), reference(x))
    assert runner.module.inner.scale == 2.5  # (inside the OutputSelector: the built network)
    record = runner.record
    assert record.arch == "wide.py:build" and record.parameters == sum(p.numel() for p in reference.parameters())
    assert record.arch_source is not None and record.arch_source.kind == "file"
    assert record.arch_source.args == [6] and record.arch_source.kwargs == {"num_classes": 5, "scale": 2.5, "log": []}
    assert call.kwargs["log"] == []  # the builder got a copy
    dumped = record.model_dump(mode="json")["arch_source"]
    assert dumped["args"] == [6] and dumped["kwargs"]["num_classes"] == 5
    # the string form is called with no arguments, and records none
    error = model_error(tmp_path / "wide.pth", "wide.py:build", backend="torch")
    assert "arch 'wide.py:build' failed to build" in str(error) and "width" in str(error)
    call = ArchCall(fn="wide.py:build", args=[4], kwargs={"num_classes": 5})
    error = model_error(tmp_path / "wide.pth", call, backend="torch")
    assert "wide.py:build(4, num_classes=5)" in str(error) and "do not fit" in str(error)


def test_a_string_arch_records_no_call(saved) -> None:
    path, arch = saved["state-dict"]
    source = load(path, arch, backend="torch").record.arch_source
    assert source is not None and source.args is None and source.kwargs is None
    assert "args" not in source.model_dump(mode="json") and "kwargs" not in source.model_dump(mode="json")
    call = load(path, ArchCall(fn="tiny_arch.py:build"), backend="torch").record.arch_source
    assert call is not None and call.model_dump() == source.model_dump()  # a call without arguments: the same


def test_torchvision_resnet18_built_with_num_classes(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    call = ArchCall(fn="torchvision.models:resnet18", kwargs={"num_classes": 10})
    runner = load(tmp_path / "r18.pth", call, backend="torch")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), reference(x))
    source = runner.record.arch_source
    assert source is not None and source.kind == "module" and source.distribution == "torchvision"
    assert torchvision.__version__.startswith(str(source.version))  # (the distribution's, without +cu130)
    assert source.kwargs == {"num_classes": 10} and source.args is None


def test_file_holding_neither_module_nor_state_dict(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert "neither a module nor a state dict" in str(model_error(tmp_path / "list.pt"))


def test_backend_must_fit_the_file(saved) -> None:
    assert "onnx backend" in str(model_error(saved["torchscript"][0], backend="onnx"))
    assert "torch backend" in str(model_error(saved["onnx"][0], backend="torch"))


def test_resolve_device_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError) as caught:
        resolve_device("cuda", allow_fallback=False)
    assert caught.value.field == "runtime.device" and "allow_fallback" in str(caught.value)
    assert resolve_device("cuda", allow_fallback=True) == CPU
    assert resolve_device("auto", allow_fallback=False) == CPU
    assert resolve_device("cpu", allow_fallback=False) == CPU


def test_onnx_on_cuda_without_a_cuda_provider(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    path = saved["onnx"][0]
    with pytest.raises(DeviceError):
        load(path, device=torch.device("cuda"))
    runner = load(path, device=torch.device("cuda"), allow_fallback=True)
    assert runner.device == CPU and runner.record.provider == "CPUExecutionProvider"


def test_onnx_parameter_count_covers_every_float_type() -> None:
    import numpy as np
    from onnx import TensorProto, helper

    from prunegate.runners.onnx import count_onnx_parameters

    initializers = [
        helper.make_tensor("a", TensorProto.FLOAT, [3], [1.0, 0.0, 2.0]),
        helper.make_tensor("b", TensorProto.FLOAT16, [2], np.array([0.0, 1.0], np.float16).view(np.uint16)),
        helper.make_tensor("c", TensorProto.BFLOAT16, [2], [0.0, 0.0]),
        helper.make_tensor("d", TensorProto.DOUBLE, [1], [5.0]),
        helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1]),  # not a parameter
    ]
    graph = helper.make_graph([], "g", [], [], initializer=initializers)
    counts = count_onnx_parameters(helper.make_model(graph))
    assert (counts.parameters, counts.nonzero) == (8, 4)


def _prune_reparametrised_resnet20() -> torch.nn.Module:
    """A ResNet-20 with torch.nn.utils.prune still applied: L1 on the first conv, global
    magnitude over the other convs (what a user saves without calling prune.remove)."""
    import torch.nn.utils.prune as prune

    from prunegate.archs.cifar_resnet import resnet20

    torch.manual_seed(0)
    model = resnet20().eval()
    prune.l1_unstructured(model.conv1, "weight", amount=0.3)
    convs = [(m, "weight") for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n != "conv1"]
    prune.global_unstructured(convs, pruning_method=prune.L1Unstructured, amount=0.5)
    return model


@pytest.mark.parametrize("backend", ["torch", "auto"])  # auto: exported to ONNX and timed
def test_a_state_dict_saved_under_torch_pruning_is_folded(tmp_path: Path, backend: str) -> None:
    model = _prune_reparametrised_resnet20()
    state = model.state_dict()
    assert "conv1.weight_orig" in state and "conv1.weight_mask" in state and "conv1.weight" not in state
    torch.save(state, tmp_path / "pruned.pth")
    runner = load(tmp_path / "pruned.pth", "prunegate.archs.cifar_resnet:resnet20", backend=backend)
    assert runner.record.format == "state-dict (pruning reparametrised)"
    # the reference: torch's own pruned module (its forward hook computes weight_orig * weight_mask)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(runner(x), expected, atol=1e-4, rtol=1e-4)
    nonzero = sum(int(torch.count_nonzero(getattr(m, n))) for m, n in _pruned_parameters(model))
    assert runner.record.parameters == sum(p.numel() for p in _plain_parameters(model))
    assert runner.record.nonzero_parameters == nonzero
    assert runner.record.sparsity > 0.45


def _pruned_parameters(model: torch.nn.Module):
    """(module, name) of every parameter as the forward sees it: `weight` for pruned convs."""
    for module in model.modules():
        for name, _ in module.named_parameters(recurse=False):
            yield module, name.removesuffix("_orig")


def _plain_parameters(model: torch.nn.Module):
    return [getattr(m, n) for m, n in _pruned_parameters(model)]


def test_an_arch_that_applies_pruning_itself_loads_the_pair_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "pruned_arch.py").write_text(
        "import torch.nn.utils.prune as prune\n"
        "from prunegate.archs.cifar_resnet import resnet20\n"
        "def build():\n"
        "    model = resnet20()\n"
        "    prune.identity(model.conv1, 'weight')\n"
        "    return model\n"
    )
    import torch.nn.utils.prune as prune

    from prunegate.archs.cifar_resnet import resnet20

    model = resnet20()
    prune.l1_unstructured(model.conv1, "weight", amount=0.5)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    runner = load(tmp_path / "w.pth", "pruned_arch.py:build", backend="torch")
    assert runner.record.format == "state-dict"  # nothing folded: the arch has weight_orig itself


def test_a_pruning_mask_of_another_shape_is_a_model_error(tmp_path: Path) -> None:
    state = _prune_reparametrised_resnet20().state_dict()
    state["conv1.weight_mask"] = state["conv1.weight_mask"][:, :1]
    torch.save(state, tmp_path / "bad.pth")
    error = model_error(tmp_path / "bad.pth", "prunegate.archs.cifar_resnet:resnet20", backend="torch")
    assert "conv1.weight_mask" in str(error) and "shape" in str(error) and "bad.pth" in str(error)


def test_a_safetensors_state_dict_loads_and_is_recorded_as_such(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = _prune_reparametrised_resnet20()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "pruned.safetensors")
    runner = load(tmp_path / "pruned.safetensors", "prunegate.archs.cifar_resnet:resnet20", backend="torch")
    assert runner.record.format == "safetensors (pruning reparametrised)"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=1e-4)
    import torch.nn.utils.prune as prune

    for module in model.modules():
        if hasattr(module, "weight_orig"):
            prune.remove(module, "weight")
    save_file(dict(model.state_dict()), tmp_path / "plain.safetensors")
    plain = load(tmp_path / "plain.safetensors", "prunegate.archs.cifar_resnet:resnet20", backend="torch")
    assert plain.record.format == "safetensors" and plain.record.arch == "prunegate.archs.cifar_resnet:resnet20"
    assert plain.record.nonzero_parameters == runner.record.nonzero_parameters


def test_a_damaged_safetensors_file_is_a_one_line_model_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(64, 64)}, tmp_path / "whole.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "whole.safetensors").read_bytes()[:200])
    error = model_error(tmp_path / "cut.safetensors", "prunegate.archs.cifar_resnet:resnet20", backend="torch")
    assert "safetensors" in str(error) and "cut.safetensors" in str(error) and "\n" not in str(error)


# --- wrapper prefixes and other frameworks' files (issue 17, item 9) ---------------------------


@pytest.mark.parametrize("prefix", ["module.", "model.", "m."])
def test_a_wrapper_prefix_on_the_file_only_is_stripped(tmp_path: Path, prefix: str) -> None:
    """DataParallel (`module.`), Lightning/EMA wrappers (`model.`, `m.`): the same weights."""
    model = _prune_reparametrised_resnet20()
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, tmp_path / "w.pth")
    runner = load(tmp_path / "w.pth", "prunegate.archs.cifar_resnet:resnet20", backend="torch")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=1e-4)
    assert runner.record.format == "state-dict (pruning reparametrised)"


def test_a_wrapper_prefix_on_the_arch_only_is_added(tmp_path: Path) -> None:
    (tmp_path / "wrapped.py").write_text(
        "import torch\nfrom prunegate.archs.cifar_resnet import resnet20\n"
        "class Wrapper(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.model = resnet20()\n"
        "    def forward(self, x):\n        return self.model(x)\n"
        "def build():\n    return Wrapper()\n"
    )
    from prunegate.archs.cifar_resnet import resnet20

    torch.manual_seed(1)
    plain = resnet20().eval()
    torch.save(plain.state_dict(), tmp_path / "w.pth")
    runner = load(tmp_path / "w.pth", "wrapped.py:build", backend="torch")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), plain(x), atol=1e-5, rtol=1e-5)


def test_a_prefix_that_explains_only_part_of_a_mismatch_is_named(tmp_path: Path) -> None:
    from prunegate.archs.cifar_resnet import resnet20

    state = {"module." + k: v for k, v in resnet20().state_dict().items()}
    state["module.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pth")
    error = model_error(tmp_path / "w.pth", "prunegate.archs.cifar_resnet:resnet20", backend="torch")
    assert "every key in the file starts with 'module.'" in str(error) and "w.pth" in str(error)


@pytest.mark.parametrize(
    ("name", "head", "framework"),
    [
        ("m.tflite", b"\x1c\x00\x00\x00TFL3\x00\x00", "TensorFlow Lite"),
        ("renamed.pt", b"\x1c\x00\x00\x00TFL3\x00\x00", "TensorFlow Lite"),  # by its bytes, not its name
        ("m.h5", b"\x89HDF\r\n\x1a\n", "Keras"),
        ("m.mlmodel", b"\x08\x04\x12\x00", "Core ML"),
    ],
)
def test_other_frameworks_files_are_named_not_called_damaged(tmp_path: Path, name, head, framework) -> None:
    (tmp_path / name).write_bytes(head + b"\x00" * 64)
    error = model_error(tmp_path / name, None, backend="auto")
    assert f"is a {framework} model: not a format prunegate runs" in str(error)
    assert "corrupt" not in str(error)


def test_a_tensorflow_saved_model_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "saved" / "variables").mkdir(parents=True)
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"\x08\x01")
    assert "is a TensorFlow model" in str(model_error(tmp_path / "saved", None, backend="auto"))
