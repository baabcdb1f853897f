"""`prunegate prune`: scopes, kept layers, the per-layer table and sidecar, retraining, the
data-informed methods' calibration batch, and every bad option as one error line (exit 2) with
nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prunegate.cli import main
from tests.conftest import _colour_dataset, _write_npz

ARCH = """import torch
from torch import nn


def build():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )
"""


@pytest.fixture
def dense(tmp_path: Path) -> list[str]:
    """The `--model ... --arch ...` arguments of a small net with a depthwise conv (4 prunable layers)."""
    arch = tmp_path / "dw_arch.py"
    arch.write_text(ARCH)
    namespace: dict = {}
    exec(ARCH, namespace)
    torch.manual_seed(0)
    state = tmp_path / "dense.pth"
    torch.save(namespace["build"]().state_dict(), state)
    return ["--model", str(state), "--arch", f"{arch}:build", "--input-size", "8"]


def _prune(dense: list[str], out: Path, *extra: str) -> int:
    return main(["prune", *dense, "--ratios", "0.5", "--out", str(out), "--format", "torchscript", *extra])


def test_layer_scope_with_kept_layers_writes_the_sidecar_and_prints_the_table(tmp_path: Path, dense, capsys) -> None:
    out = tmp_path / "family"
    code = _prune(dense, out, "--scope", "layer", "--keep-depthwise", "--keep-first-last")
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["wt-50.layers.json", "wt-50.pt"]  # no temporary left
    sidecar = json.loads((out / "wt-50.layers.json").read_text())
    assert sidecar["scope"] == "layer" and sidecar["kept_dense"] == ["0.weight", "2.weight", "7.weight"]
    sparsity = {row["layer"]: row["sparsity"] for row in sidecar["layers"]}
    assert sparsity == {"0.weight": 0.0, "2.weight": 0.0, "4.weight": 0.5, "7.weight": 0.0}
    assert sidecar["retrain"] is None
    member = torch.jit.load(str(out / "wt-50.pt"))
    assert int((member.state_dict()["4.weight"] == 0).sum()) == 24
    lines = printed.splitlines()
    assert any(line.split()[:3] == ["4", "48", "50.0%"] for line in lines)
    assert any(line.split()[:2] == ["2", "72"] and line.endswith("kept") for line in lines)
    assert f"wrote {out / 'wt-50.pt'}, {out / 'wt-50.layers.json'}" in printed


def test_global_scope_is_the_default_for_wt_and_layer_for_ft(tmp_path: Path, dense, capsys) -> None:
    assert _prune(dense, tmp_path / "wt") == 0
    assert json.loads((tmp_path / "wt" / "wt-50.layers.json").read_text())["scope"] == "global"
    assert _prune(dense, tmp_path / "ft", "--method", "ft") == 0
    assert json.loads((tmp_path / "ft" / "ft-50.layers.json").read_text())["scope"] == "layer"
    assert _prune(dense, tmp_path / "ft2", "--method", "ft", "--scope", "layer") == 0
    capsys.readouterr()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--scope", "everywhere"], "--scope"),
        (["--method", "ft", "--scope", "global"], "--scope global"),
        (["--method", "ft", "--keep-depthwise"], "--keep-depthwise"),
        (["--epochs", "2"], "--epochs"),
        (["--no-augment"], "--augment"),
        (["--retrain", "no-such-folder"], "--retrain"),
        (["--ratios", "1.5"], "--ratios"),
        (["--ratios", "-0.1"], "--ratios"),
        (["--retrain", "TRAIN", "--mean", "0.5,0.5"], "--mean"),
        (["--retrain", "TRAIN", "--std", "0"], "--std"),
        (["--retrain", "TRAIN", "--lr", "0"], "--lr"),
        (["--retrain", "TRAIN", "--epochs", "0"], "--epochs"),
        (["--retrain", "TRAIN", "--iterations", "0"], "--iterations"),
        (["--retrain", "TRAIN", "--class-names", "missing.txt"], "--class-names"),
        (["--method", "sipp"], "--calibrate"),
        (["--method", "pfp", "--epochs", "2"], "--calibrate"),
        (["--method", "pfp", "--calibrate", "TRAIN", "--scope", "layer"], "--scope"),
        (["--method", "sipp", "--calibrate", "TRAIN", "--keep-first-last"], "--keep-first-last"),
        (["--method", "sipp", "--calibrate", "no-such-folder"], "--calibrate"),
        (["--method", "sipp", "--calibrate", "TRAIN", "--std", "0"], "--std"),
        (["--method", "sipp", "--calibrate", "TRAIN", "--epochs", "2"], "--epochs"),
        (["--calibrate", "TRAIN"], "--calibrate"),
        (["--method", "ft", "--calibrate-images", "8"], "--calibrate-images"),
    ],
)
def test_a_bad_option_is_one_error_line_and_nothing_is_written(tmp_path: Path, dense, capsys, extra, named) -> None:
    train = _write_npz(tmp_path / "train.npz", *_colour_dataset(12))
    extra = [str(train) if e == "TRAIN" else str(tmp_path / e) if e.endswith(".txt") else e for e in extra]
    out = tmp_path / "family"
    code = _prune(dense, out, *extra)
    printed, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert named in lines[0]
    assert not out.exists()


def test_keeping_every_layer_is_an_error(tmp_path: Path, capsys) -> None:
    from tests.conftest import _write_arch_file

    arch = _write_arch_file(tmp_path)
    state = tmp_path / "tiny.pth"
    namespace: dict = {}
    exec(arch.read_text(), namespace)
    torch.save(namespace["build"]().state_dict(), state)
    argv = ["prune", "--model", str(state), "--arch", f"{arch}:build", "--input-size", "8", "--ratios", "0.5"]
    code = main([*argv, "--out", str(tmp_path / "out"), "--keep-first-last"])
    err = capsys.readouterr().err
    assert code == 2 and "--keep-first-last" in err and "nothing to prune" in err
    assert not (tmp_path / "out").exists()


def test_retrain_fine_tunes_each_member_with_its_masks_fixed(tmp_path: Path, dense, capsys) -> None:
    train = _write_npz(tmp_path / "train.npz", *_colour_dataset(48))
    out = tmp_path / "family"
    extra = ["--retrain", str(train), "--iterations", "2", "--batch-size", "16", "--mean", "0.5", "--std", "0.25"]
    code = main(["prune", *dense, "--ratios", "0.3,0.6", "--out", str(out), "--format", "torchscript", *extra])
    printed, err = capsys.readouterr()
    assert code == 0, err
    progress = [line for line in err.splitlines() if line.startswith("retrain wt")]
    assert len(progress) == 4 and "step 2 (ratio 0.600)" in progress[-1] and "left" in progress[-1]
    for name, ratio in (("wt-30", 0.3), ("wt-60", 0.6)):
        sidecar = json.loads((out / f"{name}.layers.json").read_text())
        assert sidecar["retrain"]["iterations"] == 2 and sidecar["retrain"]["images"] == 48
        assert sidecar["retrain"]["mean"] == [0.5] and sidecar["retrain"]["std"] == [0.25]
        weights = [w for k, w in torch.jit.load(str(out / f"{name}.pt")).state_dict().items() if k.endswith("weight")]
        zeros = sum(int((w == 0).sum()) for w in weights)
        assert zeros == round(ratio * sum(w.numel() for w in weights))  # global: the exact count, after training


@pytest.mark.parametrize("method", ["sipp", "pfp"])
def test_sipp_and_pfp_members_are_prune_datas_on_the_calibration_batch(tmp_path: Path, dense, capsys, method) -> None:
    from prunegate.data import select
    from prunegate.prune_data import pfp_prune, sipp_prune

    images, labels = _colour_dataset(30)
    calibrate = _write_npz(tmp_path / "calibrate.npz", images, labels)
    out = tmp_path / "family"
    extra = [
        "--method",
        method,
        "--calibrate",
        str(calibrate),
        "--calibrate-images",
        "9",
        "--mean",
        "0.5",
        "--std",
        "0.25",
    ]
    code = _prune(dense, out, *extra)
    printed, err = capsys.readouterr()
    assert code == 0, err
    name = f"{method}-50"
    sidecar = json.loads((out / f"{name}.layers.json").read_text())
    assert sidecar["method"] == method and sidecar["scope"] == "layer" and sidecar["kept_dense"] == []
    assert sidecar["calibration"] == {"data": str(calibrate), "images": 9} and sidecar["retrain"] is None
    assert f"{method} 0.5: " in printed
    # The same batch made here: 9 class-balanced images, [0, 1], normalised, no augmentation.
    chosen = select(labels, 9)
    assert sorted(np.bincount(labels[chosen]).tolist()) == [3, 3, 3]
    batch = (torch.from_numpy(images[chosen]).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25
    namespace: dict = {}
    exec(ARCH, namespace)
    model = namespace["build"]()
    model.load_state_dict(torch.load(dense[1], weights_only=True))
    expected = (sipp_prune if method == "sipp" else pfp_prune)(model, 0.5, batch)
    got = torch.jit.load(str(out / f"{name}.pt")).state_dict()
    assert got.keys() == expected.state_dict().keys()
    for key, value in expected.state_dict().items():
        assert torch.equal(got[key], value), key
    assert any(int((v == 0).sum()) for k, v in got.items() if k.endswith("weight"))


def test_sipp_calibrates_on_the_retrain_data_by_default_and_prunes_each_step(tmp_path: Path, dense, capsys) -> None:
    train = _write_npz(tmp_path / "train.npz", *_colour_dataset(24))
    out = tmp_path / "family"
    extra = ["--method", "sipp", "--retrain", str(train), "--iterations", "2", "--batch-size", "8"]
    code = _prune(dense, out, *extra, "--calibrate-images", "6")
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert len([line for line in err.splitlines() if line.startswith("retrain sipp 0.5: step")]) == 2
    sidecar = json.loads((out / "sipp-50.layers.json").read_text())
    assert sidecar["calibration"] == {"data": str(train), "images": 6}
    assert sidecar["retrain"]["iterations"] == 2 and sidecar["retrain"]["images"] == 24
    rows = {row["layer"]: row["sparsity"] for row in sidecar["layers"]}
    assert rows["2.weight"] == 0.0  # the depthwise conv is not one sipp ranks: left dense
    assert all(rows[name] == pytest.approx(0.5, abs=0.02) for name in ("0.weight", "4.weight", "7.weight"))


def test_an_interrupted_export_leaves_no_member(tmp_path: Path, dense, capsys, monkeypatch) -> None:
    import prunegate.prune

    export = prunegate.prune.export_model
    calls: list[Path] = []

    def interrupted(model, size, path, fmt):  # the second format is cut short
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(b"half a model")
            raise KeyboardInterrupt
        export(model, size, path, fmt)

    monkeypatch.setattr(prunegate.prune, "export_model", interrupted)
    out = tmp_path / "family"
    code = main(["prune", *dense, "--ratios", "0.5", "--out", str(out)])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # neither format, nor the sidecar, nor a temporary
