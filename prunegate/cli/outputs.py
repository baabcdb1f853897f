"""The files a command writes: checked before the work starts, written together at its end.

Before: no output may be another output, or any input of the run (the policy, a model, its
external data or arch file, a data file or folder, a key), symbolic links resolved; each must be
a file path in a folder that exists and can be written (a probe file is made and removed), so a
run of hours does not end in "permission denied". After: every output is written to a temporary
file beside its target first, and only when all are complete are they renamed into place, the
report last; a failure removes the temporary files, so a failed command leaves no report behind.
The writing itself is the library's (`prunegate.files`); this module re-exports it for the commands,
and renders the report in the formats asked for (`render_files`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prunegate.errors import PrunegateError
from prunegate.files import write_atomic, write_together
from prunegate.report.render import Format, RenderOptions, renderer

if TYPE_CHECKING:  # pragma: no cover
    from prunegate.report.schema import Report

__all__ = ["check_outputs", "probe_folder", "render_files", "write_atomic", "write_together"]


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_outputs(outputs: Mapping[str, Path | None], inputs: Mapping[str, Path]) -> dict[str, Path]:
    """`outputs`: option -> path (None: not asked for); `inputs`: what names it (e.g. the policy's
    field) -> path. Returns the outputs asked for; PrunegateError (exit 2) naming the option."""
    chosen = {option: Path(path) for option, path in outputs.items() if path is not None}
    real_inputs = {what: _real(path) for what, path in inputs.items()}
    seen: dict[Path, str] = {}
    for option, path in chosen.items():
        real = _real(path)
        if real in seen:
            raise PrunegateError(
                f"is also the path of {seen[real]}: two outputs cannot share a file", file=path, field=option
            )
        seen[real] = option
        for what, source in real_inputs.items():
            if real == source:
                raise PrunegateError(
                    f"is {what}, an input of this run: refusing to overwrite it", file=path, field=option
                )
            if source.is_dir() and _inside(real, source):
                raise PrunegateError(
                    f"lies inside {what} ({source}), an input of this run: write it elsewhere", file=path, field=option
                )
        probe_folder(path, option)
    return chosen


def check_cache_folder(folder: Path, option: str, inputs: Mapping[str, Path]) -> None:
    """A cache folder (written by the run) must not be, or lie inside, one of the run's inputs."""
    real = _real(folder)
    for what, source in inputs.items():
        source = _real(source)
        if real == source or (source.is_dir() and _inside(real, source)):
            raise PrunegateError(
                f"is or lies inside {what} ({source}), an input of this run: keep the cache elsewhere",
                file=folder,
                field=option,
            )


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


def render_files(
    report: Report, paths: Mapping[Format, Path | None], *, signature: str | None = None, gallery: bool = True
) -> list[tuple[Path, str]]:
    """(path, text) of the report in each format given a path (None: not asked for), in the order of
    `paths`. With `gallery`, the HTML page's thumbnails are rebuilt from the data the report names."""
    chosen = {fmt: path for fmt, path in paths.items() if path is not None}
    images = None
    if gallery and Format.html in chosen:
        from prunegate.report.gallery import build_gallery

        images = build_gallery(report)
    options = RenderOptions(gallery=images, signature=signature)
    return [(path, renderer(fmt).format(report, options)) for fmt, path in chosen.items()]
