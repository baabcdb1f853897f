"""`prunegate keygen`, `verify` and `sign`: signing keys, offline verification and signing an
existing report; and the signing of `prunegate check`'s report (`check_signing` before the run,
`sign_report` after it)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from prunegate.errors import PrunegateError, printable, require_file

from .common import (
    EXIT_FAIL,
    EXIT_PASS,
    cli,
    read_report_text,
    signing_key,
    signing_passphrase,
    stdout_console,
    write_atomic,
)

if TYPE_CHECKING:  # pragma: no cover
    from prunegate.policy import Policy
    from prunegate.report.attest import Verification
    from prunegate.report.schema import Report


def check_signing(key: Path | None, policy: Policy, policy_path: Path) -> bool:
    """Whether `check` will sign its report; PrunegateError (exit 2) for a bad key or passphrase, or
    one the policy's `require_signature` or `runtime.isolation` rules out.

    The key is read now only to fail fast; `sign_report` loads it again after the models'
    processes have ended (they may not read its file)."""
    signs = signing_key(key) is not None
    if not signs and policy.require_signature:
        raise PrunegateError(
            "the policy requires a signed report: pass --key or set PRUNEGATE_SIGNING_KEY",
            file=policy_path,
            field="require_signature",
        )
    if signs and policy.runtime.isolation == "off":
        raise PrunegateError(
            "runtime.isolation is off, so the models would run in prunegate's own process, where "
            "their code could reach the signing key: a signed report needs isolation auto or strict",
            file=policy_path,
            field="runtime.isolation",
        )
    return signs


@dataclass(frozen=True)
class SignedReport:
    """The report file's text (a DSSE envelope) and the key that signed it."""

    envelope: str
    keyid: str | None  # the first 16 hex digits of the key's fingerprint; None: unsigned

    def signature_line(self) -> str:
        """What the HTML page says of the signature."""
        return f"signed by key {self.keyid}" if self.keyid else "unsigned"

    def status_line(self) -> str:
        """What the console says of the signature, after the report's path."""
        return f"signed by key {self.keyid}" if self.keyid else "UNSIGNED: pass --key to sign"


def sign_report(report: Report, key: Path | None, signs: bool) -> SignedReport:
    """The report's envelope, signed with the key from --key or PRUNEGATE_SIGNING_KEY when `signs`
    (as `check_signing` decided), else unsigned."""
    from prunegate.report.attest import envelope, envelope_json, sign, statement_bytes
    from prunegate.report.keys import fingerprint

    private_key = signing_key(key) if signs else None  # only now: the models' processes have ended
    payload = statement_bytes(report)
    if private_key is None:
        return SignedReport(envelope_json(envelope(payload)), None)
    return SignedReport(envelope_json(sign(payload, private_key)), fingerprint(private_key.public_key())[:16])


@cli.command()
def keygen(
    out: Path = typer.Option(..., "--out", help="Writes OUT.pem (private, mode 0600) and OUT.pub."),
    passphrase: bool = typer.Option(
        False, "--passphrase", help="Encrypt the private key with the passphrase in PRUNEGATE_KEY_PASSPHRASE."
    ),
) -> int:
    """Make an Ed25519 key pair for signing reports."""
    from prunegate.report import keys

    private_path, public_path = out.with_name(out.name + ".pem"), out.with_name(out.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise PrunegateError("already exists; refusing to overwrite a key", file=path)
    secret = signing_passphrase()
    if passphrase and not secret:
        raise PrunegateError("--passphrase needs the passphrase in PRUNEGATE_KEY_PASSPHRASE")
    key = keys.generate()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keys.private_pem(key, secret if passphrase else None))
    write_atomic(public_path, keys.public_pem(key.public_key()))
    keyid = keys.fingerprint(key.public_key())
    stdout_console().print(f"wrote {private_path} (keep it secret) and {public_path}; keyid {keyid}", markup=False)
    return EXIT_PASS


@cli.command()
def verify(
    report: Path = typer.Argument(..., help="The report (DSSE envelope)."),
    key: Path = typer.Option(..., "--key", help="The signer's public key (NAME.pub)."),
    dense: Path | None = typer.Option(None, help="Also check this file is the report's dense model."),
    pruned: Path | None = typer.Option(None, help="Also check this file is the report's pruned model."),
    policy: Path | None = typer.Option(
        None,
        help="Also check this file is the report's policy, and that the run "
        "used it as it is (no command-line override).",
    ),
    arch: list[Path] | None = typer.Option(
        None,
        "--arch",
        help="Also check this file is the arch code the report "
        "pins (repeat for each; every pinned arch must be given).",
    ),
    allow_overrides: bool = typer.Option(
        False,
        "--allow-overrides",
        help="With --policy: accept a run whose command line overrode policy settings (they are still listed).",
    ),
    require_pass: bool = typer.Option(
        False,
        "--require-pass",
        help="Also require the verdict to be PASS (exit 1 for a validly signed FAIL): for a CI step gating on it.",
    ),
) -> int:
    """Verify a signed report offline: exit 0 valid, 1 does not verify (or, with --require-pass,
    its verdict is not PASS), 2 unreadable input."""
    from prunegate.report.attest import parse_envelope, verify_envelope
    from prunegate.report.keys import load_public

    public_key = load_public(key)
    files = {"dense": dense, "pruned": pruned, "policy": policy}
    for role, path in files.items():
        if path is not None and not (role != "policy" and path.is_dir()):  # a model may be a HF folder
            require_file(path, field=f"--{role}")
    for path in arch or []:
        require_file(path, field="--arch")
    loaded_policy = _policy_document(policy) if policy is not None else None
    result = verify_envelope(parse_envelope(read_report_text(report), str(report)), public_key)
    statement: dict = result.statement or {}  # (set whenever the envelope verifies)
    out = stdout_console()
    notes: list[str] = []
    if result.ok:
        subjects = {s["annotations"]["role"]: s for s in statement["subject"]}
        for role in ("dense", "pruned"):
            model = files[role]
            if model is not None:
                _check_model(result, role, model, subjects[role]["digest"]["sha256"], statement["predicate"])
                if not result.ok:
                    break
        if result.ok:
            _check_arch(result, statement, arch or [], notes)
        if result.ok and policy is not None and loaded_policy is not None:
            _check_policy(
                result,
                statement["predicate"],
                policy,
                loaded_policy,
                {role for role in ("dense", "pruned") if files[role] is not None},
                allow_overrides,
                notes,
            )
    # What is printed from here on names files and the report's own fields (which anyone may have
    # written, signed or not): plain text (markup=False), control characters escaped.
    if result.ok:
        notes.extend(_isolation_notes(statement["predicate"]))
    for check in result.checks:
        out.print(f"✓ {check}", markup=False)
    for note in notes:
        out.print(f"! {note}", markup=False)
    if not result.ok:
        print(printable(f"NOT VERIFIED: {report}: {result.failure}"), file=sys.stderr)
        return EXIT_FAIL
    predicate = statement["predicate"]
    models = ", ".join(
        f"{role} {s['name']} ({s['digest']['sha256'][:16]}…)"
        for role, s in ((s["annotations"]["role"], s) for s in statement["subject"])
        if role in ("dense", "pruned")
    )
    out.print(
        f"VERIFIED: {report}: verdict {predicate['verdict'].upper()} for {models} under policy "
        f"{predicate['policy']['name']!r}, {predicate['timing']['started']}",
        markup=False,
    )
    if require_pass and predicate["verdict"] != "pass":
        print(
            printable(f"NOT PASSED: {report}: the verdict is {predicate['verdict'].upper()} (--require-pass)"),
            file=sys.stderr,
        )
        return EXIT_FAIL
    return EXIT_PASS


def _check_model(result: Verification, role: str, model: Path, recorded: str, predicate: dict) -> None:
    """Whether `model` (a file or a Hugging Face folder) is the report's `role` model: its sha256, and
    every file the report pins beside it (an ONNX model's external data, a folder's config.json)."""
    from prunegate.digest import file_sha256

    if model.is_dir() or model.suffix.lower() == ".onnx":
        from prunegate.runners import model_pins  # (imports torch: only for the models that need it)

        actual, external = model_pins(model, f"--{role}")
    else:
        actual, external = file_sha256(model), None
    if actual != recorded:
        result.fail(f"{model} has sha256 {actual[:16]}…, the report's {role} model {recorded[:16]}…")
        return
    pinned = {e["path"]: e["sha256"] for e in predicate["models"][role].get("external_data") or []}
    found = {e.path: e.sha256 for e in external or []}
    for name in sorted(pinned.keys() | found.keys()):
        if pinned.get(name) != found.get(name):
            have = found.get(name, "missing")[:16]
            result.fail(
                f"{model}: {name} has sha256 {have}…, the report's {role} model {pinned.get(name, 'none')[:16]}…"
            )
            return
    beside = f" and {len(pinned)} file(s) beside it" if pinned else ""
    result.checks.append(f"{model} is the {role} model (sha256 {actual[:16]}…{beside})")


@cli.command()
def sign(
    report: Path = typer.Argument(..., help="An unsigned report (DSSE envelope), e.g. from a run without --key."),
    key: Path | None = typer.Option(
        None, "--key", help="The Ed25519 private key (NAME.pem); default: PRUNEGATE_SIGNING_KEY."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the signed report (default: REPORT)."),
) -> int:
    """Sign an existing unsigned report without running it again: the statement is unchanged, the
    signature covers it byte for byte. Signing vouches for the report: it is checked first to be
    a well-formed prunegate report."""
    from prunegate.report.attest import Verification, check_statement, envelope_json, read_envelope
    from prunegate.report.attest import sign as sign_payload
    from prunegate.report.keys import fingerprint

    data, payload, statement = read_envelope(read_report_text(report), str(report))
    if data["signatures"]:
        raise PrunegateError(
            "is already signed: sign adds the first signature to an unsigned report "
            "(verify it with `prunegate verify`)",
            file=report,
            field="signatures",
        )
    checked = check_statement(Verification(), str(data["payloadType"]), payload)
    if not checked.ok:
        raise PrunegateError(f"cannot be signed: {checked.failure}", file=report, field="payload")
    private_key = signing_key(key)
    if private_key is None:
        raise PrunegateError("sign needs a private key: pass --key or set PRUNEGATE_SIGNING_KEY", field="--key")
    target = out or report
    write_atomic(target, envelope_json(sign_payload(payload, private_key)))
    keyid = fingerprint(private_key.public_key())[:16]
    predicate = statement["predicate"]
    stdout_console().print(
        f"signed {target} with key {keyid}: verdict {str(predicate.get('verdict')).upper()} under policy "
        f"{predicate['policy']['name']!r}",
        markup=False,
    )
    return EXIT_PASS


def _policy_document(path: Path) -> dict:
    """The policy file as a run would validate it (exit 2 if it does not validate)."""
    from prunegate.policy import load_policy

    return load_policy(path).model_dump(mode="json")


def _check_arch(result: Verification, statement: dict, given: list[Path], notes: list[str]) -> None:
    """Each --arch file must be arch code the report pins, and every pinned arch must be given
    (an arch decides what the weights compute). Without --arch, say what was not checked."""
    from prunegate.digest import file_sha256
    from prunegate.report.provenance import arch_subjects

    pinned = arch_subjects(statement["subject"])
    matched = set()
    for path in given:
        actual = file_sha256(path)
        if actual not in pinned:
            result.fail(
                f"{path} has sha256 {actual[:16]}…, which is not arch code this report pins "
                f"({', '.join(d[:16] + '…' for d in pinned) or 'it pins none'})"
            )
            return
        matched.add(actual)
        result.checks.append(
            f"{path} is the arch code of the {' and '.join(pinned[actual])} model (sha256 {actual[:16]}…)"
        )
    missing = {d: m for d, m in pinned.items() if d not in matched}
    if missing and given:
        result.fail(
            "the report pins arch code not given with --arch: "
            + ", ".join(f"{' and '.join(m)} model's ({d[:16]}…)" for d, m in missing.items())
        )
    elif missing:
        notes.extend(
            f"arch code of the {' and '.join(m)} model not checked (sha256 {d[:16]}…): pass --arch FILE"
            for d, m in missing.items()
        )


def _check_policy(
    result: Verification,
    predicate: dict,
    path: Path,
    document: dict,
    checked_models: set[str],
    allow_overrides: bool,
    notes: list[str],
) -> None:
    """The policy file must be the one recorded, and the run must have used it as it is: every
    field where the recorded document (overrides applied) differs is listed."""
    from prunegate.digest import file_sha256
    from prunegate.report.provenance import policy_differences, unexplained

    actual, recorded = file_sha256(path), predicate["policy"]["sha256"]
    if actual != recorded:
        result.fail(f"{path} has sha256 {actual[:16]}…, the report's policy {str(recorded)[:16]}…")
        return
    result.checks.append(f"{path} is the policy (sha256 {actual[:16]}…)")
    differences = policy_differences(predicate["policy"]["document"], document)
    notes.extend(f"override: {d.describe()}" for d in differences)
    effective = unexplained(differences, checked_models)
    if effective and not allow_overrides:
        result.fail(
            f"the run did not use {path} as it is: {len(effective)} override(s) that can change the verdict "
            f"({', '.join(d.field for d in effective)}); --allow-overrides accepts them"
        )
    elif not effective:
        result.checks.append(
            "the run used the policy as it is"
            + (" (overrides without effect on the verdict listed below)" if differences else "")
        )


def _isolation_notes(predicate: dict) -> list[str]:
    """What a reviewer should know of how the models were kept from prunegate's process."""
    notes = []
    for role in ("dense", "pruned"):
        isolation = (predicate.get("models", {}).get(role) or {}).get("isolation")
        if not isinstance(isolation, dict):
            notes.append(
                f"the {role} model's isolation is not recorded (a report from before prunegate isolated models)"
            )
        elif not isolation.get("process"):
            notes.append(f"the {role} model ran in prunegate's own process (runtime.isolation: off)")
        elif not all(isolation.get(k) for k in ("files", "tcp", "seccomp")):
            notes.append(
                f"the {role} model ran in its own process, but this machine's kernel could not sandbox it "
                "completely (see models.{role}.isolation)".replace("{role}", role)
            )
    return notes
