"""Run the *reference* ImageNet-C / CIFAR-10-C corruptions on real images; save the outputs.

Runs in the reference environment (bench/reference_env.sh), not in prunegate's venv:

    bash bench/reference_env.sh /tmp/refenv
    /tmp/refenv/bin/python bench/corruption_reference.py --preset imagenet-c --n 20 --out /tmp/ref
    /tmp/refenv/bin/python bench/corruption_reference.py --preset cifar10-c  --n 200 --out /tmp/ref

References (--reference):
  imagecorruptions   the PyPI package (1.1.2), the repackaged ImageNet-C generator; default for
                     imagenet-c.
  hendrycks          a local copy of hendrycks/robustness' own generator script (make_cifar_c.py
                     for cifar10-c, the default there; make_imagenet_c.py for imagenet-c), saved
                     under --hendrycks-dir (default /tmp/hendrycks_ref) -- never in this repo.
                     Each copy must define the 19 functions by their upstream names; adapt only
                     what is needed to run: drop the torch/torchvision imports and the dataset
                     loop at the end, read frost photos from ../shared/data/frost-textures.

Images: imagenet-c takes ../shared/data/imagenet-samples-200 (sorted), resized to short side
256 (PIL bilinear, as torchvision's Resize) and centre-cropped to 224; cifar10-c takes
../shared/data/cifar10-test-jpeg, round-robin over the classes (airplane/0000, automobile/0000,
..., truck/0000, airplane/0001, ...).

Output: OUT/reference-<preset>-<reference>.npz with
  clean           uint8 [N, H, W, 3]    the clean inputs (fidelity.py corrupts exactly these)
  <name>/<sev>    uint8 [N, H, W, 3]    reference outputs, cast with np.uint8 as the generators do
  time/<name>     float64 [5, N]        seconds per image per severity
  meta            JSON string           reference, versions, seed, files
numpy's global RNG is seeded per (corruption, severity) from --seed, so any subset reproduces.
(scikit-image >= 0.19's random_noise -- impulse_noise -- draws from its own unseeded
default_rng; it is given a seed drawn from numpy's global RNG so that it reproduces too.)
With --no-save only the timings are written (OUT/.../timing JSON), for corruption_speed.py.
With --npy the outputs are written as `prunegate corrupt --out` writes them (OUT/<name>.npy, the
severities' blocks one after another, uncompressed): the reference side of the end-to-end timing
of `prunegate corrupt` (bench/RESULTS.md, issue 16 item 1), one process doing it all.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

# The same names in the same order as prunegate's (a torch-free module: this script runs in the
# reference's environment, where prunegate's dependencies need not be installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prunegate.shift_names import CORRUPTION_NAMES  # noqa: E402

NAMES = list(CORRUPTION_NAMES)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def task_seed(seed: int, name: str, severity: int) -> int:
    """numpy's global seed for one corruption x severity (fidelity.py replays it)."""
    return (seed * 1000 + NAMES.index(name) * 10 + severity) % 2**32


def load_images(preset: str, n: int, shared: Path) -> tuple[np.ndarray, list[str]]:
    """Clean uint8 NHWC images for a preset, and their file names."""
    if preset == "imagenet-c":
        files = sorted((shared / "imagenet-samples-200").glob("*.JPEG"))[:n]
        out = []
        for f in files:
            img = Image.open(f).convert("RGB")
            w, h = img.size  # torchvision Resize(256): short side 256, long side truncated
            if w <= h:
                size = (256, int(256 * h / w))
            else:
                size = (int(256 * w / h), 256)
            img = img.resize(size, Image.BILINEAR)
            w, h = img.size  # torchvision CenterCrop(224)
            top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
            out.append(np.asarray(img.crop((left, top, left + 224, top + 224))))
    else:
        files = [shared / "cifar10-test-jpeg" / CIFAR_CLASSES[i % 10] / f"{i // 10:04d}.jpg" for i in range(n)]
        out = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    return np.stack(out).astype(np.uint8), [str(f.relative_to(shared)) for f in files]


def seed_random_noise() -> None:
    """Make skimage.util.random_noise follow numpy's global seed (it ignores it since 0.19)."""
    import skimage.util

    original = skimage.util.random_noise

    def random_noise(image, mode="gaussian", seed=None, **kwargs):
        if seed is None:
            seed = np.random.randint(2**31)
        return original(image, mode=mode, seed=seed, **kwargs)

    skimage.util.random_noise = random_noise


def reference_functions(preset: str, reference: str, hendrycks_dir: str) -> dict:
    """name -> fn(PIL image, severity) -> array-like in [0, 255], as the generators call them."""
    seed_random_noise()
    if reference == "imagecorruptions":
        from imagecorruptions import corruptions as mod
    else:
        sys.path.insert(0, hendrycks_dir)
        mod = importlib.import_module("make_cifar_c" if preset == "cifar10-c" else "make_imagenet_c")
    return {name: getattr(mod, name) for name in NAMES}


def versions() -> dict:
    """The reference environment's package versions (for the output's meta)."""
    import cv2  # noqa: E401
    import PIL
    import scipy
    import skimage

    v = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "opencv": cv2.__version__,
        "Pillow": PIL.__version__,
    }
    try:
        from importlib.metadata import version

        v["imagecorruptions"] = version("imagecorruptions")
        import wand.version

        v["ImageMagick"] = wand.version.MAGICK_VERSION
    except Exception:  # noqa: BLE001 -- informational only
        pass
    return v


def main(argv: list[str] | None = None) -> int:
    """Corrupt the preset's images with the reference; write the outputs (or the timings)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=["imagenet-c", "cifar10-c"], required=True)
    p.add_argument("--reference", choices=["auto", "imagecorruptions", "hendrycks"], default="auto")
    p.add_argument("--hendrycks-dir", default="/tmp/hendrycks_ref")
    p.add_argument("--n", type=int, default=None, help="images (default 20 at 224 px, 200 at 32 px)")
    p.add_argument("--corruptions", default=",".join(NAMES), help="comma-separated subset")
    p.add_argument("--severities", default="1,2,3,4,5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shared", type=Path, default=SHARED, help="the shared/data folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (outside the repo)")
    p.add_argument("--no-save", action="store_true", help="write timings only (JSON)")
    p.add_argument(
        "--npy",
        action="store_true",
        help="write OUT/<name>.npy (severity blocks, uncompressed, as `prunegate corrupt` does) instead of the npz",
    )
    args = p.parse_args(argv)

    reference = args.reference
    if reference == "auto":
        reference = "imagecorruptions" if args.preset == "imagenet-c" else "hendrycks"
    n = args.n or (20 if args.preset == "imagenet-c" else 200)
    names = [c for c in args.corruptions.split(",") if c]
    severities = [int(s) for s in args.severities.split(",")]
    warnings.simplefilter("ignore")

    clean, files = load_images(args.preset, n, args.shared)
    fns = reference_functions(args.preset, reference, args.hendrycks_dir)
    pils = [Image.fromarray(img) for img in clean]
    arrays: dict[str, np.ndarray] = {"clean": clean}
    timing: dict[str, list[list[float]]] = {}
    for name in names:
        times = np.zeros((5, len(pils)))
        for sev in severities:
            np.random.seed(task_seed(args.seed, name, sev))
            outs = []
            for i, pil in enumerate(pils):
                t0 = time.perf_counter()
                out = np.uint8(fns[name](pil, sev))  # the generators' own cast (truncation)
                times[sev - 1, i] = time.perf_counter() - t0
                outs.append(out)
            if not args.no_save:
                arrays[f"{name}/{sev}"] = np.stack(outs)
        timing[name] = times.tolist()
        total = times[[s - 1 for s in severities]].sum()
        print(
            f"{name:18s} {total:8.2f} s  ({len(severities) * len(pils) / total:8.1f} img/s)",
            file=sys.stderr,
            flush=True,
        )

    meta = {
        "preset": args.preset,
        "reference": reference,
        "n": n,
        "seed": args.seed,
        "severities": severities,
        "corruptions": names,
        "files": files,
        "versions": versions(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"reference-{args.preset}-{reference}"
    if args.npy:
        for name in names:
            np.save(args.out / f"{name}.npy", np.concatenate([arrays[f"{name}/{sev}"] for sev in severities]))
        print(args.out)
    elif args.no_save:
        Path(f"{stem}-timing.json").write_text(json.dumps({"meta": meta, "time": timing}))
        print(f"{stem}-timing.json")
    else:
        for name in names:
            arrays[f"time/{name}"] = np.asarray(timing[name])
        np.savez_compressed(f"{stem}.npz", meta=np.array(json.dumps(meta)), **arrays)
        print(f"{stem}.npz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
