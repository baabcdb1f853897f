"""How close prunegate's corruptions come to the reference ImageNet-C / CIFAR-10-C generators.

Runs in prunegate's venv, on an .npz written by bench/corruption_reference.py (reference env):

    /tmp/refenv/bin/python bench/corruption_reference.py --preset cifar10-c --out /tmp/ref
    .venv/bin/python bench/fidelity.py /tmp/ref/reference-cifar10-c-hendrycks.npz [--md out.md]

It corrupts the very clean images stored in the .npz with `prunegate.shifts.corrupt` (same
preset, severities 1-5; sample ids 0..N-1, policy seed --seed) and compares, per corruption x
severity, in uint8 levels (0-255):
- deterministic corruptions (no random draw in the reference): PSNR (dB, over all pixels) and
  mean absolute difference (MAD) between prunegate's and the reference's output, the share of
  uint8 values that differ at all and the largest difference;
- random corruptions: the mean absolute change from the clean image, for each, and their ratio
  prunegate / reference (goal: within 10 %), with a paired bootstrap 95 % interval over the
  images (with few images the ratio is noisy even between two seeds of the reference itself).
A flag marks PSNR < --min-psnr (default 30 dB) or |ratio - 1| > 10 %. The mean change is shown
for deterministic corruptions too. motion_blur is random in every reference (its angle is
uniform in [-45, 45] degrees), so it is compared by mean change.

motion_blur's only random draw, in every reference, is one angle per image, and prunegate's
motion_blur takes its angle from `rng.uniform(1)`. So motion_blur is also compared pixel by
pixel with the reference's own angles replayed (numpy's legacy stream, seeded as
corruption_reference.py seeds it), through the public registry: get_shift(name).fn(x, param, rng).

Prints a per-corruption summary and the full table as Markdown; --md also writes them to a file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corruption_reference import task_seed  # noqa: E402  (numpy only)

DETERMINISTIC = {
    "brightness",
    "contrast",
    "saturate",
    "defocus_blur",
    "gaussian_blur",
    "zoom_blur",
    "pixelate",
    "jpeg_compression",
}


def prunegate_outputs(
    clean: np.ndarray, name: str, severity: int, preset: str, seed: int, batch: int, assets=None
) -> np.ndarray:
    """prunegate's corruption of uint8 NHWC images, as uint8 NHWC (rounded); `assets`: the
    ShiftAssets to overlay (None: the procedural frost textures)."""
    from prunegate.shifts import NO_ASSETS, corrupt
    from prunegate.shifts.rng import SampleRNG, task_key

    key = task_key(seed, f"corruption/{name}/{severity}")
    outs = []
    for start in range(0, len(clean), batch):
        x = torch.from_numpy(clean[start : start + batch]).permute(0, 3, 1, 2).float() / 255.0
        ids = torch.arange(start, start + x.shape[0])
        with torch.no_grad():
            y = corrupt(x, name, severity, SampleRNG(key, ids), preset, assets=assets or NO_ASSETS)
        outs.append((y.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(outs)


class ReplayedAngle:
    """Stands in for SampleRNG in motion_blur: `uniform(1)` returns (angle + 45) / 90."""

    def __init__(self, angles: np.ndarray):
        self.u = torch.from_numpy((angles + 45.0) / 90.0).float().view(-1, 1)
        self.n = len(angles)

    def uniform(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        assert shape == (1,), "motion_blur is expected to draw exactly one number per image"
        return self.u.to(dtype)


def motion_blur_replayed(clean: np.ndarray, severity: int, preset: str, seed: int, batch: int) -> np.ndarray:
    """prunegate's motion_blur at the reference's own angles (one uniform(-45, 45) per image)."""
    from prunegate.shifts import get_preset, get_shift

    angles = np.random.RandomState(task_seed(seed, "motion_blur", severity)).uniform(-45, 45, size=len(clean))
    fn, param = get_shift("motion_blur").fn, get_preset(preset).param("motion_blur", severity)
    outs = []
    for start in range(0, len(clean), batch):
        x = torch.from_numpy(clean[start : start + batch]).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            y = fn(x, param, ReplayedAngle(angles[start : start + batch]))
        outs.append((y.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(outs)


def shifts_fingerprint() -> str:
    """sha256 (12 hex) of prunegate/shifts/*.py as imported: which state of the code was measured."""
    import prunegate.shifts

    digest = hashlib.sha256()
    for f in sorted(Path(prunegate.shifts.__file__).parent.glob("*.py")):
        digest.update(f.name.encode() + f.read_bytes())
    return digest.hexdigest()[:12]


def compare(ref: np.ndarray, ours: np.ndarray, clean: np.ndarray) -> dict:
    ref_f, ours_f, clean_f = (a.astype(np.float64) for a in (ref, ours, clean))
    mse = float(np.mean((ref_f - ours_f) ** 2))
    ref_i = np.abs(ref_f - clean_f).mean(axis=(1, 2, 3))  # per image
    our_i = np.abs(ours_f - clean_f).mean(axis=(1, 2, 3))
    ref_change, our_change = float(ref_i.mean()), float(our_i.mean())
    # paired bootstrap over images: how much of the ratio is sampling noise
    idx = np.random.default_rng(0).integers(0, len(ref_i), size=(1000, len(ref_i)))
    boot = our_i[idx].mean(axis=1) / np.maximum(ref_i[idx].mean(axis=1), 1e-12)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "psnr": float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse),
        "mad": float(np.mean(np.abs(ref_f - ours_f))),
        "differ": float(np.mean(ref != ours)),  # share of uint8 values that differ at all
        "max_diff": int(np.max(np.abs(ref_f - ours_f))),
        "ref_change": ref_change,
        "our_change": our_change,
        "ratio": our_change / ref_change if ref_change > 0 else float("nan"),
        "ci": (float(lo), float(hi)),
    }


def flag(name: str, r: dict, min_psnr: float) -> str:
    if name in DETERMINISTIC:
        return "LOW PSNR" if r["psnr"] < min_psnr else ""
    return f"ratio {r['ratio'] - 1:+.0%}" if abs(r["ratio"] - 1) > 0.10 else ""


def markdown(meta: dict, rows: list[dict], min_psnr: float, replayed: list[dict]) -> str:
    head = (
        f"### Fidelity: prunegate `{meta['preset']}` vs reference `{meta['reference']}`"
        f" ({meta['n']} images)\n\n{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z};"
        f" prunegate/shifts sha256 {meta['shifts_sha256']}\n\n"
    )
    summary = [
        "| corruption | kind | PSNR dB (min over sev.) | MAD (max) | values differing (max)"
        " | max abs diff | change ratio (min..max) | flags |",
        "|---" * 8 + "|",
    ]
    full = [
        "| corruption | sev | kind | PSNR dB | MAD | differing | max diff | ref change"
        " | prunegate change | ratio | ratio 95% CI | flag |",
        "|---" * 12 + "|",
    ]
    for name in dict.fromkeys(r["name"] for r in rows):
        rs = [r for r in rows if r["name"] == name]
        det = name in DETERMINISTIC
        kind = "deterministic" if det else "random"
        ratios = [r["ratio"] for r in rs]
        flags = sorted({f"s{r['sev']}" for r in rs if r["flag"]})
        cells = (
            f"{min(r['psnr'] for r in rs):.1f} | {max(r['mad'] for r in rs):.3f} | "
            f"{max(r['differ'] for r in rs):.2%} | {max(r['max_diff'] for r in rs)}"
            if det
            else "– | – | – | –"
        )
        summary.append(f"| {name} | {kind} | {cells} | {min(ratios):.3f}..{max(ratios):.3f} | {' '.join(flags)} |")
        for r in rs:
            p = f"{r['psnr']:.1f} | {r['mad']:.3f} | {r['differ']:.2%} | {r['max_diff']}" if det else "– | – | – | –"
            full.append(
                f"| {name} | {r['sev']} | {kind} | {p} | {r['ref_change']:.2f} | "
                f"{r['our_change']:.2f} | {r['ratio']:.3f} | {r['ci'][0]:.2f}..{r['ci'][1]:.2f} | "
                f"{r['flag']} |"
            )
    note = (
        f"\nchange = mean |corrupted - clean| in uint8 levels; ratio = prunegate / reference"
        f" (goal 0.9..1.1), with a paired bootstrap 95 % interval over images (sampling noise);"
        f" flags: PSNR < {min_psnr:g} dB or ratio off by > 10 %.\n"
    )
    extra = ""
    if replayed:
        extra = (
            "\nmotion_blur with the reference's angles replayed (pixel comparison):\n\n"
            "| sev | PSNR dB | MAD | differing | max diff |\n|---|---|---|---|---|\n"
        )
        extra += (
            "\n".join(
                f"| {r['sev']} | {r['psnr']:.1f} | {r['mad']:.3f} | {r['differ']:.2%} | {r['max_diff']} |"
                for r in replayed
            )
            + "\n"
        )
    return head + "\n".join(summary) + "\n" + note + extra + "\n" + "\n".join(full) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("npz", type=Path, help="output of bench/corruption_reference.py")
    p.add_argument("--md", type=Path, help="also write the Markdown here")
    p.add_argument("--seed", type=int, default=0, help="prunegate's policy seed")
    p.add_argument("--batch", type=int, default=None, help="default 64 at 32 px, 16 at 224 px")
    p.add_argument("--corruptions", default=None, help="comma-separated subset")
    p.add_argument("--min-psnr", type=float, default=30.0)
    p.add_argument(
        "--frost-textures",
        type=Path,
        default=None,
        help="a folder of frost photographs for frost (as suite.corruptions.frost_textures)",
    )
    args = p.parse_args(argv)
    assets = None
    if args.frost_textures is not None:
        from prunegate.shifts import ShiftAssets

        assets = ShiftAssets.load({"frost_textures": args.frost_textures}, lambda _: "--frost-textures")

    data = np.load(args.npz)
    meta = json.loads(str(data["meta"]))
    meta["shifts_sha256"] = shifts_fingerprint()
    clean = data["clean"]
    batch = args.batch or (64 if clean.shape[1] <= 64 else 16)
    names = args.corruptions.split(",") if args.corruptions else meta["corruptions"]
    rows = []
    for name in names:
        for sev in meta["severities"]:
            ours = prunegate_outputs(clean, name, sev, meta["preset"], args.seed, batch, assets)
            r = {"name": name, "sev": sev, **compare(data[f"{name}/{sev}"], ours, clean)}
            r["flag"] = flag(name, r, args.min_psnr)
            rows.append(r)
        print(f"done {name}", file=sys.stderr, flush=True)
    replayed = []
    if "motion_blur" in names and meta.get("seed") is not None:
        for sev in meta["severities"]:
            ours = motion_blur_replayed(clean, sev, meta["preset"], meta["seed"], batch)
            replayed.append({"sev": sev, **compare(data[f"motion_blur/{sev}"], ours, clean)})
    md = markdown(meta, rows, args.min_psnr, replayed)
    print(md)
    if args.md:
        args.md.write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
