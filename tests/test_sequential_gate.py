"""The sequential gate end to end (gate.sequential): seeded order, early stop, anytime intervals,
the report's record, and the same verdicts as the full pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from prunegate.cli import main
from prunegate.errors import PolicyError
from prunegate.policy import policy_from_dict
from prunegate.report.attest import read_envelope
from prunegate.sequential_gate import read_order

IMAGES = 480


@pytest.fixture()
def pair(tmp_path: Path, colour_net, colour_dataset, random_net, save_torchscript, write_npz) -> Path:
    images, labels = colour_dataset(IMAGES)
    write_npz(tmp_path / "data.npz", images, labels)
    save_torchscript(colour_net(), tmp_path / "dense.pt")
    save_torchscript(colour_net(), tmp_path / "same.pt")
    save_torchscript(random_net(seed=4), tmp_path / "broken.pt")
    return tmp_path


def run(folder: Path, policy: dict, name: str, *extra: str) -> tuple[int, dict]:
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(policy))
    report = folder / f"{name}.json"
    code = main(["check", "--policy", str(folder / f"{name}.yaml"), "-o", str(report), *extra])
    assert code in (0, 1)
    return code, read_envelope(report.read_text(), name)[2]["predicate"]


def sequential_policy(policy_dict, pruned: str, sequential: bool = True, **gate) -> dict:
    rules = [{"name": "drop", "tasks": "clean", "metric": "accuracy_drop", "max": 0.1}]
    gate = {"rules": rules, "confidence": 0.95, "sequential": sequential, "min_samples": 64, **gate}
    # (isolation off: the models run in the test's process, which keeps these runs quick)
    return policy_dict(pruned=pruned, gate=gate, runtime={"isolation": "off", "batch_size": 32})


def test_a_broken_copy_fails_early_and_the_report_says_so(pair: Path, policy_dict) -> None:
    code, report = run(pair, sequential_policy(policy_dict, "broken.pt"), "broken")
    assert code == 1 and report["verdict"] == "fail"
    sequential = report["sequential"]
    test = next(s for s in sequential["sources"] if s["name"] == "test")
    assert 64 <= test["used"] < IMAGES and test["total"] == IMAGES
    assert sequential["stopped"] == "a rule was decided fail"
    clean = next(t for t in report["tasks"] if t["name"] == "clean")
    assert clean["n"] == test["used"]  # every task's n is what was evaluated
    rule = report["rules"][0]
    assert rule["status"] == "fail" and rule["interval"]["method"] == "anytime"
    history = sequential["rules"][0]["history"]
    assert history and all(a["high"] - a["low"] >= b["high"] - b["low"] - 1e-12 for a, b in zip(history, history[1:]))
    used = next(d for d in report["data"] if d["name"] == "test")["used"]
    assert used == test["used"]


def test_an_identical_copy_passes_early_and_the_full_pass_agrees(pair: Path, policy_dict) -> None:
    code, early = run(pair, sequential_policy(policy_dict, "same.pt"), "early")
    assert code == 0 and early["sequential"]["stopped"] == "every rule was decided"
    used = early["sequential"]["sources"][0]["used"]
    assert used < IMAGES
    code_full, full = run(pair, sequential_policy(policy_dict, "same.pt", sequential=False), "full")
    assert code_full == 0 and full["sequential"] is None
    assert next(t for t in full["tasks"] if t["name"] == "clean")["n"] == IMAGES
    # the images it used are the first of the seeded order
    order = read_order(0, "test", np.arange(IMAGES))
    assert early["sequential"]["order"].startswith("each data set in a seeded random permutation")
    code_again, again = run(pair, sequential_policy(policy_dict, "same.pt"), "again")
    assert again["sequential"] == early["sequential"]  # deterministic
    assert len(order[:used]) == used


def test_the_command_line_turns_it_on_and_off(pair: Path, policy_dict) -> None:
    _, report = run(pair, sequential_policy(policy_dict, "broken.pt", sequential=False), "on", "--sequential")
    assert report["sequential"] is not None and report["policy"]["overrides"]["gate.sequential"] is True
    _, report = run(pair, sequential_policy(policy_dict, "broken.pt"), "off", "--no-sequential")
    assert report["sequential"] is None


def test_sequential_needs_a_confidence_and_anytime_metrics(policy_dict) -> None:
    policy = sequential_policy(policy_dict, "broken.pt")
    del policy["gate"]["confidence"]
    with pytest.raises(PolicyError) as error:
        policy_from_dict(policy)
    assert error.value.field == "gate.sequential"
    policy = sequential_policy(policy_dict, "broken.pt")
    policy["gate"]["rules"][0]["metric"] = "ece_increase"
    with pytest.raises(PolicyError) as error:
        policy_from_dict(policy)
    assert error.value.field == "gate.rules.0.metric" and "anytime-valid" in str(error.value)


def test_the_command_line_switch_needs_a_confidence_too(pair: Path, policy_dict, capsys) -> None:
    policy = sequential_policy(policy_dict, "broken.pt", sequential=False)
    del policy["gate"]["confidence"]
    (pair / "p.yaml").write_text(yaml.safe_dump(policy))
    code = main(["check", "--policy", str(pair / "p.yaml"), "-o", str(pair / "p.json"), "--sequential"])
    err = capsys.readouterr().err
    assert code == 2 and "--sequential" in err and "gate.confidence" in err and len(err.strip().splitlines()) == 1
    assert not (pair / "p.json").exists()


def test_read_order_is_a_seeded_permutation() -> None:
    indices = np.arange(100) * 3
    first = read_order(7, "test", indices)
    assert sorted(first.tolist()) == indices.tolist() and first.tolist() != indices.tolist()
    assert read_order(7, "test", indices).tolist() == first.tolist()
    assert read_order(8, "test", indices).tolist() != first.tolist()
    assert read_order(7, "ood", indices).tolist() != first.tolist()


def test_a_mean_over_noise_tasks_with_draws_is_one_sequence_per_data_set(pair: Path, policy_dict) -> None:
    policy = sequential_policy(policy_dict, "broken.pt")
    policy["gate"]["rules"] = [
        {"name": "noise agreement", "tasks": "noise/*", "metric": "agreement", "aggregate": "mean", "min": 0.9},
        {"name": "clean top-1", "tasks": "clean", "metric": "pruned_accuracy", "min": 0.5},
    ]
    policy["suite"] = {"noise": [{"kind": "uniform", "levels": [0.05, 0.1], "draws": 2}]}
    code, report = run(pair, policy, "mean")
    assert code == 1 and report["sequential"]["stopped"] == "a rule was decided fail"
    used = report["sequential"]["sources"][0]["used"]
    noise = [t for t in report["tasks"] if t["name"].startswith("noise/")]
    assert noise and all(t["n"] == 2 * used for t in noise)  # n counts the draws
    assert {r["name"]: r["status"] for r in report["rules"]}["noise agreement"] == "fail"


def test_console_markdown_and_html_say_where_it_stopped(pair: Path, policy_dict) -> None:
    from prunegate.report.render import Format, RenderOptions, renderer
    from prunegate.report.schema import Report

    _, predicate = run(pair, sequential_policy(policy_dict, "broken.pt"), "shown")
    report = Report.model_validate(predicate)
    used = predicate["sequential"]["sources"][0]["used"]
    line = f"stopped after {used:,} of {IMAGES:,} images ({100 * used / IMAGES:.0f} %): a rule was decided fail"
    console = renderer(Format.console).format(report, RenderOptions(width=160))
    assert line in str(console)
    assert line in renderer(Format.markdown).format(report, RenderOptions())
    html = renderer(Format.html).format(report, RenderOptions())
    assert line in html and 'id="sequential-intervals"' in html
    full = Report.model_validate(run(pair, sequential_policy(policy_dict, "broken.pt", sequential=False), "f")[1])
    assert "stopped after" not in renderer(Format.markdown).format(full, RenderOptions())
