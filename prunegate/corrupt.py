"""Render a corruption preset to disk (CIFAR-10-C layout) and draw a preview grid.

The random streams are keyed exactly as in `prunegate check` (seed, task name, sample index), so
a rendered set holds the very images a check with the same seed evaluates.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from prunegate import shifts
from prunegate.data import ImageSet, batches
from prunegate.data.cifar_c import SEVERITY_FILE
from prunegate.errors import PrunegateError
from prunegate.shifts.rng import SampleRNG, task_key


def _corrupted(x: torch.Tensor, ids: torch.Tensor, name: str, severity: int, preset: str, seed: int) -> torch.Tensor:
    rng = SampleRNG(task_key(seed, f"corruption/{name}/{severity}"), ids, device=x.device)
    return shifts.corrupt(x, name, severity, rng, preset=preset)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def render(
    images: ImageSet,
    indices: np.ndarray,
    *,
    preset: str,
    names: list[str],
    severities: list[int],
    seed: int,
    out: Path,
    batch_size: int = 256,
    workers: int = 2,
    max_pixels: int = 89_478_485,
    device: torch.device = torch.device("cpu"),
    frost_textures: Optional[dict] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> dict:
    """Write `<name>.npy` (severity blocks of len(indices) rows each) and `labels.npy` into `out`.

    Everything is written into `<out>.partial` and renamed at the end: an interrupted run leaves
    no folder that looks complete."""
    if out.exists():
        raise PrunegateError("already exists; choose a new output folder", file=out)
    size = shifts.get_preset(preset).image_size
    n = len(indices)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        np.save(partial / "labels.npy", np.tile(images.labels[indices], len(severities)))
        arrays = {
            name: np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=np.uint8,
                                            shape=(len(severities) * n, size, size, 3))
            for name in names
        }
        for ids, batch, _, _ in batches(images, indices, size, batch_size, workers, max_pixels):
            rows = np.searchsorted(indices, ids.numpy())
            x = batch.to(device).permute(0, 3, 1, 2).float().div_(255.0)
            sample_ids = ids.to(device)
            for name in names:
                for block, severity in enumerate(severities):
                    arrays[name][block * n + rows] = _to_uint8(_corrupted(x, sample_ids, name, severity, preset, seed))
            if progress:
                progress(len(ids))
        for array in arrays.values():
            array.flush()
        del arrays
        manifest = {"preset": preset, "severities": severities, "seed": seed, "images": n, "names": names}
        if frost_textures is not None:  # the photographs frost overlaid (load_texture_folder's record)
            manifest["frost_textures"] = frost_textures
        (partial / SEVERITY_FILE).write_text(json.dumps(manifest, indent=2))
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {"images": n, "names": len(names), "severities": severities, "size": size}


def preview_png(image: torch.Tensor, sample_id: int, *, preset: str, names: list[str], severities: list[int], seed: int) -> bytes:
    """A grid of one image: a row per corruption, the clean image then each severity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = image.permute(2, 0, 1)[None].float().div(255.0)
    ids = torch.tensor([sample_id])
    cols = 1 + len(severities)
    fig, axes = plt.subplots(len(names), cols, figsize=(1.6 * cols, 1.6 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        panels = [x] + [_corrupted(x, ids, name, s, preset, seed) for s in severities]
        for col, panel in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(_to_uint8(panel)[0], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("clean" if col == 0 else f"severity {severities[col - 1]}", fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"prunegate corruptions · preset {preset} · seed {seed}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (1.6 * len(names))))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
