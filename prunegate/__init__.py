"""prunegate: a safety gate for pruned neural networks.

from prunegate import load_policy, run_check
report = run_check(load_policy("safety.yaml"))
print(report.verdict)
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("prunegate")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

# The public names, imported on first use: a model's own process (runners/host.py) imports
# this package too, and needs none of the gate.
_EXPORTS = {
    "Overrides": "prunegate.check",
    "apply_overrides": "prunegate.check",
    "run_check": "prunegate.check",
    "PrunegateError": "prunegate.errors",
    "Policy": "prunegate.policy",
    "load_policy": "prunegate.policy",
    "Report": "prunegate.report.schema",
}

if TYPE_CHECKING:
    from prunegate.check import Overrides, apply_overrides, run_check
    from prunegate.errors import PrunegateError
    from prunegate.policy import Policy, load_policy
    from prunegate.report.schema import Report


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prunegate' has no attribute {name!r}")


__all__ = [
    "Overrides",
    "Policy",
    "PrunegateError",
    "Report",
    "__version__",
    "apply_overrides",
    "load_policy",
    "run_check",
]
