"""The report's envelope: an in-toto Statement v1 in a DSSE envelope.

The subjects are the pruned and dense model files with their sha256; the predicate is the
report. Signing (Ed25519) is optional here; `prunegate verify` rejects unsigned envelopes.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from prunegate.errors import ReportError

from .schema import PREDICATE_TYPE, Report

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what a signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def statement(report: Report) -> dict:
    subjects = [
        {"name": Path(m.path).name, "digest": {"sha256": m.sha256}, "annotations": {"role": role}}
        for role, m in (("pruned", report.models.pruned), ("dense", report.models.dense))
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": report.model_dump(mode="json"),
    }


def statement_bytes(report: Report) -> bytes:
    return json.dumps(statement(report), indent=None, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def envelope(payload: bytes, signatures: list[dict] | None = None) -> dict:
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": signatures or [],
    }


def envelope_json(envelope_dict: dict) -> str:
    return json.dumps(envelope_dict, indent=2) + "\n"


def read_envelope(text: str, file: str) -> tuple[dict, bytes, dict]:
    """(envelope, payload bytes, statement) from a report file's text; ReportError if malformed."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"not JSON ({exc.msg} at line {exc.lineno})", file=file) from None
    if not isinstance(data, dict) or not {"payloadType", "payload", "signatures"} <= set(data):
        raise ReportError("not a DSSE envelope (needs payloadType, payload, signatures)", file=file)
    if not isinstance(data["payload"], str) or not isinstance(data["signatures"], list):
        raise ReportError("malformed envelope: payload must be a string and signatures a list", file=file)
    try:
        payload = base64.b64decode(data["payload"], validate=True)
        decoded = json.loads(payload)
    except (ValueError, json.JSONDecodeError):
        raise ReportError("the payload is not base64-encoded JSON", file=file, field="payload") from None
    if not isinstance(decoded, dict) or decoded.get("predicateType") != PREDICATE_TYPE:
        raise ReportError(f"the payload is not a prunegate statement (predicateType {PREDICATE_TYPE})",
                          file=file, field="payload")
    return data, payload, decoded
