"""Rendering a preset to disk, reading it back as a precomputed source, and the preview."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from conftest import assert_same_report
from prunegate.cli import main
from prunegate.corrupt import corruption_context, preview_png
from prunegate.data.arrays import NpzImages
from prunegate.data.cifar_c import CorruptedArrays
from prunegate.errors import DataError

NAMES = ["brightness", "gaussian_noise"]


class MeanColour(torch.nn.Module):
    """Predicts the brightest channel from the channel means: tiny, deterministic, any size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * 10.0


@pytest.fixture()
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    images = rng.integers(0, 100, size=(12, 32, 32, 3))
    for i, label in enumerate(labels):
        images[i, :, :, label] += 120
    path = tmp_path / "clean.npz"
    np.savez(path, images=images.astype(np.uint8), labels=labels)
    return path


def _render(tmp_path, dataset, out_name="c", severities="1,3") -> int:
    return main(
        [
            "corrupt",
            "--preset",
            "cifar10-c",
            "--source",
            str(dataset),
            "--format",
            "npz",
            "--out",
            str(tmp_path / out_name),
            "--names",
            ",".join(NAMES),
            "--severities",
            severities,
            "--seed",
            "7",
            "--device",
            "cpu",
        ]
    )


def test_render_writes_the_cifar10c_layout(tmp_path, dataset):
    assert _render(tmp_path, dataset) == 0
    out = tmp_path / "c"
    assert sorted(p.name for p in out.iterdir()) == [
        "brightness.npy",
        "gaussian_noise.npy",
        "labels.npy",
        "prunegate-c.json",
    ]
    noise = np.load(out / "gaussian_noise.npy")
    assert noise.shape == (2 * 12, 32, 32, 3) and noise.dtype == np.uint8
    np.testing.assert_array_equal(np.load(out / "labels.npy"), np.tile(np.arange(12) % 3, 2))
    clean = np.load(dataset)["images"].astype(int)
    change = [np.abs(noise[b * 12 : (b + 1) * 12].astype(int) - clean).mean() for b in range(2)]
    assert 0 < change[0] < change[1]  # severity 3 changes the images more than severity 1
    assert not (tmp_path / "c.partial").exists()


def test_render_refuses_an_existing_folder_and_bad_severities(tmp_path, dataset, capsys):
    (tmp_path / "c").mkdir()
    assert _render(tmp_path, dataset) == 2
    assert _render(tmp_path, dataset, out_name="d", severities="0,6") == 2
    assert (
        main(
            [
                "corrupt",
                "--preset",
                "cifar10-c",
                "--source",
                str(dataset),
                "--format",
                "npz",
                "--out",
                str(tmp_path / "e"),
                "--names",
                "fogg",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "already exists" in err and "--severities" in err and "fogg" in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()


def test_precomputed_source_gives_the_same_metrics_as_generating(tmp_path, dataset):
    assert _render(tmp_path, dataset) == 0
    model = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(MeanColour()), model)
    reports = {}
    for mode, extra in (("generated", ""), ("precomputed", f", precomputed: {tmp_path / 'c'}")):
        policy = tmp_path / f"{mode}.yaml"
        policy.write_text(f"""
version: 1
name: {mode}
models: {{dense: {model}, pruned: {model}, input: {{size: 32, mean: [0, 0, 0], std: [1, 1, 1]}}}}
data: {{test: {{format: npz, path: {dataset}}}}}
suite: {{seed: 7, corruptions: {{preset: cifar10-c, names: {NAMES}, severities: [1, 3]{extra}}}}}
gate: {{rules: [{{name: r, tasks: "corruption/*", metric: agreement, min: 0.5}}]}}
runtime: {{workers: 0, batch_size: 5, backend: torch}}
""")
        report = tmp_path / f"{mode}.json"
        assert main(["check", "-p", str(policy), "-o", str(report), "-q"]) == 0
        predicate = json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))["predicate"]
        reports[mode] = {t["name"]: t for t in predicate["tasks"] if t["kind"] == "corruption"}
    assert list(reports["generated"]) == list(reports["precomputed"])
    assert len(reports["generated"]) == 4
    for name, task in reports["generated"].items():
        precomputed = reports["precomputed"][name]
        assert task.pop("source") == "test" and precomputed.pop("source") == name  # read from its own block
        # (the block's uint8 pixels equal the generated ones; the probabilities follow the last bits)
        assert_same_report(task, precomputed, name)


def test_corrupted_arrays_reject_a_missing_severity_and_bad_labels(tmp_path, dataset):
    assert _render(tmp_path, dataset) == 0
    with pytest.raises(DataError, match="severity 2"):
        CorruptedArrays(tmp_path / "c", "brightness", 2, "suite.corruptions.precomputed")
    np.save(tmp_path / "c" / "labels.npy", np.zeros(5, dtype=np.int64))
    with pytest.raises(DataError, match="labels.npy"):
        CorruptedArrays(tmp_path / "c", "brightness", 1, "suite.corruptions.precomputed")


def test_preview_is_a_png_grid(tmp_path, dataset):
    image = torch.from_numpy(np.load(dataset)["images"][0])
    images = NpzImages(dataset, "--source")
    ctx = corruption_context(images, np.arange(len(images)), preset="cifar10-c", names=NAMES, severities=[1, 5], seed=0)
    png = preview_png(ctx, image, 0)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import io

    from PIL import Image

    width, height = Image.open(io.BytesIO(png)).size
    assert width > height  # 3 columns (clean + 2 severities) by 2 rows


def test_cli_preview_of_a_flat_imagenet_style_folder_with_class_names(tmp_path):
    """File names like n01440764_tench.JPEG carry a wnid, not a label: --class-names maps them."""
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(1)
    for wnid in ("n01440764_tench", "n01443537_goldfish"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / f"{wnid}.JPEG")
    names = tmp_path / "wnids.txt"
    names.write_text("n01440764\nn01443537\n")
    base = [
        "corrupt",
        "--preset",
        "imagenet-c",
        "--source",
        str(root),
        "--format",
        "imagefolder-flat",
        "--names",
        "pixelate",
        "--severities",
        "1",
        "--preview",
    ]
    assert main(base + [str(tmp_path / "no.png")]) == 2  # without the names the labels are unknown
    assert not (tmp_path / "no.png").exists()
    assert main(base + [str(tmp_path / "grid.png"), "--class-names", str(names)]) == 0
    assert Image.open(tmp_path / "grid.png").format == "PNG"


def test_cli_frost_textures_change_frost_and_bad_folders_exit_2(tmp_path, dataset):
    from PIL import Image

    textures = tmp_path / "frost"
    textures.mkdir()
    Image.new("RGB", (200, 200), (0, 0, 0)).save(textures / "black.png")
    base = [
        "corrupt",
        "--preset",
        "cifar10-c",
        "--source",
        str(dataset),
        "--format",
        "npz",
        "--names",
        "frost",
        "--severities",
        "3",
        "--limit",
        "3",
    ]
    assert main(base + ["--out", str(tmp_path / "procedural")]) == 0
    assert main(base + ["--out", str(tmp_path / "black"), "--frost-textures", str(textures)]) == 0
    procedural = np.load(tmp_path / "procedural" / "frost.npy")
    black = np.load(tmp_path / "black" / "frost.npy")
    manifests = {
        name: json.loads(next((tmp_path / name).glob("*.json")).read_text()) for name in ("procedural", "black")
    }
    assert "frost_textures" not in manifests["procedural"]
    assert manifests["black"]["frost_textures"]["size"] == 1  # the folder is recorded with its digest
    assert len(manifests["black"]["frost_textures"]["sha256"]) == 64
    assert black.mean() < procedural.mean() - 20  # a black photograph adds no frost light
    assert main(base + ["--out", str(tmp_path / "none"), "--frost-textures", str(tmp_path / "absent")]) == 2
    assert not (tmp_path / "none").exists()


def test_render_on_threads_gives_the_pixels_of_one_thread(tmp_path):
    """At 224 px a CPU render splits each task into one-image jobs on a thread per core: the
    pixels are those of a single-threaded render (every name here draws random numbers, takes a
    mean or builds a one-off table)."""
    from prunegate.corrupt import render
    from prunegate.cpu_pool import op_threads

    rng = np.random.default_rng(1)
    path = tmp_path / "clean.npz"
    np.savez(path, images=rng.integers(0, 256, size=(3, 224, 224, 3)).astype(np.uint8), labels=np.arange(3))
    images = NpzImages(path, "--source")
    names = ["frost", "contrast", "shot_noise", "motion_blur"]
    outs = {}
    for threads in (1, 2):
        ctx = corruption_context(
            images, np.arange(3), preset="imagenet-c", names=names, severities=[2, 5], seed=3, workers=0
        )
        with op_threads(threads):
            render(ctx, tmp_path / f"t{threads}")
        outs[threads] = {name: np.load(tmp_path / f"t{threads}" / f"{name}.npy") for name in names}
    for name in names:
        np.testing.assert_array_equal(outs[1][name], outs[2][name], err_msg=name)
