from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from prunegate.cli import main
from prunegate.report.attest import PAYLOAD_TYPE, read_envelope
from prunegate.report.schema import PREDICATE_TYPE


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


def statement_of(report: Path) -> dict:
    envelope, _, statement = read_envelope(report.read_text(), str(report))
    assert envelope["payloadType"] == PAYLOAD_TYPE
    return statement


# --- policy commands --------------------------------------------------------------------------


def test_policy_init_writes_a_template_that_validates(tmp_path: Path, capsys) -> None:
    target = tmp_path / "prunegate.yaml"
    code, out, _ = run(capsys, "policy", "init", target)
    assert code == 0 and target.is_file() and str(target) in out
    code, out, _ = run(capsys, "policy", "validate", target)
    assert code == 0 and "valid policy" in out


def test_policy_init_does_not_overwrite_without_force(tmp_path: Path, capsys) -> None:
    target = tmp_path / "prunegate.yaml"
    target.write_text("mine")
    code, _, err = run(capsys, "policy", "init", target)
    assert code == 2 and target.read_text() == "mine"
    assert len(error_lines(err)) == 1 and str(target) in err
    assert run(capsys, "policy", "init", "--force", target)[0] == 0 and target.read_text() != "mine"


def test_policy_validate_reports_a_misspelled_key(tmp_path: Path, capsys, policy_dict, write_policy) -> None:
    data = policy_dict()
    data["gate"]["rules"][0]["maxx"] = data["gate"]["rules"][0].pop("max")
    path = write_policy(tmp_path / "policy.yaml", data)
    code, _, err = run(capsys, "policy", "validate", path)
    assert code == 2
    [line] = error_lines(err)
    assert str(path) in line and "gate.rules.0.maxx" in line


def test_policy_schema_prints_json(capsys) -> None:
    code, out, _ = run(capsys, "policy", "schema")
    schema = json.loads(out)
    assert code == 0 and {"models", "data", "gate"} <= set(schema["properties"])


def test_version_and_help(capsys) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("prunegate ")
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "Exit codes" in out


# --- check ------------------------------------------------------------------------------------


def test_check_passes_identical_models_and_writes_a_report(tmp_path: Path, capsys, gate_case) -> None:
    policy = gate_case("same", suite={"seed": 3, "noise": [{"kind": "uniform", "levels": [0.1]}]})
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()
    code, out, err = run(capsys, "check", "--policy", policy, "--report", report)
    assert code == 0, err
    assert "PASS" in out and str(report) in out
    statement = statement_of(report)
    assert statement["predicateType"] == PREDICATE_TYPE
    predicate = statement["predicate"]
    assert predicate["verdict"] == "pass" and predicate["seed"] == 3
    assert predicate["policy"]["name"] == "tiny"
    assert predicate["policy"]["sha256"] == hashlib.sha256(policy.read_bytes()).hexdigest()
    for role in ("dense", "pruned"):
        model = predicate["models"][role]
        path = Path(model["path"])
        assert path.name == f"{role}.pt" and model["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert model["format"] == "torchscript" and model["parameters"] > 0
        assert model["nonzero_parameters"] <= model["parameters"]
    subjects = {s["annotations"]["role"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subjects == {role: predicate["models"][role]["sha256"] for role in ("dense", "pruned")}
    assert [t["name"] for t in predicate["tasks"]] == ["clean", "noise/uniform/0.1"]
    for task in predicate["tasks"]:
        assert task["n"] == 12
        assert task["dense"]["accuracy"] == task["pruned"]["accuracy"]
        assert task["accuracy_drop"] == 0.0 and task["agreement"] == 1.0
    assert predicate["tasks"][0]["dense"]["accuracy"] == 1.0
    for rule in predicate["rules"]:
        assert {"name", "passed", "value", "threshold"} <= set(rule) and rule["passed"] is True
    assert {"python", "torch", "device"} <= set(predicate["environment"])
    assert predicate["data"][0]["used"] == 12 and len(predicate["data"][0]["sha256"]) == 64


def test_check_fails_a_broken_pruned_model(tmp_path: Path, capsys, gate_case) -> None:
    policy = gate_case("zero")
    report = tmp_path / "report.json"
    code, out, err = run(capsys, "check", "--policy", policy, "-o", report)
    assert code == 1, err
    assert "FAIL" in out
    predicate = statement_of(report)["predicate"]
    assert predicate["verdict"] == "fail"
    assert predicate["models"]["pruned"]["nonzero_parameters"] == 0
    assert all(not rule["passed"] for rule in predicate["rules"])
    assert predicate["tasks"][0]["accuracy_drop"] == pytest.approx(2 / 3)


def test_check_at_a_confidence_level_reports_undecided_rules(tmp_path: Path, capsys, gate_case) -> None:
    # Identical models on 12 images: the drop is 0 but its 95% interval is wide, so a 1 pp
    # tolerance can be neither confirmed nor refuted: undecided, which does not pass.
    policy = gate_case("same", n=12, gate={"confidence": 0.95, "rules": [
        {"name": "clean drop", "tasks": "clean", "metric": "accuracy_drop", "max": 0.01},
        {"name": "clean flips", "tasks": "clean", "metric": "newly_wrong", "max": 0.5}]})
    report = tmp_path / "report.json"
    code, out, err = run(capsys, "check", "--policy", policy, "-o", report)
    assert code == 1, err
    assert "UNDECIDED" in out and "would likely decide it" in out
    predicate = statement_of(report)["predicate"]
    drop = predicate["rules"][0]
    assert drop["status"] == "undecided" and drop["confidence"] == 0.95 and drop["value"] == 0.0
    assert drop["bound"] == drop["interval"]["high"] > 0.01 and drop["samples_needed"] > 12
    assert predicate["confidence"] == 0.95
    task = predicate["tasks"][0]
    assert task["intervals"]["accuracy_drop"]["method"] == "newcombe"
    assert task["flips"] == {"newly_wrong": 0, "newly_right": 0} and task["mcnemar_p"] == 1.0
    assert task["class_recall"]["n"] == [4, 4, 4]


def test_check_overrides_from_the_command_line(tmp_path: Path, capsys, gate_case) -> None:
    policy = gate_case("zero")
    report = tmp_path / "report.json"
    # --pruned points at the dense model: identical models, so the gate passes.
    code, out, err = run(capsys, "check", "-p", policy, "-o", report, "--pruned", tmp_path / "dense.pt",
                         "--limit", "6", "--batch-size", "4", "--quiet")
    assert code == 0, err
    assert "PASS" in out and "Tasks" not in out
    predicate = statement_of(report)["predicate"]
    assert predicate["tasks"][0]["n"] == 6 and predicate["options"]["batch_size"] == 4
    assert predicate["policy"]["document"]["data"]["limit"] == 6


def bad_input(tmp_path: Path, capsys, policy: Path, *extra: str) -> str:
    """Run check expecting exit 2; return the one error line; no report may be written."""
    report = tmp_path / "report.json"
    code, _, err = run(capsys, "check", "--policy", policy, "--report", report, *extra)
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert not report.exists()
    return lines[0]


def test_check_misspelled_policy_key(tmp_path: Path, capsys, gate_case) -> None:
    policy = gate_case()
    data = yaml.safe_load(policy.read_text())
    data["models"]["input"]["szie"] = data["models"]["input"].pop("size")
    policy.write_text(yaml.safe_dump(data))
    line = bad_input(tmp_path, capsys, policy)
    assert str(policy) in line and "models.input.szie" in line


def test_check_missing_policy_file(tmp_path: Path, capsys) -> None:
    line = bad_input(tmp_path, capsys, tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in line


def test_check_missing_model_file(tmp_path: Path, capsys, gate_case) -> None:
    policy = gate_case()
    (tmp_path / "pruned.pt").unlink()
    line = bad_input(tmp_path, capsys, policy)
    assert str(tmp_path / "pruned.pt") in line and "models.pruned" in line


def test_check_missing_data_folder(tmp_path: Path, capsys, gate_case) -> None:
    policy = gate_case(data={"test": {"format": "imagefolder", "path": "images"}})
    line = bad_input(tmp_path, capsys, policy)
    assert str(tmp_path / "images") in line and "data.test" in line


def test_check_truncated_model(tmp_path: Path, capsys, gate_case) -> None:
    policy = gate_case()
    dense = tmp_path / "dense.pt"
    dense.write_bytes(dense.read_bytes()[:200])
    line = bad_input(tmp_path, capsys, policy)
    assert str(dense) in line and "models.dense" in line


def test_check_model_output_does_not_match_the_labels(tmp_path: Path, capsys, gate_case, write_npz,
                                                      colour_dataset) -> None:
    policy = gate_case()
    images, _ = colour_dataset(12)
    write_npz(tmp_path / "data.npz", images, np.arange(12) % 5)  # labels 0-4, but the models have 3 classes
    line = bad_input(tmp_path, capsys, policy)
    assert str(tmp_path / "data.npz") in line and "data.test" in line and "3 classes" in line


def test_check_models_disagree_on_the_class_count(tmp_path: Path, capsys, gate_case, random_net,
                                                  save_torchscript) -> None:
    policy = gate_case()
    save_torchscript(random_net(classes=4), tmp_path / "pruned.pt")
    line = bad_input(tmp_path, capsys, policy)
    assert str(tmp_path / "pruned.pt") in line and "models.pruned" in line


def test_check_model_for_another_input_size(tmp_path: Path, capsys, gate_case, write_policy) -> None:
    gate_case()
    policy = write_policy(tmp_path / "policy.yaml", size=16)
    line = bad_input(tmp_path, capsys, policy)
    assert "models.dense" in line and str(tmp_path / "dense.pt") in line and "16" in line


def test_check_unknown_option(tmp_path: Path, capsys, gate_case) -> None:
    line = bad_input(tmp_path, capsys, gate_case(), "--frobnicate")
    assert "--frobnicate" in line


def test_check_bad_option_value(tmp_path: Path, capsys, gate_case) -> None:
    line = bad_input(tmp_path, capsys, gate_case(), "--batch-size", "0")
    assert "--batch-size" in line


def test_check_cuda_without_cuda_is_bad_input(tmp_path: Path, capsys, gate_case, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = bad_input(tmp_path, capsys, gate_case(), "--device", "cuda")
    assert "runtime.device" in line


def test_check_pickled_model_needs_allow_pickle(tmp_path: Path, capsys, gate_case, colour_net) -> None:
    import torch

    policy = gate_case()
    torch.save(colour_net(), tmp_path / "pruned.pt")  # a whole pickled module
    line = bad_input(tmp_path, capsys, policy)
    assert "--allow-pickle" in line and str(tmp_path / "pruned.pt") in line
    report = tmp_path / "report.json"
    code, _, err = run(capsys, "check", "-p", policy, "-o", report, "--allow-pickle")
    assert code == 0, err
    predicate = statement_of(report)["predicate"]
    assert predicate["options"]["allow_pickle"] is True
    assert predicate["models"]["pruned"]["format"] == "pickle" and predicate["models"]["pruned"]["pickle_allowed"]


def test_check_onnx_dense_against_torchscript_pruned(tmp_path: Path, capsys, gate_case, colour_net, save_onnx) -> None:
    gate_case()
    save_onnx(colour_net(), tmp_path / "dense.onnx")
    policy = gate_case(dense="dense.onnx")
    report = tmp_path / "report.json"
    code, _, err = run(capsys, "check", "-p", policy, "-o", report)
    assert code == 0, err
    models = statement_of(report)["predicate"]["models"]
    assert models["dense"]["format"] == "onnx" and models["dense"]["provider"] == "CPUExecutionProvider"
    assert models["dense"]["parameters"] == models["pruned"]["parameters"]


def test_progress_lines_for_logs_give_percent_and_eta(capsys) -> None:
    from rich.progress import Progress

    from prunegate.cli import _RichProgress

    with Progress(disable=True) as bar:
        progress = _RichProgress(bar, lines=True, every=0.0)
        progress.start(200)
        progress.advance(50)
    err = capsys.readouterr().err
    assert "progress: 25% (50/200 evaluations)" in err and "left" in err


def test_ctrl_c_stops_cleanly_and_writes_nothing(tmp_path: Path, gate_case) -> None:
    import os
    import signal
    import subprocess
    import sys

    # enough work to be interrupted mid-pass: 400 images x 3 noise levels x 20 draws, batch 4
    policy = gate_case("same", n=400, suite={"noise": [{"kind": "gaussian", "levels": [0.1, 0.2, 0.3], "draws": 20}]},
                       runtime={"batch_size": 4})
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()
    env = {**os.environ, "PRUNEGATE_PROGRESS_SECONDS": "0.5"}
    process = subprocess.Popen([sys.executable, "-m", "prunegate", "check", "--policy", str(policy), "-o", str(report)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = process.stderr.readline()  # the pass has started once a progress line appears
    while first and not first.startswith("progress:"):
        first = process.stderr.readline()
    assert first.startswith("progress:") and process.poll() is None, "finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted: nothing was written" in err and "Traceback" not in err
    assert list(report.parent.iterdir()) == []


def test_check_with_frost_photographs_records_them_in_the_report(tmp_path: Path, capsys, gate_case) -> None:
    """suite.corruptions.frost_textures: frost overlays those photographs, and the report's data
    names the folder with a digest over its files."""
    from PIL import Image

    policy = gate_case("same", suite={"corruptions": {"preset": "cifar10-c", "names": ["frost"], "severities": [1],
                                                      "frost_textures": "frost"}})
    folder = policy.parent / "frost"
    folder.mkdir()
    for i, colour in enumerate([(200, 210, 230), (150, 170, 200)]):
        Image.new("RGB", (300 + 20 * i, 240), colour).save(folder / f"frost{i}.png")
    report = tmp_path / "report.json"
    code, _, err = run(capsys, "check", "--policy", policy, "--report", report)
    assert code == 0, err
    data = {d["name"]: d for d in statement_of(report)["predicate"]["data"]}
    lines = "".join(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in sorted(folder.iterdir()))
    assert data["frost_textures"]["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert data["frost_textures"]["size"] == 2 and data["frost_textures"]["path"] == str(folder)
    from prunegate.shifts import textures

    assert textures._user_textures is None  # the run's photographs do not outlive it
