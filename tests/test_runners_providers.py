"""runtime.providers / --provider: the ONNX Runtime execution providers asked for (issue 17, item 8)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import pytest
import torch

from prunegate.errors import DeviceError, PolicyError
from prunegate.policy import ModelSpec, policy_from_dict
from prunegate.runners import LoadOptions, load_runner
from prunegate.runners.onnx import requested_providers

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 1)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, random_net, save_onnx) -> Path:
    return save_onnx(random_net(seed=2), tmp_path_factory.mktemp("m") / "m.onnx")


def load(path: Path, providers: tuple[str, ...] | None, allow_fallback: bool = False):
    options = LoadOptions(
        base_dir=path.parent, backend="onnx", device=CPU, allow_pickle=False, allow_fallback=allow_fallback,
        providers=providers,
    )  # fmt: skip
    return load_runner(ModelSpec(path=path.name), path, "models.pruned", options)


def test_the_session_gets_the_providers_asked_for_and_the_report_records_them(onnx_model) -> None:
    runner = load(onnx_model, ("CPUExecutionProvider",))
    assert runner.record.providers == ["CPUExecutionProvider"] and runner.record.provider == "CPUExecutionProvider"
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(runner(x), load(onnx_model, None)(x))


def test_a_provider_this_onnx_runtime_lacks_is_an_error_unless_allow_fallback(onnx_model) -> None:
    asked = ("TensorrtExecutionProvider", "CPUExecutionProvider")
    with pytest.raises(DeviceError, match="no TensorrtExecutionProvider") as caught:
        load(onnx_model, asked)
    assert caught.value.field == "runtime.providers" and "allow_fallback" in str(caught.value)
    assert load(onnx_model, asked, allow_fallback=True).record.providers == ["CPUExecutionProvider"]


def test_gpu_providers_run_on_the_runs_cuda_device(monkeypatch) -> None:
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    names = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert requested_providers(names, CUDA, False, Path("m.onnx")) == [
        ("TensorrtExecutionProvider", {"device_id": 1}),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert requested_providers(names, CPU, False, Path("m.onnx")) == list(names)


@pytest.mark.parametrize("value", [[], ["cuda"], ["CUDAExecutionProvider; rm -rf"], "CPUExecutionProvider"])
def test_runtime_providers_must_be_provider_names(policy_dict, value) -> None:
    with pytest.raises(PolicyError, match="runtime.providers"):
        policy_from_dict(policy_dict(runtime={"providers": value}))


def test_check_provider_option_is_recorded(tmp_path, capsys, save_onnx, random_net, write_npz, policy_dict) -> None:
    import json

    import numpy as np
    import yaml

    from prunegate.cli import main
    from prunegate.report.attest import read_envelope

    save_onnx(random_net(seed=1), tmp_path / "dense.onnx")
    save_onnx(random_net(seed=2), tmp_path / "pruned.onnx")
    write_npz(tmp_path / "data.npz", np.zeros((6, 8, 8, 3), np.uint8), np.arange(6) % 3)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy_dict(dense="dense.onnx", pruned="pruned.onnx")))
    report = tmp_path / "r.json"
    code = main(
        ["check", "--policy", str(tmp_path / "p.yaml"), "--provider", "CPUExecutionProvider", "-o", str(report)]
        + ["--no-sanity-check"]  # random models on blank images: at chance
    )
    assert code in (0, 1), capsys.readouterr().err
    _, _, statement = read_envelope(report.read_text(), "r.json")
    predicate = statement["predicate"]
    assert predicate["policy"]["overrides"]["runtime.providers"] == ["CPUExecutionProvider"]
    assert predicate["models"]["pruned"]["providers"] == ["CPUExecutionProvider"], json.dumps(predicate["models"])
