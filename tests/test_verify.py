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


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signed")
    rng = np.random.default_rng(0)
    labels = np.arange(9) % 3
    images = rng.integers(0, 100, size=(9, 8, 8, 3))
    for i, label in enumerate(labels):
        images[i, :, :, label] += 120
    np.savez(folder / "data.npz", images=images.astype(np.uint8), labels=labels)
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
    code = main(["check", "-p", str(folder / "policy.yaml"), "--key", str(folder / "key.pem"),
                 "-o", str(folder / "report.json"), "-q"])
    assert code == 0
    return folder


def _verify(folder, report_text: str, *extra: str, key: str = "key.pub") -> int:
    path = folder / "candidate.json"
    path.write_text(report_text)
    return main(["verify", str(path), "--key", str(folder / key), *extra])


def _pae(payload_type: str, payload: bytes) -> bytes:
    return b"DSSEv1 " + str(len(payload_type)).encode() + b" " + payload_type.encode() + b" " + \
        str(len(payload)).encode() + b" " + payload


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
    code = main(["verify", str(signed / "report.json"), "--key", str(signed / "key.pub"),
                 "--dense", str(signed / "dense.pt"), "--pruned", str(signed / "pruned.pt"),
                 "--policy", str(signed / "policy.yaml")])
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
