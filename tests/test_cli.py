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
    policy = gate_case(
        "same",
        n=12,
        gate={
            "confidence": 0.95,
            "rules": [
                {"name": "clean drop", "tasks": "clean", "metric": "accuracy_drop", "max": 0.01},
                {"name": "clean flips", "tasks": "clean", "metric": "newly_wrong", "max": 0.5},
            ],
        },
    )
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
    code, out, err = run(
        capsys,
        "check",
        "-p",
        policy,
        "-o",
        report,
        "--pruned",
        tmp_path / "dense.pt",
        "--limit",
        "6",
        "--batch-size",
        "4",
        "--quiet",
    )
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


def test_check_model_output_does_not_match_the_labels(
    tmp_path: Path, capsys, gate_case, write_npz, colour_dataset
) -> None:
    policy = gate_case()
    images, _ = colour_dataset(12)
    write_npz(tmp_path / "data.npz", images, np.arange(12) % 5)  # labels 0-4, but the models have 3 classes
    line = bad_input(tmp_path, capsys, policy)
    assert str(tmp_path / "data.npz") in line and "data.test" in line and "3 classes" in line


def test_check_models_disagree_on_the_class_count(
    tmp_path: Path, capsys, gate_case, random_net, save_torchscript
) -> None:
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

    from prunegate.cli import RichProgress

    with Progress(disable=True) as bar:
        progress = RichProgress(bar, lines=True, every=0.0)
        progress.start(200)
        progress.advance(50)
    err = capsys.readouterr().err
    assert "progress: 25% (50/200 task-images)" in err and "left" in err


def _start_and_stop(policy: Path, report: Path, signum: int, *extra: str) -> tuple[int, str]:
    """Start `check` in a process of its own, send `signum` once the pass has started."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PRUNEGATE_PROGRESS_SECONDS": "0.5", "PRUNEGATE_CHECKPOINT_SECONDS": "0.5"}
    process = subprocess.Popen(
        [sys.executable, "-m", "prunegate", "check", "--policy", str(policy), "-o", str(report), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A test run started in the background (`make test &`) inherits SIGINT ignored, and so would
        # the check (Python keeps an ignored SIGINT ignored): give it Ctrl-C as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr is not None
    seen = 0
    for line in process.stderr:  # the pass has started once progress lines appear
        seen += line.startswith("progress:")
        if seen >= 2:
            break
    assert seen >= 2 and process.poll() is None, "finished before it could be stopped"
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_stopped_check_exits_cleanly_keeps_its_progress_and_resumes_to_the_same_report(
    how, tmp_path: Path, capsys, gate_case
) -> None:
    """Ctrl-C (130) and SIGTERM (143) stop cleanly: no report, a checkpoint beside where it would
    be; `--resume` continues to the predicate an uninterrupted run gives (timing apart)."""
    import signal

    # enough work to be stopped mid-pass: 200 images x 3 noise levels x 12 draws, batch 4
    policy = gate_case(
        "same",
        n=200,
        suite={"noise": [{"kind": "gaussian", "levels": [0.1, 0.2, 0.3], "draws": 12}]},
        runtime={"batch_size": 4, "backend": "torch"},
    )
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()
    code, err = _start_and_stop(policy, report, getattr(signal, how))
    assert code == (130 if how == "SIGINT" else 143), err
    assert ("interrupted" if how == "SIGINT" else "terminated (SIGTERM)") in err and "Traceback" not in err
    assert "--resume" in err
    assert [p.name for p in report.parent.iterdir()] == ["report.json.partial"]
    assert [p.name for p in (report.parent / "report.json.partial").iterdir()] == ["rank-0.pt"]

    code, _, err = run(capsys, "check", "--policy", policy, "-o", report, "--resume", "--batch-size", "7")
    assert code == 0, err
    assert [p.name for p in report.parent.iterdir()] == ["report.json"]  # the checkpoint has served
    fresh = tmp_path / "fresh.json"
    assert run(capsys, "check", "--policy", policy, "-o", fresh)[0] == 0
    resumed, whole = statement_of(report)["predicate"], statement_of(fresh)["predicate"]
    for predicate in (resumed, whole):
        predicate.pop("timing")
        predicate["options"].pop("batch_size")
        predicate["policy"]["document"]["runtime"].pop("batch_size")
        predicate["policy"].pop("overrides")
    assert resumed == whole


def test_resume_is_refused_without_a_checkpoint_or_for_another_run(
    tmp_path: Path, capsys, gate_case, colour_net, save_torchscript
) -> None:
    import signal

    policy = gate_case(
        "same",
        n=200,
        suite={"noise": [{"kind": "gaussian", "levels": [0.1, 0.2, 0.3], "draws": 12}]},
        runtime={"batch_size": 4, "backend": "torch"},
    )
    report = tmp_path / "report.json"
    code, _, err = run(capsys, "check", "--policy", policy, "-o", report, "--resume")
    assert code == 2 and "nothing to resume" in err and "--resume" in err
    assert _start_and_stop(policy, report, signal.SIGINT)[0] == 130
    save_torchscript(colour_net(jitter=0.2, seed=5), policy.parent / "pruned.pt")  # another pruned model
    code, _, err = run(capsys, "check", "--policy", policy, "-o", report, "--resume")
    assert code == 2, err
    [line] = error_lines(err)
    assert "models.pruned.0" in line and "refusing to resume" in line and "rank-0.pt" in line
    assert not report.exists()


def test_check_with_frost_photographs_records_them_in_the_report(tmp_path: Path, capsys, gate_case) -> None:
    """suite.corruptions.frost_textures: frost overlays those photographs, and the report's data
    names the folder with a digest over its files."""
    from PIL import Image

    policy = gate_case(
        "same",
        suite={
            "corruptions": {"preset": "cifar10-c", "names": ["frost"], "severities": [1], "frost_textures": "frost"}
        },
    )
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
    # nothing process-wide remembers the run's photographs (shifts take their assets per call)
    from prunegate.shifts import textures

    assert not [name for name in vars(textures) if name.startswith("_user_textures")]


# --- every message is one line: control characters escaped (issue 13) ---------------------------


def test_a_file_name_with_control_characters_makes_one_escaped_error_line(tmp_path: Path, capsys) -> None:
    name = "p\x1b[2J\rolicy\u202e\x85\nerror: forged.yaml"
    code, out, err = run(capsys, "policy", "validate", tmp_path / name)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"error: {tmp_path}/p\\x1b[2J\\rolicy\\u202e\\x85\\nerror: forged.yaml: policy file not found"
    ]


def test_usage_errors_are_escaped_too(capsys) -> None:
    code, _, err = run(capsys, "check", "--bogus\x1b]0;title\x07")
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "\x1b" not in err and "\x07" not in err and "\\x1b]0;title\\x07" in err


def test_an_internal_error_is_one_escaped_line(tmp_path: Path, capsys, monkeypatch) -> None:
    import prunegate.policy

    def broken(path):
        raise RuntimeError("boom\x1b[2J\u2028second\nthird")

    monkeypatch.setattr(prunegate.policy, "load_policy", broken)
    code, _, err = run(capsys, "policy", "validate", tmp_path / "p.yaml")
    assert code == 3 and len(err.splitlines()) == 1  # (the first line of the message: \u2028 ends it)
    assert err.startswith("internal error: RuntimeError: boom\\x1b[2J (re-run with --debug")


def test_the_printable_helper_escapes_what_a_terminal_would_act_on() -> None:
    from prunegate.errors import printable

    assert printable("plain/ünïcode name.png") == "plain/ünïcode name.png"
    assert printable("a\nb\r\tc\x00\x1b\x7f\x9b") == "a\\nb\\r\\tc\\x00\\x1b\\x7f\\x9b"
    assert printable("\u2028\u2029\u202a\u202e\u2066\u2069") == "\\u2028\\u2029\\u202a\\u202e\\u2066\\u2069"
    assert printable("\udcff") == "\\udcff"  # a name that is not UTF-8 (surrogate-escaped by the OS)
    for text in ("a\nb\x1b[2J", "\\x1b", "\u202e"):
        assert printable(printable(text)) == printable(text)
        assert len(printable(text).splitlines()) == 1


def test_a_zero_byte_pt2_model_prints_only_the_one_error_line(tmp_path: Path, gate_case, write_policy) -> None:
    """torch.export.load logs a warning with a 12-line traceback (logger torch.export, its own
    handler on stderr) before it raises: only prunegate's error line may reach the user."""
    import subprocess
    import sys

    policy = write_policy(gate_case().parent / "policy.yaml", pruned="empty.pt2")
    (tmp_path / "empty.pt2").write_bytes(b"")
    result = subprocess.run(
        [sys.executable, "-m", "prunegate", "check", "-p", str(policy), "-o", str(tmp_path / "report.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert str(tmp_path / "empty.pt2") in lines[0] and "models.pruned" in lines[0]


def test_torch_export_load_logs_nothing_for_a_damaged_archive(tmp_path: Path) -> None:
    import logging

    from prunegate.errors import ModelError
    from prunegate.runners.torch import load_torch_module

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    path = tmp_path / "empty.pt2"
    path.write_bytes(b"")
    handler, logger = Collect(), logging.getLogger("torch.export")
    logger.addHandler(handler)
    prunegate_logger = logging.getLogger("prunegate")
    level = prunegate_logger.level
    prunegate_logger.setLevel(logging.WARNING)
    try:
        with pytest.raises(ModelError, match="truncated or corrupt"):
            load_torch_module(path, "models.pruned", None, tmp_path, False)
        assert records == []
        prunegate_logger.setLevel(logging.DEBUG)  # --debug: torch's own account is shown
        with pytest.raises(ModelError):
            load_torch_module(path, "models.pruned", None, tmp_path, False)
        assert records and "deserializing" in records[0].getMessage()
    finally:
        logger.removeHandler(handler)
        prunegate_logger.setLevel(level)
    assert logger.level == logging.NOTSET  # restored


def test_a_stopped_sequential_check_resumes_to_the_same_looks(tmp_path: Path, capsys, gate_case) -> None:
    """gate.sequential: `--resume` replays the images already done to the confidence sequences,
    in the seeded order, so the looks, the images used and the report are an uninterrupted run's."""
    import signal

    policy = gate_case(
        "same",
        n=200,
        suite={"noise": [{"kind": "gaussian", "levels": [0.1, 0.2, 0.3], "draws": 12}]},
        # agreement >= 1 is never decided on an interval: the pass runs to the end of the data
        gate={
            "confidence": 0.95,
            "sequential": True,
            "min_samples": 8,
            "rules": [{"name": "agree", "tasks": "*", "metric": "agreement", "min": 1.0}],
        },  # fmt: skip
        runtime={"batch_size": 4, "backend": "torch"},
    )
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()
    code, err = _start_and_stop(policy, report, signal.SIGINT)
    assert code == 130, err
    code, _, err = run(capsys, "check", "--policy", policy, "-o", report, "--resume")
    assert code == 1, err  # undecided is not a pass
    fresh = tmp_path / "fresh.json"
    assert run(capsys, "check", "--policy", policy, "-o", fresh)[0] == 1
    resumed, whole = statement_of(report)["predicate"], statement_of(fresh)["predicate"]
    assert resumed["sequential"] == whole["sequential"] and resumed["sequential"]["stopped"] == "end of the data"
    assert resumed["tasks"] == whole["tasks"] and resumed["rules"] == whole["rules"]
