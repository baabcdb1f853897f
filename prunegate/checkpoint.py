"""Checkpoints of a long `check`: what the pass has evaluated so far, so that a run that is killed
or interrupted continues where it stopped (`check --resume`) instead of starting again.

A checkpoint is one file per process in `<report>.partial/`, written atomically every few
minutes and when the run is interrupted: for every data set the samples already evaluated and
their content digests, and every task's tallies. The tallies are per-sample and the shifts are
keyed by sample, so the resumed run ends with exactly the tallies, and so the report, of an
uninterrupted one (timing apart). A checkpoint is bound to what produced it — prunegate's
version, the policy as run, the model files and arch code, each data set's listing, the number
of processes, the backends the models ran on — and refused when any of that differs. It is read
with `torch.load(weights_only=True)`: plain tensors, strings and numbers, no code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from prunegate.errors import PrunegateError

FORMAT = 2  # 2: the classification tally keeps probability outcomes (confidence, top-5, ...)
DEFAULT_SECONDS = 300.0
FIELD = "--resume"


def folder_for(report: Path) -> Path:
    """Where `check --report REPORT` keeps its checkpoint."""
    return report.with_name(report.name + ".partial")


class Checkpoint:
    """The checkpoint of one process (`rank`) of one run, bound to `binding` (a JSON-able dict)."""

    def __init__(self, folder: Path, binding: dict, *, rank: int = 0, every: float | None = None):
        self.folder = folder
        self.binding = binding
        self.file = folder / f"rank-{rank}.pt"
        self.every = (
            every if every is not None else float(os.environ.get("PRUNEGATE_CHECKPOINT_SECONDS", DEFAULT_SECONDS))
        )
        self.last = time.monotonic()
        self.saved = False

    def restore(self) -> dict:
        """The saved state; PrunegateError (exit 2) when there is none or another run made it."""
        if not self.file.is_file():
            raise PrunegateError(
                f"nothing to resume: no checkpoint {self.file} (a run writes one every "
                f"{self.every:g} s and when it is stopped)",
                file=self.folder,
                field=FIELD,
            )
        try:
            state = torch.load(self.file, map_location="cpu", weights_only=True)
            recorded = json.loads(state["binding"])
            if state.get("format") != FORMAT or not isinstance(recorded, dict):
                raise ValueError("format")
        except Exception:
            raise PrunegateError(
                "is not a readable prunegate checkpoint (damaged, or from another version): "
                "remove the folder to start over",
                file=self.file,
                field=FIELD,
            ) from None
        differing = sorted(k for k in set(recorded) | set(self.binding) if recorded.get(k) != self.binding.get(k))
        if differing:
            raise PrunegateError(
                f"was made by a run with other {', '.join(differing)}: refusing to resume it; "
                "remove the folder to start over",
                file=self.file,
                field=FIELD,
            )
        return state

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.every

    def save(self, state: dict) -> None:
        """Write `state` (tensors, lists, strings) atomically, bound to this run."""
        self.folder.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".rank.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": FORMAT, "binding": json.dumps(self.binding, sort_keys=True), **state}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.last = time.monotonic()
        self.saved = True

    def discard(self) -> None:
        """The run is complete: the checkpoint has served."""
        self.file.unlink(missing_ok=True)
        try:
            self.folder.rmdir()  # only when no other process's file is left
        except OSError:
            pass


def remove(folder: Path) -> None:
    """Delete a checkpoint folder and everything in it, if it exists."""
    shutil.rmtree(folder, ignore_errors=True)
