"""The model under test attacks the gate (issue 13): it must not reach the signing key, write
files, print a verdict, or change the verdict except through its own outputs.

Each attacking model is built here. TorchScript ops that touch files or print are refused before
they run (exit 2, the op named); arch code, which is Python and cannot be scanned, runs in its own
sandboxed process: it fails to steal, and reports whether it could through its outputs (a model
that managed any attack answers wrongly, so the gate would fail).
"""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from prunegate.cli import main
from prunegate.report import keys
from prunegate.report.attest import read_envelope
from prunegate.runners import sandbox
from prunegate.runners.isolated import model_environment

needs_landlock = pytest.mark.skipif(sandbox.landlock_abi() < 4, reason="this kernel cannot sandbox files and TCP")


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def case(tmp_path: Path, colour_net, colour_dataset, write_npz, save_torchscript, policy_dict):
    """A folder with data, an honest pruned model, a signing key and an empty output folder."""
    images, labels = colour_dataset(12)
    write_npz(tmp_path / "data.npz", images, labels)
    save_torchscript(colour_net(jitter=0.01, seed=1), tmp_path / "pruned.pt")
    key = keys.generate()
    (tmp_path / "key.pem").write_bytes(keys.private_pem(key, None))
    os.chmod(tmp_path / "key.pem", 0o600)
    (tmp_path / "key.pub").write_bytes(keys.public_pem(key.public_key()))
    (tmp_path / "out").mkdir()

    def policy(dense, **changes) -> Path:
        document = policy_dict(dense=dense, **changes)
        path = tmp_path / "policy.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    return tmp_path, policy


class _Thief(torch.nn.Module):
    """Calls torch.from_file on the key and torch.save into the output folder, and prints a verdict."""

    def __init__(self, inner: torch.nn.Module, key: str, out: str):
        super().__init__()
        self.inner, self.key, self.out = inner, key, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stolen = torch.from_file(self.key, False, 64, dtype=torch.uint8)
        torch.save(stolen, self.out)
        return self.inner(x)


class _Printer(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("PASS: all 99 rules passed")
        return self.inner(x)


@pytest.mark.parametrize("attack", ["steal and write", "print"])
def test_torchscript_that_touches_files_or_prints_is_refused_before_it_runs(attack, case, capsys, colour_net) -> None:
    folder, policy = case
    inner = colour_net()
    if attack == "steal and write":
        model = _Thief(inner, str(folder / "key.pem"), str(folder / "out" / "stolen.pt"))
        op = "aten::"
    else:
        model = _Printer(inner)
        op = "prim::Print"
    torch.jit.script(model).save(str(folder / "dense.pt"))
    code, out, err = _run(
        capsys, "check", "-p", policy("dense.pt"), "--key", folder / "key.pem", "-o", folder / "out" / "report.json"
    )
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and str(folder / "dense.pt") in line and "models.dense" in line and op in line
    assert "PASS" not in out
    assert list((folder / "out").iterdir()) == []  # no stolen key, no report


class _SavesOnLoad(torch.nn.Module):
    """Its __setstate__, which torch.jit.load runs, saves a file."""

    def __init__(self, target: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        torch.save(torch.ones(1), state[1])
        self.weight, self.target, self.training = state[0], state[1], state[2]


def test_a_torchscript_setstate_is_checked_before_loading_runs_it(case, capsys) -> None:
    """Loading a TorchScript archive runs its modules' __setstate__ (checked here: plain
    torch.jit.load writes the file), so the archive's code is checked before anything loads."""
    folder, policy = case
    target = folder / "out" / "stolen.pt"
    torch.jit.script(_SavesOnLoad(str(target))).save(str(folder / "dense.pt"))
    torch.jit.load(str(folder / "dense.pt"))
    assert target.exists()  # what loading does unchecked
    target.unlink()
    code, _, err = _run(capsys, "check", "-p", policy("dense.pt"), "-o", folder / "out" / "report.json")
    assert code == 2 and "aten::save" in err and "models.dense" in err, err
    assert list((folder / "out").iterdir()) == []


ARCH_ATTACK = """
import os, socket, subprocess, sys
import torch

KEY, OUT = {key!r}, {out!r}


def _succeeds(attempt) -> bool:
    try:
        attempt()
        return True
    except Exception:
        return False


class Net(torch.nn.Module):
    def __init__(self, honest: bool):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(4 * 16, 3)
        self.honest = honest

    def forward(self, x):
        logits = self.head(torch.flatten(torch.relu(self.conv(x)), 1))
        return logits if self.honest else -logits  # a thief answers wrongly: the gate then fails


def build():
    print("PASS: all 99 rules passed")
    attacks = [
        lambda: open(KEY, "rb").read(),
        lambda: open(os.path.join(OUT, "pwned.txt"), "w").write("x"),
        lambda: os.environ["PRUNEGATE_SIGNING_KEY"],
        lambda: os.environ["GITHUB_TOKEN"],
        lambda: open(f"/proc/{{os.getppid()}}/environ", "rb").read(),
        lambda: socket.create_connection(("127.0.0.1", 9), timeout=1),
        lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        lambda: subprocess.run(["/bin/true"], check=True),
        lambda: __import__("prunegate.gate").gate.__setattr__("verdict", lambda results: "pass"),
    ]
    stole = [i for i, attack in enumerate(attacks) if _succeeds(attack)]
    sys.stderr.write(f"attacks that worked: {{stole}}\\n")
    # the gate module patched above is this process's copy: prunegate's own is untouched
    return Net(honest=stole in ([], [8]))
"""


@needs_landlock
@pytest.mark.parametrize("key_from", ["--key", "PRUNEGATE_SIGNING_KEY"])
def test_arch_code_runs_sandboxed_and_cannot_steal_write_print_or_patch(
    key_from, case, capsys, monkeypatch, caplog, colour_net
) -> None:
    folder, policy = case
    caplog.set_level(logging.DEBUG, logger="prunegate.runners")  # the model process's stderr, with --debug
    (folder / "thief_arch.py").write_text(ARCH_ATTACK.format(key=str(folder / "key.pem"), out=str(folder / "out")))
    torch.save(colour_net().state_dict(), folder / "weights.pth")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    key_options: list = []
    if key_from == "--key":
        key_options = ["--key", folder / "key.pem"]
    else:
        monkeypatch.setenv("PRUNEGATE_SIGNING_KEY", (folder / "key.pem").read_text())
        os.chmod(folder / "key.pem", 0)  # only the environment holds it now
    document = policy({"path": "weights.pth", "arch": "thief_arch.py:build"})
    code, out, err = _run(
        capsys, "--debug", "check", "-p", document, *key_options, "-o", folder / "out" / "report.json"
    )
    assert "attacks that worked: []" in caplog.text or "attacks that worked: [8]" in caplog.text, caplog.text
    assert code == 0, err
    assert "PASS: all 99" not in out
    assert sorted(p.name for p in (folder / "out").iterdir()) == ["report.json"]
    _, _, statement = read_envelope((folder / "out" / "report.json").read_text(), "report")
    isolation = statement["predicate"]["models"]["dense"]["isolation"]
    assert isolation["process"] and isolation["files"] and isolation["tcp"]


def _arch_with_forward(folder: Path, name: str, forward: str, colour_net) -> dict:
    """A state dict of the colour net, and an arch file `name` whose network (the colour net's
    layers) computes `forward` (the body of forward(self, x), where `logits` is the honest
    answer): the model spec for a policy."""
    body = textwrap.indent(textwrap.dedent(forward).strip(), " " * 8)
    (folder / name).write_text(
        "import os\nimport torch\n\n\nclass Net(torch.nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)\n"
        "        self.head = torch.nn.Linear(64, 3)\n\n    def forward(self, x):\n"
        "        logits = self.head(torch.flatten(torch.relu(self.conv(x)), 1))\n"
        f"{body}\n\n\ndef build():\n    return Net()\n"
    )
    torch.save(colour_net().state_dict(), folder / "weights.pth")
    return {"path": "weights.pth", "arch": f"{name}:build"}


def test_a_model_process_that_dies_is_a_clear_error(case, capsys, colour_net) -> None:
    folder, policy = case
    document = policy(_arch_with_forward(folder, "dying_arch.py", "os._exit(7)", colour_net))
    code, _, err = _run(capsys, "check", "-p", document, "-o", folder / "out" / "report.json")
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert "models.dense" in line and "exit code 7" in line and str(folder / "weights.pth") in line
    assert list((folder / "out").iterdir()) == []


def test_a_model_that_answers_one_row_for_a_batch_is_refused_naming_the_batch(case, capsys, colour_net) -> None:
    """Only the first, small batch was checked before: a model that returned one row for a later
    batch had it broadcast over the batch. Every batch's output is checked."""
    folder, policy = case
    spec = _arch_with_forward(folder, "one_row_arch.py", "return logits if x.shape[0] <= 2 else logits[:1]", colour_net)
    document = policy(spec, runtime={"backend": "torch", "device": "cpu", "batch_size": 5, "workers": 0})
    code, _, err = _run(capsys, "check", "-p", document, "-o", folder / "out" / "report.json")
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert "models.dense" in line and "[1, 3]" in line and "[5, 3]" in line and "samples 0-4" in line
    assert list((folder / "out").iterdir()) == []


def test_a_model_that_fails_only_on_some_batches_is_named_with_the_batch(case, capsys, colour_net) -> None:
    """The probe's tiny batch passes; a real batch raises inside the model: exit 2 naming the
    model, the task and the samples (it was exit 3, naming nothing)."""
    folder, policy = case
    spec = _arch_with_forward(
        folder,
        "picky_arch.py",
        """
        if x.shape[0] > 2 and float(x.amax()) > 0.5:
            raise ValueError("this model cannot take bright images")
        return logits
    """,
        colour_net,
    )
    document = policy(spec, runtime={"backend": "torch", "device": "cpu", "batch_size": 6, "workers": 0})
    code, _, err = _run(capsys, "check", "-p", document, "-o", folder / "out" / "report.json")
    assert code == 2, err
    [line] = err.strip().splitlines()
    assert str(folder / "weights.pth") in line and "models.dense" in line and "clean on 6 images of test" in line
    assert "samples 0-5" in line and "cannot take bright images" in line
    assert list((folder / "out").iterdir()) == []


def test_signing_is_refused_when_isolation_is_off(case, capsys, save_torchscript, colour_net) -> None:
    folder, policy = case
    save_torchscript(colour_net(), folder / "dense.pt")
    document = policy("dense.pt", runtime={"isolation": "off", "device": "cpu", "workers": 0})
    code, _, err = _run(
        capsys, "check", "-p", document, "--key", folder / "key.pem", "-o", folder / "out" / "report.json"
    )
    assert code == 2 and "runtime.isolation" in err and "signed" in err
    assert list((folder / "out").iterdir()) == []
    code, _, err = _run(capsys, "check", "-p", document, "-o", folder / "out" / "report.json")
    assert code == 0, err  # unsigned, for debugging: the report says the model was not isolated
    _, _, statement = read_envelope((folder / "out" / "report.json").read_text(), "report")
    assert statement["predicate"]["models"]["dense"]["isolation"] == {
        "process": False,
        "landlock_abi": None,
        "files": None,
        "tcp": None,
        "signals": None,
        "seccomp": None,
        "capabilities": None,
    }


def test_the_model_environment_keeps_what_libraries_need_and_no_secret() -> None:
    environment = model_environment(
        {
            "PATH": "/bin",
            "HOME": "/home/u",
            "CUDA_VISIBLE_DEVICES": "0",
            "OMP_NUM_THREADS": "2",
            "LC_ALL": "C",
            "PRUNEGATE_SIGNING_KEY": "pem",
            "PRUNEGATE_KEY_PASSPHRASE": "pw",
            "GITHUB_TOKEN": "t",
            "AWS_SECRET_ACCESS_KEY": "s",
            "TORCH_HOME": "/t",
            "CUDA_AUTH_TOKEN": "x",
            "SOMETHING_ELSE": "y",
        }
    )
    assert {"PATH", "HOME", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "LC_ALL", "TORCH_HOME"} <= set(environment)
    assert not {
        "PRUNEGATE_SIGNING_KEY",
        "PRUNEGATE_KEY_PASSPHRASE",
        "GITHUB_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "CUDA_AUTH_TOKEN",
        "SOMETHING_ELSE",
    } & set(environment)
    assert str(Path(__file__).resolve().parents[1]) in environment["PYTHONPATH"].split(os.pathsep)


def test_isolated_and_in_process_runs_give_the_same_predicate(case, capsys, save_torchscript, colour_net) -> None:
    folder, policy = case
    save_torchscript(colour_net(), folder / "dense.pt")
    predicates = {}
    for isolation in ("auto", "off"):
        document = policy(
            "dense.pt",
            runtime={"isolation": isolation, "device": "cpu", "workers": 0, "backend": "torch", "batch_size": 5},
            suite={"noise": [{"kind": "uniform", "levels": [0.2]}]},
        )
        report = folder / "out" / f"{isolation}.json"
        code, _, err = _run(capsys, "check", "-p", document, "-o", report)
        assert code in (0, 1), err
        predicate = read_envelope(report.read_text(), "r")[2]["predicate"]
        for record in predicate["models"].values():
            record.pop("isolation")
        for name in ("timing", "options", "policy"):
            predicate.pop(name)
        predicates[isolation] = predicate
    for name in predicates["auto"]:  # the same bits: a model sees its input laid out as before
        assert predicates["auto"][name] == predicates["off"][name], name


def test_a_system_without_descriptor_passing_is_told_to_turn_isolation_off(monkeypatch) -> None:
    import socket

    from prunegate.errors import DeviceError
    from prunegate.runners.isolated import Zygote

    monkeypatch.delattr(socket, "send_fds")
    with pytest.raises(DeviceError, match="runtime.isolation: off"):
        Zygote()


def test_an_isolated_model_asks_prunegate_for_every_process_timing(
    tmp_path: Path, save_torchscript, colour_net
) -> None:
    """--backend auto under torchrun: the model's process sends its timing to prunegate, which
    gathers every process's (the function never travels to the model's process) and sends them back."""
    from prunegate.policy import ModelSpec
    from prunegate.runners import LoadOptions, load_runner, start_isolated
    from prunegate.runners.isolated import InputArena

    path = save_torchscript(colour_net(), tmp_path / "dense.pt")
    seen = []

    def gather(measured: dict) -> list:  # this process, and another one where ONNX Runtime is slow
        seen.append(measured)
        return [measured, {"reason": None, "seconds": {"torch": 1e-9, "onnx": 10.0}, "batch": 16}]

    options = LoadOptions(
        base_dir=tmp_path,
        backend="auto",
        device=torch.device("cpu"),
        allow_pickle=False,
        allow_fallback=False,
        input_size=8,
        batch_size=16,
        gather=gather,
    )
    arena = InputArena()
    runner = start_isolated(ModelSpec(path=path.name), path, "models.dense", options, arena=arena).finish_loading()
    try:
        record = runner.record
        assert len(seen) == 1 and set(seen[0]["seconds"]) == {"torch", "onnx"}
        assert record.backend == "torch" and record.backend_choice is not None
        assert "mean of 2 processes" in record.backend_choice.reason and record.backend_choice.batch == 16
        assert record.isolation is not None and record.isolation.process is True
        in_process = load_runner(ModelSpec(path=path.name), path, "models.dense", options).record
        for key in ("path", "sha256", "format", "parameters", "nonzero_parameters", "sparsity", "arch", "device"):
            assert getattr(record, key) == getattr(in_process, key), key
        x = torch.rand(3, 3, 8, 8)
        torch.testing.assert_close(runner(x), load_runner(ModelSpec(path=path.name), path, "models.dense", options)(x))
    finally:
        runner.close()
        arena.close()
