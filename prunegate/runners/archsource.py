"""Where a state dict's `arch` code comes from, pinned before any of it runs.

`arch: file.py:build` and `arch: package.module:build` are Python: they decide what the weights
compute, so a report that pins the weights but not the arch pins nothing (an arch that ignores
the weights passes any gate). The arch is located here without importing it (no code runs in
prunegate's process), its file's sha256 taken, and the installed distribution that ships it
named with its version; the report records all of it and lists the file among the statement's
subjects, and `prunegate verify --arch FILE` checks it.

Code from the policy's folder (reviewed with the policy) or from installed packages needs no
opt-in; a file anywhere else does (`--allow-external-arch`), and the report records it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

from prunegate.digest import file_sha256
from prunegate.errors import ModelError

OPT_IN = "--allow-external-arch"


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)
    except ValueError:  # another drive
        return False


def _library_folders() -> list[str]:
    paths = sysconfig.get_paths()
    folders = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    folders |= {p for p in sys.path if p and ("site-packages" in p or "dist-packages" in p)}
    return sorted(folders)


def _find_module(name: str) -> importlib.machinery.ModuleSpec | None:
    """The module's spec, found the way `import` would, without running any of it (importlib's
    find_spec imports the parent packages of a dotted name: here each level is looked up in
    the previous one's folders instead)."""
    parts = name.split(".")
    spec = importlib.util.find_spec(parts[0]) if parts[0] not in sys.modules else sys.modules[parts[0]].__spec__
    for depth in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = importlib.machinery.PathFinder.find_spec(
            ".".join(parts[: depth + 1]), list(spec.submodule_search_locations)
        )
    return spec


def _distribution(top_level: str) -> tuple[str | None, str | None]:
    names = importlib.metadata.packages_distributions().get(top_level) or []
    for name in names:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def locate_arch(arch: str, base_dir: Path, *, file: Path, field: str, allow_external: bool) -> dict:
    """The report's `arch_source` for `arch` (see the module's text); ModelError when it cannot be
    found, or lies outside the policy's folder and the installed packages without the opt-in."""
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(
            f"arch {arch!r} must look like 'package.module:function' or 'file.py:function'", file=file, field=field
        )
    if module_name.endswith(".py"):
        source = Path(module_name) if Path(module_name).is_absolute() else base_dir / module_name
        if not source.is_file():
            raise ModelError(f"arch file {source} not found", file=file, field=field)
        external = not _inside(str(source), str(base_dir))
        if external and not allow_external:
            raise ModelError(
                f"arch file {source} lies outside the policy's folder {base_dir}: its code would decide "
                f"what the weights compute; move it next to the policy, or re-run with {OPT_IN} if you "
                "trust it (the report records that)",
                file=file,
                field=field,
            )
        return {
            "kind": "file",
            "path": os.path.realpath(source),
            "sha256": file_sha256(source),
            "module": None,
            "distribution": None,
            "version": None,
            "external": external,
        }
    try:
        spec = _find_module(module_name)
    except (ImportError, ValueError, AttributeError):
        spec = None
    if spec is None:
        raise ModelError(f"arch {arch!r}: no module {module_name!r} is installed", file=file, field=field)
    origin = spec.origin if spec.has_location and spec.origin and os.path.isfile(spec.origin) else None
    distribution, version = _distribution(module_name.split(".")[0])
    installed = distribution is not None or (origin is not None and any(_inside(origin, f) for f in _library_folders()))
    external = not installed and not (origin is not None and _inside(origin, str(base_dir)))
    if external and not allow_external:
        raise ModelError(
            f"arch module {module_name!r} ({origin or 'no file'}) is neither an installed package nor in "
            f"the policy's folder {base_dir}; re-run with {OPT_IN} if you trust it (the report records "
            "that)",
            file=file,
            field=field,
        )
    return {
        "kind": "module",
        "path": os.path.realpath(origin) if origin else None,
        "sha256": file_sha256(Path(origin)) if origin else None,
        "module": module_name,
        "distribution": distribution,
        "version": version,
        "external": external,
    }
