"""Corruption throughput: prunegate (batched torch) vs the reference generators (numpy, per image).

Runs in prunegate's venv; the reference side runs as a subprocess in the reference env
(bench/reference_env.sh; the CIFAR-10-C generator copy in /tmp/hendrycks_ref, see
bench/corruption_reference.py):

    .venv/bin/python bench/corruption_speed.py                  # ~5-10 min on 2 cores
    .venv/bin/python bench/corruption_speed.py --n32 1000 --n224 100 --md bench/speed.md

For 32 px (cifar10-c preset, real CIFAR-10 test images) and 224 px (imagenet-c preset, real
ImageNet photos) it times every corruption at severities 1-5:
- prunegate: `corrupt` on the whole batch at once (the same five calls once untimed first, per
  corruption and resolution), on CPU with torch's default threads, and on CUDA too when there is a GPU;
- reference: one image at a time in one process (make_cifar_c.py at 32 px, imagecorruptions at
  224 px), as bench/corruption_reference.py --no-save measures it (time of the call only).
img/s = corrupted images per second (5 severities x N / time); "suite" = all 19 x 5 tasks, given
as clean images per second through the whole suite (N / total time). Prints Markdown with the
machine (CPU model, cores, GPU) and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from corruption_reference import NAMES, SHARED, load_images  # noqa: E402  (numpy + PIL only)

SIZES = {32: "cifar10-c", 224: "imagenet-c"}


def time_prunegate(clean: np.ndarray, preset: str, device: str, names: list[str]) -> dict:
    """name -> seconds for all 5 severities over the whole batch."""
    from prunegate.shifts import corrupt
    from prunegate.shifts.rng import SampleRNG, task_key

    x = (torch.from_numpy(clean).permute(0, 3, 1, 2).float() / 255.0).to(device)
    ids = torch.arange(x.shape[0], device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    out = {}
    with torch.no_grad():
        for name in names:
            # Warm-up: the five severities on the whole batch once, untimed. The pipeline runs
            # batch after batch, so the steady state is what counts; a first call also pays for
            # the allocator growing its heap (measured: the first pass over the 32-px suite runs
            # ~25 % slower) and for one-off tables (frost's textures, shot noise's alias tables:
            # ~0.5 s per process and preset, see time_setup).
            for timed in (False, True):
                sync()
                t0 = time.perf_counter()
                for sev in range(1, 6):
                    rng = SampleRNG(task_key(0, f"corruption/{name}/{sev}"), ids)
                    corrupt(x, name, sev, rng, preset)
                sync()
                if timed:
                    out[name] = time.perf_counter() - t0
    return out


def time_setup(clean: np.ndarray, preset: str, device: str, names: list[str]) -> float:
    """Seconds of one-off work per process: the five severities of every corruption on one
    image, cold (tables and textures built on first use), minus the same calls warm."""
    from prunegate.shifts import corrupt
    from prunegate.shifts.rng import SampleRNG, task_key

    x = (torch.from_numpy(clean[:1]).permute(0, 3, 1, 2).float() / 255.0).to(device)
    ids = torch.arange(1, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    spent = []
    with torch.no_grad():
        for _ in range(2):
            sync()
            t0 = time.perf_counter()
            for name in names:
                for sev in range(1, 6):
                    corrupt(x, name, sev, SampleRNG(task_key(0, f"setup/{name}/{sev}"), ids), preset)
            sync()
            spent.append(time.perf_counter() - t0)
    return spent[0] - spent[1]


def time_reference(preset: str, n: int, names: list[str], ref_python: str, reference: str) -> tuple[dict, dict]:
    """name -> seconds for all 5 severities over n images, and the reference's meta."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            ref_python,
            str(BENCH / "corruption_reference.py"),
            "--preset",
            preset,
            "--n",
            str(n),
            "--reference",
            reference,
            "--corruptions",
            ",".join(names),
            "--out",
            tmp,
            "--no-save",
        ]
        path = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1]
        result = json.loads(Path(path).read_text())
    return {k: float(np.sum(v)) for k, v in result["time"].items()}, result["meta"]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"CPU {cpu}, {cores} cores available (torch threads {torch.get_num_threads()}); "
        f"GPU {gpu}; torch {torch.__version__}; Python {platform.python_version()}"
    )


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def ratio(r: float) -> str:
    return f"{r:.1f}x" if r >= 1 else f"{r:.2f}x"


def shifts_fingerprint() -> str:
    """sha256 (12 hex) of prunegate/shifts/*.py: which state of the code was measured."""
    import hashlib

    import prunegate.shifts

    h = hashlib.sha256()
    for f in sorted(Path(prunegate.shifts.__file__).parent.glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:12]


def table(size: int, n: int, names: list[str], pg: dict[str, dict], ref: dict | None, ref_meta: dict | None) -> str:
    devices = list(pg)
    ref_name = f"reference ({ref_meta['reference']})" if ref_meta else "reference"
    head = ["corruption"] + [f"prunegate {d} img/s" for d in devices]
    if ref:
        head += [f"{ref_name} img/s"] + [f"speed-up {d}" for d in devices]
    lines = [
        f"#### {size} px, preset {SIZES[size]}, {n} images x 5 severities\n",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def row(label: str, secs: dict[str, float], ref_s: float | None, count: int, bold=False) -> str:
        cells = [fmt(count / secs[d]) for d in devices]
        if ref_s is not None:
            cells += [fmt(count / ref_s)] + [ratio(ref_s / secs[d]) for d in devices]
        if bold:
            cells = [f"**{c}**" for c in cells]
        return "| " + " | ".join([label] + cells) + " |"

    for name in names:
        lines.append(row(name, {d: pg[d][name] for d in devices}, ref[name] if ref else None, 5 * n))
    totals = {d: sum(pg[d].values()) for d in devices}
    ref_total = sum(ref.values()) if ref else None
    lines.append(row(f"suite ({len(names)}x5), clean img/s", totals, ref_total, n, bold=True))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n32", type=int, default=200, help="images at 32 px")
    p.add_argument("--n224", type=int, default=20, help="images at 224 px")
    p.add_argument("--sizes", default="32,224")
    p.add_argument("--corruptions", default=",".join(NAMES))
    p.add_argument("--ref-python", default="/tmp/refenv/bin/python")
    p.add_argument("--cifar-reference", default="hendrycks", choices=["hendrycks", "imagecorruptions"])
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--shared", type=Path, default=SHARED)
    p.add_argument("--md", type=Path, help="also write the Markdown here")
    p.add_argument("--devices", default="auto", help="comma-separated, e.g. cpu,cuda (auto: cpu, and cuda if any)")
    args = p.parse_args(argv)

    names = [c for c in args.corruptions.split(",") if c]
    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [d for d in args.devices.split(",") if d]
    parts = [
        f"### Corruption throughput\n\n{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
        f"{machine()}; prunegate/shifts sha256 {shifts_fingerprint()}\n"
    ]
    ref_versions = None
    for size in [int(s) for s in args.sizes.split(",")]:
        preset, n = SIZES[size], (args.n32 if size == 32 else args.n224)
        clean, _ = load_images(preset, n, args.shared)
        setup = {d: time_setup(clean, preset, d, names) for d in devices}
        pg = {d: time_prunegate(clean, preset, d, names) for d in devices}
        print(f"prunegate {size}px done", file=sys.stderr, flush=True)
        ref = ref_meta = None
        if not args.skip_reference:
            reference = args.cifar_reference if size == 32 else "imagecorruptions"
            ref, ref_meta = time_reference(preset, n, names, args.ref_python, reference)
            ref_versions = ref_meta["versions"]
            print(f"reference {size}px done", file=sys.stderr, flush=True)
        parts.append(table(size, n, names, pg, ref, ref_meta))
        parts.append(
            "One-off setup per process (tables, textures; not in the rates above): "
            + ", ".join(f"{d} {setup[d]:.2f} s" for d in devices)
            + ".\n"
        )
    if ref_versions:
        parts.append(
            "Reference env: "
            + ", ".join(f"{k} {v}" for k, v in ref_versions.items())
            + ". Reference runs one image at a time in one process; speed-up = "
            "prunegate img/s / reference img/s.\n"
        )
    md = "\n".join(parts)
    print(md)
    if args.md:
        args.md.write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
