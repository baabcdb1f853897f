"""The command line: parse, call the library, write files, map errors to exit codes.

Exit codes: 0 pass, 1 the gate failed (or a report does not verify), 2 bad input or usage,
3 an internal error (a bug: please report it).

One module per command family; importing them registers their commands on `cli`, in the order
`prunegate --help` lists them.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from prunegate.errors import PrunegateError

from . import gating, policies, signing, reports, tools  # noqa: F401  (importing registers the commands)
from .common import (
    CONSOLE_WIDTH, EXIT_BUG, EXIT_FAIL, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_PASS, INTERRUPTED, _RichProgress, _state, cli,
    write_atomic,
)

try:  # typer >= 0.29 carries its own click; its usage errors derive from TyperException
    from typer.exceptions import TyperException as UsageProblem
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import ClickException as UsageProblem


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI; the one place that turns exceptions into exit codes."""
    command = typer.main.get_command(cli)
    try:
        result = command.main(args=argv, prog_name="prunegate", standalone_mode=False)
    except typer.Exit as exc:
        if exc.exit_code == EXIT_INTERRUPTED:  # click turns Ctrl-C into Exit(130) on some versions
            print(INTERRUPTED, file=sys.stderr)
        return exc.exit_code
    except UsageProblem as exc:  # the same one `error: ` line as every other bad input
        message = exc.format_message()
        if message:  # (no message: the help was shown, as for a bare `prunegate`)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"error: {message}{hint}", file=sys.stderr)
        return EXIT_INPUT
    except (typer.Abort, KeyboardInterrupt):
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    except PrunegateError as exc:
        if _state["debug"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug: say so, keep the traceback for --debug
        if _state["debug"]:
            raise
        text = str(exc).strip().splitlines()
        print(f"internal error: {type(exc).__name__}: {text[0] if text else ''} (re-run with --debug for the "
              "traceback; please report it)", file=sys.stderr)
        return EXIT_BUG
    if result == EXIT_INTERRUPTED:  # typer returns Ctrl-C as this code when not standalone
        print(INTERRUPTED, file=sys.stderr)
    return result if isinstance(result, int) else EXIT_PASS


def app() -> None:
    """Console-script entry point."""
    sys.exit(main())


__all__ = ["CONSOLE_WIDTH", "EXIT_BUG", "EXIT_FAIL", "EXIT_INPUT", "EXIT_PASS", "_RichProgress", "app", "cli", "main",
           "write_atomic"]
