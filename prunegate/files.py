"""Atomic file writes: every file is staged in a temporary file beside its target, then renamed.

A crash, a full disk or a folder made read-only meanwhile never leaves half a file behind; a
failure removes the temporary files. The CLI writes its reports with these, and the demo writes
its policy with them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from prunegate.errors import PrunegateError

__all__ = ["write_atomic", "write_together"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _staged(path: Path, content: str | bytes) -> str:
    """`content` in a complete temporary file beside `path`; its name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.absolute().parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_together(files: Sequence[tuple[Path, str | bytes]]) -> None:
    """Write every file, or none: all are staged first, then renamed in order (put the report
    last). An OSError is the user's to fix (a full disk, a folder made read-only meanwhile):
    PrunegateError naming the file."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, content in files:
            path = Path(path)
            if path.is_dir():
                raise PrunegateError("is a folder, expected a file path to write", file=path)
            if not path.absolute().parent.is_dir():
                raise PrunegateError("the folder to write into does not exist", file=path)
            try:
                staged.append((_staged(path, content), path))
            except OSError as exc:
                raise PrunegateError(f"cannot write ({exc.strerror or exc})", file=path) from None
        for index, (tmp, path) in enumerate(staged):
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise PrunegateError(f"cannot write ({exc.strerror or exc})", file=path) from None
            staged[index] = ("", path)
    finally:
        for tmp, _ in staged:
            if tmp:
                Path(tmp).unlink(missing_ok=True)


def write_atomic(path: Path, content: str | bytes) -> None:
    """One file, atomically: never half a file."""
    write_together([(Path(path), content)])
