"""Ready policies by name (`--policy cifar10`) and `--data` (prunegate.ready, check.apply_overrides)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TinyNet
from prunegate.check import Overrides, apply_overrides
from prunegate.cli import main
from prunegate.errors import PolicyError
from prunegate.policy import load_policy
from prunegate.ready import ready_names, ready_policy
from prunegate.report.attest import read_envelope


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_four_ready_policies_ship_inside_the_package() -> None:
    assert ready_names() == ["cifar10", "demo", "imagenet", "voc-segmentation"]
    for name in ready_names():
        path = ready_policy(Path(name))
        assert path is not None and path.is_file() and "prunegate" in path.parts


def test_a_ready_policy_takes_its_relative_paths_from_the_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    policy = load_policy("cifar10")
    assert policy.name == "cifar10-robustness"
    assert policy.resolve(policy.data.test.path) == tmp_path / "cifar-10-batches-bin"
    assert policy.resolve(policy.models.spec("dense").path) == tmp_path / "dense.onnx"
    assert policy.file is not None and policy.file.name == "cifar10.yaml" and policy.paths_from == tmp_path


def test_a_file_of_that_name_wins_over_the_ready_policy(tmp_path, monkeypatch, policy_dict, write_policy) -> None:
    monkeypatch.chdir(tmp_path)
    write_policy(tmp_path / "cifar10", name="mine")
    assert load_policy("cifar10").name == "mine"


def test_an_unknown_name_lists_the_ready_policies(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError, match="no ready policy has that name .ready: cifar10, demo, imagenet"):
        load_policy("cifar100")
    code, _, err = run(capsys, "policy", "validate", "cifar100")
    assert code == 2 and err.count("error: ") == 1 and "cifar100" in err
    with pytest.raises(PolicyError, match="policy file not found$"):
        load_policy("missing.yaml")  # a path, not a name: no list of names


def test_data_override_reads_the_format_from_the_layout(tmp_path, monkeypatch, write_npz) -> None:
    monkeypatch.chdir(tmp_path)
    write_npz(tmp_path / "mine.npz", np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, np.int64))
    policy = apply_overrides(load_policy("cifar10"), Overrides(data=Path("mine.npz")))
    assert policy.data.test.format == "npz" and policy.data.test.path == str(tmp_path / "mine.npz")
    assert policy.overrides["data.test"] == {"format": "npz", "path": str(tmp_path / "mine.npz")}
    assert policy.paths_from == tmp_path  # the overrides keep where relative paths start


def test_data_override_keeps_the_policy_settings_of_the_same_format(tmp_path, write_policy) -> None:
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\n")
    images = tmp_path / "other" / "a"
    images.mkdir(parents=True)
    (images / "x.png").write_bytes(b"")
    written = write_policy(
        tmp_path / "p.yaml", data={"test": {"format": "imagefolder", "path": "imgs", "class_names": "classes.txt"}}
    )
    policy = apply_overrides(load_policy(written), Overrides(data=tmp_path / "other"))
    assert policy.data.test.format == "imagefolder" and policy.data.test.class_names == "classes.txt"


def test_check_with_a_ready_policy_by_name_runs_end_to_end(tmp_path, monkeypatch, capsys, save_onnx, write_npz):
    """The README's quick start: `check --policy cifar10 --dense D --pruned P --data X`."""
    torch.manual_seed(0)
    save_onnx(TinyNet(10, 32), tmp_path / "dense.onnx", 32)
    save_onnx(TinyNet(10, 32), tmp_path / "pruned.onnx", 32)
    rng = np.random.default_rng(0)
    write_npz(tmp_path / "test.npz", rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(
        capsys, "check", "--policy", "cifar10", "--dense", "dense.onnx", "--pruned", "pruned.onnx",
        "--data", "test.npz", "--limit", "10", "--report", "r.json", "--html", "r.html",
        "--no-sanity-check",  # random models on random images: at chance
    )  # fmt: skip
    assert code in (0, 1), err
    _, _, statement = read_envelope((tmp_path / "r.json").read_text(), "r.json")
    recorded = statement["predicate"]["policy"]
    assert recorded["name"] == "cifar10-robustness" and recorded["folder"] == str(tmp_path)
    assert recorded["overrides"]["data.test"] == {"format": "npz", "path": str(tmp_path / "test.npz")}
    assert recorded["document"]["data"]["test"]["format"] == "npz"
    assert len(statement["predicate"]["tasks"]) == 102 and (tmp_path / "r.html").is_file()


def test_data_override_of_another_format_keeps_what_names_the_models_classes(tmp_path, write_policy) -> None:
    """class_names names the model's classes: it carries over to a format that reads it; npy's
    labels file, which describes the old file only, does not."""
    (tmp_path / "classes.txt").write_text("a\nb\n")
    (tmp_path / "val.csv").write_text("path,label\nx.png,a\n")
    written = write_policy(
        tmp_path / "p.yaml",
        data={"test": {"format": "imagefolder", "path": "imgs", "class_names": "classes.txt"}},
    )
    policy = apply_overrides(load_policy(written), Overrides(data=tmp_path / "val.csv"))
    assert policy.data.test.format == "filelist" and policy.data.test.class_names == "classes.txt"
    npy = write_policy(tmp_path / "q.yaml", data={"test": {"format": "npy", "path": "x.npy", "labels": "y.npy"}})
    (tmp_path / "d.npz").write_bytes(b"")
    moved = apply_overrides(load_policy(npy), Overrides(data=tmp_path / "d.npz"))
    assert moved.data.test.format == "npz" and moved.data.test.labels is None
