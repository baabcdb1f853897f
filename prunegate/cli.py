"""The command line: parse, call the library, write files, map errors to exit codes.

Exit codes: 0 pass, 1 the gate failed (or a report does not verify), 2 bad input or usage,
3 an internal error (a bug: please report it).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from importlib import resources
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prunegate.errors import PrunegateError

try:  # typer >= 0.29 carries its own click; its usage errors derive from TyperException
    from typer.exceptions import TyperException as UsageProblem
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import ClickException as UsageProblem


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"

EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_BUG = 0, 1, 2, 3
EPILOG = "Exit codes: 0 pass · 1 gate failed · 2 bad input or usage · 3 internal error."

cli = typer.Typer(name="prunegate", help="A safety gate for pruned neural networks.", epilog=EPILOG,
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
policy_cli = typer.Typer(help="Write, check and describe policy files.", no_args_is_help=True)
cli.add_typer(policy_cli, name="policy")

_state = {"debug": False}
log = logging.getLogger("prunegate")


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: never half a file."""
    path = Path(path)
    if path.is_dir():
        raise PrunegateError("is a folder, expected a file path to write", file=path)
    if not path.parent.exists():
        raise PrunegateError("the folder to write into does not exist", file=path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stdout() -> Console:
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


@cli.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from prunegate import __version__

        print(f"prunegate {__version__}")
        raise typer.Exit(0)
    _state["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


class _RichProgress:
    def __init__(self, progress: Progress):
        self.progress, self.task = progress, None

    def start(self, total: int) -> None:
        self.task = self.progress.add_task("evaluating", total=total)

    def advance(self, count: int) -> None:
        self.progress.advance(self.task, count)


@cli.command()
def check(
    policy: Path = typer.Option(..., "--policy", "-p", help="Policy YAML file."),
    dense: Optional[Path] = typer.Option(None, help="Dense model file (overrides the policy)."),
    pruned: Optional[Path] = typer.Option(None, help="Pruned model file (overrides the policy)."),
    device: Optional[Device] = typer.Option(None, help="Where to run (overrides runtime.device)."),
    backend: Optional[Backend] = typer.Option(None, help="Model runtime (overrides runtime.backend)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Images per batch."),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate a class-balanced subset of this size."),
    workers: Optional[int] = typer.Option(None, min=0, help="Background decoding processes."),
    report: Path = typer.Option(Path("prunegate-report.json"), "--report", "-o", help="Where to write the report."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow model files that unpickle arbitrary objects (runs their code)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict line."),
) -> int:
    """Evaluate the dense and pruned models on the policy's tasks and apply its rules."""
    from prunegate.check import Overrides, apply_overrides, run_check
    from prunegate.policy import load_policy
    from prunegate.report.attest import envelope, envelope_json, statement_bytes
    from prunegate.report.render import console as console_render

    overrides = Overrides(dense, pruned, device.value if device else None, backend.value if backend else None,
                          batch_size, limit, workers)
    loaded = apply_overrides(load_policy(policy), overrides)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_stderr(), transient=True, disable=quiet) as bar:
        result = run_check(loaded, allow_pickle=allow_pickle, progress=_RichProgress(bar))
    write_atomic(report, envelope_json(envelope(statement_bytes(result))))
    out = _stdout()
    if quiet:
        out.print(console_render.verdict_line(result))
    else:
        out.print(console_render.render(result, color=out.is_terminal, width=out.width), end="")
        out.print(f"report: {report} (unsigned)")
    return EXIT_PASS if result.verdict == "pass" else EXIT_FAIL


@policy_cli.command("init")
def policy_init(
    out: Path = typer.Argument(Path("prunegate.yaml"), help="File to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> int:
    """Write a commented policy template."""
    if out.exists() and not force:
        raise PrunegateError("already exists (use --force to overwrite)", file=out)
    write_atomic(out, resources.files("prunegate").joinpath("templates/policy.yaml").read_text(encoding="utf-8"))
    _stdout().print(f"wrote {out}")
    return EXIT_PASS


@policy_cli.command("validate")
def policy_validate(file: Path = typer.Argument(..., help="Policy YAML file.")) -> int:
    """Check a policy file: schema, names, and that every rule matches a task."""
    from prunegate.plan import build_plan
    from prunegate.policy import load_policy

    policy = load_policy(file)
    tasks = build_plan(policy)
    _stdout().print(f"{file}: valid policy {policy.name!r}: {len(tasks)} tasks, {len(policy.gate.rules)} rules")
    return EXIT_PASS


@policy_cli.command("schema")
def policy_schema() -> int:
    """Print the policy's JSON Schema."""
    from prunegate.policy import policy_json_schema

    print(policy_json_schema())
    return EXIT_PASS


@cli.command()
def demo(out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for the demo's data, models and reports.")) -> int:
    """Build a small dataset and CNN, prune it, and gate each pruned copy (offline, ~1 minute)."""
    from prunegate.demo_run import run_demo

    return run_demo(out, _stdout())


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI; the one place that turns exceptions into exit codes."""
    command = typer.main.get_command(cli)
    try:
        result = command.main(args=argv, prog_name="prunegate", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except UsageProblem as exc:
        exc.show()
        return EXIT_INPUT
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    except PrunegateError as exc:
        if _state["debug"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug: say so, keep the traceback for --debug
        if _state["debug"]:
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback; "
              "please report it)", file=sys.stderr)
        return EXIT_BUG
    return result if isinstance(result, int) else EXIT_PASS


def app() -> None:
    """Console-script entry point."""
    sys.exit(main())
