"""`prunegate check`: run the gate, write the report and its renderings."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prunegate.checkpoint import folder_for
from prunegate.errors import PrunegateError, printable
from prunegate.runners.sandbox import make_undumpable

from .common import (
    CONSOLE_WIDTH, EXIT_FAIL, EXIT_PASS, Backend, Device, Precision, _RichProgress, _signing_key, _stderr, _stdout,
    cli, warn,
)
from .outputs import check_outputs, write_together


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
    allow_external_arch: bool = typer.Option(False, "--allow-external-arch", help="Allow arch code from outside the "
                                             "policy's folder and the installed packages (recorded in the report)."),
    key: Optional[Path] = typer.Option(None, "--key", help="Ed25519 private key (PEM) to sign the report; "
                                       "or set PRUNEGATE_SIGNING_KEY to the PEM text."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict line."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write the HTML report (one self-contained file)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write a GitHub-flavoured Markdown summary."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Also write JUnit XML: one test case per rule."),
    resume: bool = typer.Option(False, "--resume", help="Continue a run that was stopped or killed, from the "
                                "checkpoint beside its report (REPORT.partial/)."),
) -> int:
    """Evaluate the dense and pruned models on the policy's tasks and apply its rules.

    When GITHUB_STEP_SUMMARY is set (GitHub Actions), the Markdown summary is appended to that file."""
    from prunegate import distributed
    from prunegate.check import CheckpointPlan, Overrides, apply_overrides, input_files, run_check
    from prunegate.policy import load_policy
    from prunegate.report.attest import envelope, envelope_json, sign, statement_bytes
    from prunegate.report.keys import fingerprint
    from prunegate.report.render import console as console_render

    overrides = Overrides(dense, pruned, device.value if device else None, backend.value if backend else None,
                          batch_size, limit, workers, precision.value if precision else None)
    loaded = apply_overrides(load_policy(policy), overrides)
    make_undumpable()  # no model process may read this one's memory or environment
    # The key is read now only to fail fast on a bad key or passphrase; it is loaded for signing
    # after the models' processes have ended, and they may not read its file.
    signs = _signing_key(key) is not None
    if not signs and loaded.require_signature:
        raise PrunegateError("the policy requires a signed report: pass --key or set PRUNEGATE_SIGNING_KEY",
                             file=policy, field="require_signature")
    if signs and loaded.runtime.isolation == "off":
        raise PrunegateError("runtime.isolation is off, so the models would run in prunegate's own process, where "
                             "their code could reach the signing key: a signed report needs isolation auto or strict",
                             file=policy, field="runtime.isolation")
    inputs = input_files(loaded)
    if key is not None:
        inputs["the signing key (--key)"] = key
    check_outputs({"--report": report, "--html": html, "--markdown": markdown, "--junit": junit}, inputs)
    plan = CheckpointPlan(folder_for(report), resume=resume)
    if not resume and plan.folder.is_dir() and any(plan.folder.iterdir()):
        warn(f"{plan.folder}: an earlier run's checkpoint is there; this run starts over and replaces it "
             "(--resume continues it)")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    world = distributed.from_environment()  # torchrun: every process runs its part; rank 0 writes
    try:
        show = not quiet and world.is_main
        with Progress(*columns, console=_stderr(), transient=True, disable=not show or not _stderr().is_terminal) as bar:
            progress = _RichProgress(bar, lines=show and not _stderr().is_terminal,
                                     every=float(os.environ.get("PRUNEGATE_PROGRESS_SECONDS", "30")))
            result = run_check(loaded, allow_pickle=allow_pickle, progress=progress, world=world,
                               key_files=(key,) if key is not None else (), allow_external_arch=allow_external_arch,
                               checkpoint=plan)
    except KeyboardInterrupt:
        if world.is_main and plan.folder.is_dir():
            print(printable(f"the progress so far is kept in {plan.folder}: run the same command with --resume "
                            "to continue"), file=sys.stderr)
        raise
    finally:
        distributed.finish(world)
    if not world.is_main:
        return EXIT_PASS if result.verdict == "pass" else EXIT_FAIL
    signing_key = _signing_key(key) if signs else None  # only now: the models' processes have ended
    payload = statement_bytes(result)
    signature = f"signed by key {fingerprint(signing_key.public_key())[:16]}" if signing_key else "unsigned"
    files = _renderings(result, html=html, markdown=markdown, junit=junit, signature=signature)
    files.append((report, envelope_json(sign(payload, signing_key) if signing_key else envelope(payload))))
    write_together(files)  # all or none, the report last
    _append_step_summary(result)
    out = _stdout()
    if quiet:
        out.print(console_render.verdict_line(result))
    else:
        out.print(console_render.render(result, color=out.is_terminal, width=max(out.width, CONSOLE_WIDTH)), end="")
        signed = f"signed by key {fingerprint(signing_key.public_key())[:16]}" if signing_key else "UNSIGNED: pass --key to sign"
        out.print(f"report: {report} ({signed})")
    return EXIT_PASS if result.verdict == "pass" else EXIT_FAIL


def _renderings(result, *, html: Optional[Path] = None, markdown: Optional[Path] = None,
                junit: Optional[Path] = None, signature: Optional[str] = None,
                gallery: bool = True) -> list[tuple[Path, str]]:
    """(path, text) of the report in each format asked for."""
    files: list[tuple[Path, str]] = []
    if html is not None:
        from prunegate.report.gallery import build_gallery
        from prunegate.report.render import html as html_render

        images = build_gallery(result) if gallery else None
        files.append((html, html_render.render(result, gallery=images, signature=signature)))
    if markdown is not None:
        from prunegate.report.render import markdown as markdown_render

        files.append((markdown, markdown_render.render(result)))
    if junit is not None:
        from prunegate.report.render import junit as junit_render

        files.append((junit, junit_render.render(result)))
    return files


def _write_renderings(result, **options) -> None:
    """Render the report in each format asked for and write the files together."""
    write_together(_renderings(result, **options))


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
        warn(f"cannot append the summary to GITHUB_STEP_SUMMARY ({target}): {exc.strerror}")
