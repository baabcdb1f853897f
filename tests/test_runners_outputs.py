"""models.output: which of a model's outputs holds its logits (runners/outputs.py, issue 17).

Each case is checked against the same network called directly in torch: the selected output
must be that network's logits, whatever the format and whichever backend runs it."""

from __future__ import annotations

import collections
import inspect
import json
import warnings
from pathlib import Path

import pytest
import torch

from conftest import SIZE, TinyNet
from prunegate.cli import main
from prunegate.errors import ModelError, PolicyError
from prunegate.policy import ModelSpec, load_policy
from prunegate.runners import LoadOptions, load_runner
from prunegate.runners.outputs import describe, onnx_output, select

CPU = torch.device("cpu")


class HeadsNet(torch.nn.Module):
    """TinyNet's logits beside its features, in a dict (`logits_key` names the logits)."""

    def __init__(self, logits_key: str = "logits"):
        super().__init__()
        self.net = TinyNet()
        self.logits_key = logits_key

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.flatten(torch.relu(self.net.conv(x)), 1)
        return {"features": features, self.logits_key: self.net.head(features)}


class TupleNet(torch.nn.Module):
    """(features, logits)."""

    def __init__(self):
        super().__init__()
        self.net = TinyNet()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.flatten(torch.relu(self.net.conv(x)), 1)
        return features, self.net.head(features)


class ModelOutputLike(collections.OrderedDict):
    """What a Hugging Face ModelOutput is: an ordered dict whose entries are also attributes."""

    def __getattr__(self, name: str) -> object:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class SegHeads(torch.nn.Module):
    """torchvision's segmentation convention: {"out": [N, K, H, W], "aux": [N, K, H, W]}."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x), "aux": self.conv(x) * 0.5}


def seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return module.eval()


def load(path: Path, output=None, *, backend: str = "auto", arch: str | None = None, kind: str = "classification"):
    return load_runner(
        ModelSpec(path=path.name, arch=arch, output=output),
        path,
        "models.pruned",
        LoadOptions(
            base_dir=path.parent,
            backend=backend,
            device=CPU,
            allow_pickle=False,
            allow_fallback=False,
            input_size=SIZE,
            kind=kind,
        ),
    )


def trace(module: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(module, torch.rand(2, 3, SIZE, SIZE), strict=False).save(str(path))  # strict=False: dicts
    return path


def export(module: torch.nn.Module, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module, (torch.rand(2, 3, SIZE, SIZE),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def onnx_file(module: torch.nn.Module, path: Path, names: list[str]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.rand(2, 3, SIZE, SIZE),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=names,
            dynamic_axes={"x": {0: "batch"}, **{n: {0: "batch"} for n in names}},
        )
    return path


def arch_file(folder: Path) -> Path:
    """An arch file whose builders return the networks above (for state dicts)."""
    source = "import collections\n\nimport torch\n\n\n" + "\n\n".join(
        inspect.getsource(c) for c in (TinyNet, HeadsNet, TupleNet, ModelOutputLike)
    )
    source += (
        "\n\nclass HFStyle(HeadsNet):\n"
        "    def forward(self, x):\n"
        "        return ModelOutputLike(super().forward(x))\n"
        "\n\ndef heads():\n    return HeadsNet()\n"
        "\n\ndef hf_style():\n    return HFStyle()\n"
    )
    path = folder / "heads_arch.py"
    path.write_text(source)
    return path


X = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# -- select: the rules, on plain Python outputs ---------------------------------------------


def pick(out: object, wanted=None, preferred=("logits",)):
    return select(out, wanted, preferred, file="m.pt", field="models.output")


def test_select_reads_the_named_key_index_or_attribute() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    assert pick({"features": a, "logits": b}, "features") == (a, "features")
    assert pick((a, b), 1) == (b, 1)
    hf = ModelOutputLike(logits=b)
    assert pick(hf, "logits") == (b, "logits")
    Named = collections.namedtuple("Named", ["features", "logits"])
    assert pick(Named(a, b), "logits") == (b, "logits")


def test_select_by_default_reads_the_only_output_else_the_kinds_name() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    assert pick(a) == (a, None)
    assert pick(a, "logits") == (a, None)  # one tensor: there is nothing else to read
    assert pick({"scores": a}) == (a, "scores")
    assert pick((a,)) == (a, 0)
    assert pick({"features": a, "logits": b}) == (b, "logits")
    assert pick({"aux": a, "out": b}, preferred=("logits", "out")) == (b, "out")
    assert pick(ModelOutputLike(logits=b, hidden=a)) == (b, "logits")


@pytest.mark.parametrize(
    ("out", "wanted", "expected"),
    [
        (
            {"features": 0, "logits2": 1},
            None,
            "the model returns a dict with keys features, logits2: set models.output to one of them",
        ),
        ((0, 1, 2), None, "the model returns a tuple of 3 outputs: set models.output to the index of the logits (0-2)"),
        ({"logits": 1}, "logit", "'logit' is not among the model's outputs: it returns a dict with keys logits"),
        ((0, 1), 2, "2 is not among the model's outputs: it returns a tuple of 2 outputs"),
        ({"logits": 1}, 0, "0 is a tuple index, but the model returns a dict with keys logits: name the output"),
        ({"logits": [1, 2]}, None, "the model's output 'logits' is a list, not a tensor of logits"),
        (
            ModelOutputLike(hidden=1),
            "logits",
            "'logits' is not among the model's outputs: it returns a ModelOutputLike (a dict) with keys hidden",
        ),
    ],
)
def test_select_errors_name_the_field_and_list_what_was_found(out, wanted, expected) -> None:
    with pytest.raises(ModelError) as caught:
        pick(out, wanted)
    assert caught.value.field == "models.output" and str(caught.value.file) == "m.pt"
    assert caught.value.detail.startswith(expected), caught.value.detail


def test_describe_shortens_long_key_lists() -> None:
    text = describe({f"k{i}": i for i in range(15)})
    assert text.endswith("k9 and 5 more")


def test_onnx_output_checks_names_and_indices_against_the_graph() -> None:
    def chosen(wanted, names=("features", "logits")):
        return onnx_output(list(names), wanted, ("logits",), file="m.onnx", field="models.dense.output")

    assert chosen(None) == (1, "logits") and chosen("features") == (0, "features") and chosen(0) == (0, 0)
    assert chosen(None, ("scores",)) == (0, None)
    for wanted, names, expected in [
        ("logit", ("features", "logits"), "'logit' is not an output of the model: its outputs are features, logits"),
        (2, ("features", "logits"), "output index 2 is out of range: the model has 2 outputs (features, logits)"),
        (None, ("a", "b"), "the model has outputs a, b: set models.dense.output to one of them"),
        ("logits", ("scores",), "'logits' is not an output of the model: its outputs are scores"),
    ]:
        with pytest.raises(ModelError) as caught:
            chosen(wanted, names)
        assert caught.value.detail == expected and caught.value.field == "models.dense.output"


# -- every format and backend runs the selected output ------------------------------------


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("form", ["torchscript", "torch-export"])
def test_a_dict_model_runs_its_logits_on_every_backend(tmp_path: Path, form: str, backend: str) -> None:
    net = seeded(HeadsNet())
    path = trace(net, tmp_path / "m.pt") if form == "torchscript" else export(net, tmp_path / "m.pt2")
    runner = load(path, "logits", backend=backend)
    with torch.no_grad():
        expected = net(X)["logits"]
    torch.testing.assert_close(runner(X), expected, rtol=1e-5, atol=1e-5)
    assert runner.record.output == "logits" and runner.record.format == form
    if backend == "auto":  # the export holds the selected output only, and agrees with torch
        reason = runner.record.backend_choice.reason
        assert "failed" not in reason and "differ" not in reason and "not timed" not in reason, reason


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_a_tuple_model_runs_the_indexed_output(tmp_path: Path, backend: str) -> None:
    net = seeded(TupleNet())
    runner = load(trace(net, tmp_path / "m.pt"), 1, backend=backend)
    with torch.no_grad():
        expected = net(X)[1]
    torch.testing.assert_close(runner(X), expected, rtol=1e-5, atol=1e-5)
    assert runner.record.output == 1
    if backend == "auto":
        assert "failed" not in runner.record.backend_choice.reason


@pytest.mark.parametrize("builder", ["heads", "hf_style"])
def test_a_state_dict_whose_arch_returns_a_dict_or_model_output(tmp_path: Path, builder: str) -> None:
    net = seeded(HeadsNet())
    torch.save(net.state_dict(), tmp_path / "w.pth")
    arch_file(tmp_path)
    runner = load(tmp_path / "w.pth", arch=f"heads_arch.py:{builder}")  # default: `logits`
    with torch.no_grad():
        expected = net(X)["logits"]
    torch.testing.assert_close(runner(X), expected, rtol=1e-5, atol=1e-5)
    assert runner.record.output == "logits"


class NormNet(torch.nn.Module):
    """A network with a batch norm, whose running statistics a training-mode forward would move."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.head(self.norm(self.conv(x)).mean((2, 3)))}


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_an_arch_built_in_training_mode_is_probed_and_exported_in_eval_mode(tmp_path: Path, backend: str) -> None:
    net = seeded(NormNet())
    with torch.no_grad():
        net.norm.running_mean.uniform_(-1, 1)
        net.norm.running_var.uniform_(0.5, 2)
        expected = net(X)["logits"]
    torch.save(net.state_dict(), tmp_path / "w.pth")
    (tmp_path / "norm_arch.py").write_text(
        "import torch\n\n\n" + inspect.getsource(NormNet) + "\n\ndef build():\n    return NormNet()\n"
    )
    runner = load(tmp_path / "w.pth", arch="norm_arch.py:build", backend=backend)
    torch.testing.assert_close(runner(X), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_a_plain_model_records_no_output(tmp_path: Path, backend: str) -> None:
    net = seeded(TinyNet())
    runner = load(trace(net, tmp_path / "m.pt"), backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(runner(X), net(X), rtol=1e-5, atol=1e-5)
    assert runner.record.output is None
    if backend == "auto":  # a TorchScript model is exported as it is
        assert "failed" not in runner.record.backend_choice.reason, runner.record.backend_choice.reason


def test_an_onnx_model_with_two_outputs_runs_the_named_one(tmp_path: Path) -> None:
    net = seeded(TupleNet())
    path = onnx_file(net, tmp_path / "m.onnx", ["features", "scores"])
    with torch.no_grad():
        features, scores = net(X)
    torch.testing.assert_close(load(path, "scores")(X), scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(load(path, 0)(X), features, rtol=1e-5, atol=1e-5)
    assert load(path, "scores").record.output == "scores"
    with pytest.raises(ModelError, match="the model has outputs features, scores: set models.output"):
        load(path)


def test_a_dict_without_logits_is_refused_at_load_listing_its_keys(tmp_path: Path) -> None:
    path = trace(seeded(HeadsNet("logits2")), tmp_path / "m.pt")
    for backend in ("torch", "auto"):
        with pytest.raises(ModelError) as caught:
            load(path, backend=backend)
        assert caught.value.field == "models.output"
        assert caught.value.detail == (
            "the model returns a dict with keys features, logits2: set models.output to one of them"
        )


def test_a_segmentation_model_reads_out_by_default(tmp_path: Path) -> None:
    net = seeded(SegHeads())
    runner = load(trace(net, tmp_path / "m.pt"), kind="segmentation")
    with torch.no_grad():
        expected = net(X)["out"]
    torch.testing.assert_close(runner(X), expected, rtol=1e-5, atol=1e-5)
    assert runner.record.output == "out"


# -- the policy fields --------------------------------------------------------------------


def test_models_output_is_the_default_and_a_models_own_output_wins(tmp_path: Path, write_policy, policy_dict):
    models = {"dense": {"path": "d.pt", "output": 1}, "pruned": "p.pt", "output": "logits", "input": {"size": SIZE}}
    policy = load_policy(write_policy(tmp_path / "p.yaml", policy_dict(models=models)))
    assert policy.models.spec("dense").output == 1 and policy.models.spec("pruned").output == "logits"
    assert policy.models.output_field("dense") == "models.dense.output"
    assert policy.models.output_field("pruned") == "models.output"


@pytest.mark.parametrize("value", [True, -1, "", 1.5, ["logits"]])
def test_a_bad_output_is_a_policy_error_naming_the_field(tmp_path: Path, write_policy, policy_dict, value) -> None:
    models = {"dense": "d.pt", "pruned": "p.pt", "output": value, "input": {"size": SIZE}}
    with pytest.raises(PolicyError) as caught:
        load_policy(write_policy(tmp_path / "p.yaml", policy_dict(models=models)))
    assert caught.value.field is not None and caught.value.field.startswith("models.output")


# -- through the gate, with each model in its own process ---------------------------------


def test_the_gate_reads_the_named_output_in_the_models_process(
    tmp_path: Path, write_policy, write_npz, colour_net, colour_dataset, capsys
) -> None:
    """A dense model returning {"features", "logits"} against the same weights as a plain
    network: agreement 1.0, and the report names the output read."""
    plain = colour_net()
    heads = HeadsNet()
    heads.net.load_state_dict(plain.state_dict())
    trace(heads.eval(), tmp_path / "dense.pt")
    trace(plain, tmp_path / "pruned.pt")
    write_npz(tmp_path / "data.npz", *colour_dataset(12))
    models = {"dense": "dense.pt", "pruned": "pruned.pt", "output": "logits", "input": {"size": SIZE}}
    rules = [{"name": "agreement", "tasks": "clean", "metric": "agreement", "min": 1.0}]
    policy = write_policy(tmp_path / "policy.yaml", models=models, rules=rules)
    report = tmp_path / "report.json"
    assert main(["check", "--policy", str(policy), "--report", str(report), "--quiet", "--backend", "torch"]) == 0
    envelope = json.loads(report.read_text())
    import base64

    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    assert predicate["models"]["dense"]["output"] == "logits" and predicate["models"]["pruned"]["output"] is None
    assert predicate["models"]["dense"]["isolation"]["process"] is True
    assert predicate["tasks"][0]["agreement"] == 1.0


def test_the_gate_refuses_an_unreadable_output_in_one_line(
    tmp_path: Path, write_policy, write_npz, colour_dataset, capsys
):
    trace(seeded(HeadsNet("logits2")), tmp_path / "dense.pt")
    trace(seeded(TinyNet()), tmp_path / "pruned.pt")
    write_npz(tmp_path / "data.npz", *colour_dataset(6))
    policy = write_policy(tmp_path / "policy.yaml")
    assert main(["check", "--policy", str(policy), "--report", str(tmp_path / "r.json"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {tmp_path / 'dense.pt'}: models.output: the model returns a dict with keys features, logits2: "
        "set models.output to one of them"
    )


def test_a_command_line_model_path_keeps_the_models_own_output(tmp_path: Path, write_policy, policy_dict) -> None:
    from prunegate.check import Overrides, apply_overrides

    models = {"dense": {"path": "d.pt", "output": "scores"}, "pruned": "p.pt", "output": 1, "input": {"size": SIZE}}
    policy = load_policy(write_policy(tmp_path / "p.yaml", policy_dict(models=models)))
    moved = apply_overrides(policy, Overrides(dense=tmp_path / "other.pt", pruned=tmp_path / "mine.pt")).models
    assert moved.spec("dense").output == "scores" and moved.output_field("dense") == "models.dense.output"
    assert moved.spec("pruned").output == 1 and moved.output_field("pruned") == "models.output"
