"""What every command shares: the Typer app and its groups, exit codes, consoles, atomic writes,
progress, and the option enums."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import Progress

from prunegate.errors import PrunegateError, require_file

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
CONSOLE_WIDTH = 120  # at least: CI logs are not terminals and would wrap tables at 80
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
INTERRUPTED = "interrupted: nothing was written"
EPILOG = "Exit codes: 0 pass · 1 gate failed · 2 bad input or usage · 3 internal error."

cli = typer.Typer(name="prunegate", help="A safety gate for pruned neural networks.", epilog=EPILOG,
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
policy_cli = typer.Typer(help="Write, check and describe policy files.", no_args_is_help=True)
cli.add_typer(policy_cli, name="policy")
report_cli = typer.Typer(help="Read, render and describe reports.", no_args_is_help=True)
cli.add_typer(report_cli, name="report")

_state = {"debug": False}
log = logging.getLogger("prunegate")


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write via a temporary file in the same folder and rename: never half a file."""
    path = Path(path)
    if path.is_dir():
        raise PrunegateError("is a folder, expected a file path to write", file=path)
    if not path.parent.exists():
        raise PrunegateError("the folder to write into does not exist", file=path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _print_version(value: bool) -> None:
    # An option callback: it runs while parsing, so `prunegate --version` needs no command.
    if value:
        from prunegate import __version__

        print(f"prunegate {__version__}")
        raise typer.Exit(0)


@cli.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


class _RichProgress:
    """A live bar on a terminal; elsewhere (CI logs), with `lines`, one line every `every` seconds."""

    def __init__(self, progress: Progress, lines: bool = False, every: float = 30.0):
        self.progress, self.task, self.lines, self.every = progress, None, lines, every
        self.total = self.done = 0
        self.started = self.last = 0.0

    def start(self, total: int) -> None:
        self.task = self.progress.add_task("evaluating", total=total)
        self.total, self.started = total, time.monotonic()
        self.last = self.started

    def advance(self, count: int) -> None:
        self.progress.advance(self.task, count)
        self.done += count
        now = time.monotonic()
        if self.lines and now - self.last >= self.every and self.total:
            self.last = now
            elapsed = now - self.started
            eta = elapsed * (self.total - self.done) / max(self.done, 1)
            print(f"progress: {100 * self.done / self.total:.0f}% ({self.done:,}/{self.total:,} evaluations), "
                  f"{_duration(elapsed)} elapsed, about {_duration(eta)} left", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def _passphrase() -> Optional[bytes]:
    value = os.environ.get("PRUNEGATE_KEY_PASSPHRASE")
    return value.encode() if value else None


def _signing_key(path: Optional[Path]):
    """The key from --key, else from PRUNEGATE_SIGNING_KEY (PEM text, as a CI secret), else None."""
    from prunegate.report.keys import load_private

    if path is not None:
        require_file(path, "signing key file", field="--key")
        return load_private(path.read_bytes(), _passphrase(), str(path))
    text = os.environ.get("PRUNEGATE_SIGNING_KEY")
    if text:
        return load_private(text.encode(), _passphrase(), "PRUNEGATE_SIGNING_KEY")
    return None


def _check_writable(path: Optional[Path], option: str) -> None:
    """Fail before the long run, not after it, when an output cannot be written."""
    if path is None:
        return
    if path.is_dir():
        raise PrunegateError("is a folder, expected a file path to write", file=path, field=option)
    if not path.absolute().parent.is_dir():
        raise PrunegateError("the folder to write into does not exist", file=path, field=option)


def _read_report(path: Path) -> str:
    require_file(path, "report file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise PrunegateError("cannot read the report as UTF-8 text", file=path) from None


def _csv(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
