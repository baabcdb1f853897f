"""`prunegate report show | html | markdown | junit | schema` and `prunegate diff`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from prunegate.errors import PrunegateError
from prunegate.report.render import Format, RenderOptions, renderer

from .common import (
    EXIT_FAIL,
    EXIT_PASS,
    VERBOSE_HELP,
    cli,
    read_report_text,
    render_width,
    report_cli,
    stderr_console,
    stdout_console,
)
from .outputs import check_outputs, render_files, write_atomic, write_together

if TYPE_CHECKING:  # pragma: no cover
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from prunegate.report.schema import Report


@report_cli.command("schema")
def report_schema() -> int:
    """Print the JSON Schema of the report (the statement's predicate)."""
    import json

    from prunegate.report.schema import PREDICATE_TYPE, Report

    schema = Report.model_json_schema()
    schema["$id"] = PREDICATE_TYPE
    print(json.dumps(schema, indent=2))
    return EXIT_PASS


@report_cli.command("show")
def report_show(
    report: Path = typer.Argument(..., help="The report (DSSE envelope)."),
    as_json: bool = typer.Option(False, "--json", help="Print the decoded statement as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
) -> int:
    """Summarise any report for a person (signature not checked: use `prunegate verify`)."""
    import json

    from prunegate.report.attest import read_envelope

    data, _, statement = read_envelope(read_report_text(report), str(report))
    if as_json:
        print(json.dumps(statement, indent=2))
        return EXIT_PASS
    parsed = _parse_predicate(statement, report)
    out = stdout_console()
    signed = _signature_text(data)
    options = RenderOptions(
        color=out.is_terminal, width=render_width(out), verbose=verbose, before_verdict=(f"{report}: {signed}",)
    )
    out.print(renderer(Format.console).format(parsed, options), end="")
    return EXIT_PASS


def _parse_predicate(statement: dict, path: Path) -> Report:
    from prunegate.report.schema import Report

    try:
        return Report.model_validate(statement["predicate"])
    except Exception:
        raise PrunegateError(
            "the predicate is not a prunegate report of this version", file=path, field="predicate"
        ) from None


def _signature_text(envelope_data: dict) -> str:
    keyids = [str(s.get("keyid", "?"))[:16] for s in envelope_data["signatures"] if isinstance(s, dict)]
    return f"signed by key {', '.join(keyids)} (not verified here: run prunegate verify)" if keyids else "UNSIGNED"


def _load_report(path: Path) -> tuple[Report, dict]:
    """(Report, envelope) from a report file; PrunegateError (exit 2) when it is not one."""
    from prunegate.report.attest import read_envelope

    data, _, statement = read_envelope(read_report_text(path), str(path))
    return _parse_predicate(statement, path), data


def _emit(text: str, out: Path | None, report: Path) -> None:
    """Write to --out atomically (never over the report read), or print as it is (no console
    markup) to stdout."""
    if out is not None:
        check_outputs({"--out": out}, {"the report": report})
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomic(out, text)
        stderr_console().print(f"wrote {out}", markup=False)


@report_cli.command("html")
def report_html(
    report: Path = typer.Argument(..., help="The report (DSSE envelope)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="File to write (default: the report's name with .html)."),
    gallery: bool = typer.Option(
        True,
        "--gallery/--no-gallery",
        help="Rebuild thumbnails of the inputs the pruned "
        "model newly gets wrong from the data the report names (skipped when unreachable).",
    ),
) -> int:
    """Write the report as one self-contained HTML page."""
    parsed, data = _load_report(report)
    target = out if out is not None else report.with_suffix(".html")
    if target.resolve() == report.resolve():
        raise PrunegateError("the HTML would overwrite the report itself: pass --out", file=report)
    check_outputs({"--out": target}, {"the report": report})
    write_together(render_files(parsed, {Format.html: target}, signature=_signature_text(data), gallery=gallery))
    stdout_console().print(f"wrote {target}", markup=False)
    return EXIT_PASS


@report_cli.command("markdown")
def report_markdown(
    report: Path = typer.Argument(..., help="The report (DSSE envelope)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="File to write (default: standard output)."),
) -> int:
    """Print a GitHub-flavoured Markdown summary of a report."""
    _emit(renderer(Format.markdown).format(_load_report(report)[0]), out, report)
    return EXIT_PASS


@report_cli.command("junit")
def report_junit(
    report: Path = typer.Argument(..., help="The report (DSSE envelope)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="File to write (default: standard output)."),
) -> int:
    """Print a report as JUnit XML: one test case per rule, failures = the rules that did not pass."""
    _emit(renderer(Format.junit).format(_load_report(report)[0]), out, report)
    return EXIT_PASS


def _load_verified(path: Path, public_key: Ed25519PublicKey, key: Path) -> Report:
    """The report in `path` once its signature verifies with `public_key`; PrunegateError (exit 2)
    naming the file when it is unsigned, signed by another key or altered."""
    from prunegate.report.attest import parse_envelope, verify_envelope

    result = verify_envelope(parse_envelope(read_report_text(path), str(path)), public_key)
    if not result.ok or result.statement is None:
        raise PrunegateError(f"does not verify with {key}: {result.failure}", file=path, field="signatures")
    return _parse_predicate(result.statement, path)


@cli.command()
def diff(
    old: Path = typer.Argument(..., help="The earlier report (DSSE envelope)."),
    new: Path = typer.Argument(..., help="The later report."),
    margin: float = typer.Option(
        0.005,
        min=0.0,
        max=1.0,
        help="Tolerated worsening of accuracy_drop and agreement "
        "per task, as a fraction (0.005 = half a percentage point).",
    ),
    markdown: bool = typer.Option(False, "--markdown", help="Print GitHub-flavoured Markdown instead of text."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="List every task, not only the regressions."),
    key: Path | None = typer.Option(
        None, "--key", help="The signer's public key (NAME.pub): both reports' signatures are checked first."
    ),
) -> int:
    """Compare two reports: what got better or worse, per rule, task group and task.

    Exit 1 when NEW regresses: a rule that passed now fails, or a task's accuracy_drop rises or its
    agreement falls by more than the margin and beyond sampling noise (the change's interval, from
    both reports' intervals, excludes 0); else 0. With --key, a report that is unsigned or does
    not verify is exit 2."""
    from prunegate.diff import compare, render_text
    from prunegate.report.keys import fingerprint, load_public
    from prunegate.report.render.markdown import render_diff

    if key is None:
        result = compare(_load_report(old)[0], _load_report(new)[0], margin)
    else:
        public_key = load_public(key)
        before, after = (_load_verified(path, public_key, key) for path in (old, new))
        result = compare(before, after, margin)
        result.signatures = f"both reports verify with key {fingerprint(public_key)[:16]} ({key})"
    sys.stdout.write(render_diff(result, verbose) if markdown else render_text(result, verbose))
    return EXIT_FAIL if result.regressed else EXIT_PASS
