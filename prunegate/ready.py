"""The ready policies shipped inside the package: `--policy cifar10` names one.

A name is looked up only when no file of that name exists, so a file always wins. A ready policy's
relative paths (`dense.onnx`, the data folder) are taken from the working directory, since the
package's own folder holds no models; `--dense/--pruned/--data` fill them on the command line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def ready_folder() -> Path:
    """The installed package's folder of ready policies."""
    return Path(str(resources.files("prunegate").joinpath("policies")))


def ready_names() -> list[str]:
    """The ready policies' names, as `--policy` takes them."""
    return sorted(p.stem for p in ready_folder().glob("*.yaml"))


def ready_policy(argument: Path) -> Path | None:
    """The shipped policy `argument` names (`cifar10`), or None when it is a path or no such name."""
    if argument.exists() or not looks_like_a_name(argument):
        return None
    path = ready_folder() / f"{argument}.yaml"
    return path if path.is_file() else None


def looks_like_a_name(argument: Path) -> bool:
    """A bare word: the user may have meant a ready policy."""
    text = str(argument)
    return not argument.suffix and "/" not in text and "\\" not in text
