"""The report's envelope: an in-toto Statement v1 in a DSSE envelope.

The subjects are the pruned and dense model files with their sha256; the predicate is the
report. Signing (Ed25519) is optional here; `prunegate verify` rejects unsigned envelopes.
"""

from __future__ import annotations

import base64
import json
import re
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


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str | bytes) -> object:
    """json.loads, but refusing what is not JSON (NaN, Infinity) and raising ValueError (not
    RecursionError) for nesting too deep to parse."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_envelope(text: str, file: str) -> dict:
    """The envelope's fields from a report file's text; ReportError if it is not an envelope."""
    try:
        data = strict_json(text)
    except ValueError as exc:
        where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else f" ({exc})"
        raise ReportError(f"not JSON{where}", file=file) from None
    if not isinstance(data, dict) or not {"payloadType", "payload", "signatures"} <= set(data):
        raise ReportError("not a DSSE envelope (needs payloadType, payload, signatures)", file=file)
    if not isinstance(data["payload"], str) or not isinstance(data["signatures"], list):
        raise ReportError("malformed envelope: payload must be a string and signatures a list", file=file)
    return data


def read_envelope(text: str, file: str) -> tuple[dict, bytes, dict]:
    """(envelope, payload bytes, statement) from a report file's text; ReportError if malformed."""
    data = parse_envelope(text, file)
    try:
        payload = base64.b64decode(data["payload"], validate=True)
        decoded = strict_json(payload)
    except ValueError:  # binascii.Error, JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ReportError("the payload is not base64-encoded JSON", file=file, field="payload") from None
    if not isinstance(decoded, dict) or decoded.get("predicateType") != PREDICATE_TYPE:
        raise ReportError(f"the payload is not a prunegate statement (predicateType {PREDICATE_TYPE})",
                          file=file, field="payload")
    return data, payload, decoded


def sign(payload: bytes, key) -> dict:
    """A signed envelope over `payload` with an Ed25519 private key."""
    from .keys import fingerprint

    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    return envelope(payload, [{"keyid": fingerprint(key.public_key()), "sig": base64.b64encode(signature).decode()}])


_SHA256 = re.compile(r"[0-9a-f]{64}")


def subject_digests(subjects: object) -> dict[str, str] | None:
    """{'dense': sha256, 'pruned': sha256} when `subjects` is exactly the two model subjects a
    prunegate statement has (each {name, digest: {sha256}, annotations: {role}}); else None."""
    if not isinstance(subjects, list) or len(subjects) != 2:
        return None
    roles: dict[str, str] = {}
    for subject in subjects:
        if not isinstance(subject, dict) or not isinstance(subject.get("name"), str):
            return None
        annotations, digest = subject.get("annotations"), subject.get("digest")
        if not isinstance(annotations, dict) or not isinstance(digest, dict):
            return None
        role, sha256 = annotations.get("role"), digest.get("sha256")
        if role not in ("dense", "pruned") or role in roles:
            return None
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            return None
        roles[role] = sha256
    return roles


class Verification:
    """What `verify_envelope` established, or the first thing that failed."""

    def __init__(self) -> None:
        self.checks: list[str] = []
        self.failure: str | None = None
        self.statement: dict | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def fail(self, reason: str) -> Verification:
        self.failure = reason
        return self


def verify_envelope(data: dict, public_key) -> Verification:
    """Check signature first (over the exact payload bytes), then the statement's structure.

    `data` must already be an envelope-shaped dict (see `parse_envelope`)."""
    from cryptography.exceptions import InvalidSignature

    from .keys import fingerprint

    result = Verification()
    if not data["signatures"]:
        return result.fail("the report is unsigned")
    encoded = data["payload"]
    try:
        payload = base64.b64decode(encoded, validate=True)
    except ValueError:
        return result.fail("the payload is not valid base64 (the report was altered)")
    if base64.b64encode(payload).decode("ascii") != encoded:
        return result.fail("the payload's base64 is not canonical (the report was altered)")
    keyid = fingerprint(public_key)
    signed = False
    for entry in data["signatures"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("sig"), str):
            continue
        try:
            signature = base64.b64decode(entry["sig"], validate=True)
            public_key.verify(signature, pae(str(data["payloadType"]), payload))
            signed = True
            break
        except (ValueError, InvalidSignature):
            continue
    if not signed:
        return result.fail(f"no signature verifies with key {keyid[:16]} (altered report, or another key)")
    result.checks.append(f"Ed25519 signature by key {keyid[:16]}… over the payload")
    if data["payloadType"] != PAYLOAD_TYPE:
        return result.fail(f"payloadType is {data['payloadType']!r}, not {PAYLOAD_TYPE!r}")
    try:
        decoded = strict_json(payload)
    except ValueError:
        return result.fail("the signed payload is not JSON")
    if not isinstance(decoded, dict) or decoded.get("_type") != STATEMENT_TYPE:
        return result.fail(f"the payload is not an in-toto Statement ({STATEMENT_TYPE})")
    if decoded.get("predicateType") != PREDICATE_TYPE:
        return result.fail(f"predicateType is {str(decoded.get('predicateType'))[:100]!r}, not {PREDICATE_TYPE!r}")
    roles = subject_digests(decoded.get("subject"))
    if roles is None:
        return result.fail("the statement's subjects are not the dense and pruned models with sha256 digests")
    try:
        report = Report.model_validate(decoded.get("predicate"))
    except Exception as exc:
        return result.fail(f"the predicate is not a valid prunegate report ({str(exc).splitlines()[0]})")
    recorded = {"dense": report.models.dense.sha256, "pruned": report.models.pruned.sha256}
    if recorded != roles:
        return result.fail("the statement's subjects and the report's models have different sha256 digests")
    result.checks.append("in-toto Statement v1 with the dense and pruned models as subjects; prunegate report predicate")
    result.statement = decoded
    return result
