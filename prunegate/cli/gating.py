"""`prunegate check`: run the gate, write the report and its renderings."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from prunegate.errors import printable
from prunegate.report.render import Format, RenderOptions, renderer

from .common import (
    EXIT_FAIL,
    EXIT_PASS,
    VERBOSE_HELP,
    Backend,
    Device,
    Precision,
    cli,
    pass_progress,
    render_width,
    stdout_console,
    warn,
)
from .outputs import check_cache_folder, check_outputs, render_files, write_together
from .signing import SignedReport, check_signing, sign_report

if TYPE_CHECKING:  # pragma: no cover
    from prunegate.check import CheckpointPlan
    from prunegate.distributed import World
    from prunegate.policy import Policy
    from prunegate.report.schema import Report


@cli.command()
def check(
    policy: Path = typer.Option(
        ...,
        "--policy",
        "-p",
        help="Policy YAML file, or a ready policy's name: cifar10, imagenet, voc-segmentation, demo "
        "(its paths relative to the working directory; --dense/--pruned/--data fill them).",
    ),
    dense: Path | None = typer.Option(None, help="Dense model file (overrides the policy)."),
    pruned: Path | None = typer.Option(None, help="Pruned model file (overrides the policy)."),
    data: Path | None = typer.Option(
        None, help="Test set file or folder (overrides data.test; its format is read from its layout)."
    ),
    device: Device | None = typer.Option(None, help="Where to run (overrides runtime.device)."),
    backend: Backend | None = typer.Option(
        None,
        help="Model runtime (overrides runtime.backend); auto: ONNX "
        "files on ONNX Runtime, torch models on the faster of the two.",
    ),
    precision: Precision | None = typer.Option(
        None,
        help="Inference precision (overrides runtime.precision): "
        "bf16/fp16 run torch models under autocast (fp16 on CUDA only).",
    ),
    provider: list[str] | None = typer.Option(
        None,
        "--provider",
        help="ONNX Runtime execution provider for ONNX models (overrides runtime.providers); repeat, in order "
        "of preference, e.g. --provider TensorrtExecutionProvider --provider CUDAExecutionProvider.",
    ),
    batch_size: int | None = typer.Option(None, min=1, help="Images per batch."),
    limit: int | None = typer.Option(None, min=1, help="Evaluate a class-balanced subset of this size."),
    workers: int | None = typer.Option(None, min=0, help="Background decoding processes."),
    report: Path = typer.Option(Path("prunegate-report.json"), "--report", "-o", help="Where to write the report."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Allow model files that unpickle arbitrary objects (runs their code)."
    ),
    allow_external_arch: bool = typer.Option(
        False,
        "--allow-external-arch",
        help="Allow arch code from outside the policy's folder and the installed packages (recorded in the report).",
    ),
    key: Path | None = typer.Option(
        None,
        "--key",
        help="Ed25519 private key (PEM) to sign the report; or set PRUNEGATE_SIGNING_KEY to the PEM text.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict line."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
    html: Path | None = typer.Option(None, "--html", help="Also write the HTML report (one self-contained file)."),
    markdown: Path | None = typer.Option(None, "--markdown", help="Also write a GitHub-flavoured Markdown summary."),
    junit: Path | None = typer.Option(None, "--junit", help="Also write JUnit XML: one test case per rule."),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        help="Keep the dense model's outputs and the corrupted images in this folder (overrides runtime.cache): "
        "checking another pruned model against the same dense model and policy then skips both.",
    ),
    sequential: bool | None = typer.Option(
        None,
        "--sequential/--no-sequential",
        help="Stop as soon as every rule is decided, on anytime-valid intervals (overrides gate.sequential).",
        show_default=False,
    ),
    no_sanity_check: bool = typer.Option(
        False,
        "--no-sanity-check",
        help="Gate even a dense model that is no better than chance (or far below models.expected_accuracy) on "
        "the clean test set, which otherwise means wrong labels or class order: exit 2 (recorded in the report).",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue a run that was stopped or killed, from the checkpoint beside its report (REPORT.partial/).",
    ),
) -> int:
    """Evaluate the dense and pruned models on the policy's tasks and apply its rules.

    When GITHUB_STEP_SUMMARY is set (GitHub Actions), the Markdown summary is appended to that file."""
    from prunegate import distributed
    from prunegate.check import Overrides, apply_overrides, input_files
    from prunegate.policy import load_policy

    overrides = Overrides(
        dense,
        pruned,
        device.value if device else None,
        backend.value if backend else None,
        batch_size,
        limit,
        workers,
        precision.value if precision else None,
        cache,
        data,
        provider or None,
        sequential,
    )
    loaded = apply_overrides(load_policy(policy), overrides)
    from prunegate.runners.sandbox import make_undumpable

    make_undumpable()  # no model process may read this one's memory or environment
    signs = check_signing(key, loaded, policy)
    inputs = input_files(loaded)
    if key is not None:
        inputs["the signing key (--key)"] = key
    check_outputs({"--report": report, "--html": html, "--markdown": markdown, "--junit": junit}, inputs)
    if loaded.runtime.cache:
        check_cache_folder(loaded.resolve(loaded.runtime.cache), "--cache" if cache else "runtime.cache", inputs)
    plan = _checkpoint_plan(report, resume)
    world = distributed.from_environment()  # torchrun: every process runs its part; rank 0 writes
    result = _evaluate(
        loaded,
        plan,
        world,
        quiet=quiet,
        allow_pickle=allow_pickle,
        key=key,
        allow_external_arch=allow_external_arch,
        sanity_check=not no_sanity_check,
    )
    if world.is_main:
        signed = sign_report(result, key, signs)
        renderings = render_files(
            result,
            {Format.html: html, Format.markdown: markdown, Format.junit: junit},
            signature=signed.signature_line(),
        )
        write_together([*renderings, (report, signed.envelope)])  # all or none, the report last
        _append_step_summary(result)
        _print_outcome(result, [report, *(path for path, _ in renderings)], signed, quiet, verbose)
    return EXIT_PASS if result.verdict == "pass" else EXIT_FAIL


def _checkpoint_plan(report: Path, resume: bool) -> CheckpointPlan:
    """The checkpoint beside the report (REPORT.partial/); a warning when this run replaces one."""
    from prunegate.check import CheckpointPlan
    from prunegate.checkpoint import folder_for

    plan = CheckpointPlan(folder_for(report), resume=resume)
    if not resume and plan.folder.is_dir() and any(plan.folder.iterdir()):
        warn(
            f"{plan.folder}: an earlier run's checkpoint is there; this run starts over and replaces it "
            "(--resume continues it)"
        )
    return plan


def _evaluate(
    policy: Policy,
    plan: CheckpointPlan,
    world: World,
    *,
    quiet: bool,
    allow_pickle: bool,
    key: Path | None,
    allow_external_arch: bool,
    sanity_check: bool,
) -> Report:
    """`run_check` under a spinner while the models load, then a progress bar (a line every
    PRUNEGATE_PROGRESS_SECONDS in a CI log); on Ctrl-C, say where the progress so far is kept."""
    from prunegate import distributed
    from prunegate.check import run_check

    try:
        with pass_progress(show=not quiet and world.is_main) as progress:
            return run_check(
                policy,
                allow_pickle=allow_pickle,
                progress=progress,
                world=world,
                key_files=(key,) if key is not None else (),
                allow_external_arch=allow_external_arch,
                checkpoint=plan,
                sanity_check=sanity_check,
            )
    except KeyboardInterrupt:
        if world.is_main and plan.folder.is_dir():
            print(
                printable(
                    f"the progress so far is kept in {plan.folder}: run the same command with --resume to continue"
                ),
                file=sys.stderr,
            )
        raise
    finally:
        distributed.finish(world)


def _print_outcome(result: Report, written: list[Path], signed: SignedReport, quiet: bool, verbose: bool) -> None:
    """The console summary, a line naming every file written (the report first, with its
    signature) and, last, the verdict (with --quiet, only the verdict line)."""
    out = stdout_console()
    report, *renderings = written
    files = ", ".join([f"{report} ({signed.status_line()})", *map(str, renderings)])
    options = RenderOptions(
        color=out.is_terminal,
        width=render_width(out),
        verdict_only=quiet,
        verbose=verbose,
        before_verdict=(f"wrote {files}",),
    )
    out.print(renderer(Format.console).format(result, options), end="")


def _append_step_summary(result: Report) -> None:
    """On GitHub Actions, append the Markdown summary to $GITHUB_STEP_SUMMARY (best effort: the
    gate's verdict and report do not depend on it, so a failure to append is only a warning)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    text = renderer(Format.markdown).format(result)
    try:
        with open(target, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    except OSError as exc:
        warn(f"cannot append the summary to GITHUB_STEP_SUMMARY ({target}): {exc.strerror}")
