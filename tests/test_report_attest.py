from __future__ import annotations

import base64
import json

import pytest

from prunegate.errors import ReportError
from prunegate.report.attest import (
    PAYLOAD_TYPE,
    STATEMENT_TYPE,
    envelope,
    envelope_json,
    pae,
    read_envelope,
    statement,
    statement_bytes,
)
from prunegate.report.schema import PREDICATE_TYPE, Report


def model_record(name: str, digest: str) -> dict:
    return {
        "path": f"/models/{name}",
        "sha256": digest,
        "format": "onnx",
        "parameters": 10,
        "nonzero_parameters": 4,
        "sparsity": 0.6,
        "backend": "onnxruntime",
        "device": "cpu",
    }


def sample_report() -> Report:
    side = {"accuracy": 0.5, "correct": 1, "nonfinite": 0}
    return Report(
        tool={"name": "prunegate", "version": "0"},
        verdict="pass",
        policy={"name": "p", "path": "/p.yaml", "sha256": "ab" * 32, "document": {"version": 1}},
        models={"dense": model_record("dense.onnx", "d" * 64), "pruned": model_record("pruned.onnx", "e" * 64)},
        data=[{"name": "test", "format": "npz", "path": "/t.npz", "size": 2, "used": 2, "sha256": "f" * 64}],
        seed=0,
        options={"device": "cpu"},
        tasks=[
            {
                "name": "clean",
                "kind": "clean",
                "group": "clean",
                "n": 2,
                "dense": side,
                "pruned": side,
                "accuracy_drop": 0.0,
                "agreement": 1.0,
                "softmax_l2": 0.0,
                "softmax_linf": 0.0,
            }
        ],
        rules=[
            {
                "name": "r",
                "metric": "accuracy_drop",
                "tasks": ["clean"],
                "aggregate": "each",
                "comparison": "max",
                "threshold": 0.01,
                "value": 0.0,
                "passed": True,
                "per_task": [{"task": "clean", "value": 0.0, "passed": True}],
            }
        ],
        environment={"python": "3"},
        timing={
            "started": "2026-01-01T00:00:00+00:00",
            "duration_s": 1.0,
            "data_s": 0.1,
            "shift_s": 0.0,
            "models_s": 0.2,
        },
    )


def test_pae_matches_the_dsse_spec_example() -> None:
    # DSSE protocol: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body, lengths as ASCII decimals.
    kind, body = "http://example.com/HelloWorld", b"hello world"
    assert len(kind) == 29 and len(body) == 11
    assert pae(kind, body) == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_pae_counts_bytes_not_characters() -> None:
    body = "é".encode()
    assert pae("t", body) == b"DSSEv1 1 t 2 " + body
    assert pae("", b"") == b"DSSEv1 0  0 "


def test_statement_names_both_models_and_carries_the_report() -> None:
    report = sample_report()
    data = statement(report)
    assert data["_type"] == STATEMENT_TYPE and data["predicateType"] == PREDICATE_TYPE
    assert data["subject"] == [
        {"name": "pruned.onnx", "digest": {"sha256": "e" * 64}, "annotations": {"role": "pruned"}},
        {"name": "dense.onnx", "digest": {"sha256": "d" * 64}, "annotations": {"role": "dense"}},
    ]
    assert data["predicate"] == report.model_dump(mode="json")


def test_statement_bytes_are_canonical() -> None:
    payload = statement_bytes(sample_report())
    assert payload == statement_bytes(sample_report())
    assert b"\n" not in payload and b'", "' not in payload and b'": ' not in payload  # compact
    decoded = json.loads(payload)
    assert decoded == statement(sample_report())
    assert list(decoded) == sorted(decoded) and list(decoded["predicate"]) == sorted(decoded["predicate"])


def test_envelope_round_trip() -> None:
    payload = statement_bytes(sample_report())
    text = envelope_json(envelope(payload))
    data, read_payload, decoded = read_envelope(text, "report.json")
    assert data["payloadType"] == PAYLOAD_TYPE and data["signatures"] == []
    assert read_payload == payload
    assert decoded == statement(sample_report())
    assert Report.model_validate(decoded["predicate"]) == sample_report()


def test_envelope_keeps_signatures() -> None:
    signatures = [{"keyid": "k", "sig": base64.b64encode(b"s").decode()}]
    data, _, _ = read_envelope(envelope_json(envelope(statement_bytes(sample_report()), signatures)), "r.json")
    assert data["signatures"] == signatures


def encoded(obj) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "not JSON"),
        ("", "not JSON"),
        ("[1, 2]", "not a DSSE envelope"),
        ('{"payload": "", "signatures": []}', "not a DSSE envelope"),
        ('{"payloadType": "x", "payload": 5, "signatures": []}', "payload must be a string"),
        ('{"payloadType": "x", "payload": "", "signatures": {}}', "signatures a list"),
        ('{"payloadType": "x", "payload": "***", "signatures": []}', "base64"),
        (
            json.dumps({"payloadType": "x", "payload": base64.b64encode(b"not json").decode(), "signatures": []}),
            "base64",
        ),
        (json.dumps({"payloadType": "x", "payload": encoded([1]), "signatures": []}), "not a prunegate statement"),
        (
            json.dumps(
                {
                    "payloadType": "x",
                    "payload": encoded({"predicateType": "https://slsa.dev/provenance/v1"}),
                    "signatures": [],
                }
            ),
            "not a prunegate statement",
        ),
    ],
)
def test_malformed_reports_are_report_errors_naming_the_file(text: str, expected: str) -> None:
    with pytest.raises(ReportError) as caught:
        read_envelope(text, "some/report.json")
    assert expected in str(caught.value) and "some/report.json" in str(caught.value)


# --- duplicate keys: a JSON object that names a key twice means two things, so it is refused ----


def _statement_json() -> str:
    return statement_bytes(sample_report()).decode()


@pytest.mark.parametrize(
    ("text", "where", "key"),
    [
        ('{"payloadType": "x", "payload": "e30=", "payload": "e30=", "signatures": []}', "the envelope", "payload"),
        ('{"payloadType": "x", "payload": "", "signatures": [{"sig": "a", "sig": "b"}]}', "the envelope", "sig"),
        (
            json.dumps(
                {
                    "payloadType": "x",
                    "signatures": [],
                    "payload": base64.b64encode(b'{"predicateType": "a", "predicateType": "b"}').decode(),
                }
            ),
            "the payload",
            "predicateType",
        ),
    ],
)
def test_duplicate_keys_in_the_envelope_or_its_payload_are_report_errors(text: str, where: str, key: str) -> None:
    from prunegate.report.attest import parse_envelope

    for read in (read_envelope, parse_envelope):
        with pytest.raises(ReportError) as caught:
            read(text, "some/report.json")
        message = str(caught.value)
        assert "some/report.json" in message and f"{where} repeats the key {key!r}" in message
        assert caught.value.exit_code == 2


def test_a_forged_payload_before_the_genuine_one_is_refused() -> None:
    genuine = envelope(statement_bytes(sample_report()))
    forged = json.loads(_statement_json())
    forged["predicate"]["verdict"] = "fail"
    text = envelope_json(genuine).replace(
        '"payload": ', f'"payload": "{base64.b64encode(json.dumps(forged).encode()).decode()}",\n  "payload": ', 1
    )
    assert json.loads(text)["payload"] == genuine["payload"]  # (Python's json keeps the last: the genuine one)
    with pytest.raises(ReportError, match="the envelope repeats the key 'payload'"):
        read_envelope(text, "report.json")


def test_a_statement_that_repeats_a_key_deep_inside_is_refused() -> None:
    text = _statement_json().replace('"verdict":"pass"', '"verdict":"fail","verdict":"pass"', 1)
    assert text != _statement_json()
    with pytest.raises(ReportError, match="the payload repeats the key 'verdict'") as caught:
        read_envelope(envelope_json(envelope(text.encode())), "report.json")
    assert caught.value.field == "payload"


def test_strict_json_refuses_duplicate_keys_at_any_depth_and_keeps_order_otherwise() -> None:
    from prunegate.report.attest import DuplicateKeyError, strict_json

    assert strict_json('{"b": 1, "a": {"c": [{"d": 1}, {"d": 2}]}}') == {"b": 1, "a": {"c": [{"d": 1}, {"d": 2}]}}
    assert list(strict_json('{"b": 1, "a": 2}')) == ["b", "a"]
    for text, key in (('{"a": 1, "a": 1}', "a"), ('[{"x": {"y": 1, "y": 2}}]', "y"), ('{"\\u0061": 1, "a": 2}', "a")):
        with pytest.raises(DuplicateKeyError) as caught:
            strict_json(text)
        assert caught.value.key == key and isinstance(caught.value, ValueError)
