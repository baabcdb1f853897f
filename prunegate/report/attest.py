"""The report's envelope: an in-toto Statement v1 in a DSSE envelope.

The subjects are the pruned and dense model files with their sha256; the predicate is the
report. Signing (Ed25519) is optional here; `prunegate verify` rejects unsigned envelopes.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from prunegate.errors import ReportError

from .schema import PREDICATE_TYPE, Report

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what a signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def arch_digests(report: Report) -> dict[str, tuple[str, list[str]]]:
    """sha256 -> (file name, the models it built) of the arch code the report pins."""
    found: dict[str, tuple[str, list[str]]] = {}
    for role, model in (("dense", report.models.dense), ("pruned", report.models.pruned)):
        source = model.arch_source
        if source is not None and source.sha256:
            name = Path(source.path or "arch").name
            found.setdefault(source.sha256, (name, []))[1].append(role)
    return found


def statement(report: Report) -> dict:
    """The in-toto Statement: the models, and the arch code that built a state dict's network,
    as subjects (a verifier checks each by sha256); the report as predicate."""
    subjects = [
        {"name": Path(m.path).name, "digest": {"sha256": m.sha256}, "annotations": {"role": role}}
        for role, m in (("pruned", report.models.pruned), ("dense", report.models.dense))
    ]
    subjects += [
        {"name": name, "digest": {"sha256": digest}, "annotations": {"role": "arch", "models": models}}
        for digest, (name, models) in sorted(arch_digests(report).items())
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": report.model_dump(mode="json"),
    }


def statement_bytes(report: Report) -> bytes:
    """The in-toto Statement of a report as canonical JSON bytes (sorted keys, no spaces)."""
    return json.dumps(statement(report), indent=None, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def envelope(payload: bytes, signatures: list[dict] | None = None) -> dict:
    """A DSSE envelope around `payload` with the given signatures."""
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": signatures or [],
    }


def envelope_json(envelope_dict: dict) -> str:
    """A DSSE envelope as indented JSON text with a trailing newline."""
    return json.dumps(envelope_dict, indent=2) + "\n"


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice. Parsers disagree on which value wins (Python's
    keeps the last, others the first), so such a document means two things: it is refused."""

    def __init__(self, key: str):
        self.key = key
        super().__init__(f"duplicate key {key!r}")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def strict_json(text: str | bytes) -> object:
    """json.loads, but refusing what is not JSON (NaN, Infinity) or is ambiguous (an object that
    repeats a key: DuplicateKeyError), and raising ValueError (not RecursionError) for nesting too
    deep to parse. Every JSON prunegate reads from a user or a report goes through it."""
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _duplicate(exc: DuplicateKeyError, where: str, file: str, field: str | None = None) -> ReportError:
    return ReportError(
        f"{where} repeats the key {exc.key!r} (a JSON object must name each key once: a "
        "reader could take either value)",
        file=file,
        field=field,
    )


def parse_envelope(text: str, file: str) -> dict:
    """The envelope's fields from a report file's text; ReportError if it is not an envelope, or
    if the envelope or its payload is JSON that repeats a key (which value is meant would depend
    on the reader: a forged value first and the genuine one last would verify here)."""
    try:
        data = strict_json(text)
    except DuplicateKeyError as exc:
        raise _duplicate(exc, "the envelope", file) from None
    except ValueError as exc:
        where = f" ({exc.msg} at line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else f" ({exc})"
        raise ReportError(f"not JSON{where}", file=file) from None
    if not isinstance(data, dict) or not {"payloadType", "payload", "signatures"} <= set(data):
        raise ReportError("not a DSSE envelope (needs payloadType, payload, signatures)", file=file)
    if not isinstance(data["payload"], str) or not isinstance(data["signatures"], list):
        raise ReportError("malformed envelope: payload must be a string and signatures a list", file=file)
    try:  # (any other problem of the payload is for the reader or the verifier to report)
        strict_json(base64.b64decode(data["payload"], validate=True))
    except DuplicateKeyError as exc:
        raise _duplicate(exc, "the payload", file, "payload") from None
    except ValueError:
        pass
    return data


def read_envelope(text: str, file: str) -> tuple[dict, bytes, dict]:
    """(envelope, payload bytes, statement) from a report file's text; ReportError if malformed."""
    data = parse_envelope(text, file)
    try:
        payload = base64.b64decode(data["payload"], validate=True)
        decoded = strict_json(payload)
    except DuplicateKeyError as exc:
        raise _duplicate(exc, "the payload", file, "payload") from None
    except ValueError:  # binascii.Error, JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ReportError("the payload is not base64-encoded JSON", file=file, field="payload") from None
    if not isinstance(decoded, dict) or decoded.get("predicateType") != PREDICATE_TYPE:
        raise ReportError(
            f"the payload is not a prunegate statement (predicateType {PREDICATE_TYPE})", file=file, field="payload"
        )
    return data, payload, decoded


def sign(payload: bytes, key: Ed25519PrivateKey) -> dict:
    """A signed envelope over `payload` with an Ed25519 private key."""
    from .keys import fingerprint

    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    return envelope(payload, [{"keyid": fingerprint(key.public_key()), "sig": base64.b64encode(signature).decode()}])


_SHA256 = re.compile(r"[0-9a-f]{64}")


def subject_digests(subjects: object) -> dict[str, str] | None:
    """{'dense': sha256, 'pruned': sha256, 'arch:<sha256>': sha256...} when `subjects` are the two
    model subjects a prunegate statement has (each {name, digest: {sha256}, annotations: {role}})
    and any arch subjects (role 'arch'); else None."""
    if not isinstance(subjects, list) or len(subjects) < 2:
        return None
    roles: dict[str, str] = {}
    for subject in subjects:
        annotations = subject.get("annotations") if isinstance(subject, dict) else None
        if isinstance(annotations, dict) and annotations.get("role") == "arch":
            sha256 = (subject.get("digest") or {}).get("sha256") if isinstance(subject.get("digest"), dict) else None
            if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256) or not isinstance(subject.get("name"), str):
                return None
            if f"arch:{sha256}" in roles:
                return None
            roles[f"arch:{sha256}"] = sha256
            continue
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
    return roles if {"dense", "pruned"} <= set(roles) else None


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


def verify_envelope(data: dict, public_key: Ed25519PublicKey) -> Verification:
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
    return check_statement(result, str(data["payloadType"]), payload)


def check_statement(result: Verification, payload_type: str, payload: bytes) -> Verification:
    """The statement's structure: an in-toto Statement v1 whose subjects are the report's models
    and whose predicate is a valid prunegate report; sets `result.statement` when it is (what
    `verify` checks after the signature, and what `sign` checks before signing)."""
    if payload_type != PAYLOAD_TYPE:
        return result.fail(f"payloadType is {payload_type!r}, not {PAYLOAD_TYPE!r}")
    try:
        decoded = strict_json(payload)
    except DuplicateKeyError as exc:  # (parse_envelope refuses these first, naming the file)
        raise ReportError(f"the signed payload repeats the key {exc.key!r}", field="payload") from None
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
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "predicate"
        return result.fail(f"the predicate is not a valid prunegate report ({where}: {first['msg']})")
    except Exception as exc:
        return result.fail(f"the predicate is not a valid prunegate report ({str(exc).splitlines()[0]})")
    recorded = {
        "dense": report.models.dense.sha256,
        "pruned": report.models.pruned.sha256,
        **{f"arch:{digest}": digest for digest in arch_digests(report)},
    }
    if recorded != roles:
        return result.fail(
            "the statement's subjects and the report's models (and their arch code) have different sha256 digests"
        )
    result.checks.append(
        "in-toto Statement v1 with the dense and pruned models as subjects; prunegate report predicate"
    )
    result.statement = decoded
    return result
