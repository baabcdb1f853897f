"""Start-up of the commands that only read or write small files (issue 20, item 2): each must
take under 1 s from process start to exit.

    .venv/bin/python bench/startup.py [--runs 7] [--limit 1.0]

Timed: the whole process (`python -m prunegate ...` as a subprocess; perf_counter around
`subprocess.run`), the median of --runs runs after one untimed warm-up (page cache). Set-up, not
timed: a signed report of a tiny check (two 32-px ONNX models, 20 random images, the ready
`demo` policy). Exits 1 when any median is over --limit seconds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PRUNEGATE = [sys.executable, "-m", "prunegate"]
COMMANDS = [
    "--help",
    "--version",
    "policy --help",
    "policy validate cifar10",
    "policy schema",
    "policy init {d}/init.yaml --force",
    "report --help",
    "report show {d}/report.json",
    "report markdown {d}/report.json",
    "verify --help",
    "verify {d}/report.json --key {d}/k.pub",
    "verify {d}/report.json --key {d}/k.pub --require-pass",
    "diff {d}/report.json {d}/report.json",
]


def prepare(folder: Path) -> None:
    """Two tiny ONNX models, an .npz test set and a signed report of the demo policy."""
    torch.manual_seed(0)
    for name in ("dense", "pruned"):
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
        net(torch.zeros(1, 3, 32, 32))
        torch.onnx.export(net.eval(), (torch.zeros(1, 3, 32, 32),), str(folder / f"{name}.onnx"),
                          input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)  # fmt: skip
    rng = np.random.default_rng(0)
    np.savez(folder / "test.npz", images=rng.integers(0, 256, (20, 32, 32, 3), np.uint8), labels=np.arange(20) % 10)
    subprocess.run([*PRUNEGATE, "keygen", "--out", str(folder / "k")], check=True, capture_output=True)
    done = subprocess.run(
        [*PRUNEGATE, "check", "--policy", "demo", "--dense", "dense.onnx", "--pruned", "pruned.onnx",
         "--data", "test.npz", "--key", "k.pem", "--report", "report.json", "--quiet"],
        cwd=folder, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise SystemExit(f"set-up check failed: {done.stderr}")


def wall_seconds(argv: list[str]) -> float:
    """One whole process, start to exit."""
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> int:
    """Prepare, time every command, print the table; 1 if any median is over the limit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--limit", type=float, default=1.0, help="seconds each median must stay under")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder)
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"# {platform.machine()}, python {platform.python_version()}, {when}; median of {args.runs} runs")
        print(f"{'command':58} {'median s':>9} {'min s':>7}")
        over = []
        for command in COMMANDS:
            argv = PRUNEGATE + command.format(d=folder).split()
            wall_seconds(argv)  # warm-up, untimed
            times = [wall_seconds(argv) for _ in range(args.runs)]
            median = statistics.median(times)
            print(f"prunegate {command.format(d='D'):48} {median:9.2f} {min(times):7.2f}")
            if median >= args.limit:
                over.append(command)
    if over:
        print(f"over {args.limit:g} s: {', '.join(over)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
