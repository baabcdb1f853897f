"""`prunegate check`: run the gate, write the report and its renderings."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prunegate.errors import PrunegateError

from .common import (
    CONSOLE_WIDTH, EXIT_FAIL, EXIT_PASS, Backend, Device, Precision, _check_writable, _RichProgress, _signing_key,
    _stderr, _stdout, cli, write_atomic,
)


@cli.command()
def check(
    policy: Path = typer.Option(..., "--policy", "-p", help="Policy YAML file."),
    dense: Optional[Path] = typer.Option(None, help="Dense model file (overrides the policy)."),
    pruned: Optional[Path] = typer.Option(None, help="Pruned model file (overrides the policy)."),
    device: Optional[Device] = typer.Option(None, help="Where to run (overrides runtime.device)."),
    backend: Optional[Backend] = typer.Option(None, help="Model runtime (overrides runtime.backend); auto: ONNX "
                                              "files on ONNX Runtime, torch models on the faster of the two."),
    precision: Optional[Precision] = typer.Option(None, help="Inference precision (overrides runtime.precision): "
                                                  "bf16/fp16 run torch models under autocast (fp16 on CUDA only)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Images per batch."),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate a class-balanced subset of this size."),
    workers: Optional[int] = typer.Option(None, min=0, help="Background decoding processes."),
    report: Path = typer.Option(Path("prunegate-report.json"), "--report", "-o", help="Where to write the report."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow model files that unpickle arbitrary objects (runs their code)."),
    key: Optional[Path] = typer.Option(None, "--key", help="Ed25519 private key (PEM) to sign the report; "
                                       "or set PRUNEGATE_SIGNING_KEY to the PEM text."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict line."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write the HTML report (one self-contained file)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write a GitHub-flavoured Markdown summary."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Also write JUnit XML: one test case per rule."),
) -> int:
    """Evaluate the dense and pruned models on the policy's tasks and apply its rules.

    When GITHUB_STEP_SUMMARY is set (GitHub Actions), the Markdown summary is appended to that file."""
    from prunegate import distributed
    from prunegate.check import Overrides, apply_overrides, run_check
    from prunegate.policy import load_policy
    from prunegate.report.attest import envelope, envelope_json, sign, statement_bytes
    from prunegate.report.keys import fingerprint
    from prunegate.report.render import console as console_render

    overrides = Overrides(dense, pruned, device.value if device else None, backend.value if backend else None,
                          batch_size, limit, workers, precision.value if precision else None)
    loaded = apply_overrides(load_policy(policy), overrides)
    signing_key = _signing_key(key)
    if signing_key is None and loaded.require_signature:
        raise PrunegateError("the policy requires a signed report: pass --key or set PRUNEGATE_SIGNING_KEY",
                             file=policy, field="require_signature")
    renderings = {"--html": html, "--markdown": markdown, "--junit": junit}
    for option, target in {"--report": report, **renderings}.items():
        _check_writable(target, option)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    world = distributed.from_environment()  # torchrun: every process runs its part; rank 0 writes
    try:
        show = not quiet and world.is_main
        with Progress(*columns, console=_stderr(), transient=True, disable=not show or not _stderr().is_terminal) as bar:
            progress = _RichProgress(bar, lines=show and not _stderr().is_terminal,
                                     every=float(os.environ.get("PRUNEGATE_PROGRESS_SECONDS", "30")))
            result = run_check(loaded, allow_pickle=allow_pickle, progress=progress, world=world)
    finally:
        distributed.finish(world)
    if not world.is_main:
        return EXIT_PASS if result.verdict == "pass" else EXIT_FAIL
    payload = statement_bytes(result)
    write_atomic(report, envelope_json(sign(payload, signing_key) if signing_key else envelope(payload)))
    signature = f"signed by key {fingerprint(signing_key.public_key())[:16]}" if signing_key else "unsigned"
    _write_renderings(result, html=html, markdown=markdown, junit=junit, signature=signature)
    _append_step_summary(result)
    out = _stdout()
    if quiet:
        out.print(console_render.verdict_line(result))
    else:
        out.print(console_render.render(result, color=out.is_terminal, width=max(out.width, CONSOLE_WIDTH)), end="")
        signed = f"signed by key {fingerprint(signing_key.public_key())[:16]}" if signing_key else "UNSIGNED: pass --key to sign"
        out.print(f"report: {report} ({signed})")
    return EXIT_PASS if result.verdict == "pass" else EXIT_FAIL


def _write_renderings(result, *, html: Optional[Path] = None, markdown: Optional[Path] = None,
                      junit: Optional[Path] = None, signature: Optional[str] = None, gallery: bool = True) -> None:
    """Render the report in each format asked for and write each file atomically."""
    if html is not None:
        from prunegate.report.gallery import build_gallery
        from prunegate.report.render import html as html_render

        images = build_gallery(result) if gallery else None
        write_atomic(html, html_render.render(result, gallery=images, signature=signature))
    if markdown is not None:
        from prunegate.report.render import markdown as markdown_render

        write_atomic(markdown, markdown_render.render(result))
    if junit is not None:
        from prunegate.report.render import junit as junit_render

        write_atomic(junit, junit_render.render(result))


def _append_step_summary(result) -> None:
    """On GitHub Actions, append the Markdown summary to $GITHUB_STEP_SUMMARY (best effort: the
    gate's verdict and report do not depend on it, so a failure to append is only a warning)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    from prunegate.report.render import markdown as markdown_render

    try:
        with open(target, "a", encoding="utf-8") as f:
            f.write(markdown_render.render(result) + "\n")
    except OSError as exc:
        print(f"warning: cannot append the summary to GITHUB_STEP_SUMMARY ({target}): {exc.strerror}", file=sys.stderr)
