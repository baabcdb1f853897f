"""Issue 19 through the command line: a tiny real `prunegate check` with data.groups (label
indices inline, and class names in a groups file), and rules on ece_increase (a negative min),
selective_risk_increase at a coverage and group_accuracy_drop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import yaml

from prunegate.cli import main
from prunegate.report.attest import read_envelope

N = 30
FOLDERS = ["0red", "1green", "2blue"]  # sorted, so folder i holds label i (its brightest channel)
RULES = [
    {"name": "not under-confident", "tasks": "clean", "metric": "ece_increase", "min": -0.5},
    {"name": "confident 90 %", "tasks": "clean", "metric": "selective_risk_increase", "coverage": 0.9, "max": 1.0},
    {"name": "every group", "tasks": "clean", "metric": "group_accuracy_drop", "max": 0.0},
]


def run_check(folder: Path, document: dict, name: str, capsys) -> tuple[int, dict]:
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    report = folder / f"{name}.json"
    code = main(["check", "--policy", str(folder / f"{name}.yaml"), "-o", str(report), "-q"])
    assert code in (0, 1), capsys.readouterr().err
    return code, read_envelope(report.read_text(), name)[2]["predicate"]


@pytest.fixture(scope="module")
def checked(tmp_path_factory, colour_net, random_net, colour_dataset, write_npz, policy_dict, save_torchscript):
    """Two checks of the same pair on the same images: an npz with inline index groups, and an
    image folder with a groups file of class names."""
    folder = tmp_path_factory.mktemp("groups")
    images, labels = colour_dataset(N)
    write_npz(folder / "data.npz", images, labels)
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / "images" / FOLDERS[label]).mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(image).save(folder / "images" / FOLDERS[label] / f"{i:03d}.png")
    save_torchscript(colour_net(), folder / "dense.pt")
    save_torchscript(random_net(seed=4), folder / "pruned.pt")
    (folder / "groups.yaml").write_text(
        yaml.safe_dump({"warm": ["0red"], "cool": ["1green", "2blue"]}, sort_keys=False)
    )
    inline = policy_dict(rules=RULES)
    inline["data"]["groups"] = {"warm": [0], "cool": [1, 2]}
    named = policy_dict(rules=RULES)
    named["data"] = {"test": {"format": "imagefolder", "path": "images"}, "groups": "groups.yaml"}
    return folder, inline, named


def test_groups_calibration_and_selective_risk_reach_the_report_and_the_verdict(checked, capsys) -> None:
    folder, inline, named = checked
    code, predicate = run_check(folder, inline, "inline", capsys)
    assert code == 1 and predicate["verdict"] == "fail"  # the pruned net loses accuracy in some group
    [clean] = predicate["tasks"]
    groups = {g["name"]: g for g in clean["groups"]}
    assert set(groups) == {"warm", "cool"} and groups["warm"]["n"] == N // 3 and groups["cool"]["n"] == 2 * N // 3
    for side in ("dense", "pruned"):  # the two groups split the set: their accuracies average to the whole
        mean = sum(g["n"] * g[f"{side}_accuracy"] for g in groups.values()) / N
        assert mean == pytest.approx(clean[side]["accuracy"], abs=1e-12)
    for g in groups.values():
        assert g["drop"] == pytest.approx(g["dense_accuracy"] - g["pruned_accuracy"], abs=1e-12)
    worst = max(groups.values(), key=lambda g: g["drop"])
    assert clean["worst_group"] == worst and clean["group_accuracy_drop"] == pytest.approx(worst["drop"])
    assert worst["drop"] > 0
    assert [r["coverage"] for r in clean["selective_risk"]] == [0.8, 0.9]  # the default and the rule's
    at_90 = clean["selective_risk"][1]
    assert at_90["increase"] == pytest.approx(at_90["pruned"] - at_90["dense"], abs=1e-12)
    assert clean["ece_increase"] == pytest.approx(clean["pruned"]["ece"] - clean["dense"]["ece"], abs=1e-12)

    rules = {r["name"]: r for r in predicate["rules"]}
    under = rules["not under-confident"]
    assert (under["comparison"], under["threshold"], under["passed"]) == ("min", -0.5, True)
    assert under["value"] == pytest.approx(clean["ece_increase"]) and under["coverage"] is None
    selective = rules["confident 90 %"]
    assert (
        selective["coverage"] == 0.9 and selective["passed"] and selective["value"] == pytest.approx(at_90["increase"])
    )
    group = rules["every group"]
    assert not group["passed"] and group["value"] == pytest.approx(worst["drop"]) and group["coverage"] is None

    # the same images from an image folder, the groups named by class in a file: the same numbers
    code, by_name = run_check(folder, named, "named", capsys)
    [named_clean] = by_name["tasks"]
    assert code == 1 and named_clean["groups"] == clean["groups"] and named_clean["worst_group"] == worst
    assert {r["name"]: r["value"] for r in by_name["rules"]} == {r["name"]: r["value"] for r in predicate["rules"]}


def test_groups_from_a_file_are_an_input_of_the_report(checked, capsys) -> None:
    """The groups file is an input like the data: a report path on it is refused before any work."""
    folder, _, named = checked
    (folder / "guarded.yaml").write_text(yaml.safe_dump(named, sort_keys=False))
    code = main(["check", "--policy", str(folder / "guarded.yaml"), "-o", str(folder / "groups.yaml"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "groups.yaml" in err and len(err.splitlines()) == 1
    assert yaml.safe_load((folder / "groups.yaml").read_text()) == {"warm": ["0red"], "cool": ["1green", "2blue"]}


def test_a_group_is_its_classes_label_indices_once_each_in_order() -> None:
    from prunegate.data.groups import resolve_groups

    found = resolve_groups({"cool": ["2blue", 1, "2blue"]}, FOLDERS)
    assert found["cool"].tolist() == [1, 2] and found["cool"].dtype == np.int64
