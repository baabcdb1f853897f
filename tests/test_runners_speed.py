"""Runner throughput features, on CPU: ONNX Runtime through IOBinding, bf16 autocast, channels-last,
and --backend auto (export, time, pick). The CUDA branches of the same code are not run here."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import SIZE
from prunegate.cli import main
from prunegate.errors import DeviceError, PolicyError
from prunegate.policy import ModelSpec, policy_from_dict
from prunegate.report.attest import read_envelope
from prunegate.runners import LoadOptions, ModelFile, auto, load_runner
from prunegate.runners.torch import TorchRunner

CPU = torch.device("cpu")


def load(path: Path, *, backend: str = "auto", **options):
    return load_runner(
        ModelSpec(path=path.name),
        path,
        "models.pruned",
        LoadOptions(
            base_dir=path.parent, backend=backend, device=CPU, allow_pickle=False, allow_fallback=False, **options
        ),
    )


def export(net: torch.nn.Module, path: Path, batch: int = 2, dynamic: dict | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.rand(batch, 3, SIZE, SIZE),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes=dynamic,
        )
    return path


def session_run(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])


@pytest.fixture(scope="module")
def net(random_net) -> torch.nn.Module:
    return random_net(seed=5)


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randn(7, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def predicate_of(report: Path) -> dict:
    return read_envelope(report.read_text(), str(report))[2]["predicate"]


# --- ONNX Runtime through IOBinding ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dynamic batch", "unknown classes", "fixed batch"])
def test_iobinding_logits_equal_session_run_and_torch(tmp_path: Path, net, inputs, kind: str) -> None:
    if kind == "fixed batch":  # 7 inputs: a chunk of 4, then a last partial one padded to 4
        path, batches = export(net, tmp_path / "m.onnx", batch=4), [inputs[:4], inputs[4:]]
    else:
        path, batches = export(net, tmp_path / "m.onnx", dynamic={"x": {0: "batch"}, "logits": {0: "batch"}}), [inputs]
    runner = load(path)
    assert runner.classes == 3  # ONNX Runtime infers it: the logits buffer is allocated before each run
    if kind == "unknown classes":  # as for a model whose output shape ONNX Runtime cannot infer:
        runner.classes = None  # ONNX Runtime allocates the first run's output, which tells the class count
    assert runner.record.fixed_batch == (4 if kind == "fixed batch" else None) and runner.record.precision == "fp32"
    with torch.no_grad():
        expected = net(inputs)
    for _ in range(2):  # the second run binds a logits buffer allocated up front
        got = runner(inputs)
        assert got.dtype == torch.float32 and got.device == CPU and got.shape == (7, 3)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if kind == "fixed batch":
            reference = torch.cat(
                [session_run(path, torch.cat([b, b[-1:].expand(4 - len(b), -1, -1, -1)]))[: len(b)] for b in batches]
            )
        else:
            reference = session_run(path, inputs)
        torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)
    assert runner.classes == 3


def test_iobinding_reads_strided_inputs_as_nchw(tmp_path: Path, net, inputs) -> None:
    """The engine's inputs are channels-last in memory (NHWC images permuted): binding their raw
    buffer as NCHW would scramble them."""
    runner = load(export(net, tmp_path / "m.onnx", dynamic={"x": {0: "batch"}, "logits": {0: "batch"}}))
    strided = inputs.contiguous(memory_format=torch.channels_last)
    assert not strided.is_contiguous()
    torch.testing.assert_close(runner(strided), runner(inputs), rtol=0, atol=0)
    torch.testing.assert_close(runner(inputs[1:4]), runner(inputs)[1:4], rtol=1e-6, atol=1e-6)  # a view


# --- precision and channels-last (torch) -------------------------------------------------------


@pytest.fixture(scope="module")
def scripted(tmp_path_factory, net, save_torchscript) -> Path:
    return save_torchscript(net, tmp_path_factory.mktemp("scripted") / "net.pt")


def test_bf16_autocast_on_cpu_is_close_to_fp32_and_recorded(scripted, inputs) -> None:
    full = load(scripted, backend="torch")
    half = load(scripted, backend="torch", precision="bf16")
    assert (full.record.precision, half.record.precision) == ("fp32", "bf16")
    logits = half(inputs)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, full(inputs), rtol=0.05, atol=0.05)
    assert not torch.equal(logits, full(inputs))  # it did run in bf16


def test_channels_last_on_and_off_give_the_same_predictions_on_cpu(scripted, net, inputs) -> None:
    off, on, default = (load(scripted, backend="torch", channels_last=s) for s in ("off", "on", "auto"))
    assert (off.record.channels_last, on.record.channels_last, default.record.channels_last) == (False, True, False)
    assert on.module.inner.conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(on(inputs), off(inputs), rtol=1e-5, atol=1e-5)
    assert torch.equal(on(inputs).argmax(1), off(inputs).argmax(1))
    file = ModelFile(path=str(scripted), sha256="0" * 64, format="state-dict")
    module = TorchRunner(type(net)(), CPU, file, None, channels_last="on")
    assert module.channels_last is True  # an nn.Module (state dict, pickle) converts too


def test_runtime_policy_fields(policy_dict) -> None:
    text = yaml.safe_dump(policy_dict()).replace("batch_size: 16", "batch_size: 16\n  channels_last: on")
    assert "channels_last: on" in text
    policy = policy_from_dict(yaml.safe_load(text))  # YAML 1.1 reads `on` as true
    assert policy.runtime.channels_last == "on" and policy.runtime.precision == "fp32"
    with pytest.raises(PolicyError) as caught:
        policy_from_dict(policy_dict(runtime={"precision": "fp8"}))
    assert caught.value.field == "runtime.precision"
    with pytest.raises(PolicyError) as caught:
        policy_from_dict(policy_dict(runtime={"channels_last": "sometimes"}))
    assert caught.value.field == "runtime.channels_last"


def test_precisions_a_backend_cannot_run_are_refused(scripted, tmp_path: Path, net) -> None:
    with pytest.raises(DeviceError) as caught:
        load(scripted, precision="fp16")
    assert caught.value.field == "runtime.precision" and "--precision" in str(caught.value)
    onnx_file = export(net, tmp_path / "m.onnx")
    for precision in ("bf16", "fp16"):
        with pytest.raises(DeviceError) as caught:
            load(onnx_file, precision=precision)
        assert caught.value.field == "runtime.precision" and "onnx" in str(caught.value)


@pytest.mark.parametrize(
    ("models", "argv", "words"),
    [
        ("pt", ["--precision", "fp16"], ["CPU"]),
        ("onnx", ["--precision", "bf16"], ["onnx backend"]),
        ("pt", ["--precision", "bf16", "--backend", "onnx"], ["onnx backend"]),
    ],
)
def test_unsupported_precision_is_an_input_error_naming_the_field(
    gate_case, capsys, models: str, argv: list, words: list
) -> None:
    policy = gate_case()
    if models == "onnx":
        for which in ("dense", "pruned"):
            export(
                torch.jit.load(str(policy.parent / f"{which}.pt")),
                policy.parent / f"{which}.onnx",
                dynamic={"x": {0: "batch"}, "logits": {0: "batch"}},
            )
        argv = [*argv, "--dense", policy.parent / "dense.onnx", "--pruned", policy.parent / "pruned.onnx"]
    report = policy.parent / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report), "-q", *map(str, argv)])
    err = capsys.readouterr().err
    assert code == 2 and not report.exists(), err
    assert err.startswith("error: ") and str(policy.resolve()) in err
    assert "runtime.precision" in err and "--precision" in err and all(w in err for w in words)


def test_bf16_check_records_the_precision(gate_case, capsys) -> None:
    policy = gate_case()
    report = policy.parent / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report), "-q", "--precision", "bf16"])
    assert code in (0, 1), capsys.readouterr().err
    predicate = predicate_of(report)
    assert predicate["options"]["precision"] == "bf16"
    for which in ("dense", "pruned"):
        record = predicate["models"][which]
        assert record["precision"] == "bf16" and record["backend"] == "torch"
        assert "precision bf16" in record["backend_choice"]["reason"]


# --- --backend auto ----------------------------------------------------------------------------


@pytest.mark.parametrize("winner", ["torch", "onnx"])
def test_backend_auto_picks_the_faster_and_keeps_describing_the_file(
    scripted, inputs, monkeypatch, winner: str
) -> None:
    timed = auto._seconds_per_batch

    def rigged(runners, x, device):
        seconds, outputs = timed(runners, x, device)
        assert set(seconds) == {"torch", "onnx"} and all(s > 0 for s in seconds.values())
        return {name: (1.0 if name == winner else 2.0) for name in seconds}, outputs

    monkeypatch.setattr(auto, "_seconds_per_batch", rigged)
    runner = load(scripted, input_size=SIZE, batch_size=16)
    torch_runner = load(scripted, backend="torch")
    info = runner.record
    assert info.backend == {"torch": "torch", "onnx": "onnxruntime"}[winner]
    assert info.backend_choice.model_dump() == {
        "reason": f"faster: {winner} 1e+03 ms vs {'onnx' if winner == 'torch' else 'torch'} 2e+03 ms per batch of 16",
        "seconds_per_batch": {winner: 1.0, "onnx" if winner == "torch" else "torch": 2.0},
        "batch": 16,
    }
    for key in ("path", "sha256", "format", "parameters", "nonzero_parameters", "arch", "fixed_batch"):
        assert getattr(info, key) == getattr(torch_runner.record, key), key
    assert info.format == "torchscript" and info.provider == ("CPUExecutionProvider" if winner == "onnx" else None)
    logits = runner(inputs)
    torch.testing.assert_close(logits, torch_runner(inputs), rtol=1e-5, atol=1e-5)
    assert torch.equal(logits.argmax(1), torch_runner(inputs).argmax(1))


def test_backend_auto_measures_both_backends(scripted) -> None:
    runner = load(scripted, input_size=SIZE, batch_size=1000)
    choice = runner.record.backend_choice
    assert choice.batch == auto.TIMING_BATCH and choice.reason.startswith("faster: ")
    assert set(choice.seconds_per_batch) == {"torch", "onnx"}
    faster = min(choice.seconds_per_batch, key=choice.seconds_per_batch.__getitem__)
    assert runner.record.backend == {"torch": "torch", "onnx": "onnxruntime"}[faster]


def test_backend_auto_stays_on_torch_when_the_onnx_route_fails(scripted, monkeypatch) -> None:
    def broken(*args):
        raise RuntimeError("Exporting the operator 'aten::weird' to ONNX is not supported")

    with monkeypatch.context() as patch:
        patch.setattr(auto, "export_onnx", broken)
        runner = load(scripted, input_size=SIZE)
    assert runner.record.backend == "torch"
    assert runner.record.backend_choice.reason == (
        "the export to ONNX failed (Exporting the operator 'aten::weird' to ONNX is not supported)"
    )
    monkeypatch.setattr(auto, "AGREEMENT", -1.0)  # any difference at all counts as a wrong export
    runner = load(scripted, input_size=SIZE)
    assert runner.record.backend == "torch" and "differ from torch" in runner.record.backend_choice.reason
    assert load(scripted).record.backend_choice.reason.startswith("no input size")


def test_backend_auto_onnx_file_and_explicit_backends(tmp_path: Path, scripted, net) -> None:
    onnx_file = export(net, tmp_path / "m.onnx", dynamic={"x": {0: "batch"}, "logits": {0: "batch"}})
    assert load(onnx_file, input_size=SIZE).record.backend_choice.reason == "an ONNX file runs on ONNX Runtime"
    assert load(onnx_file, backend="onnx").record.backend_choice is None
    assert load(scripted, backend="torch", input_size=SIZE).record.backend_choice is None


def test_check_with_backend_auto_records_each_models_choice(gate_case, capsys) -> None:
    policy = gate_case(pruned="jitter")
    report = policy.parent / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report), "-q"])
    assert code in (0, 1), capsys.readouterr().err
    predicate = predicate_of(report)
    assert predicate["options"]["backend"] == "auto" and predicate["options"]["channels_last"] == "auto"
    for which in ("dense", "pruned"):
        record = predicate["models"][which]
        assert record["format"] == "torchscript" and record["precision"] == "fp32"
        assert record["backend"] in ("torch", "onnxruntime") and record["channels_last"] in (False, None)
        assert set(record["backend_choice"]["seconds_per_batch"]) == {"torch", "onnx"}
        assert record["backend_choice"]["batch"] == 16  # runtime.batch_size of the test policy
    explicit = policy.parent / "torch.json"
    assert main(["check", "-p", str(policy), "-o", str(explicit), "-q", "--backend", "torch"]) == code
    tasks, torch_tasks = predicate["tasks"], predicate_of(explicit)["tasks"]
    assert [(t["dense"]["correct"], t["pruned"]["correct"], t["agreement"]) for t in tasks] == [
        (t["dense"]["correct"], t["pruned"]["correct"], t["agreement"]) for t in torch_tasks
    ]
    assert predicate_of(explicit)["models"]["dense"]["backend_choice"] is None
    np.testing.assert_allclose([t["softmax_l2"] for t in tasks], [t["softmax_l2"] for t in torch_tasks], atol=1e-5)


def test_processes_under_torchrun_decide_alike() -> None:
    fast_onnx = {"reason": None, "seconds": {"torch": 0.004, "onnx": 0.002}, "batch": 64}
    slow_onnx = {"reason": None, "seconds": {"torch": 0.004, "onnx": 0.008}, "batch": 64}
    assert auto.decide([fast_onnx])[0] == "onnx"
    backend, choice = auto.decide([fast_onnx, slow_onnx])  # the mean: torch 4 ms, onnx 5 ms
    assert backend == "torch" and choice["reason"].endswith("(mean of 2 processes)")
    assert choice["seconds_per_batch"] == {"torch": 0.004, "onnx": 0.005}
    failed = {"reason": "ONNX Runtime cannot run the export (no CUDA)", "seconds": {}, "batch": None}
    assert auto.decide([fast_onnx, failed]) == (
        "torch",
        {"reason": failed["reason"] + " (in process 1)", "seconds_per_batch": {}, "batch": None},
    )


def test_backend_auto_decides_on_every_process_measurement(scripted) -> None:
    seen = []

    def gather(measured: dict) -> list:  # this process, and another one where ONNX Runtime is slow
        seen.append(measured)
        return [measured, {"reason": None, "seconds": {"torch": 1e-9, "onnx": 10.0}, "batch": 16}]

    runner = load(scripted, input_size=SIZE, batch_size=16, gather=gather)
    assert len(seen) == 1 and set(seen[0]["seconds"]) == {"torch", "onnx"}
    assert runner.record.backend == "torch" and "mean of 2 processes" in runner.record.backend_choice.reason
    load(scripted, input_size=SIZE, precision="bf16", gather=gather)  # every process takes part, whatever happens
    assert len(seen) == 2 and seen[1]["reason"].startswith("precision bf16")


@pytest.mark.parametrize("fmt", ["torch-export", "state-dict", "pickle"])
def test_backend_auto_exports_every_torch_format(
    tmp_path: Path, net, inputs, monkeypatch, save_export, write_arch_file, fmt: str
) -> None:
    timed = auto._seconds_per_batch
    monkeypatch.setattr(
        auto, "_seconds_per_batch", lambda *args: ({"torch": 2.0, "onnx": 1.0}, timed(*args)[1])
    )  # ONNX Runtime "wins"
    arch = None
    if fmt == "torch-export":  # refuses train()/eval(), which the exporter calls
        path = save_export(net, tmp_path / "net.pt2")
    elif fmt == "state-dict":
        path, arch = tmp_path / "weights.pth", "tiny_arch.py:build"
        torch.save(net.state_dict(), path)
        write_arch_file(tmp_path)
    else:
        path = tmp_path / "whole.pt"
        torch.save(net, path)
    runner = load_runner(
        ModelSpec(path=path.name, arch=arch),
        path,
        "models.pruned",
        LoadOptions(
            base_dir=tmp_path,
            backend="auto",
            device=CPU,
            allow_pickle=fmt == "pickle",
            allow_fallback=False,
            input_size=SIZE,
        ),
    )
    assert runner.record.backend == "onnxruntime" and runner.record.format == fmt, runner.record.backend_choice
    assert runner.record.arch == arch and runner.record.pickle_allowed is (fmt == "pickle")
    with torch.no_grad():
        torch.testing.assert_close(runner(inputs), net(inputs), rtol=1e-5, atol=1e-5)


def test_backend_auto_probes_the_output_before_exporting_or_timing(
    tmp_path: Path, save_torchscript, monkeypatch
) -> None:
    """Checks before cost (issue 15): a model whose output is not of the run's kind is neither
    exported nor timed; the gate's own probe then refuses it in seconds."""

    class PerPixel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.conv2d(x, torch.ones(4, 3, 1, 1))  # [N, 4, H, W]: not classification logits

    def never(*args: object) -> None:
        raise AssertionError("exported or timed a model whose output is of another kind")

    path = save_torchscript(PerPixel(), tmp_path / "per_pixel.pt")
    monkeypatch.setattr(auto, "export_onnx", never)
    monkeypatch.setattr(auto, "_seconds_per_batch", never)
    runner = load(path, input_size=SIZE)
    assert runner.record.backend == "torch"
    assert runner.record.backend_choice.reason == (
        f"not timed: its output [2, 4, {SIZE}, {SIZE}] on a probe is not [batch, classes] logits"
    )
