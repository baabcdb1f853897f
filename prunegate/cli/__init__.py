"""The command line: parse, call the library, write files, map errors to exit codes.

Exit codes: 0 pass, 1 the gate failed (or a report does not verify), 2 bad input or usage,
3 an internal error (a bug: please report it).

One module per command family; importing them registers their commands on `cli`, in the order
`prunegate --help` lists them.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any

import typer

from prunegate.errors import PrunegateError, Terminated, printable
from prunegate.files import write_atomic  # re-exported: it was the CLI's before it moved to the library

from . import gating, policies, reports, signing, tools  # noqa: F401  (importing registers the commands)
from .common import (
    CONSOLE_WIDTH,
    EXIT_BUG,
    EXIT_FAIL,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_PASS,
    EXIT_TERMINATED,
    INTERRUPTED,
    TERMINATED,
    RichProgress,
    cli,
    invocation,
)

try:  # typer >= 0.29 carries its own click; its usage errors derive from TyperException
    from typer.exceptions import TyperException as UsageProblem
except ImportError:  # pragma: no cover - older typer on top of click
    # (which mypy sees depends on whether click is installed too, as huggingface_hub needs: the [hf] extra)
    from click.exceptions import ClickException as UsageProblem  # type: ignore[no-redef,assignment,unused-ignore]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; the one place that turns exceptions into exit codes. Every message it prints
    is one line, with control characters escaped (`errors.printable`): file names, arguments and
    policy values reach the terminal as text, never as line breaks or escape sequences."""
    command = typer.main.get_command(cli)
    invocation["terminated"] = False
    with _sigterm_as_interrupt():
        return _run(command, argv)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job, a scheduler's limit) stops a command as Ctrl-C does: cleanly,
    with a message, the models' processes ended, a checkpoint kept, exit 143."""

    def stop(signum: int, frame: object) -> None:
        invocation["terminated"] = True  # typer may turn the interrupt into a plain exit code 130
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (a library caller's): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(command: Any, argv: list[str] | None) -> int:  # typer's click Command
    try:
        result = command.main(args=argv, prog_name="prunegate", standalone_mode=False)
    except typer.Exit as exc:
        if exc.exit_code == EXIT_INTERRUPTED:  # click turns Ctrl-C into Exit(130) on some versions
            return _stopped()
        return exc.exit_code
    except UsageProblem as exc:  # the same one `error: ` line as every other bad input
        message = exc.format_message()
        if message:  # (no message: the help was shown, as for a bare `prunegate`)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(printable(f"error: {message}{hint}"), file=sys.stderr)
        return EXIT_INPUT
    except (typer.Abort, KeyboardInterrupt):  # click wraps a KeyboardInterrupt in Abort
        return _stopped()
    except PrunegateError as exc:
        if invocation["debug"]:
            raise
        print(printable(f"error: {exc}"), file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug: say so, keep the traceback for --debug
        if invocation["debug"]:
            raise
        text = str(exc).strip().splitlines()
        print(
            printable(
                f"internal error: {type(exc).__name__}: {text[0] if text else ''} (re-run with --debug for "
                "the traceback; please report it)"
            ),
            file=sys.stderr,
        )
        return EXIT_BUG
    if result == EXIT_INTERRUPTED:  # typer returns Ctrl-C as this code when not standalone
        return _stopped()
    return result if isinstance(result, int) else EXIT_PASS


def _stopped() -> int:
    """Ctrl-C (130) or SIGTERM (143): say so, in one line."""
    terminated = invocation.get("terminated")
    print(TERMINATED if terminated else INTERRUPTED, file=sys.stderr)
    return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


def app() -> None:
    """Console-script entry point."""
    sys.exit(main())


__all__ = [
    "CONSOLE_WIDTH",
    "EXIT_BUG",
    "EXIT_FAIL",
    "EXIT_INPUT",
    "EXIT_PASS",
    "RichProgress",
    "app",
    "cli",
    "main",
    "write_atomic",
]
