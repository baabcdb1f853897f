"""The one error hierarchy. Each error owns its one-line user message.

Library code raises these; the CLI's single boundary prints `error: <message>` and exits with
the error's `exit_code` (2 for anything the user can fix). Anything else is a bug (exit 3).
"""

from __future__ import annotations

from pathlib import Path


class PrunegateError(Exception):
    """A problem with the user's input or environment: exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None):
        self.file = str(file) if file is not None else None
        self.field = field
        self.detail = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        return f"{where}: {self.detail}" if where else self.detail

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


def require_file(path: Path, what: str = "", *, error: type[PrunegateError] = PrunegateError,
                 field: str | None = None) -> None:
    """Raise `error` unless `path` is an existing regular file ("<what> not found" / "is not a file")."""
    if not path.is_file():
        missing = f"{what} not found" if what else "not found"
        raise error(missing if not path.exists() else "is not a file", file=path, field=field)
