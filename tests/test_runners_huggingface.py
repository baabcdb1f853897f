"""Hugging Face image-classification folders (runners/huggingface.py): `prunegate check` on a
tiny randomly initialised ViT, in the sandboxed model process, gives the accuracies and agreement
that transformers itself computes on the same images."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prunegate.cli import main

transformers = pytest.importorskip("transformers", reason="needs `pip install prunegate[hf]`")

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
N = 24


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """dense/ and pruned/ (the same ViT with the smaller half of each weight matrix zeroed), as
    save_pretrained writes them, CIFAR-size images and a policy."""
    folder = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
    )
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained(folder / "dense")
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight[weight.abs() < weight.abs().median()] = 0
    model.save_pretrained(folder / "pruned")
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", images=rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8), labels=np.arange(N) % 10)
    (folder / "policy.yaml").write_text(f"""
version: 1
name: hf
models: {{dense: dense, pruned: pruned, input: {{size: 32, mean: {MEAN}, std: {STD}}}}}
data: {{test: {{format: npz, path: data.npz}}}}
gate: {{rules: [{{name: clean, tasks: clean, metric: agreement, min: 0.0}}]}}
runtime: {{workers: 0, backend: torch}}
""")
    return folder


def _predictions(folder: Path) -> torch.Tensor:
    """The model's classes for the data set, computed by transformers alone."""
    model = transformers.AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True).eval()
    images = torch.from_numpy(np.load(folder.parent / "data.npz")["images"]).permute(0, 3, 1, 2).float() / 255
    x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(pixel_values=x).logits.argmax(dim=1)


def test_check_on_hugging_face_folders_matches_transformers(folder: Path, capsys) -> None:
    report = folder / "report.json"
    assert main(["keygen", "--out", str(folder / "key")]) == 0
    # a randomly initialised ViT is at chance on purpose: the sanity check would stop the run
    command = ["check", "-p", str(folder / "policy.yaml"), "-o", str(report), "-q", "--no-sanity-check"]
    assert main([*command, "--key", str(folder / "key.pem")]) == 0
    statement = json.loads(base64.b64decode(json.loads(report.read_text())["payload"]))
    predicate = statement["predicate"]
    clean = next(t for t in predicate["tasks"] if t["name"] == "clean")
    labels = torch.arange(N) % 10
    dense, pruned = _predictions(folder / "dense"), _predictions(folder / "pruned")
    assert clean["dense"]["correct"] == int((dense == labels).sum())
    assert clean["pruned"]["correct"] == int((pruned == labels).sum())
    assert clean["agreement"] == pytest.approx(float((dense == pruned).float().mean()))
    assert 0 < clean["agreement"] < 1  # the zeroed weights change some predictions, not all
    for role in ("dense", "pruned"):
        record = predicate["models"][role]
        assert record["format"] == "huggingface" and record["output"] == "logits"
        assert record["sha256"] == _sha256(folder / role / "model.safetensors")
        assert record["external_data"] == [{"path": "config.json", "sha256": _sha256(folder / role / "config.json")}]
        assert record["isolation"]["process"] is True and record["arch"] is None
        subject = next(s for s in statement["subject"] if s["annotations"]["role"] == role)
        assert subject["digest"]["sha256"] == record["sha256"]
    assert predicate["models"]["pruned"]["nonzero_parameters"] < predicate["models"]["dense"]["nonzero_parameters"]

    # a reviewer verifies with the folders as they have them: the weights and config.json both pinned
    verify = ["verify", str(report), "--key", str(folder / "key.pub")]
    capsys.readouterr()
    assert main([*verify, "--dense", str(folder / "dense"), "--pruned", str(folder / "pruned")]) == 0
    assert "the dense model (sha256" in capsys.readouterr().out
    config = folder / "pruned" / "config.json"
    original = config.read_text()
    try:
        config.write_text(original.replace('"num_hidden_layers": 1', '"num_hidden_layers": 2'))
        assert main([*verify, "--pruned", str(folder / "pruned")]) == 1
        assert "config.json has sha256" in capsys.readouterr().err
    finally:
        config.write_text(original)
    assert main([*verify, "--pruned", str(folder)]) == 2  # a folder that is no model: one line, exit 2
    assert "is not a Hugging Face model" in capsys.readouterr().err


def test_without_transformers_a_hugging_face_folder_asks_for_the_extra(folder: Path, monkeypatch, capsys) -> None:
    from prunegate.runners import huggingface

    monkeypatch.setattr(huggingface, "transformers_installed", lambda: False)
    code = main(["check", "-p", str(folder / "policy.yaml"), "-o", str(folder / "none.json"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install prunegate[hf]" in err and "models.dense" in err
    assert not (folder / "none.json").exists()
