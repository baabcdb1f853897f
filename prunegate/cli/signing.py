"""`prunegate keygen` and `prunegate verify`: signing keys and offline verification."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from prunegate.errors import PrunegateError, require_file

from .common import EXIT_FAIL, EXIT_PASS, _passphrase, _read_report, _stdout, cli, write_atomic


@cli.command()
def keygen(
    out: Path = typer.Option(..., "--out", help="Writes OUT.pem (private, mode 0600) and OUT.pub."),
    passphrase: bool = typer.Option(False, "--passphrase", help="Encrypt the private key with the passphrase "
                                    "in PRUNEGATE_KEY_PASSPHRASE."),
) -> int:
    """Make an Ed25519 key pair for signing reports."""
    from prunegate.report import keys

    private_path, public_path = out.with_name(out.name + ".pem"), out.with_name(out.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise PrunegateError("already exists; refusing to overwrite a key", file=path)
    secret = _passphrase()
    if passphrase and not secret:
        raise PrunegateError("--passphrase needs the passphrase in PRUNEGATE_KEY_PASSPHRASE")
    key = keys.generate()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keys.private_pem(key, secret if passphrase else None))
    write_atomic(public_path, keys.public_pem(key.public_key()))
    _stdout().print(f"wrote {private_path} (keep it secret) and {public_path}; keyid {keys.fingerprint(key.public_key())}")
    return EXIT_PASS


@cli.command()
def verify(
    report: Path = typer.Argument(..., help="The report (DSSE envelope)."),
    key: Path = typer.Option(..., "--key", help="The signer's public key (NAME.pub)."),
    dense: Optional[Path] = typer.Option(None, help="Also check this file is the report's dense model."),
    pruned: Optional[Path] = typer.Option(None, help="Also check this file is the report's pruned model."),
    policy: Optional[Path] = typer.Option(None, help="Also check this file is the report's policy."),
) -> int:
    """Verify a signed report offline: exit 0 valid, 1 does not verify, 2 unreadable input."""
    from prunegate.report.attest import parse_envelope, verify_envelope
    from prunegate.report.keys import load_public
    from prunegate.digest import file_sha256

    public_key = load_public(key)
    files = {"dense": dense, "pruned": pruned, "policy": policy}
    for role, path in files.items():
        if path is not None:
            require_file(path, field=f"--{role}")
    result = verify_envelope(parse_envelope(_read_report(report), str(report)), public_key)
    out = _stdout()
    if result.ok:
        statement = result.statement
        subjects = {s["annotations"]["role"]: s for s in statement["subject"]}
        for role in ("dense", "pruned"):
            if files[role] is not None:
                actual, recorded = file_sha256(files[role]), subjects[role]["digest"]["sha256"]
                if actual != recorded:
                    result.fail(f"{files[role]} has sha256 {actual[:16]}…, the report's {role} model {recorded[:16]}…")
                    break
                result.checks.append(f"{files[role]} is the {role} model (sha256 {actual[:16]}…)")
        if result.ok and policy is not None:
            actual, recorded = file_sha256(policy), statement["predicate"]["policy"]["sha256"]
            if actual != recorded:
                result.fail(f"{policy} has sha256 {actual[:16]}…, the report's policy {str(recorded)[:16]}…")
            else:
                result.checks.append(f"{policy} is the policy (sha256 {actual[:16]}…)")
    for check in result.checks:
        out.print(f"✓ {check}")
    if not result.ok:
        print(f"NOT VERIFIED: {report}: {result.failure}", file=sys.stderr)
        return EXIT_FAIL
    predicate = result.statement["predicate"]
    models = ", ".join(f"{role} {s['name']} ({s['digest']['sha256'][:16]}…)"
                       for role, s in ((s["annotations"]["role"], s) for s in result.statement["subject"]))
    out.print(f"VERIFIED: {report}: verdict {predicate['verdict'].upper()} for {models} under policy "
              f"{predicate['policy']['name']!r}, {predicate['timing']['started']}")
    return EXIT_PASS
