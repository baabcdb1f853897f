"""Signed reports and offline verification, as a reviewer uses them.

The valid report is checked with `cryptography`'s own Ed25519 verify over a PAE computed here,
independently of prunegate's; every kind of tampering must give exit 1 and say what failed.
"""

from __future__ import annotations

import base64
import json
import os
import stat

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from prunegate.cli import main


class MeanColour(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * 10.0


def _write_colour_npz(path) -> None:
    """9 images whose class is their brightest channel."""
    rng = np.random.default_rng(0)
    labels = np.arange(9) % 3
    images = rng.integers(0, 100, size=(9, 8, 8, 3))
    for i, label in enumerate(labels):
        images[i, :, :, label] += 120
    np.savez(path, images=images.astype(np.uint8), labels=labels)


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signed")
    _write_colour_npz(folder / "data.npz")
    torch.jit.save(torch.jit.script(MeanColour()), folder / "dense.pt")
    torch.jit.save(torch.jit.script(torch.nn.Sequential(MeanColour(), torch.nn.Identity())), folder / "pruned.pt")
    (folder / "policy.yaml").write_text("""
version: 1
name: signed
models: {dense: dense.pt, pruned: pruned.pt, input: {size: 8, mean: [0, 0, 0], std: [1, 1, 1]}}
data: {test: {format: npz, path: data.npz}}
gate: {rules: [{name: clean, tasks: clean, metric: accuracy_drop, max: 0.01}]}
require_signature: true
runtime: {workers: 0}
""")
    assert main(["keygen", "--out", str(folder / "key")]) == 0
    assert main(["keygen", "--out", str(folder / "other")]) == 0
    code = main(
        [
            "check",
            "-p",
            str(folder / "policy.yaml"),
            "--key",
            str(folder / "key.pem"),
            "-o",
            str(folder / "report.json"),
            "-q",
        ]
    )
    assert code == 0
    return folder


def _verify(folder, report_text: str, *extra: str, key: str = "key.pub") -> int:
    path = folder / "candidate.json"
    path.write_text(report_text)
    return main(["verify", str(path), "--key", str(folder / key), *extra])


def _pae(payload_type: str, payload: bytes) -> bytes:
    return (
        b"DSSEv1 "
        + str(len(payload_type)).encode()
        + b" "
        + payload_type.encode()
        + b" "
        + str(len(payload)).encode()
        + b" "
        + payload
    )


def test_key_files(signed):
    assert stat.S_IMODE(os.stat(signed / "key.pem").st_mode) == 0o600
    assert b"PRIVATE KEY" in (signed / "key.pem").read_bytes()
    assert b"PUBLIC KEY" in (signed / "key.pub").read_bytes()
    assert main(["keygen", "--out", str(signed / "key")]) == 2  # never overwrites a key


def test_valid_report_verifies_with_cryptography_itself(signed, capsys):
    envelope = json.loads((signed / "report.json").read_text())
    payload = base64.b64decode(envelope["payload"])
    public = load_pem_public_key((signed / "key.pub").read_bytes())
    public.verify(base64.b64decode(envelope["signatures"][0]["sig"]), _pae(envelope["payloadType"], payload))
    code = main(
        [
            "verify",
            str(signed / "report.json"),
            "--key",
            str(signed / "key.pub"),
            "--dense",
            str(signed / "dense.pt"),
            "--pruned",
            str(signed / "pruned.pt"),
            "--policy",
            str(signed / "policy.yaml"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "VERIFIED" in out and "verdict PASS" in out and "dense.pt" in out and "pruned.pt" in out
    assert "is the policy" in out and "signature" in out


@pytest.mark.parametrize("position", range(0, 2000, 97))
def test_every_single_byte_change_of_the_payload_is_rejected(signed, capsys, position):
    envelope = json.loads((signed / "report.json").read_text())
    payload = bytearray(base64.b64decode(envelope["payload"]))
    position %= len(payload)
    payload[position] ^= 0x01
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()
    assert _verify(signed, json.dumps(envelope)) == 1
    assert "no signature verifies" in capsys.readouterr().err


def test_every_change_of_the_base64_text_is_rejected(signed, capsys):
    envelope = json.loads((signed / "report.json").read_text())
    text = envelope["payload"]
    for position in (0, len(text) // 2, len(text) - 2, len(text) - 1):
        for replacement in "AQw+":
            if text[position] == replacement:
                continue
            envelope["payload"] = text[:position] + replacement + text[position + 1 :]
            assert _verify(signed, json.dumps(envelope)) == 1
    assert "NOT VERIFIED" in capsys.readouterr().err


def test_swapped_signature_other_key_payload_type_unsigned(signed, capsys):
    envelope = json.loads((signed / "report.json").read_text())
    other = dict(envelope, signatures=[dict(envelope["signatures"][0], sig=base64.b64encode(b"\x00" * 64).decode())])
    assert _verify(signed, json.dumps(other)) == 1
    assert _verify(signed, json.dumps(envelope), key="other.pub") == 1
    assert _verify(signed, json.dumps(dict(envelope, payloadType="application/json"))) == 1
    assert _verify(signed, json.dumps(dict(envelope, signatures=[]))) == 1
    err = capsys.readouterr().err
    assert "no signature verifies" in err and "unsigned" in err


def test_model_or_policy_that_differs_from_the_subject(signed, tmp_path, capsys):
    text = (signed / "report.json").read_text()
    assert _verify(signed, text, "--dense", str(signed / "pruned.pt")) == 1
    assert "dense model" in capsys.readouterr().err
    changed = tmp_path / "policy.yaml"
    changed.write_text((signed / "policy.yaml").read_text() + "\n")
    assert _verify(signed, text, "--policy", str(changed)) == 1
    assert "policy" in capsys.readouterr().err


def test_unreadable_inputs_exit_2(signed, capsys):
    assert _verify(signed, "not json") == 2
    assert _verify(signed, json.dumps({"hello": 1})) == 2
    assert main(["verify", str(signed / "missing.json"), "--key", str(signed / "key.pub")]) == 2
    assert main(["verify", str(signed / "report.json"), "--key", str(signed / "data.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 4


def test_require_signature_without_key(signed, capsys, monkeypatch):
    monkeypatch.delenv("PRUNEGATE_SIGNING_KEY", raising=False)
    out = signed / "unsigned.json"
    assert main(["check", "-p", str(signed / "policy.yaml"), "-o", str(out), "-q"]) == 2
    assert "require_signature" in capsys.readouterr().err and not out.exists()


def test_key_from_environment_with_passphrase(signed, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRUNEGATE_KEY_PASSPHRASE", "s3cret")
    assert main(["keygen", "--out", str(tmp_path / "enc"), "--passphrase"]) == 0
    monkeypatch.setenv("PRUNEGATE_SIGNING_KEY", (tmp_path / "enc.pem").read_text())
    report = tmp_path / "r.json"
    assert main(["check", "-p", str(signed / "policy.yaml"), "-o", str(report), "-q"]) == 0
    assert main(["verify", str(report), "--key", str(tmp_path / "enc.pub")]) == 0
    monkeypatch.setenv("PRUNEGATE_KEY_PASSPHRASE", "wrong")
    assert main(["check", "-p", str(signed / "policy.yaml"), "-o", str(tmp_path / "x.json"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "wrong passphrase" in err and "s3cret" not in err and "PRIVATE KEY" not in err
    assert not (tmp_path / "x.json").exists()
    assert "s3cret" not in report.read_text()


def test_report_show(signed, capsys):
    assert main(["report", "show", str(signed / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "signed by key" in out and "dense.pt" in out
    assert main(["report", "show", str(signed / "report.json"), "--json"]) == 0
    statement = json.loads(capsys.readouterr().out)
    assert statement["predicate"]["verdict"] == "pass"


def test_report_schema_describes_the_predicate(signed, capsys):
    import jsonschema

    assert main(["report", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    statement = json.loads(base64.b64decode(json.loads((signed / "report.json").read_text())["payload"]))
    jsonschema.validate(statement["predicate"], schema)
    assert {"verdict", "models", "tasks", "rules", "policy", "data", "environment"} <= set(schema["required"])


# --- duplicate keys and hostile text in a report ------------------------------------------------


def _resigned(folder, payload: bytes) -> str:
    """An envelope over `payload`, signed with the genuine key: the signature part is fine."""
    from prunegate.report import keys
    from prunegate.report.attest import envelope_json, sign

    key = keys.load_private((folder / "key.pem").read_bytes(), None, "key.pem")
    return envelope_json(sign(payload, key))


def _payload(folder) -> bytes:
    return base64.b64decode(json.loads((folder / "report.json").read_text())["payload"])


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_a_forged_payload_before_the_genuine_one_does_not_verify(signed, capsys):
    text = (signed / "report.json").read_text()
    genuine = json.loads(text)
    statement = json.loads(_payload(signed))
    statement["predicate"]["verdict"] = "fail"
    forged = base64.b64encode(json.dumps(statement).encode()).decode()
    doubled = text.replace('"payload": ', f'"payload": "{forged}",\n  "payload": ', 1)
    assert json.loads(doubled)["payload"] == genuine["payload"]  # Python alone would read the genuine one
    assert _verify(signed, doubled) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(signed / "candidate.json") in line and "repeats the key 'payload'" in line


def test_a_signed_payload_that_repeats_a_key_is_unreadable(signed, capsys):
    payload = _payload(signed).replace(b'"verdict":"pass"', b'"verdict":"fail","verdict":"pass"', 1)
    assert payload != _payload(signed)
    assert _verify(signed, _resigned(signed, payload)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(signed / "candidate.json") in line and "payload" in line and "'verdict'" in line
    assert main(["report", "show", str(signed / "candidate.json")]) == 2
    assert "'verdict'" in _one_error_line(capsys.readouterr().err)


HOSTILE = "a\x1b[2Jb [bold red]x[/] \r\nerror: forged\u202e"


def test_verify_and_report_show_print_the_reports_own_text_literally(signed, capsys):
    statement = json.loads(_payload(signed))
    statement["predicate"]["policy"]["name"] = HOSTILE
    statement["predicate"]["rules"][0]["name"] = HOSTILE
    statement["predicate"]["timing"]["started"] = HOSTILE
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    assert _verify(signed, _resigned(signed, payload)) == 0
    out, err = capsys.readouterr()
    assert main(["report", "show", str(signed / "candidate.json")]) == 0
    shown = capsys.readouterr().out
    for text in (out, shown):
        assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
        assert "a\\x1b[2Jb [bold red]x[/] \\r\\nerror: forged\\u202e" in text  # escaped, markup shown literally
        assert not any(line.startswith("error: forged") for line in text.splitlines())
    verified = next(line for line in out.splitlines() if line.startswith("VERIFIED"))
    assert verified.count("a\\x1b[2Jb") == 2  # the policy's name and the time, on the one line


def test_a_signing_key_others_can_read_is_used_with_one_warning(signed, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PRUNEGATE_SIGNING_KEY", raising=False)
    key = tmp_path / "key.pem"
    key.write_bytes((signed / "key.pem").read_bytes())
    key.chmod(0o644)
    report = tmp_path / "r.json"
    assert main(["check", "-p", str(signed / "policy.yaml"), "--key", str(key), "-o", str(report), "-q"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: "), lines
    assert str(key) in lines[0] and "0644" in lines[0] and "chmod 600" in lines[0]
    assert main(["verify", str(report), "--key", str(signed / "key.pub")]) == 0
    key.chmod(0o600)
    assert main(["check", "-p", str(signed / "policy.yaml"), "--key", str(key), "-o", str(report), "-q"]) == 0
    assert capsys.readouterr().err == ""


# --- what ran: overrides and arch code (issue 13) ----------------------------------------------


def test_verify_refuses_a_policy_the_run_overrode_and_lists_the_overrides(signed, capsys) -> None:
    """`check --limit 1` decides on one image: verify --policy must not call that policy verified."""
    report = signed / "limited.json"
    assert (
        main(
            [
                "check",
                "-p",
                str(signed / "policy.yaml"),
                "--key",
                str(signed / "key.pem"),
                "-o",
                str(report),
                "--limit",
                "1",
                "--workers",
                "1",
                "-q",
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = main(["verify", str(report), "--key", str(signed / "key.pub"), "--policy", str(signed / "policy.yaml")])
    out, err = capsys.readouterr()
    assert code == 1
    assert "override: data.limit: ran with 1 (the policy says unset)" in out
    assert "override: runtime.workers: ran with 1 (the policy says 0)" in out
    assert "NOT VERIFIED" in err and "data.limit" in err and "runtime.workers" not in err.split("(")[1]
    code = main(
        [
            "verify",
            str(report),
            "--key",
            str(signed / "key.pub"),
            "--policy",
            str(signed / "policy.yaml"),
            "--allow-overrides",
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0 and "override: data.limit" in out and "VERIFIED" in out
    code = main(
        [
            "verify",
            str(signed / "report.json"),
            "--key",
            str(signed / "key.pub"),
            "--policy",
            str(signed / "policy.yaml"),
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0 and "the run used the policy as it is" in out and "override" not in out


def test_a_model_path_override_is_settled_by_checking_the_model(signed, capsys) -> None:
    report = signed / "other-path.json"
    copy = signed / "copies"
    copy.mkdir(exist_ok=True)
    (copy / "pruned.pt").write_bytes((signed / "pruned.pt").read_bytes())
    assert (
        main(
            [
                "check",
                "-p",
                str(signed / "policy.yaml"),
                "--key",
                str(signed / "key.pem"),
                "-o",
                str(report),
                "--pruned",
                str(copy / "pruned.pt"),
                "-q",
            ]
        )
        == 0
    )
    capsys.readouterr()
    base = ["verify", str(report), "--key", str(signed / "key.pub"), "--policy", str(signed / "policy.yaml")]
    assert main(base) == 1
    assert "models.pruned.path" in capsys.readouterr().err
    assert main([*base, "--pruned", str(copy / "pruned.pt")]) == 0
    assert "override: models.pruned.path" in capsys.readouterr().out


ARCH = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.mean(dim=(2, 3)) * self.scale * {factor}


def build():
    return Net()
"""


def test_the_arch_code_is_pinned_and_a_swapped_arch_does_not_verify(tmp_path, capsys) -> None:
    """Two runs with the same weights and policy but another arch file (one that ignores the
    weights) are told apart: the arch's sha256 is a subject, and verify --arch checks it."""
    _write_colour_npz(tmp_path / "data.npz")
    torch.save({"scale": torch.ones(1)}, tmp_path / "weights.pth")
    (tmp_path / "arch.py").write_text(ARCH.format(factor="10.0"))
    (tmp_path / "policy.yaml").write_text("""
version: 1
name: arch
models: {dense: {path: weights.pth, arch: "arch.py:build"}, pruned: {path: weights.pth, arch: "arch.py:build"},
         input: {size: 8, mean: [0, 0, 0], std: [1, 1, 1]}}
data: {test: {format: npz, path: data.npz}}
gate: {rules: [{name: clean, tasks: clean, metric: accuracy_drop, max: 0.01}]}
runtime: {workers: 0}
""")
    assert main(["keygen", "--out", str(tmp_path / "key")]) == 0
    original = (tmp_path / "arch.py").read_bytes()
    assert (
        main(
            [
                "check",
                "-p",
                str(tmp_path / "policy.yaml"),
                "--key",
                str(tmp_path / "key.pem"),
                "-o",
                str(tmp_path / "one.json"),
                "-q",
            ]
        )
        == 0
    )
    (tmp_path / "arch.py").write_text(ARCH.format(factor="-10.0"))  # the swap: another network, same weights
    assert (
        main(
            [
                "check",
                "-p",
                str(tmp_path / "policy.yaml"),
                "--key",
                str(tmp_path / "key.pem"),
                "-o",
                str(tmp_path / "two.json"),
                "-q",
                "--no-sanity-check",  # the swapped network is wrong on every image: at chance
            ]
        )
        == 0
    )
    swapped = tmp_path / "arch.py"
    (tmp_path / "original.py").write_bytes(original)
    capsys.readouterr()
    statement = json.loads(base64.b64decode(json.loads((tmp_path / "one.json").read_text())["payload"]))
    arch_subjects = [s for s in statement["subject"] if s["annotations"]["role"] == "arch"]
    assert len(arch_subjects) == 1 and arch_subjects[0]["annotations"]["models"] == ["dense", "pruned"]
    record = statement["predicate"]["models"]["pruned"]["arch_source"]
    assert (
        record["kind"] == "file"
        and record["external"] is False
        and record["sha256"] == arch_subjects[0]["digest"]["sha256"]
    )
    common = [
        "--key",
        str(tmp_path / "key.pub"),
        "--dense",
        str(tmp_path / "weights.pth"),
        "--policy",
        str(tmp_path / "policy.yaml"),
    ]
    assert main(["verify", str(tmp_path / "one.json"), *common, "--arch", str(tmp_path / "original.py")]) == 0
    assert main(["verify", str(tmp_path / "two.json"), *common, "--arch", str(tmp_path / "original.py")]) == 1
    assert "not arch code this report pins" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "two.json"), *common, "--arch", str(swapped)]) == 0
    assert main(["verify", str(tmp_path / "two.json"), *common]) == 0  # without --arch: said, not checked
    assert "arch code of the dense and pruned model not checked" in capsys.readouterr().out


SCALED_ARCH = """
import torch


class Net(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.mean(dim=(2, 3)) * self.scale * self.factor


def build(factor, *, sign=1):
    return Net(factor * sign)
"""


def test_an_arch_call_is_recorded_in_the_report_and_its_file_verifies(tmp_path, capsys) -> None:
    """models.arch {fn, args, kwargs}: the report's arch_source shows the call (a reviewer sees
    what was built), the arch file is a subject as for the string form, and verify --arch checks it."""
    _write_colour_npz(tmp_path / "data.npz")
    torch.save({"scale": torch.ones(1)}, tmp_path / "weights.pth")
    (tmp_path / "arch.py").write_text(SCALED_ARCH)
    (tmp_path / "policy.yaml").write_text("""
version: 1
name: arch-call
models:
  dense: {path: weights.pth, arch: {fn: "arch.py:build", args: [10.0]}}
  pruned: weights.pth
  arch: {fn: "arch.py:build", args: [10.0], kwargs: {sign: -1}}
  input: {size: 8, mean: [0, 0, 0], std: [1, 1, 1]}
data: {test: {format: npz, path: data.npz}}
gate: {rules: [{name: clean, tasks: clean, metric: accuracy_drop, max: 0.01}]}
runtime: {workers: 0, backend: torch}
""")
    assert main(["keygen", "--out", str(tmp_path / "key")]) == 0
    report = tmp_path / "report.json"
    code = main(
        ["check", "-p", str(tmp_path / "policy.yaml"), "--key", str(tmp_path / "key.pem"), "-o", str(report), "-q"]
    )
    assert code == 1  # the pruned model, built with sign -1, predicts the darkest channel: all wrong
    statement = json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))
    models = statement["predicate"]["models"]
    assert models["dense"]["arch"] == models["pruned"]["arch"] == "arch.py:build"
    assert models["dense"]["arch_source"]["args"] == [10.0] and "kwargs" not in models["dense"]["arch_source"]
    assert models["pruned"]["arch_source"]["kwargs"] == {"sign": -1}
    results = {t["name"]: t for t in statement["predicate"]["tasks"]}
    assert results["clean"]["dense"]["accuracy"] == 1.0 and results["clean"]["pruned"]["accuracy"] == 0.0
    arch_subjects = [s for s in statement["subject"] if s["annotations"]["role"] == "arch"]
    assert len(arch_subjects) == 1 and arch_subjects[0]["annotations"]["models"] == ["dense", "pruned"]
    capsys.readouterr()
    key = ["--key", str(tmp_path / "key.pub")]
    policy = ["--policy", str(tmp_path / "policy.yaml")]
    assert main(["verify", str(report), *key, "--arch", str(tmp_path / "arch.py"), *policy]) == 0
    assert "is the arch code of the dense and pruned model" in capsys.readouterr().out


def test_an_arch_file_outside_the_policy_folder_needs_the_opt_in(tmp_path, capsys) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "arch.py").write_text(ARCH.format(factor="10.0"))
    folder = tmp_path / "project"
    folder.mkdir()
    _write_colour_npz(folder / "data.npz")  # (the model is right on it: at chance, the sanity check would stop it)
    torch.save({"scale": torch.ones(1)}, folder / "weights.pth")
    (folder / "policy.yaml").write_text(f"""
version: 1
name: outside
models: {{dense: weights.pth, pruned: weights.pth, arch: "{outside / "arch.py"}:build",
         input: {{size: 8, mean: [0, 0, 0], std: [1, 1, 1]}}}}
data: {{test: {{format: npz, path: data.npz}}}}
gate: {{rules: [{{name: clean, tasks: clean, metric: accuracy_drop, max: 0.5}}]}}
runtime: {{workers: 0}}
""")
    report = folder / "report.json"
    code = main(["check", "-p", str(folder / "policy.yaml"), "-o", str(report), "-q"])
    _, err = capsys.readouterr()
    assert code == 2 and "--allow-external-arch" in err and "models.dense.arch" in err and not report.exists()
    code = main(["check", "-p", str(folder / "policy.yaml"), "-o", str(report), "-q", "--allow-external-arch"])
    assert code in (0, 1)
    predicate = json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))["predicate"]
    assert predicate["models"]["dense"]["arch_source"]["external"] is True
    assert predicate["options"]["allow_external_arch"] is True


def test_a_module_arch_records_its_distribution_and_version(signed, tmp_path) -> None:
    from prunegate import __version__
    from prunegate.runners.archsource import locate_arch

    record = locate_arch(
        "prunegate.archs.cifar_resnet:resnet20",
        tmp_path,
        file=tmp_path / "w.pth",
        field="models.dense.arch",
        allow_external=False,
    )
    assert record["kind"] == "module" and record["distribution"] == "prunegate" and record["version"] == __version__
    assert record["path"].endswith("cifar_resnet.py") and len(record["sha256"]) == 64


class WrongColour(torch.nn.Module):
    """Predicts the darkest channel: every image of the colour set wrong."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -x.mean(dim=(2, 3)) * 10.0


@pytest.fixture(scope="module")
def unsigned(signed, tmp_path_factory):
    """Unsigned reports of the colour pair: a PASS (pass.json) and a FAIL (fail.json)."""
    folder = tmp_path_factory.mktemp("unsigned")
    torch.jit.save(torch.jit.script(WrongColour()), folder / "wrong.pt")
    policy = (signed / "policy.yaml").read_text().replace("require_signature: true\n", "")
    (folder / "policy.yaml").write_text(
        policy.replace("dense.pt", str(signed / "dense.pt"))
        .replace("pruned.pt", str(signed / "pruned.pt"))
        .replace("data.npz", str(signed / "data.npz"))
    )
    env = os.environ.pop("PRUNEGATE_SIGNING_KEY", None)
    try:
        assert main(["check", "-p", str(folder / "policy.yaml"), "-o", str(folder / "pass.json"), "-q"]) == 0
        pruned = ["--pruned", str(folder / "wrong.pt")]
        assert main(["check", "-p", str(folder / "policy.yaml"), *pruned, "-o", str(folder / "fail.json"), "-q"]) == 1
    finally:
        if env is not None:
            os.environ["PRUNEGATE_SIGNING_KEY"] = env
    return folder


def test_sign_adds_a_signature_over_the_unchanged_statement(signed, unsigned, tmp_path, capsys):
    before = json.loads((unsigned / "pass.json").read_text())
    assert before["signatures"] == []
    out = tmp_path / "signed.json"
    assert main(["sign", str(unsigned / "pass.json"), "--key", str(signed / "key.pem"), "-o", str(out)]) == 0
    assert (
        "signed" in capsys.readouterr().out
        and (unsigned / "pass.json").read_text() == json.dumps(before, indent=2) + "\n"
    )
    after = json.loads(out.read_text())
    assert after["payload"] == before["payload"] and after["payloadType"] == before["payloadType"]
    public = load_pem_public_key((signed / "key.pub").read_bytes())
    public.verify(
        base64.b64decode(after["signatures"][0]["sig"]), _pae(after["payloadType"], base64.b64decode(after["payload"]))
    )
    assert main(["verify", str(out), "--key", str(signed / "key.pub")]) == 0
    # in place by default; a second signing is refused
    copy = tmp_path / "copy.json"
    copy.write_text((unsigned / "pass.json").read_text())
    assert main(["sign", str(copy), "--key", str(signed / "key.pem")]) == 0
    assert main(["verify", str(copy), "--key", str(signed / "key.pub")]) == 0
    assert main(["sign", str(copy), "--key", str(signed / "key.pem")]) == 2
    assert "already signed" in capsys.readouterr().err


def test_sign_refuses_what_is_not_a_report_or_has_no_key(signed, unsigned, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PRUNEGATE_SIGNING_KEY", raising=False)
    envelope = json.loads((unsigned / "pass.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["verdict"] = "maybe"  # not a prunegate report any more
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(dict(envelope, payload=base64.b64encode(json.dumps(statement).encode()).decode())))
    text = forged.read_text()
    assert main(["sign", str(forged), "--key", str(signed / "key.pem")]) == 2
    assert forged.read_text() == text  # nothing written
    assert main(["sign", str(unsigned / "pass.json")]) == 2
    assert main(["sign", str(tmp_path / "missing.json"), "--key", str(signed / "key.pem")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 3
    assert "cannot be signed" in err and "verdict" in err and "--key" in err


def test_require_pass_fails_a_validly_signed_fail_report(signed, unsigned, tmp_path, capsys):
    for name in ("pass", "fail"):
        assert (
            main(
                [
                    "sign",
                    str(unsigned / f"{name}.json"),
                    "--key",
                    str(signed / "key.pem"),
                    "-o",
                    str(tmp_path / f"{name}.json"),
                ]
            )
            == 0
        )
    key = ["--key", str(signed / "key.pub")]
    assert main(["verify", str(tmp_path / "fail.json"), *key]) == 0  # a valid signature over a FAIL
    assert "verdict FAIL" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "fail.json"), *key, "--require-pass"]) == 1
    assert "NOT PASSED" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "pass.json"), *key, "--require-pass"]) == 0


def test_verify_refuses_a_private_key(signed, capsys):
    assert main(["verify", str(signed / "report.json"), "--key", str(signed / "key.pem")]) == 2
    err = capsys.readouterr().err
    assert "is a private key" in err and "key.pub" not in err.split("key.pem")[0]
