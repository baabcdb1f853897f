"""`policy init --dense --pruned --data [--preset]` (prunegate.policy_init): a policy that runs as is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from conftest import TinyNet
from prunegate.cli import main
from prunegate.policy import load_policy
from prunegate.policy_init import read_model_input


def run(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path: Path, save_onnx, write_npz) -> Path:
    """models/dense.onnx and models/pruned.onnx (32 px, 10 classes) and data/test.npz."""
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    save_onnx(TinyNet(10, 32), tmp_path / "models" / "dense.onnx", 32)
    save_onnx(TinyNet(10, 32), tmp_path / "models" / "pruned.onnx", 32)
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    write_npz(tmp_path / "data" / "test.npz", rng.integers(0, 256, (20, 32, 32, 3), np.uint8), np.arange(20) % 10)
    return tmp_path


def with_metadata(source: Path, target: Path, **props: str) -> Path:
    model = onnx.load(str(source))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(target))
    return target


def init(capsys, files: Path, *extra: object, dense: str = "models/dense.onnx") -> tuple[int, Path, str]:
    out = files / "policies" / "gate.yaml"
    out.parent.mkdir(exist_ok=True)
    code, _, err = run(
        capsys, "policy", "init", out, "--force", "--dense", files / dense, "--pruned", files / "models/pruned.onnx",
        "--data", files / "data/test.npz", *extra,
    )  # fmt: skip
    return code, out, err


def test_the_written_policy_names_the_files_relative_to_itself(files, capsys) -> None:
    code, out, err = init(capsys, files)
    assert code == 0, err
    document = yaml.safe_load(out.read_text())
    assert document["models"]["dense"] == "../models/dense.onnx"
    assert document["models"]["pruned"] == "../models/pruned.onnx"
    assert document["data"]["test"] == {"format": "npz", "path": "../data/test.npz"}
    policy = load_policy(out)
    assert policy.resolve(policy.data.test.path).resolve() == files / "data" / "test.npz"
    assert policy.name == "cifar10-robustness"  # a 32-px model gets the cifar10 policy


def test_the_input_size_is_read_from_the_onnx_graph_and_unread_normalisation_is_flagged(files, capsys) -> None:
    code, out, err = init(capsys, files, "--preset", "imagenet")
    assert code == 0
    document = yaml.safe_load(out.read_text())
    assert document["models"]["input"]["size"] == 32  # the model's, not the imagenet policy's 224
    assert document["models"]["input"]["mean"] == [0.485, 0.456, 0.406]
    assert "CHECK: mean and std are the imagenet policy's" in out.read_text()
    assert "warning:" in err and "mean and std" in err


def test_mean_and_std_metadata_are_used(files, capsys) -> None:
    with_metadata(files / "models/dense.onnx", files / "models/meta.onnx", mean="[0.5, 0.4, 0.3]", std="0.2,0.2,0.25")
    code, out, err = init(capsys, files, dense="models/meta.onnx")
    assert code == 0 and "warning:" not in err
    document = yaml.safe_load(out.read_text())
    assert document["models"]["input"] == {"size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]}
    assert "size and mean and std read from the dense model" in out.read_text()


def test_what_write_normalisation_records_read_model_input_reads(files) -> None:
    from prunegate.onnx_proto import write_normalisation

    model = files / "models/dense.onnx"
    write_normalisation(model, (0.5, 0.25, 0.125), (0.2, 0.3, 0.4))
    write_normalisation(model, (0.5, 0.5, 0.5), (0.2, 0.3, 0.4))  # replaces, not appends
    said = read_model_input(model, "--dense")
    assert (said.size, said.mean, said.std) == (32, [0.5, 0.5, 0.5], [0.2, 0.3, 0.4])
    assert [p.key for p in onnx.load(str(model)).metadata_props] == ["mean", "std"]


def test_read_model_input_leaves_torch_files_unread(tmp_path) -> None:
    (tmp_path / "m.pt").write_bytes(b"not opened")
    said = read_model_input(tmp_path / "m.pt", "--dense")
    assert said.size is None and said.mean is None and said.std is None


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--dense", "models/dense.onnx"], "--pruned, --data missing"),
        (["--dense", "nope.onnx", "--pruned", "models/pruned.onnx", "--data", "data/test.npz"], "model file not found"),
        (["--dense", "models/dense.onnx", "--pruned", "models/pruned.onnx", "--data", "data"], "cannot tell the data"),
        (["--dense", "models/dense.onnx", "--pruned", "models/pruned.onnx", "--data", "data/test.npz",
          "--preset", "voc-segmentation"], "needs a segmentation folder"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line_errors_and_write_nothing(files, capsys, monkeypatch, argv, reason) -> None:
    monkeypatch.chdir(files)
    code, _, err = run(capsys, "policy", "init", "out.yaml", *argv)
    assert code == 2 and reason in err and err.count("error: ") == 1
    assert not (files / "out.yaml").exists()


def test_the_written_policy_runs_as_is(files, capsys) -> None:
    code, out, _ = init(capsys, files, "--preset", "cifar10")
    assert code == 0
    text = out.read_text().replace(
        "corruptions: {preset: cifar10-c, names: all,", "corruptions: {preset: cifar10-c, names: [fog, contrast],"
    )  # fmt: skip  (a short suite keeps the test quick)
    out.write_text(text)
    # (random models on random images: at chance, which the sanity check would stop)
    code, _, err = run(
        capsys, "check", "--policy", out, "--limit", "10", "--report", files / "r.json", "--no-sanity-check"
    )
    assert code in (0, 1), err
    assert (files / "r.json").is_file()


def test_a_csv_file_list_is_written_as_a_filelist_test_set(files, capsys) -> None:
    (files / "data" / "val.csv").write_text("path,label\n")
    out = files / "policies" / "gate.yaml"
    out.parent.mkdir(exist_ok=True)
    code, _, err = run(
        capsys, "policy", "init", out, "--dense", files / "models/dense.onnx", "--pruned",
        files / "models/pruned.onnx", "--data", files / "data/val.csv",
    )  # fmt: skip
    assert code == 0, err
    assert load_policy(out).data.test.model_dump(exclude_defaults=True) == {
        "format": "filelist",
        "path": "../data/val.csv",
    }


@pytest.mark.parametrize(("data", "expected"), [("shard-000.tar", "webdataset"), ("test.parquet", "parquet")])
def test_a_shard_or_a_parquet_file_is_written_as_its_format(files, capsys, data: str, expected: str) -> None:
    (files / "data" / data).write_bytes(b"")  # the layout alone tells the format
    out = files / "policies" / "gate.yaml"
    out.parent.mkdir(exist_ok=True)
    code, _, err = run(
        capsys, "policy", "init", out, "--dense", files / "models/dense.onnx", "--pruned",
        files / "models/pruned.onnx", "--data", files / "data" / data,
    )  # fmt: skip
    assert code == 0, err
    assert load_policy(out).data.test.model_dump(exclude_defaults=True) == {
        "format": expected,
        "path": f"../data/{data}",
    }


@pytest.mark.parametrize(
    ("preset", "metrics"),
    [
        ("cifar10", {"ece_increase"}),
        ("imagenet", {"ece_increase", "top5_drop"}),
        (None, {"ece_increase"}),  # torch models: no preset, the template
    ],
)
def test_the_written_policy_has_the_calibration_rule_and_says_what_it_is(
    files, capsys, save_torchscript, preset, metrics
) -> None:
    """Issue 19: every preset's policy bounds the ECE increase (imagenet's the top-5 drop too),
    each new rule with a comment line saying what it bounds."""
    if preset is None:
        save_torchscript(TinyNet(10, 32), files / "models" / "dense.pt", 32)
        code, out, err = init(capsys, files, dense="models/dense.pt")
    else:
        code, out, err = init(capsys, files, "--preset", preset)
    assert code == 0, err
    rules = {r.metric: r for r in load_policy(out).gate.rules}
    assert metrics <= set(rules) and rules["ece_increase"].max == 0.02 and rules["ece_increase"].tasks == "clean"
    lines = out.read_text().splitlines()
    for metric in metrics:
        at = next(
            i for i, line in enumerate(lines) if f"metric: {metric}" in line and not line.lstrip().startswith("#")
        )
        assert lines[at - 1].lstrip().startswith("# ")  # a comment above each new rule
    assert ("top5_drop" in rules) == (preset == "imagenet")


def hf_folder(where: Path, processor: dict | str | None) -> Path:
    """A Hugging Face folder as save_pretrained lays it out (policy init reads no weights)."""
    import json

    where.mkdir(parents=True)
    (where / "config.json").write_text('{"architectures": ["ViTForImageClassification"]}')
    (where / "model.safetensors").write_bytes(b"(not read)")
    if processor is not None:
        text = processor if isinstance(processor, str) else json.dumps(processor)
        (where / "preprocessor_config.json").write_text(text)
    return where


# What transformers' processors write (ViT, DeiT/BEiT, MobileNetV2, ConvNeXt), and what policy init makes of it.
VIT = {
    "do_normalize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "size": {"height": 224, "width": 224},
}
DEIT = {
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "size": {"height": 256, "width": 256},
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}
CROPPED = {
    "do_center_crop": True,
    "crop_size": 192,
    "size": {"shortest_edge": 256},
    "image_mean": 0.5,
    "image_std": 0.25,
}
CONVNEXT = {
    "size": {"shortest_edge": 224},
    "crop_pct": 0.875,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_rescale": False,
}
UNNORMALISED = {"size": {"height": 96, "width": 128}, "do_normalize": False, "rescale_factor": 1 / 127.5}


@pytest.mark.parametrize(
    ("processor", "size", "mean", "std"),
    [
        (VIT, 224, [0.5] * 3, [0.5] * 3),
        (DEIT, 224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        (CROPPED, 192, [0.5] * 3, [0.25] * 3),
        # pixels not rescaled: (x - m) / s == (x / 255 - m / 255) / (s / 255)
        (CONVNEXT, 224, [0.485 / 255, 0.456 / 255, 0.406 / 255], [0.229 / 255, 0.224 / 255, 0.225 / 255]),
        # x / 127.5 == (x / 255 - 0) / 0.5
        (UNNORMALISED, [96, 128], [0.0] * 3, [0.5] * 3),
        ({"size": "big", "image_mean": [0.5, 0.5], "image_std": [0.5] * 3}, None, None, None),
        ({"image_mean": [0.5] * 3, "image_std": [0.0] * 3}, None, None, None),
    ],
)  # fmt: skip
def test_a_hugging_face_processor_gives_the_input_in_prunegates_terms(tmp_path, processor, size, mean, std) -> None:
    said = read_model_input(hf_folder(tmp_path / "model", processor), "--dense")
    assert said.size == size
    for got, want in ((said.mean, mean), (said.std, std)):
        assert got == want if want is None else got == pytest.approx(want, rel=1e-12)


def test_the_normalisation_read_from_a_processor_is_the_processors_arithmetic(tmp_path) -> None:
    """The converted mean/std applied as prunegate applies them give transformers' own numbers."""
    pixels = np.arange(256, dtype=np.float64)
    for processor in (VIT, CONVNEXT, UNNORMALISED, {**DEIT, "rescale_factor": 1 / 100}):
        said = read_model_input(hf_folder(tmp_path / str(id(processor)), processor), "--dense")
        assert said.mean is not None and said.std is not None
        factor = processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0
        mean = processor.get("image_mean", [0.0] * 3) if processor.get("do_normalize", True) else [0.0] * 3
        std = processor.get("image_std", [1.0] * 3) if processor.get("do_normalize", True) else [1.0] * 3
        for c in range(3):
            theirs = (pixels * factor - mean[c]) / std[c]
            ours = (pixels / 255 - said.mean[c]) / said.std[c]
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_policy_init_takes_hugging_face_folders_and_their_processor(files, capsys) -> None:
    hf_folder(files / "hf" / "dense", VIT)
    hf_folder(files / "hf" / "pruned", None)
    out = files / "policies" / "hf.yaml"
    out.parent.mkdir()
    code, _, err = run(
        capsys, "policy", "init", out, "--dense", files / "hf/dense", "--pruned", files / "hf/pruned",
        "--data", files / "data/test.npz",
    )  # fmt: skip
    assert code == 0, err
    document = yaml.safe_load(out.read_text())
    assert document["models"]["dense"] == "../hf/dense" and document["models"]["pruned"] == "../hf/pruned"
    assert document["models"]["input"] == {"size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert document["name"] == "imagenet-robustness"  # a 224-px model gets the imagenet policy
    assert "size and mean and std read from the dense model" in out.read_text()
    assert "resizes the whole image" in err and err.count("warning:") == 1  # ViT's resize is not a crop
    assert load_policy(out).models.dense == "../hf/dense"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: hf_folder(d, "{not json"), "preprocessor_config.json: --dense: not readable JSON"),
        (lambda d: hf_folder(d, '{"size": 224, "size": 256}'), "preprocessor_config.json: --dense: not readable JSON"),
        (lambda d: hf_folder(d, "[224]"), "preprocessor_config.json: --dense: not a JSON object"),
        (lambda d: hf_folder(d, " " * (1 << 20) + "{}"), "larger than 1024 KiB"),
        (lambda d: d.mkdir(), "a folder without config.json is not a Hugging Face model"),
    ],
)  # fmt: skip
def test_a_bad_hugging_face_folder_is_one_line_naming_the_file(files, capsys, make, reason) -> None:
    make(files / "hf")
    out = files / "out.yaml"
    code, _, err = run(
        capsys, "policy", "init", out, "--dense", files / "hf", "--pruned", files / "models/pruned.onnx",
        "--data", files / "data/test.npz",
    )  # fmt: skip
    assert code == 2 and reason in err and err.count("error: ") == 1 and "--dense" in err, err
    assert not out.exists()


def test_policy_init_names_the_crop_fraction_the_data_uses() -> None:
    from prunegate import policy_init
    from prunegate.data import CROP_FRACTION

    assert policy_init.CROP_FRACTION == CROP_FRACTION


@pytest.mark.parametrize("kind", ["vit", "convnext-unscaled", "deit-cropped"])
def test_what_transformers_processors_save_reads_as_their_own_arithmetic(tmp_path, kind) -> None:
    """Processors saved by transformers itself: the size read is the one they give the model, and
    prunegate's (pixels / 255 - mean) / std with the mean and std read equals their pixel_values."""
    transformers = pytest.importorskip("transformers", reason="needs `pip install prunegate[hf]`")
    processor, size = {
        "vit": (transformers.ViTImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]), 224),
        "convnext-unscaled": (transformers.ConvNextImageProcessor(size={"shortest_edge": 224}, do_rescale=False), 224),
        "deit-cropped": (transformers.DeiTImageProcessor(crop_size={"height": 160, "width": 160}), 160),
    }[kind]
    folder = hf_folder(tmp_path / "model", None)
    processor.save_pretrained(folder)
    said = read_model_input(folder, "--dense")
    assert said.size == size and said.mean is not None and said.std is not None
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    # resizing and cropping off (the image is at the model's size): what is left is the normalisation
    theirs = processor(image, do_resize=False, do_center_crop=False, return_tensors="np")["pixel_values"][0]
    ours = (image.transpose(2, 0, 1) / 255 - np.array(said.mean)[:, None, None]) / np.array(said.std)[:, None, None]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
