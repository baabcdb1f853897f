"""prunegate: a safety gate for pruned neural networks.

    from prunegate import load_policy, run_check
    report = run_check(load_policy("safety.yaml"))
    print(report.verdict)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("prunegate")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from prunegate.check import Overrides, apply_overrides, run_check  # noqa: E402
from prunegate.errors import PrunegateError  # noqa: E402
from prunegate.policy import Policy, load_policy  # noqa: E402
from prunegate.report.schema import Report  # noqa: E402

__all__ = ["Overrides", "Policy", "PrunegateError", "Report", "__version__", "apply_overrides", "load_policy", "run_check"]
