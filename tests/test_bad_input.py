"""Bad input never lies, crashes or leaks (issue #8).

One table, one row per bad input. Every row runs the command line as a user would
(`prunegate.cli.main([...])`) and expects: exit code 2; exactly one line on stderr, starting
`error: `, that names the file and the field or position (the row lists the substrings); no
traceback; and nothing in the output folder afterwards — no report, and no hidden `.*.tmp` file.

Below the table: the checks of trust that are not bad input (NaN/Inf logits, ONNX external data
confined to the model's folder, CUDA requests, keys kept out of logs and reports, the pickle
opt-in in the report).
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import logging
import shutil
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

from conftest import SEG_SIZE, PixelNet, segmentation_policy, write_segmentation_folder
from conftest import corrupt_torchscript as garble_torchscript
from prunegate.cli import main
from prunegate.report import keys
from prunegate.report.attest import read_envelope

PASSPHRASE = "correct horse battery staple"
N = 12  # images in the test set


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


@pytest.fixture(scope="module")
def assets(
    tmp_path_factory, colour_net, colour_dataset, random_net, save_torchscript, save_onnx, write_npz, write_arch_file
) -> Path:
    """Every good and bad ingredient, made once; each row copies what it needs."""
    folder = tmp_path_factory.mktemp("assets")
    images, labels = colour_dataset(N)
    write_npz(folder / "data.npz", images, labels)
    save_torchscript(colour_net(), folder / "dense.pt")
    save_torchscript(colour_net(jitter=0.05, seed=1), folder / "pruned.pt")
    save_onnx(colour_net(), folder / "dense.onnx")
    save_onnx(random_net(size=16), folder / "size16.onnx", size=16)
    save_torchscript(random_net(size=16), folder / "size16.pt", size=16)
    save_torchscript(random_net(classes=4), folder / "four.pt")
    _export_onnx(torch.nn.Linear(3 * 8 * 8, 3), torch.rand(2, 3 * 8 * 8), folder / "rank2.onnx")
    torch.save(colour_net().state_dict(), folder / "weights.pth")
    torch.save(colour_net(), folder / "whole.pt")  # a pickled whole module
    write_arch_file(folder)
    key = keys.generate()
    (folder / "key.pem").write_bytes(keys.private_pem(key, None))
    (folder / "enc.pem").write_bytes(keys.private_pem(key, PASSPHRASE.encode()))
    (folder / "key.pub").write_bytes(keys.public_pem(key.public_key()))
    return folder


@dataclass
class Case:
    """One row's working folder: `folder` holds its inputs, `out` must stay empty."""

    folder: Path
    out: Path
    assets: Path
    policy_dict: Callable[..., dict]

    def copy(self, *names: str) -> None:
        for name in names:
            shutil.copy(self.assets / name, self.folder / name)

    def path(self, name: str) -> str:
        """How the error message spells an input file: resolved against the policy's folder."""
        return str(self.folder.resolve() / name)

    def policy(self, document: dict | None = None, *, name: str = "policy.yaml", **changes) -> Path:
        """Write a policy (the tiny default with `changes`, or `document`) next to the default inputs."""
        self.copy("data.npz", "dense.pt", "pruned.pt")
        path = self.folder / name
        path.write_text(
            yaml.safe_dump(document if document is not None else self.policy_dict(**changes), sort_keys=False)
        )
        return path

    def check(self, policy: Path, *extra: str) -> list[str]:
        return ["check", "--policy", str(policy), "--report", str(self.out / "report.json"), *extra]

    def image_folder(self, files: dict[str, bytes]) -> str:
        """An imagefolder `images/` with one class `c` holding `files`, plus 8x8 good PNGs."""
        root = self.folder / "images" / "c"
        root.mkdir(parents=True)
        for i in range(2):
            _png(np.full((8, 8, 3), 40 * i, np.uint8), root / f"good{i}.png")
        for name, content in files.items():
            (root / name).write_bytes(content)
        return "images"


def _png(array: np.ndarray, path: Path | None = None, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format=fmt)
    if path is not None:
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _rule(**fields) -> dict:
    return {"name": "clean drop", "tasks": "clean", "metric": "accuracy_drop", **fields}


def _truncate(source: Path, target: Path, fraction: float = 0.5) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])


def _envelope(payload: bytes) -> str:
    return json.dumps(
        {"payloadType": "application/vnd.in-toto+json", "payload": base64.b64encode(payload).decode(), "signatures": []}
    )


# --- the table: (id, build) -> (argv, substrings the one error line must contain) ---------------


def policy_rows() -> list:
    def misspelled_rule_key(c: Case):
        policy = c.policy(rules=[_rule(tolerence=0.01)])
        return c.check(policy), [str(policy), "gate.rules.0.tolerence", "unknown field", "max"]

    def misspelled_section(c: Case):
        document = c.policy_dict()
        document["gate"] = {"rulez": document["gate"]["rules"]}
        policy = c.policy(document)
        return c.check(policy), [str(policy), "gate.rulez", "did you mean 'rules'"]

    def misspelled_key_validate(c: Case):
        document = c.policy_dict()
        document["models"]["input"]["szie"] = document["models"]["input"].pop("size")
        policy = c.policy(document)
        return ["policy", "validate", str(policy)], [str(policy), "models.input.szie", "did you mean 'size'"]

    def wrong_type_batch_size(c: Case):
        policy = c.policy(runtime={"batch_size": "big"})
        return c.check(policy), [str(policy), "runtime.batch_size", "'big'"]

    def wrong_type_size_as_text(c: Case):
        document = c.policy_dict()
        document["models"]["input"]["size"] = "8"
        policy = c.policy(document)
        return c.check(policy), [str(policy), "models.input.size", "'8'"]

    def wrong_type_rules_mapping(c: Case):
        policy = c.policy(gate={"rules": _rule(max=0.01)})
        return c.check(policy), [str(policy), "gate.rules", "list"]

    def wrong_type_threshold(c: Case):
        policy = c.policy(rules=[_rule(max="one percent")])
        return c.check(policy), [str(policy), "gate.rules.0.max", "'one percent'"]

    def negative_tolerance(c: Case):
        policy = c.policy(rules=[_rule(max=-0.01)])
        return c.check(policy), [str(policy), "gate.rules.0", "-0.01", "[0, 1]"]

    def tolerance_above_one(c: Case):
        policy = c.policy(rules=[_rule(metric="agreement", min=1.5)])
        return c.check(policy), [str(policy), "gate.rules.0", "1.5", "[0, 1]"]

    def glob_matches_no_task(c: Case):
        policy = c.policy(rules=[_rule(tasks="noise/*", max=0.01)])
        return c.check(policy), [str(policy), "gate.rules.0.tasks", "'noise/*' matches no task", "clean"]

    def glob_matches_no_task_validate(c: Case):
        policy = c.policy(rules=[_rule(tasks=["clean", "corruption/*/3"], max=0.01)])
        return ["policy", "validate", str(policy)], [str(policy), "gate.rules.0.tasks", "corruption/*/3"]

    def empty_rules(c: Case):
        policy = c.policy(gate={"rules": []})
        return c.check(policy), [str(policy), "gate.rules", "at least 1"]

    def unknown_corruption(c: Case):
        policy = c.policy(suite={"corruptions": {"preset": "cifar10-c", "names": ["fogg"], "severities": [1]}})
        return c.check(policy), [str(policy), "suite.corruptions", "'fogg'", "did you mean 'fog'"]

    def unknown_noise(c: Case):
        policy = c.policy(suite={"noise": [{"kind": "gausian", "levels": [0.1]}]})
        return c.check(policy), [str(policy), "suite.noise.0.kind", "'gausian'", "gaussian"]

    def severity_above_five(c: Case):
        policy = c.policy(suite={"corruptions": {"names": ["fog"], "severities": [3, 6]}})
        return c.check(policy), [str(policy), "suite.corruptions.severities.1", "5"]

    def frost_textures_missing(c: Case):
        policy = c.policy(suite={"corruptions": {"names": ["frost"], "severities": [1], "frost_textures": "absent"}})
        return c.check(policy), [str(c.folder / "absent"), "suite.corruptions.frost_textures", "folder"]

    def frost_texture_damaged(c: Case):
        (c.folder / "frost").mkdir()
        (c.folder / "frost" / "frost1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        policy = c.policy(suite={"corruptions": {"names": ["frost"], "severities": [1], "frost_textures": "frost"}})
        return c.check(policy), [str(c.folder / "frost" / "frost1.png"), "suite.corruptions.frost_textures", "decode"]

    def severity_zero(c: Case):
        policy = c.policy(suite={"corruptions": {"names": ["fog"], "severities": [0]}})
        return c.check(policy), [str(policy), "suite.corruptions.severities.0", "1"]

    def policy_not_found(c: Case):
        return c.check(c.folder / "absent.yaml"), [str(c.folder / "absent.yaml"), "not found"]

    def policy_is_a_folder(c: Case):
        (c.folder / "policy.yaml").mkdir()
        return c.check(c.folder / "policy.yaml"), [str(c.folder / "policy.yaml"), "directory"]

    def policy_not_yaml(c: Case):
        path = c.folder / "policy.yaml"
        path.write_text("version: 1\nname: [unclosed\n")
        return c.check(path), [str(path), "line 3", "invalid YAML"]

    def field_the_format_does_not_read(c: Case):  # issue 17: a flat folder never reads labels
        policy = c.policy(data={"test": {"format": "imagefolder-flat", "path": "flat", "labels": "val.txt"}})
        return ["policy", "validate", str(policy)], [str(policy), "data.test.labels", "does not read labels"]

    def policy_not_a_mapping(c: Case):
        path = c.folder / "policy.yaml"
        path.write_text("- version: 1\n")
        return c.check(path), [str(path), "mapping"]

    def negative_top5_tolerance(c: Case):  # issue 19: only the signed increases take a negative threshold
        policy = c.policy(rules=[_rule(), _rule(name="top-5", metric="top5_drop", max=-0.01)])
        return c.check(policy), [str(policy), "gate.rules.1.max", "-0.01", "[0, 1]"]

    def coverage_on_another_metric(c: Case):
        policy = c.policy(rules=[_rule(), _rule(name="ece", metric="ece_increase", max=0.02, coverage=0.9)])
        return c.check(policy), [str(policy), "gate.rules.1.coverage", "selective_risk_increase", "ece_increase"]

    def expected_accuracy_zero(c: Case):
        policy = c.policy(models={"expected_accuracy": 0})
        return c.check(policy), [str(policy), "models.expected_accuracy", "greater than 0"]

    def expected_accuracy_as_percent(c: Case):
        policy = c.policy(models={"expected_accuracy": 76})
        return c.check(policy), [str(policy), "models.expected_accuracy", "less than or equal to 1"]

    def expected_accuracy_as_text(c: Case):
        policy = c.policy(models={"expected_accuracy": "high"})
        return c.check(policy), [str(policy), "models.expected_accuracy", "'high'"]

    def expected_accuracy_tolerance_alone(c: Case):
        policy = c.policy(models={"expected_accuracy_tolerance": 0.1})
        return c.check(policy), [str(policy), "models.expected_accuracy_tolerance", "needs models.expected_accuracy"]

    def expected_accuracy_tolerance_too_large(c: Case):
        policy = c.policy(models={"expected_accuracy": 0.5, "expected_accuracy_tolerance": 0.5})
        return c.check(policy), [str(policy), "models.expected_accuracy_tolerance", "below models.expected_accuracy"]

    def dense_model_at_chance(c: Case):  # labels moved one class on: the colour model gets none right
        policy = c.policy()
        data = dict(np.load(c.folder / "data.npz"))
        np.savez(c.folder / "data.npz", images=data["images"], labels=(data["labels"] + 1) % 3)
        return c.check(policy), [c.path("data.npz"), "data.test", f"0/{N} clean images", "no better than chance"]

    return [
        expected_accuracy_zero,
        expected_accuracy_as_percent,
        expected_accuracy_as_text,
        expected_accuracy_tolerance_alone,
        expected_accuracy_tolerance_too_large,
        dense_model_at_chance,
        negative_top5_tolerance,
        coverage_on_another_metric,
        field_the_format_does_not_read,
        misspelled_rule_key,
        misspelled_section,
        misspelled_key_validate,
        wrong_type_batch_size,
        wrong_type_size_as_text,
        wrong_type_rules_mapping,
        wrong_type_threshold,
        negative_tolerance,
        tolerance_above_one,
        glob_matches_no_task,
        glob_matches_no_task_validate,
        empty_rules,
        unknown_corruption,
        unknown_noise,
        severity_above_five,
        severity_zero,
        frost_textures_missing,
        frost_texture_damaged,
        policy_not_found,
        policy_is_a_folder,
        policy_not_yaml,
        policy_not_a_mapping,
    ]


def model_rows() -> list:
    def model_not_found(c: Case):
        policy = c.policy(dense="absent.pt")
        return c.check(policy), [c.path("absent.pt"), "models.dense", "not found"]

    def model_override_not_found(c: Case):
        policy = c.policy()
        return c.check(policy, "--pruned", str(c.folder / "absent.onnx")), [
            str(c.folder / "absent.onnx"),
            "models.pruned",
            "not found",
        ]

    def model_is_a_folder(c: Case):
        policy = c.policy(dense="models")
        (c.folder / "models").mkdir()
        return c.check(policy), [c.path("models"), "models.dense", "folder"]

    def hf_folder(c: Case, config: str, weights: str = "model.safetensors") -> Path:
        (c.folder / "hf").mkdir()
        (c.folder / "hf" / "config.json").write_text(config)
        (c.folder / "hf" / weights).write_bytes(b"weights")
        return c.policy(dense="hf")

    def hf_folder_asking_for_remote_code(c: Case):
        config = {"model_type": "mine", "auto_map": {"AutoModelForImageClassification": "modeling_mine.Net"}}
        policy = hf_folder(c, json.dumps(config))
        return c.check(policy), [c.path("hf"), "models.dense", "auto_map", "trust_remote_code is False"]

    def hf_folder_without_safetensors(c: Case):
        policy = hf_folder(c, json.dumps({"model_type": "vit"}), weights="pytorch_model.bin")
        return c.check(policy), [c.path("hf"), "models.dense", "model.safetensors"]

    def hf_config_not_json(c: Case):
        policy = hf_folder(c, '{"model_type": "vit",')
        return c.check(policy), [c.path("hf"), "models.dense", "config.json is not readable JSON"]

    def truncated_onnx(c: Case):
        policy = c.policy(dense="dense.onnx")
        _truncate(c.assets / "dense.onnx", c.folder / "dense.onnx")
        return c.check(policy), [c.path("dense.onnx"), "models.dense", "truncated or corrupt"]

    def corrupt_torchscript(c: Case):
        policy = c.policy()
        garble_torchscript(c.assets / "pruned.pt", c.folder / "pruned.pt")
        return c.check(policy), [c.path("pruned.pt"), "models.pruned", "torchscript"]

    def truncated_torchscript(c: Case):
        policy = c.policy()
        _truncate(c.assets / "pruned.pt", c.folder / "pruned.pt", 0.7)
        return c.check(policy), [c.path("pruned.pt"), "models.pruned", "truncated or corrupt"]

    def truncated_state_dict(c: Case):
        policy = c.policy(pruned={"path": "weights.pth", "arch": "tiny_arch.py:build"})
        c.copy("tiny_arch.py")
        _truncate(c.assets / "weights.pth", c.folder / "weights.pth")
        return c.check(policy), [c.path("weights.pth"), "models.pruned", "truncated or corrupt"]

    def truncated_safetensors(c: Case):
        from safetensors.torch import save_file

        policy = c.policy(pruned={"path": "weights.safetensors", "arch": "tiny_arch.py:build"})
        c.copy("tiny_arch.py")
        whole = c.folder / "whole.safetensors"
        save_file(torch.load(c.assets / "weights.pth", weights_only=True), whole)
        _truncate(whole, c.folder / "weights.safetensors")
        return c.check(policy), [c.path("weights.safetensors"), "models.pruned", "safetensors", "truncated or corrupt"]

    def state_dict_without_arch(c: Case):
        policy = c.policy(pruned="weights.pth")
        c.copy("weights.pth")
        return c.check(policy), [c.path("weights.pth"), "models.pruned", "arch"]

    def arch_call_args_not_a_list(c: Case):
        policy = c.policy(pruned={"path": "weights.pth", "arch": {"fn": "tiny_arch.py:build", "args": "resnet18"}})
        return c.check(policy), [str(policy), "models.pruned.arch.args", "valid list", "'resnet18'"]

    def arch_call_unknown_key(c: Case):
        policy = c.policy(pruned={"path": "weights.pth", "arch": {"fn": "tiny_arch.py:build", "kwarg": {}}})
        return c.check(policy), [str(policy), "models.pruned.arch.kwarg", "did you mean 'kwargs'"]

    def arch_call_value_not_plain(c: Case):
        when = datetime.date(2024, 1, 2)  # YAML reads 2024-01-02 as a date
        policy = c.policy(pruned={"path": "weights.pth", "arch": {"fn": "tiny_arch.py:build", "kwargs": {"on": when}}})
        return c.check(policy), [str(policy), "models.pruned.arch.kwargs.on", "a date is not a plain value"]

    def arch_call_value_not_finite(c: Case):
        document = c.policy_dict()
        document["models"]["arch"] = {"fn": "tiny_arch.py:build", "kwargs": {"sizes": [1.0, float("inf")]}}
        policy = c.policy(document)
        return c.check(policy), [str(policy), "models.arch.kwargs.sizes.1", "finite number"]

    def arch_call_asks_for_pretrained_weights(c: Case):
        call = {"fn": "torchvision.models:resnet18", "kwargs": {"pretrained": True}}
        policy = c.policy(pruned={"path": "weights.pth", "arch": call})
        return c.check(policy), [str(policy), "models.pruned.arch.kwargs.pretrained", "download weights"]

    def arch_call_builder_refuses_its_args(c: Case):
        policy = c.policy(pruned={"path": "weights.pth", "arch": {"fn": "tiny_arch.py:build", "args": [3]}})
        c.copy("tiny_arch.py", "weights.pth")
        return c.check(policy), [c.path("weights.pth"), "models.pruned", "tiny_arch.py:build(3)", "failed to build"]

    def wrong_input_rank(c: Case):
        policy = c.policy(dense="rank2.onnx")
        c.copy("rank2.onnx")
        return c.check(policy), [c.path("rank2.onnx"), "models.dense", "rank-2", "NCHW"]

    def wrong_input_size_onnx(c: Case):
        policy = c.policy(dense="size16.onnx")
        c.copy("size16.onnx")
        return c.check(policy), [c.path("size16.onnx"), "models.dense", "16", "models.input.size is 8"]

    def wrong_input_size_torchscript(c: Case):
        policy = c.policy(pruned="size16.pt")
        c.copy("size16.pt")
        return c.check(policy), [c.path("size16.pt"), "models.pruned", "[2, 3, 8, 8]"]

    def different_class_counts(c: Case):
        policy = c.policy(pruned="four.pt")
        c.copy("four.pt")
        return c.check(policy), [c.path("four.pt"), "models.pruned", "3 classes", "4"]

    def pickled_module_without_opt_in(c: Case):
        policy = c.policy(pruned="whole.pt")
        c.copy("whole.pt")
        return c.check(policy), [c.path("whole.pt"), "models.pruned", "--allow-pickle"]

    def backend_does_not_fit(c: Case):
        policy = c.policy()
        return c.check(policy, "--backend", "onnx"), [c.path("dense.pt"), "models.dense", "onnx backend"]

    def cuda_without_fallback_in_policy(c: Case):
        policy = c.policy(runtime={"device": "cuda"})
        return c.check(policy), [str(policy.resolve()), "runtime.device", "allow_fallback"]

    def cuda_without_fallback_on_command_line(c: Case):
        policy = c.policy()
        return c.check(policy, "--device", "cuda"), [str(policy.resolve()), "runtime.device", "allow_fallback"]

    return [
        model_not_found,
        model_override_not_found,
        model_is_a_folder,
        hf_folder_asking_for_remote_code,
        hf_folder_without_safetensors,
        hf_config_not_json,
        truncated_onnx,
        corrupt_torchscript,
        truncated_torchscript,
        truncated_state_dict,
        truncated_safetensors,
        state_dict_without_arch,
        arch_call_args_not_a_list,
        arch_call_unknown_key,
        arch_call_value_not_plain,
        arch_call_value_not_finite,
        arch_call_asks_for_pretrained_weights,
        arch_call_builder_refuses_its_args,
        wrong_input_rank,
        wrong_input_size_onnx,
        wrong_input_size_torchscript,
        different_class_counts,
        pickled_module_without_opt_in,
        backend_does_not_fit,
        cuda_without_fallback_in_policy,
        cuda_without_fallback_on_command_line,
    ]


def data_rows() -> list:
    def labels_outside_the_classes(c: Case):
        policy = c.policy()
        images = np.load(c.folder / "data.npz")["images"]
        np.savez(c.folder / "data.npz", images=images, labels=np.arange(N) % 5)
        return c.check(policy), [c.path("data.npz"), "data.test", "label 4", "3 classes"]

    def negative_label(c: Case):
        policy = c.policy()
        images = np.load(c.folder / "data.npz")["images"]
        np.savez(c.folder / "data.npz", images=images, labels=np.arange(N) - 1)
        return c.check(policy), [c.path("data.npz"), "data.test", "-1"]

    def empty_npz(c: Case):
        policy = c.policy()
        np.savez(c.folder / "data.npz", images=np.zeros((0, 8, 8, 3), np.uint8), labels=np.zeros(0, np.int64))
        return c.check(policy), [c.path("data.npz"), "data.test", "empty"]

    def empty_image_folder(c: Case):
        policy = c.policy(data={"test": {"format": "imagefolder", "path": "images"}})
        (c.folder / "images" / "cat").mkdir(parents=True)
        return c.check(policy), [c.path("images"), "data.test", "no image files"]

    def unreadable_image(c: Case):
        path = c.image_folder({"broken.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4})
        policy = c.policy(data={"test": {"format": "imagefolder", "path": path}})
        return c.check(policy), [c.path("images/c/broken.png"), "data.test", "cannot decode image"]

    def truncated_png(c: Case):
        picture = _png(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
        path = c.image_folder({"cut.png": picture[: len(picture) // 2]})
        policy = c.policy(data={"test": {"format": "imagefolder", "path": path}})
        return c.check(policy), [c.path("images/c/cut.png"), "data.test", "cannot decode image"]

    def truncated_jpeg(c: Case):
        picture = _png(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8), fmt="JPEG")
        path = c.image_folder({"cut.jpg": picture[: len(picture) // 2]})
        policy = c.policy(data={"test": {"format": "imagefolder", "path": path}})
        return c.check(policy), [c.path("images/c/cut.jpg"), "data.test", "cannot decode image"]

    def png_with_a_bad_filter_byte(c: Case):  # torchvision's PNG decoder crashed the process on it
        import struct
        import zlib

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        rows = b"".join(b"\x07" + bytes(24) for _ in range(8))  # filter type 7: PNG has 0-4
        png = (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b"")
        )
        path = c.image_folder({"filter.png": png})
        policy = c.policy(data={"test": {"format": "imagefolder", "path": path}})
        return c.check(policy), [c.path("images/c/filter.png"), "data.test", "cannot decode image"]

    def image_over_the_pixel_limit(c: Case):
        path = c.image_folder({"big.png": _png(np.zeros((20, 30, 3), np.uint8))})
        policy = c.policy(data={"test": {"format": "imagefolder", "path": path}, "max_pixels": 500})
        return c.check(policy), [c.path("images/c/big.png"), "data.test", "600 pixels", "data.max_pixels", "500"]

    def array_images_over_the_pixel_limit(c: Case):
        policy = c.policy(data={"max_pixels": 63})
        return c.check(policy), [c.path("data.npz"), "data.test", "64 pixels", "data.max_pixels"]

    def mixed_sizes_npz(c: Case):
        policy = c.policy()
        images = np.empty(2, dtype=object)
        images[0], images[1] = np.zeros((8, 8, 3), np.uint8), np.zeros((9, 9, 3), np.uint8)
        np.savez(c.folder / "data.npz", images=images, labels=np.zeros(2, np.int64))
        return c.check(policy), [c.path("data.npz"), "data.test", "same-size images"]

    def mixed_sizes_npy(c: Case):
        policy = c.policy(data={"test": {"format": "npy", "path": "x.npy", "labels": "y.npy"}})
        images = np.empty(2, dtype=object)
        images[0], images[1] = np.zeros((8, 8, 3), np.uint8), np.zeros((9, 9, 3), np.uint8)
        np.save(c.folder / "x.npy", images, allow_pickle=True)
        np.save(c.folder / "y.npy", np.zeros(2, np.int64))
        return c.check(policy), [c.path("x.npy"), "data.test", "same-size images"]

    def data_not_found(c: Case):
        policy = c.policy(data_file="absent.npz")
        return c.check(policy), [c.path("absent.npz"), "data.test.path", "not found"]

    def npz_path_is_a_folder(c: Case):
        policy = c.policy(data_file="arrays")
        (c.folder / "arrays").mkdir()
        return c.check(policy), [c.path("arrays"), "data.test.path", "expected a file"]

    def image_folder_path_is_a_file(c: Case):
        policy = c.policy(data={"test": {"format": "imagefolder", "path": "data.npz"}})
        return c.check(policy), [c.path("data.npz"), "data.test.path", "expected a folder"]

    def npy_labels_not_found(c: Case):
        policy = c.policy(data={"test": {"format": "npy", "path": "x.npy", "labels": "absent.npy"}})
        np.save(c.folder / "x.npy", np.zeros((2, 8, 8, 3), np.uint8))
        return c.check(policy), [c.path("absent.npy"), "data.test.labels", "not found"]

    def npz_not_an_archive(c: Case):
        policy = c.policy()
        (c.folder / "data.npz").write_bytes(b"PK\x03\x04 not really a zip")
        return c.check(policy), [c.path("data.npz"), "data.test", "not a readable .npz archive"]

    def ood_set_not_found(c: Case):
        policy = c.policy(data={"ood": [{"name": "other", "format": "npz", "path": "other.npz"}]})
        return c.check(policy), [c.path("other.npz"), "data.ood.0.path", "not found"]

    def cifar_binary_partial_record(c: Case):
        policy = c.policy(data={"test": {"format": "cifar10-binary", "path": "test_batch.bin"}})
        (c.folder / "test_batch.bin").write_bytes(bytes(3073 + 100))
        return c.check(policy), [c.path("test_batch.bin"), "data.test", "3073-byte"]

    # issue #13: links that lead nowhere, bounded decoding
    def symlink_loop_as_data_path(c: Case):
        policy = c.policy(data_file="loop.npz")
        (c.folder / "loop.npz").symlink_to("loop.npz")
        return c.check(policy), [c.path("loop.npz"), "data.test.path", "is a symbolic link loop"]

    def broken_symlink_as_data_path(c: Case):
        policy = c.policy(data_file="link.npz")
        (c.folder / "link.npz").symlink_to("gone.npz")
        return c.check(policy), [c.path("link.npz"), "data.test.path", "is a broken symbolic link (points to gone.npz)"]

    def broken_symlink_in_image_folder(c: Case):
        path = c.image_folder({})
        (c.folder / "images" / "c" / "lost.png").symlink_to("nowhere.png")
        policy = c.policy(data={"test": {"format": "imagefolder", "path": path}})
        return c.check(policy), [c.path("images/c/lost.png"), "data.test", "broken symbolic link"]

    def symlink_loop_in_flat_image_folder(c: Case):
        (c.folder / "flat").mkdir()
        _png(np.zeros((8, 8, 3), np.uint8), c.folder / "flat" / "good_0.png")
        (c.folder / "flat" / "loop_1.png").symlink_to("loop_1.png")
        policy = c.policy(data={"test": {"format": "imagefolder-flat", "path": "flat"}})
        return c.check(policy), [c.path("flat/loop_1.png"), "data.test", "symbolic link loop"]

    def file_list_row_naming_a_missing_image(c: Case):
        c.image_folder({})
        (c.folder / "list.csv").write_text("path,label\nimages/c/good0.png,0\nimages/c/gone.png,1\n")
        policy = c.policy(data={"test": {"format": "filelist", "path": "list.csv"}})
        return c.check(policy), [c.path("list.csv"), "data.test", "line 3: image 'images/c/gone.png' not found"]

    def file_list_row_leaving_its_folder(c: Case):
        c.image_folder({})
        (c.folder / "sub").mkdir()
        (c.folder / "sub" / "list.tsv").write_text("path\tlabel\n../images/c/good0.png\t0\n")
        policy = c.policy(data={"test": {"format": "filelist", "path": "sub/list.tsv"}})
        return c.check(policy), [c.path("sub/list.tsv"), "data.test", "line 2: path '../images/c/good0.png' has a '..'"]

    def webdataset_member_that_is_a_symlink(c: Case):
        import tarfile

        with tarfile.open(c.folder / "s.tar", "w") as tar:
            for name, content in (("a.png", _png(np.zeros((8, 8, 3), np.uint8))), ("a.cls", b"0")):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            link = tarfile.TarInfo("b.png")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
        policy = c.policy(data={"test": {"format": "webdataset", "path": "s.tar"}})
        return c.check(policy), [c.path("s.tar"), "data.test", "member 'b.png' is a symbolic link (to '/etc/passwd')"]

    def webdataset_pattern_with_an_open_brace(c: Case):
        policy = c.policy(data={"test": {"format": "webdataset", "path": "s-{0..3.tar"}})
        return c.check(policy), ["data.test.path", "the shard pattern 's-{0..3.tar'", "is not closed"]

    def parquet_row_without_a_label(c: Case):
        import pyarrow as pa
        import pyarrow.parquet as pq

        image = _png(np.zeros((8, 8, 3), np.uint8))
        pq.write_table(pa.table({"image": [image, image], "label": [0, None]}), c.folder / "t.parquet")
        policy = c.policy(data={"test": {"format": "parquet", "path": "t.parquet"}})
        return c.check(policy), [c.path("t.parquet"), "data.test", "row 1: column 'label' is empty (null)"]

    def image_column_for_a_format_without_columns(c: Case):
        policy = c.policy(data={"test": {"format": "npz", "path": "data.npz", "image_column": "png"}})
        return c.check(policy), [str(policy), "data.test.image_column", "image_column is for the parquet format"]

    def truncated_npy(c: Case):
        policy = c.policy(data={"test": {"format": "npy", "path": "x.npy", "labels": "y.npy"}})
        np.save(c.folder / "x.npy", np.zeros((N, 8, 8, 3), np.uint8))
        np.save(c.folder / "y.npy", np.arange(N) % 3)
        _truncate(c.folder / "x.npy", c.folder / "x.npy", 0.9)
        return c.check(policy), [c.path("x.npy"), "data.test", "header claims shape (12, 8, 8, 3)"]

    def gif_first_frame_over_the_pixel_limit(c: Case):  # a 4 x 4 screen, a 40 x 40 first frame
        gif = _png(np.zeros((4, 4, 3), np.uint8), fmt="GIF")
        at = gif.index(b"\x2c\x00\x00\x00\x00\x04\x00\x04\x00")
        gif = gif[:at] + b"\x2c\x00\x00\x00\x00\x28\x00\x28\x00" + gif[at + 9 :]
        path = c.image_folder({"wide.gif": gif})
        policy = c.policy(data={"test": {"format": "imagefolder", "path": path}, "max_pixels": 500})
        return c.check(policy), [c.path("images/c/wide.gif"), "data.test", "1600 pixels", "data.max_pixels"]

    def damaged_compressed_npz_stream(c: Case):  # the member's header is intact: found when the rows are read
        policy = c.policy()
        images = np.random.default_rng(0).integers(0, 255, (N, 64, 64, 3), dtype=np.uint8)  # 147 kB of deflate
        np.savez_compressed(c.folder / "data.npz", images=images, labels=np.arange(N) % 3)
        with zipfile.ZipFile(c.folder / "data.npz") as archive:
            info = archive.getinfo("images.npy")
        raw = bytearray((c.folder / "data.npz").read_bytes())
        raw[info.header_offset + 100 + info.compress_size // 2] ^= 0xFF
        (c.folder / "data.npz").write_bytes(bytes(raw))
        return c.check(policy), [c.path("data.npz"), "data.test", "cannot read the images"]

    def group_naming_a_class_the_set_lacks(c: Case):  # issue 19: data.groups
        test = {"format": "imagefolder", "path": c.image_folder({})}
        policy = c.policy(data={"test": test, "groups": {"animals": ["c", "dog"]}})
        return c.check(policy), [str(policy), "data.groups.animals", "'dog' is not one of the data set's class names"]

    def group_label_outside_the_classes(c: Case):
        policy = c.policy(data={"test": {"format": "npz", "path": "data.npz"}, "groups": {"rare": [0, 7]}})
        return c.check(policy), [str(policy), "data.groups.rare", "label 7"]

    def groups_file_not_a_mapping(c: Case):
        (c.folder / "groups.yaml").write_text("- [0, 1]\n- [2]\n")
        policy = c.policy(data={"test": {"format": "npz", "path": "data.npz"}, "groups": "groups.yaml"})
        return c.check(policy), [c.path("groups.yaml"), "data.groups", "must hold a mapping"]

    return [
        group_naming_a_class_the_set_lacks,
        group_label_outside_the_classes,
        groups_file_not_a_mapping,
        labels_outside_the_classes,
        negative_label,
        empty_npz,
        empty_image_folder,
        unreadable_image,
        truncated_png,
        truncated_jpeg,
        png_with_a_bad_filter_byte,
        image_over_the_pixel_limit,
        array_images_over_the_pixel_limit,
        mixed_sizes_npz,
        mixed_sizes_npy,
        data_not_found,
        npz_path_is_a_folder,
        image_folder_path_is_a_file,
        npy_labels_not_found,
        npz_not_an_archive,
        ood_set_not_found,
        cifar_binary_partial_record,
        file_list_row_naming_a_missing_image,
        file_list_row_leaving_its_folder,
        webdataset_member_that_is_a_symlink,
        webdataset_pattern_with_an_open_brace,
        parquet_row_without_a_label,
        image_column_for_a_format_without_columns,
        symlink_loop_as_data_path,
        broken_symlink_as_data_path,
        broken_symlink_in_image_folder,
        symlink_loop_in_flat_image_folder,
        truncated_npy,
        gif_first_frame_over_the_pixel_limit,
        damaged_compressed_npz_stream,
    ]


def report_and_key_rows() -> list:
    def verify_report_not_json(c: Case):
        (c.folder / "report.json").write_text('{"payloadType": "x",\n  oops}')
        c.copy("key.pub")
        return ["verify", str(c.folder / "report.json"), "--key", str(c.folder / "key.pub")], [
            str(c.folder / "report.json"),
            "not JSON",
            "line 2",
        ]

    def verify_json_not_an_envelope(c: Case):
        (c.folder / "report.json").write_text('{"verdict": "pass"}')
        c.copy("key.pub")
        return ["verify", str(c.folder / "report.json"), "--key", str(c.folder / "key.pub")], [
            str(c.folder / "report.json"),
            "not a DSSE envelope",
            "payloadType",
        ]

    def verify_report_not_found(c: Case):
        c.copy("key.pub")
        return ["verify", str(c.folder / "absent.json"), "--key", str(c.folder / "key.pub")], [
            str(c.folder / "absent.json"),
            "not found",
        ]

    def show_report_not_json(c: Case):
        (c.folder / "report.json").write_bytes(b"\x00\x01 binary")
        return ["report", "show", str(c.folder / "report.json")], [str(c.folder / "report.json"), "not JSON"]

    def show_json_not_an_envelope(c: Case):
        (c.folder / "report.json").write_text("[1, 2, 3]")
        return ["report", "show", str(c.folder / "report.json")], [str(c.folder / "report.json"), "not a DSSE envelope"]

    def show_payload_not_base64(c: Case):
        (c.folder / "report.json").write_text(json.dumps({"payloadType": "x", "payload": "%%%", "signatures": []}))
        return ["report", "show", str(c.folder / "report.json")], [str(c.folder / "report.json"), "payload", "base64"]

    def show_payload_not_a_prunegate_statement(c: Case):
        (c.folder / "report.json").write_text(_envelope(b'{"predicateType": "https://slsa.dev/provenance/v1"}'))
        return ["report", "show", str(c.folder / "report.json")], [
            str(c.folder / "report.json"),
            "payload",
            "not a prunegate statement",
        ]

    def show_report_is_a_folder(c: Case):
        (c.folder / "report.json").mkdir()
        return ["report", "show", str(c.folder / "report.json")], [str(c.folder / "report.json"), "not a file"]

    def check_key_not_a_key(c: Case):
        policy = c.policy()
        key = str(c.folder / "data.npz")
        return c.check(policy, "--key", key), [key, "not a PEM private key"]

    def check_key_not_found(c: Case):
        policy = c.policy()
        key = str(c.folder / "absent.pem")
        return c.check(policy, "--key", key), [key, "--key", "not found"]

    def check_key_is_a_folder(c: Case):
        policy = c.policy()
        (c.folder / "keys").mkdir()
        return c.check(policy, "--key", str(c.folder / "keys")), [str(c.folder / "keys"), "--key", "not a file"]

    def check_wrong_passphrase(c: Case):
        policy = c.policy()
        c.copy("enc.pem")
        return c.check(policy, "--key", str(c.folder / "enc.pem")), [
            str(c.folder / "enc.pem"),
            "wrong passphrase",
            "PRUNEGATE_KEY_PASSPHRASE",
        ]

    def check_encrypted_key_without_passphrase(c: Case):
        policy = c.policy()
        c.copy("enc.pem")
        return c.check(policy, "--key", str(c.folder / "enc.pem")), [str(c.folder / "enc.pem"), "needs a passphrase"]

    def check_key_from_environment_not_a_key(c: Case):
        policy = c.policy()
        return c.check(policy), ["PRUNEGATE_SIGNING_KEY", "not a PEM private key"]

    def verify_key_not_a_key(c: Case):
        c.policy()  # (for its data.npz: a file that is no key)
        (c.folder / "report.json").write_text(_envelope(b"{}"))
        return ["verify", str(c.folder / "report.json"), "--key", str(c.folder / "data.npz")], [
            str(c.folder / "data.npz"),
            "not a PEM public key",
        ]

    def verify_key_not_found(c: Case):
        (c.folder / "report.json").write_text(_envelope(b"{}"))
        return ["verify", str(c.folder / "report.json"), "--key", str(c.folder / "absent.pub")], [
            str(c.folder / "absent.pub"),
            "not found",
        ]

    def report_folder_does_not_exist(c: Case):
        policy = c.policy()
        target = c.out / "missing" / "report.json"
        return ["check", "--policy", str(policy), "--report", str(target)], [str(target), "does not exist"]

    def report_path_is_a_folder(c: Case):
        policy = c.policy()
        (c.folder / "reports").mkdir()
        return ["check", "--policy", str(policy), "--report", str(c.folder / "reports")], [
            str(c.folder / "reports"),
            "is a folder",
        ]

    check_wrong_passphrase.env = {"PRUNEGATE_KEY_PASSPHRASE": "wrong"}
    check_key_from_environment_not_a_key.env = {"PRUNEGATE_SIGNING_KEY": "-----BEGIN PRIVATE KEY-----\nnope\n"}
    return [
        verify_report_not_json,
        verify_json_not_an_envelope,
        verify_report_not_found,
        show_report_not_json,
        show_json_not_an_envelope,
        show_payload_not_base64,
        show_payload_not_a_prunegate_statement,
        show_report_is_a_folder,
        check_key_not_a_key,
        check_key_not_found,
        check_key_is_a_folder,
        check_wrong_passphrase,
        check_encrypted_key_without_passphrase,
        check_key_from_environment_not_a_key,
        verify_key_not_a_key,
        verify_key_not_found,
        report_folder_does_not_exist,
        report_path_is_a_folder,
    ]


def hardening_rows() -> list:
    """Issue 13: a control character in a name or value never makes a second line (it is shown
    escaped); JSON that repeats a key is unreadable; policy errors name the exact field."""
    from prunegate.errors import printable

    def image_name_with_a_newline(c: Case):
        path = c.image_folder({"cut\nerror: forged.png": b"\x89PNG\r\n\x1a\n broken"})
        policy = c.policy(data={"test": {"format": "imagefolder", "path": path}})
        return c.check(policy), [
            printable(c.path("images/c/cut\nerror: forged.png")),
            "data.test",
            "cannot decode image",
        ]

    def data_path_with_escape_sequences(c: Case):
        policy = c.policy(data_file="\x1b[2J\rgone\u202e.npz")
        return c.check(policy), [printable(c.path("\x1b[2J\rgone\u202e.npz")), "data.test.path", "not found"]

    def unknown_key_with_an_escape_sequence(c: Case):
        policy = c.policy(rules=[_rule(max=0.01, **{"tolerance\x1b]0;pwned\x07": 1})])
        return c.check(policy), [str(policy), "gate.rules.0.tolerance\\x1b]0;pwned\\x07", "unknown field"]

    def key_file_name_with_a_newline(c: Case):
        policy = c.policy()
        key = str(c.folder / "k\nerror: forged.pem")
        return c.check(policy, "--key", key), [printable(key), "--key", "not found"]

    def empty_pt2_model(c: Case):  # torch.export.load logs a 12-line traceback before it raises
        policy = c.policy(pruned="empty.pt2")
        (c.folder / "empty.pt2").write_bytes(b"")
        return c.check(policy), [c.path("empty.pt2"), "models.pruned", "truncated or corrupt"]

    def policy_is_a_symlink_loop(c: Case):
        loop = c.folder / "policy.yaml"
        loop.symlink_to(loop)
        return c.check(loop), [str(loop), "symbolic link loop"]

    def policy_is_a_dangling_symlink(c: Case):
        link = c.folder / "policy.yaml"
        link.symlink_to(c.folder / "gone.yaml")
        return c.check(link), [str(link), "broken symbolic link", "gone.yaml"]

    def nan_confidence(c: Case):
        policy = c.policy(gate={"confidence": float("nan")})
        return c.check(policy), [str(policy), "gate.confidence", "not a number"]

    def negative_tolerance_names_the_field(c: Case):
        policy = c.policy(rules=[_rule(max=-0.01)])
        return c.check(policy), [str(policy), "gate.rules.0.max:", "-0.01"]

    def rule_names_that_differ_by_whitespace(c: Case):
        policy = c.policy(rules=[_rule(max=0.01), _rule(name="clean drop ", max=0.02)])
        return c.check(policy), [str(policy), "gate.rules.1.name", "whitespace"]

    def std_that_is_zero_in_float32(c: Case):
        policy = c.policy(models={"input": {"size": 8, "std": [1.0e-300, 1.0, 1.0]}})
        return c.check(policy), [str(policy), "models.input.std.0", "float32"]

    def verify_envelope_with_a_repeated_key(c: Case):
        (c.folder / "report.json").write_text(
            '{"payloadType": "application/vnd.in-toto+json", "payload": "e30=", "payload": "e30=", "signatures": []}'
        )
        c.copy("key.pub")
        return ["verify", str(c.folder / "report.json"), "--key", str(c.folder / "key.pub")], [
            str(c.folder / "report.json"),
            "repeats the key 'payload'",
        ]

    def show_payload_with_a_repeated_key(c: Case):
        (c.folder / "report.json").write_text(
            _envelope(b'{"predicateType": "x", "predicateType": "https://prunegate.dev/report/v1"}')
        )
        return ["report", "show", str(c.folder / "report.json")], [
            str(c.folder / "report.json"),
            "payload",
            "repeats the key 'predicateType'",
        ]

    return [
        image_name_with_a_newline,
        data_path_with_escape_sequences,
        unknown_key_with_an_escape_sequence,
        key_file_name_with_a_newline,
        empty_pt2_model,
        policy_is_a_symlink_loop,
        policy_is_a_dangling_symlink,
        nan_confidence,
        negative_tolerance_names_the_field,
        rule_names_that_differ_by_whitespace,
        std_that_is_zero_in_float32,
        verify_envelope_with_a_repeated_key,
        show_payload_with_a_repeated_key,
    ]


def trust_rows() -> list:
    """Issue 13: outputs that would overwrite inputs or each other; models that would do more than
    compute; arch code from elsewhere; signing without isolation; a resume with nothing to resume."""

    def report_over_the_policy(c: Case):
        policy = c.policy()
        return c.check(policy, "--report", str(policy)), [str(policy), "--report", "the policy", "overwrite"]

    def report_over_the_pruned_model(c: Case):
        policy = c.policy()
        return c.check(policy, "--report", str(c.folder / "pruned.pt")), [
            str(c.folder / "pruned.pt"),
            "--report",
            "models.pruned",
            "overwrite",
        ]

    def html_over_the_report(c: Case):
        policy = c.policy()
        return c.check(policy, "--html", str(c.out / "report.json")), [
            str(c.out / "report.json"),
            "--html",
            "--report",
            "two outputs",
        ]

    def markdown_over_the_data(c: Case):
        policy = c.policy()
        return c.check(policy, "--markdown", str(c.folder / "data.npz")), [
            str(c.folder / "data.npz"),
            "--markdown",
            "data.test.path",
        ]

    def junit_through_a_symlink_onto_the_policy(c: Case):
        policy = c.policy()
        (c.folder / "innocent.xml").symlink_to(policy)
        return c.check(policy, "--junit", str(c.folder / "innocent.xml")), [
            str(c.folder / "innocent.xml"),
            "--junit",
            "the policy",
        ]

    def report_inside_the_image_folder(c: Case):
        path = c.image_folder({})
        policy = c.policy(data={"test": {"format": "imagefolder", "path": path}})
        target = c.folder / "images" / "c" / "report.json"
        return c.check(policy, "--report", str(target)), [str(target), "--report", "inside data.test.path"]

    def report_over_the_key(c: Case):
        policy = c.policy()
        c.copy("key.pem")
        (c.folder / "key.pem").chmod(0o600)
        return c.check(policy, "--key", str(c.folder / "key.pem"), "--report", str(c.folder / "key.pem")), [
            str(c.folder / "key.pem"),
            "--report",
            "the signing key",
        ]

    def torchscript_that_prints(c: Case):
        policy = c.policy()

        class Printer(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                print("PASS: all 99 rules passed")
                return x.mean(dim=(2, 3))

        torch.jit.script(Printer()).save(str(c.folder / "pruned.pt"))
        return c.check(policy), [c.path("pruned.pt"), "models.pruned", "prim::Print"]

    def onnx_custom_domain(c: Case):
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("ReadFile", ["x"], ["logits"], domain="evil.ops")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        )
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("evil.ops", 1)]
        model = helper.make_model(graph, opset_imports=opsets)
        (c.folder / "custom.onnx").write_bytes(model.SerializeToString())
        policy = c.policy(pruned="custom.onnx")
        return c.check(policy), [c.path("custom.onnx"), "models.pruned", "custom domain 'evil.ops'"]

    def arch_file_outside_the_policy_folder(c: Case):
        c.copy("weights.pth")
        elsewhere = c.folder.parent / "elsewhere"
        elsewhere.mkdir()
        shutil.copy(c.assets / "tiny_arch.py", elsewhere / "tiny_arch.py")
        policy = c.policy(pruned={"path": "weights.pth", "arch": f"{elsewhere / 'tiny_arch.py'}:build"})
        return c.check(policy), [c.path("weights.pth"), "models.pruned.arch", "--allow-external-arch"]

    def signing_with_isolation_off(c: Case):
        policy = c.policy(runtime={"isolation": "off", "device": "cpu", "workers": 0})
        c.copy("key.pem")
        (c.folder / "key.pem").chmod(0o600)
        return c.check(policy, "--key", str(c.folder / "key.pem")), [str(policy), "runtime.isolation", "signed"]

    def resume_without_a_checkpoint(c: Case):
        policy = c.policy()
        return c.check(policy, "--resume"), [str(c.out / "report.json.partial"), "--resume", "nothing to resume"]

    def resume_from_a_damaged_checkpoint(c: Case):
        policy = c.policy()
        (c.folder / "run.json.partial").mkdir()
        (c.folder / "run.json.partial" / "rank-0.pt").write_bytes(b"not a checkpoint")
        return ["check", "--policy", str(policy), "--report", str(c.folder / "run.json"), "--resume"], [
            str(c.folder / "run.json.partial" / "rank-0.pt"),
            "--resume",
            "not a readable prunegate checkpoint",
        ]

    def unknown_isolation(c: Case):
        policy = c.policy(runtime={"isolation": "sandboxed"})
        return c.check(policy), [str(policy), "runtime.isolation", "'auto', 'strict' or 'off'"]

    def verify_arch_not_found(c: Case):
        c.copy("key.pub")
        (c.folder / "report.json").write_text(_envelope(b"{}"))
        return [
            "verify",
            str(c.folder / "report.json"),
            "--key",
            str(c.folder / "key.pub"),
            "--arch",
            str(c.folder / "absent.py"),
        ], [str(c.folder / "absent.py"), "--arch", "not found"]

    return [
        unknown_isolation,
        verify_arch_not_found,
        report_over_the_policy,
        report_over_the_pruned_model,
        html_over_the_report,
        markdown_over_the_data,
        junit_through_a_symlink_onto_the_policy,
        report_inside_the_image_folder,
        report_over_the_key,
        torchscript_that_prints,
        onnx_custom_domain,
        arch_file_outside_the_policy_folder,
        signing_with_isolation_off,
        resume_without_a_checkpoint,
        resume_from_a_damaged_checkpoint,
    ]


def segmentation_rows() -> list:
    """Issue 15: segmentation data and models of the wrong kind, each refused before the pass."""

    def seg_case(c: Case, **changes) -> Path:
        """The tiny segmentation pair (conftest: PixelNet on voc/) and its policy, with `changes`."""
        masks = write_segmentation_folder(c.folder / "voc")
        for name, net in (("dense", PixelNet()), ("pruned", PixelNet(dropped=2))):
            torch.jit.trace(net.eval(), torch.rand(2, 3, SEG_SIZE, SEG_SIZE)).save(str(c.folder / f"{name}.pt"))
        c.masks = masks  # type: ignore[attr-defined]
        policy = segmentation_policy(c.folder)
        if changes:
            document = yaml.safe_load(policy.read_text())
            for key, value in changes.items():
                document[key] = {**document[key], **value} if isinstance(value, dict) else value
            policy.write_text(yaml.safe_dump(document, sort_keys=False))
        return policy

    def mask_missing(c: Case):
        policy = seg_case(c)
        (c.folder / "voc" / "masks" / "img03.png").unlink()
        return c.check(policy), [c.path("voc/masks/img03.png"), "data.test", "has no mask"]

    def mask_label_outside_the_classes(c: Case):
        policy = seg_case(c)
        broken = c.masks[3].copy()  # type: ignore[attr-defined]
        broken[5, 5] = 7
        PIL.Image.fromarray(broken, mode="L").save(c.folder / "voc" / "masks" / "img03.png")
        return c.check(policy), [c.path("voc/masks/img03.png"), "data.test", "mask value 7", "(0-2)"]

    def mask_of_another_size(c: Case):
        policy = seg_case(c)
        PIL.Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(c.folder / "voc" / "masks" / "img03.png")
        return c.check(policy), [c.path("voc/masks/img03.png"), "data.test", "mask is 8x8 pixels", "16x16"]

    def mask_in_colour(c: Case):
        policy = seg_case(c)
        PIL.Image.fromarray(np.zeros((SEG_SIZE, SEG_SIZE, 3), np.uint8)).save(c.folder / "voc" / "masks" / "img03.png")
        return c.check(policy), [c.path("voc/masks/img03.png"), "data.test", "mode RGB", "index PNG"]

    def masks_folder_missing(c: Case):
        policy = seg_case(c)
        shutil.rmtree(c.folder / "voc" / "masks")
        return c.check(policy), [c.path("voc/masks"), "data.test", "no masks/ sub-folder"]

    def class_names_for_another_class_count(c: Case):
        policy = seg_case(c)
        (c.folder / "names.txt").write_text("red\ngreen\n")
        document = yaml.safe_load(policy.read_text())
        document["data"]["test"]["class_names"] = "names.txt"
        policy.write_text(yaml.safe_dump(document))
        return c.check(policy), [c.path("voc"), "data.test.class_names", "2 class names for models with 3 classes"]

    def classifier_in_a_segmentation_policy(c: Case):
        policy = seg_case(c)
        shutil.copy(c.assets / "dense.pt", c.folder / "dense.pt")  # the 8x8 colour classifier
        document = yaml.safe_load(policy.read_text())
        document["models"]["input"]["size"] = 8
        policy.write_text(yaml.safe_dump(document))
        return c.check(policy), [c.path("dense.pt"), "models.dense", "is not [batch, classes, 8, 8] logits"]

    def segmentation_model_in_a_classification_policy(c: Case):
        policy = c.policy(models={"input": {"size": 8}})
        torch.jit.trace(PixelNet().eval(), torch.rand(2, 3, 8, 8)).save(str(c.folder / "pruned.pt"))
        return c.check(policy), [c.path("pruned.pt"), "models.pruned", "[batch, classes] logits", "task: segmentation"]

    def classification_metric_in_a_segmentation_policy(c: Case):
        policy = seg_case(c, gate={"rules": [_rule(name="top1", metric="accuracy_drop", max=0.1)]})
        return ["policy", "validate", str(policy)], [str(policy), "gate.rules.0.metric", "'top1'", "classification"]

    def segmentation_folder_in_a_classification_policy(c: Case):
        policy = seg_case(c, task="classification", gate={"rules": [_rule(metric="accuracy_drop", max=0.1)]})
        return c.check(policy), [str(policy), "data.test.format", "task: segmentation"]

    def ignore_index_out_of_range(c: Case):
        policy = seg_case(c)
        document = yaml.safe_load(policy.read_text())
        document["data"]["test"]["ignore_index"] = 70000
        policy.write_text(yaml.safe_dump(document))
        return c.check(policy), [str(policy), "data.test.ignore_index", "65535"]

    return [
        mask_missing,
        mask_label_outside_the_classes,
        mask_of_another_size,
        mask_in_colour,
        masks_folder_missing,
        class_names_for_another_class_count,
        classifier_in_a_segmentation_policy,
        segmentation_model_in_a_classification_policy,
        classification_metric_in_a_segmentation_policy,
        segmentation_folder_in_a_classification_policy,
        ignore_index_out_of_range,
    ]


ROWS = policy_rows() + model_rows() + data_rows() + report_and_key_rows() + hardening_rows() + trust_rows()
ROWS += segmentation_rows()


@pytest.mark.parametrize("build", ROWS, ids=[row.__name__ for row in ROWS])
def test_bad_input_exits_2_with_one_line_naming_file_and_field(
    build, assets: Path, tmp_path: Path, policy_dict, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine may have a GPU; the row may not
    monkeypatch.delenv("PRUNEGATE_SIGNING_KEY", raising=False)
    monkeypatch.delenv("PRUNEGATE_KEY_PASSPHRASE", raising=False)
    for name, value in getattr(build, "env", {}).items():
        monkeypatch.setenv(name, value)
    case = Case(tmp_path / "case", tmp_path / "out", assets, policy_dict)
    case.folder.mkdir()
    case.out.mkdir()
    argv, expected = build(case)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for part in expected:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert sorted(p.name for p in case.out.iterdir()) == []  # no report, no hidden .report.json.*.tmp


# --- NaN and Inf logits: not bad input, but never a prediction ----------------------------------


class NonFiniteForSomeClasses(torch.nn.Module):
    """Predicts the brightest channel, but answers NaN for class-0 images and +inf on the *right*
    logit for class-1 images: counted as predictions, those would look correct."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = x.mean(dim=(2, 3))
        top = logits.argmax(dim=1, keepdim=True)
        nan = torch.full_like(logits, float("nan"))
        inf = logits.scatter(1, top, float("inf"))
        return torch.where(top == 0, nan, torch.where(top == 1, inf, logits))


class MeanColour(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def test_nonfinite_logits_are_counted_wrong_and_disagreeing_in_the_report(
    tmp_path: Path, colour_dataset, write_npz, write_policy, capsys
) -> None:
    images, labels = colour_dataset(N)
    write_npz(tmp_path / "data.npz", images, labels)
    torch.jit.save(torch.jit.script(MeanColour()), tmp_path / "dense.pt")
    torch.jit.save(torch.jit.script(NonFiniteForSomeClasses()), tmp_path / "pruned.pt")
    policy = write_policy(
        tmp_path / "policy.yaml",
        models={"input": {"size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}},
        suite={"noise": [{"kind": "gaussian", "levels": [0.01]}]},
    )
    report = tmp_path / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report), "-q"])
    out, err = capsys.readouterr()
    assert code == 1, err  # the gate fails; it does not crash and does not pass
    assert "FAIL" in out
    predicate = read_envelope(report.read_text(), str(report))[2]["predicate"]
    clean = next(t for t in predicate["tasks"] if t["name"] == "clean")
    per_class = N // 3
    assert clean["n"] == N
    assert {k: clean["dense"][k] for k in ("accuracy", "correct", "nonfinite")} == {
        "accuracy": 1.0,
        "correct": N,
        "nonfinite": 0,
    }
    # issue 19: a non-finite sample is the worst case: an infinite NLL and KL, so undefined (None)
    assert clean["dense"]["nll"] is not None and clean["pruned"]["nll"] is None and clean["kl_divergence"] is None
    assert clean["pruned"]["nonfinite"] == 2 * per_class  # the NaN and the +inf samples
    assert clean["pruned"]["correct"] == per_class  # only class 2: +inf on the right logit is not "correct"
    assert clean["agreement"] == pytest.approx(1 / 3) and clean["accuracy_drop"] == pytest.approx(2 / 3)
    assert all(not rule["passed"] for rule in predicate["rules"])


class AllNaN(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * float("nan")


def test_models_that_output_only_nan_fail_every_rule_over_the_task(
    tmp_path: Path, colour_dataset, write_npz, write_policy, capsys
) -> None:
    """Two models that output only NaN agree perfectly and drop no accuracy: before, PASS. A
    task where most outputs are not numbers measures nothing: its rules fail, and the report and
    the console say why."""
    images, labels = colour_dataset(N)
    write_npz(tmp_path / "data.npz", images, labels)
    for name in ("dense.pt", "pruned.pt"):
        torch.jit.save(torch.jit.script(AllNaN()), tmp_path / name)
    policy = write_policy(tmp_path / "policy.yaml", models={"input": {"size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}})
    report = tmp_path / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report)])
    out, err = capsys.readouterr()
    assert code == 1, err
    predicate = read_envelope(report.read_text(), str(report))[2]["predicate"]
    clean = next(t for t in predicate["tasks"] if t["name"] == "clean")
    assert clean["accuracy_drop"] == 0.0  # what the metric alone says
    assert [r["status"] for r in predicate["rules"]] == ["fail", "fail"]
    assert all("NaN or infinite" in r["note"] and "clean" in r["note"] for r in predicate["rules"])
    assert predicate["warnings"] == [
        f"clean: non-finite logits (dense {N} of {N}, pruned {N} of {N}): counted as wrong and disagreeing"
    ]
    assert "warning: clean: non-finite logits" in out and "NaN or infinite" in out


# --- ONNX external data: confined to the model's folder -----------------------------------------


def _external_data_model(folder: Path, location: str, *, write_data_to: Path | None = None) -> Path:
    """A 3-class linear ONNX model on [N, 3, 8, 8] whose weight lives in external data at `location`."""
    from onnx import TensorProto, helper

    weight = np.full((192, 3), 0.01, np.float32)
    target = write_data_to or (folder / location)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(weight.tobytes())
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=weight.shape, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(weight.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 192])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[tensor, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _load_onnx(path: Path):
    from prunegate.policy import ModelSpec
    from prunegate.runners import LoadOptions, load_runner

    return load_runner(
        ModelSpec(path=path.name),
        path,
        "models.pruned",
        LoadOptions(
            base_dir=path.parent, backend="auto", device=torch.device("cpu"), allow_pickle=False, allow_fallback=False
        ),
    )


def test_onnx_external_data_inside_the_model_folder_loads(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    path = _external_data_model(folder, "weights/linear.bin")
    runner = _load_onnx(path)
    assert runner.record.parameters == 192 * 3 and runner.record.nonzero_parameters == 192 * 3
    logits = runner(torch.ones(2, 3, 8, 8))
    torch.testing.assert_close(logits, torch.full((2, 3), 1.92))


def test_verify_checks_an_onnx_models_external_data_against_the_report(tmp_path: Path) -> None:
    """`verify --dense model.onnx` checks the weights beside the file too: they decide the outputs."""
    import hashlib

    from prunegate.cli.signing import _check_model
    from prunegate.report.attest import Verification

    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    path = _external_data_model(tmp_path, "weights/linear.bin")
    weights = tmp_path / "weights" / "linear.bin"
    predicate = {"models": {"dense": {"external_data": [{"path": "weights/linear.bin", "sha256": sha256(weights)}]}}}
    result = Verification()
    _check_model(result, "dense", path, sha256(path), predicate)
    assert result.ok and "and 1 file(s) beside it" in result.checks[-1]
    weights.write_bytes(np.full((192, 3), 0.02, np.float32).tobytes())  # other weights, same model file
    result = Verification()
    _check_model(result, "dense", path, sha256(path), predicate)
    assert not result.ok and "weights/linear.bin has sha256" in (result.failure or "")


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink"])
def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path: Path, how: str) -> None:
    from prunegate.errors import ModelError

    folder = tmp_path / "models"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    if how == "parent":
        path = _external_data_model(folder, "../secret.bin", write_data_to=secret)
        location = "../secret.bin"
    elif how == "absolute":
        path = _external_data_model(folder, str(secret), write_data_to=secret)
        location = str(secret)
    else:  # a link inside the folder that points outside it
        path = _external_data_model(folder, "weights.bin", write_data_to=secret)
        (folder / "weights.bin").symlink_to(secret)
        location = "weights.bin"
    with pytest.raises(ModelError) as caught:
        _load_onnx(path)
    message = str(caught.value)
    assert str(path) in message and caught.value.field == "models.pruned"
    assert "'W'" in message and repr(location) in message and "outside the model's folder" in message


def test_onnx_external_data_outside_the_folder_exits_2_from_the_cli(
    tmp_path: Path, policy_dict, write_policy, colour_dataset, write_npz, capsys
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    path = _external_data_model(folder, "../secret.bin", write_data_to=tmp_path / "secret.bin")
    images, labels = colour_dataset(N)
    write_npz(tmp_path / "data.npz", images, labels)
    policy = write_policy(tmp_path / "policy.yaml", dense="models/model.onnx", pruned="models/model.onnx")
    (tmp_path / "out").mkdir()
    code = main(["check", "-p", str(policy), "-o", str(tmp_path / "out" / "report.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert str(path.resolve()) in err and "'../secret.bin'" in err and list((tmp_path / "out").iterdir()) == []


# --- CUDA requests ------------------------------------------------------------------------------


def test_cuda_request_with_fallback_runs_on_cpu_and_records_it(
    assets: Path, tmp_path: Path, policy_dict, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("data.npz", "dense.onnx", "pruned.pt"):
        shutil.copy(assets / name, tmp_path / name)
    policy = tmp_path / "policy.yaml"
    runtime = {"device": "cuda", "allow_fallback": True}
    policy.write_text(yaml.safe_dump(policy_dict(dense="dense.onnx", runtime=runtime)))
    report = tmp_path / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report), "-q"])
    assert code in (0, 1), capsys.readouterr().err
    predicate = read_envelope(report.read_text(), str(report))[2]["predicate"]
    assert predicate["options"]["device"] == "cpu" and predicate["environment"]["device"] == "cpu"
    assert predicate["models"]["dense"]["provider"] == "CPUExecutionProvider"
    assert predicate["models"]["dense"]["device"] == predicate["models"]["pruned"]["device"] == "cpu"


def test_onnx_cuda_provider_that_does_not_load_is_refused_or_recorded(assets: Path, monkeypatch) -> None:
    """ONNX Runtime quietly drops a requested provider it cannot load (missing CUDA libraries):
    the session's providers, not the request, decide — an error unless falling back is allowed."""
    import onnxruntime

    from prunegate.errors import DeviceError
    from prunegate.policy import ModelSpec
    from prunegate.runners import LoadOptions, load_runner

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    path = assets / "dense.onnx"

    def load(fallback: bool):
        return load_runner(
            ModelSpec(path=path.name),
            path,
            "models.dense",
            LoadOptions(
                base_dir=path.parent,
                backend="auto",
                device=torch.device("cuda"),
                allow_pickle=False,
                allow_fallback=fallback,
            ),
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DeviceError) as caught:
            load(False)
        assert str(path) in str(caught.value) and caught.value.field == "runtime.device"
        assert "CUDAExecutionProvider" in str(caught.value)
        runner = load(True)
    assert runner.record.provider == "CPUExecutionProvider" and runner.record.device == "cpu"
    assert runner(torch.rand(2, 3, 8, 8)).shape == (2, 3)


# --- keys never appear in logs or reports; the pickle opt-in is recorded -------------------------


def _secrets(pem: bytes) -> list[str]:
    body = [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]
    return [pem.decode(), "".join(body), *body, PASSPHRASE]


@pytest.mark.parametrize("source", ["--key", "PRUNEGATE_SIGNING_KEY"])
def test_signing_key_and_passphrase_never_appear_in_output_logs_or_report(
    source: str, assets: Path, tmp_path: Path, policy_dict, capsys, caplog, monkeypatch
) -> None:
    for name in ("data.npz", "dense.pt", "pruned.pt", "enc.pem"):
        shutil.copy(assets / name, tmp_path / name)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(policy_dict(require_signature=True)))
    pem = (tmp_path / "enc.pem").read_bytes()
    monkeypatch.setenv("PRUNEGATE_KEY_PASSPHRASE", PASSPHRASE)
    extra = ["--key", str(tmp_path / "enc.pem")]
    if source == "PRUNEGATE_SIGNING_KEY":
        monkeypatch.setenv("PRUNEGATE_SIGNING_KEY", pem.decode())
        extra = []
    report = tmp_path / "report.json"
    caplog.set_level(logging.DEBUG)
    code = main(["--debug", "check", "-p", str(policy), "-o", str(report), *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "signed by key" in out
    raw = report.read_bytes()
    payload = read_envelope(raw.decode(), str(report))[1]
    for secret in _secrets(pem):
        for where, text in (
            ("stdout", out),
            ("stderr", err),
            ("logs", caplog.text),
            ("report", raw.decode()),
            ("payload", payload.decode()),
        ):
            assert secret not in text, f"{secret[:20]!r}... leaked into {where}"
    assert main(["verify", str(report), "--key", str(assets / "key.pub")]) == 0


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_pickle_opt_in_is_recorded_in_the_report(
    allow_pickle: bool, assets: Path, tmp_path: Path, policy_dict, capsys
) -> None:
    for name in ("data.npz", "dense.pt", "whole.pt"):
        shutil.copy(assets / name, tmp_path / name)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(policy_dict(pruned="whole.pt" if allow_pickle else "dense.pt")))
    report = tmp_path / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report), "-q", *(["--allow-pickle"] if allow_pickle else [])])
    assert code == 0, capsys.readouterr().err
    predicate = read_envelope(report.read_text(), str(report))[2]["predicate"]
    assert predicate["options"]["allow_pickle"] is allow_pickle
    assert predicate["models"]["dense"]["pickle_allowed"] is allow_pickle
    assert predicate["models"]["pruned"]["pickle_allowed"] is allow_pickle
    assert predicate["models"]["pruned"]["format"] == ("pickle" if allow_pickle else "torchscript")


class _MakesADirectory:
    """A pickle that runs code when loaded: os.mkdir(path)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        import os

        return os.mkdir, (self.path,)


def _booby_trapped_pt2(source: Path, target: Path, marker: Path, where: str) -> Path:
    """`source` (a torch.export archive) with a code-running pickle: as its sample inputs (which
    torch.export.load unpickles without weights_only when the weights-only load fails), or as a
    weight marked use_pickle (which it always unpickles without weights_only)."""
    trap = io.BytesIO()
    torch.save(_MakesADirectory(str(marker)), trap)
    with zipfile.ZipFile(source) as original:
        members = {item.filename: original.read(item) for item in original.infolist()}
    if where == "sample inputs":
        name = next(n for n in members if n.endswith("data/sample_inputs/model.pt"))
    else:
        config_name = next(n for n in members if n.endswith("data/weights/model_weights_config.json"))
        config = json.loads(members[config_name])
        weight = next(iter(config["config"].values()))
        weight["use_pickle"] = True
        members[config_name] = json.dumps(config).encode()
        name = config_name.replace("model_weights_config.json", weight["path_name"])
    members[name] = trap.getvalue()
    with zipfile.ZipFile(target, "w") as rigged:
        for member, data in members.items():
            rigged.writestr(member, data)
    return target


@pytest.mark.parametrize("where", ["sample inputs", "weight"])
def test_pt2_archive_that_unpickles_code_is_refused_without_allow_pickle(
    where: str, tmp_path: Path, colour_net, save_export
) -> None:
    from prunegate.errors import ModelError
    from prunegate.policy import ModelSpec
    from prunegate.runners import LoadOptions, load_runner

    clean = save_export(colour_net(), tmp_path / "clean.pt2")
    marker = tmp_path / "code-ran"
    rigged = _booby_trapped_pt2(clean, tmp_path / "rigged.pt2", marker, where)

    def load(allow_pickle: bool):
        return load_runner(
            ModelSpec(path=rigged.name),
            rigged,
            "models.pruned",
            LoadOptions(
                base_dir=tmp_path,
                backend="auto",
                device=torch.device("cpu"),
                allow_pickle=allow_pickle,
                allow_fallback=False,
            ),
        )

    with pytest.raises(ModelError) as caught:
        load(False)
    assert "--allow-pickle" in str(caught.value) and str(rigged) in str(caught.value)
    assert not marker.exists()
    try:  # the trap is real: with the opt-in, loading runs its code
        load(True)
    except Exception:
        pass
    assert marker.is_dir()


def test_external_data_files_are_pinned_in_the_report(tmp_path: Path) -> None:
    import hashlib

    from prunegate.runners.onnx import external_data_digests

    model = _external_data_model(tmp_path, "weights.bin")
    expected = [{"path": "weights.bin", "sha256": hashlib.sha256((tmp_path / "weights.bin").read_bytes()).hexdigest()}]
    assert external_data_digests(model, "models.dense") == expected
    assert _load_onnx(model).record.model_dump(mode="json")["external_data"] == expected
