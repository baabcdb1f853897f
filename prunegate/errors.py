"""The one error hierarchy. Each error owns its one-line user message.

Library code raises these; the CLI's single boundary prints `error: <message>` and exits with
the error's `exit_code` (2 for anything the user can fix). Anything else is a bug (exit 3).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

# What must never reach a terminal raw: C0 controls (newline, carriage return, escape...), DEL,
# C1 controls, the Unicode line and paragraph separators, the bidirectional embeddings, overrides
# and isolates (which reorder what is shown), and lone surrogates (a file name that is not UTF-8:
# they cannot even be written to a UTF-8 stream).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: object) -> str:
    """`text` safe to print on one terminal line: each control, line-breaking or bidi character
    becomes its Python escape (a newline `\\n`, an escape `\\x1b`, an override `\\u202e`).
    Idempotent: what it returns holds none of them."""
    return _UNPRINTABLE.sub(_escaped, str(text))


class PrunegateError(Exception):
    """A problem with the user's input or environment: exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None):
        self.file = str(file) if file is not None else None
        self.field = field
        self.detail = message
        super().__init__(self._format())

    def _format(self) -> str:
        """`file: field: detail`, each part printable (a file name or a policy value with a newline
        or an escape sequence in it must not make a second line, or reach the terminal)."""
        where = ": ".join(printable(part) for part in (self.file, self.field) if part)
        return f"{where}: {printable(self.detail)}" if where else printable(self.detail)

    @property
    def message(self) -> str:
        return str(self)


class PolicyError(PrunegateError):
    """The policy file is unreadable or does not validate."""


class ModelError(PrunegateError):
    """A model file cannot be loaded, run, or does not fit the data."""


class DataError(PrunegateError):
    """A dataset cannot be read, or its contents are not usable."""


class DeviceError(PrunegateError):
    """A requested device or execution provider is not available."""


class ReportError(PrunegateError):
    """A report file cannot be read or is not a prunegate envelope."""


class KeyFileError(PrunegateError):
    """A signing or verification key cannot be read."""


def link_problem(path: Path) -> str | None:
    """ "is a symbolic link loop" or "is a broken symbolic link (points to X)" when `path` is a link
    that leads nowhere; None otherwise (`Path.exists()` answers False for both, silently)."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"is a broken symbolic link (points to {target})"
    return None


def missing_reason(path: Path, what: str = "") -> str:
    """Why `path`, which does not exist, cannot be opened: it is a symbolic link loop or a broken
    link, or a folder above it is, or it is simply "<what> not found"."""
    missing = f"{what} not found" if what else "not found"
    problem = link_problem(path)
    if problem:
        return problem
    for folder in reversed(Path(path).parents):  # the outermost bad link is the one to fix
        problem = link_problem(folder)
        if problem:
            return f"{missing}: the folder {folder} {problem}"
    return missing


def require_file(
    path: Path, what: str = "", *, error: type[PrunegateError] = PrunegateError, field: str | None = None
) -> None:
    """Raise `error` unless `path` is an existing regular file ("<what> not found", "is a symbolic
    link loop", "is a broken symbolic link", "is not a file")."""
    if not path.is_file():
        raise error(missing_reason(path, what) if not path.exists() else "is not a file", file=path, field=field)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, a scheduler's time limit): stopped like Ctrl-C."""


_BOILERPLATE = ("The following operation failed in the TorchScript interpreter",)


def first_line(exc: BaseException) -> str:
    """The line of an exception's text that says what went wrong, shortened. TorchScript puts its
    own traceback first and the error (e.g. 'RuntimeError: mat1 and mat2 shapes ...') last."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if lines[0].startswith(_BOILERPLATE) else lines[0]
    return line if len(line) <= 300 else line[:299] + "…"
