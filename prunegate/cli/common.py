"""What every command shares: the Typer app and its groups, exit codes, consoles, atomic writes,
progress, and the option enums."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.status import Status
from rich.text import Text

from prunegate.cli.outputs import write_atomic  # noqa: F401  (commands import it from here)
from prunegate.errors import PrunegateError, printable, require_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_BUG = 0, 1, 2, 3
CONSOLE_WIDTH = 120  # for logs and pipes: not terminals, and nothing there wraps a wide table
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
EXIT_TERMINATED = 143  # SIGTERM, likewise
INTERRUPTED = "interrupted: no report was written"
TERMINATED = "terminated (SIGTERM): no report was written"
EPILOG = "Exit codes: 0 pass · 1 gate failed · 2 bad input or usage · 3 internal error."
VERBOSE_HELP = "Show every task's row (default: one per corruption and noise kind)."  # check, report show

cli = typer.Typer(
    name="prunegate",
    help="A safety gate for pruned neural networks.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_cli = typer.Typer(help="Write, check and describe policy files.", no_args_is_help=True)
cli.add_typer(policy_cli, name="policy")
report_cli = typer.Typer(help="Read, render and describe reports.", no_args_is_help=True)
cli.add_typer(report_cli, name="report")

invocation: dict = {"debug": False, "warned": set()}  # per invocation: --debug, the warnings already given
log = logging.getLogger("prunegate")


class SafeConsole(Console):
    """A rich console that escapes control characters in every plain string it prints (file names
    and report fields reach the terminal as text, never as escape sequences or line breaks); a
    finished rendering (console.Rendered, ANSI styles and all) is printed exactly as it is."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        # A str with __rich__ is a finished rendering (console.Rendered); not imported here, to keep
        # the renderers (and numpy) out of the start-up of commands that only print a line.
        safe = [printable(o) if isinstance(o, str) and not hasattr(o, "__rich__") else o for o in objects]
        super().print(*safe, **kwargs)


def stdout_console() -> Console:
    """The console for results (standard output); control characters in text are escaped."""
    return SafeConsole(highlight=False, soft_wrap=True)


def stderr_console() -> Console:
    """The console for progress, warnings and errors (standard error)."""
    return SafeConsole(stderr=True, highlight=False)


def warn(message: str) -> None:
    """One `warning: ` line on stderr, its control characters escaped (as every error line is);
    a warning already given in this invocation is not repeated."""
    line = printable(f"warning: {message}")
    if line not in invocation["warned"]:
        invocation["warned"].add(line)
        print(line, file=sys.stderr)


def _print_version(value: bool) -> None:
    # An option callback: it runs while parsing, so `prunegate --version` needs no command.
    if value:
        from prunegate import __version__

        print(f"prunegate {__version__}")
        raise typer.Exit(0)


@cli.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    invocation["debug"] = debug
    invocation["warned"] = set()
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


UNIT = "task-images"  # what the pass's progress counts: each image once per task (and per draw)


class TaskImagesColumn(ProgressColumn):
    """The progress bar's count with its unit: '1,234/3,800 task-images'."""

    def render(self, task: Task) -> Text:
        return Text(f"{int(task.completed):,}/{int(task.total or 0):,} {UNIT}", style="progress.download")


def progress_columns() -> tuple[ProgressColumn, ...]:
    """The pass's progress bar: what it does, the bar, task-images done of all, elapsed, left."""
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskImagesColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


class RichProgress:
    """A live bar on a terminal; elsewhere (CI logs), with `lines`, one line every `every` seconds.
    `spinner`: a status shown until the pass starts (the models loading), stopped by `start`."""

    def __init__(self, progress: Progress, lines: bool = False, every: float = 30.0, spinner: Status | None = None):
        self.progress, self.lines, self.every, self.spinner = progress, lines, every, spinner
        self.task: TaskID | None = None
        self.total = self.done = 0
        self.started = self.last = 0.0

    def start(self, total: int) -> None:
        if self.spinner is not None:  # one live display at a time: the spinner makes way for the bar
            self.spinner.stop()
        self.progress.start()  # (a no-op when the bar is already shown)
        self.task = self.progress.add_task("evaluating", total=total)
        self.total, self.started = total, time.monotonic()
        self.last = self.started

    def advance(self, count: int) -> None:
        assert self.task is not None, "start() comes first"
        self.progress.advance(self.task, count)
        self.done += count
        now = time.monotonic()
        if self.lines and now - self.last >= self.every and self.total:
            self.last = now
            elapsed = now - self.started
            eta = elapsed * (self.total - self.done) / max(self.done, 1)
            print(
                f"progress: {100 * self.done / self.total:.0f}% ({self.done:,}/{self.total:,} {UNIT}), "
                f"{duration(elapsed)} elapsed, about {duration(eta)} left",
                file=sys.stderr,
                flush=True,
            )


@contextmanager
def pass_progress(show: bool) -> Iterator[RichProgress]:
    """The pass's progress on stderr, when `show`: on a terminal a spinner while the models load,
    then the bar (cleared at the end); in a log, a line every PRUNEGATE_PROGRESS_SECONDS (30)."""
    console = stderr_console()
    live = show and console.is_terminal
    bar = Progress(*progress_columns(), console=console, transient=True, disable=not live)
    spinner = console.status("loading the models") if live else None
    every = float(os.environ.get("PRUNEGATE_PROGRESS_SECONDS", "30"))
    progress = RichProgress(bar, lines=show and not console.is_terminal, every=every, spinner=spinner)
    if spinner is not None:
        spinner.start()
    try:
        yield progress
    finally:
        if spinner is not None:
            spinner.stop()
        bar.stop()


def render_width(console: Console) -> int:
    """The columns a rendering for `console` may take: a terminal's width (layouts fit from 80
    columns up); a log or pipe, which no one resizes, CONSOLE_WIDTH unless COLUMNS says otherwise."""
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console.width
    return CONSOLE_WIDTH


def duration(seconds: float) -> str:
    """Seconds as `3m05s`, or `1h02m` from an hour up (progress lines)."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def signing_passphrase() -> bytes | None:
    """The signing key's passphrase from PRUNEGATE_KEY_PASSPHRASE, if set."""
    value = os.environ.get("PRUNEGATE_KEY_PASSPHRASE")
    return value.encode() if value else None


def signing_key(path: Path | None) -> Ed25519PrivateKey | None:
    """The key from --key, else from PRUNEGATE_SIGNING_KEY (PEM text, as a CI secret), else None."""
    from prunegate.report.keys import load_private

    if path is not None:
        require_file(path, "signing key file", field="--key")
        key = load_private(path.read_bytes(), signing_passphrase(), str(path))
        _warn_if_shared(path)
        return key
    text = os.environ.get("PRUNEGATE_SIGNING_KEY")
    if text:
        return load_private(text.encode(), signing_passphrase(), "PRUNEGATE_SIGNING_KEY")
    return None


def _warn_if_shared(path: Path) -> None:
    """A private key that group or others may read (or write) is no longer private: say so (once a
    run, however often the key is read), and go on. Checked after the key loads, so a file that is
    no key gets only its error."""
    if os.name == "nt":  # (Windows has ACLs, not these mode bits)
        return
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        warn(
            f"{path}: the signing key is accessible to group or others (mode {mode:04o}); restrict it: chmod 600 {path}"
        )


def read_report_text(path: Path) -> str:
    """A report file's text; a missing or unreadable file is a one-line error."""
    require_file(path, "report file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise PrunegateError("cannot read the report as UTF-8 text", file=path) from None


def split_csv(value: str | None) -> list[str] | None:
    """A comma-separated option as its non-empty items (None when not given)."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
