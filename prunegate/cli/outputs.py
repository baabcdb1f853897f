"""The files a command writes: checked before the work starts, written together at its end.

Before: no output may be another output, or any input of the run (the policy, a model, its
external data or arch file, a data file or folder, a key), symbolic links resolved; each must be
a file path in a folder that exists and can be written (a probe file is made and removed), so a
run of hours does not end in "permission denied". After: every output is written to a temporary
file beside its target first, and only when all are complete are they renamed into place, the
report last; a failure removes the temporary files, so a failed command leaves no report behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

from prunegate.errors import PrunegateError


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_outputs(outputs: Mapping[str, Optional[Path]], inputs: Mapping[str, Path]) -> dict[str, Path]:
    """`outputs`: option -> path (None: not asked for); `inputs`: what names it (e.g. the policy's
    field) -> path. Returns the outputs asked for; PrunegateError (exit 2) naming the option."""
    chosen = {option: Path(path) for option, path in outputs.items() if path is not None}
    real_inputs = {what: _real(path) for what, path in inputs.items()}
    seen: dict[Path, str] = {}
    for option, path in chosen.items():
        real = _real(path)
        if real in seen:
            raise PrunegateError(f"is also the path of {seen[real]}: two outputs cannot share a file",
                                 file=path, field=option)
        seen[real] = option
        for what, source in real_inputs.items():
            if real == source:
                raise PrunegateError(f"is {what}, an input of this run: refusing to overwrite it",
                                     file=path, field=option)
            if source.is_dir() and _inside(real, source):
                raise PrunegateError(f"lies inside {what} ({source}), an input of this run: write it elsewhere",
                                     file=path, field=option)
        probe_folder(path, option)
    return chosen


def probe_folder(path: Path, option: str) -> None:
    """The path must name a file in an existing folder this process can write into."""
    if path.is_dir():
        raise PrunegateError("is a folder, expected a file path to write", file=path, field=option)
    folder = path.absolute().parent
    if not folder.is_dir():
        raise PrunegateError("the folder to write into does not exist", file=path, field=option)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise PrunegateError(f"cannot write into its folder ({exc.strerror})", file=path, field=option) from None
    os.close(fd)
    os.unlink(probe)


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
