"""Prune potential: the paper's definition on hand-made errors, then end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunegate.cli import main
from prunegate.plan import Task, TaskKind
from prunegate.potential import Member, analyse, plot_png, prune_potential


def test_potential_is_the_largest_qualifying_ratio_even_past_a_failing_one() -> None:
    ratios = [0.2, 0.4, 0.6, 0.8]
    # 0.4 fails, 0.6 is within delta again: any qualifying point counts (the paper's definition)
    assert prune_potential(0.10, [0.102, 0.2, 0.104, 0.3], ratios, 0.005) == 0.6
    assert prune_potential(0.10, [0.2, 0.2, 0.2, 0.2], ratios, 0.005) == 0.0  # the dense model itself
    assert prune_potential(0.10, [0.105, 0.2, 0.2, 0.2], ratios, 0.005) == 0.2  # exactly delta qualifies


def test_groups_average_severities_and_excess_error_is_relative_to_dense() -> None:
    tasks = [
        Task("clean", TaskKind.CLEAN, "test"),
        Task("noise/uniform/0.1", TaskKind.NOISE, "test", "uniform", level=0.1),
        Task("noise/uniform/0.2", TaskKind.NOISE, "test", "uniform", level=0.2),
        Task("corruption/fog/1", TaskKind.CORRUPTION, "test", "fog", severity=1),
    ]
    dense = {"clean": 0.10, "noise/uniform/0.1": 0.20, "noise/uniform/0.2": 0.30, "corruption/fog/1": 0.25}
    members = [
        {"clean": 0.10, "noise/uniform/0.1": 0.22, "noise/uniform/0.2": 0.34, "corruption/fog/1": 0.25},
        {"clean": 0.12, "noise/uniform/0.1": 0.40, "noise/uniform/0.2": 0.50, "corruption/fog/1": 0.27},
    ]
    family = [Member("a", "x", 100, 60), Member("b", "y", 100, 20)]
    result = analyse(tasks, dense, members, family, delta=0.005)
    groups = {g["name"]: g for g in result["groups"]}
    assert set(groups) == {"clean", "noise/uniform", "fog"}
    assert groups["clean"]["potential"] == pytest.approx(0.4)  # 0.8 is 2 pp worse on clean
    assert groups["noise/uniform"]["dense_error"] == pytest.approx(0.25)
    assert groups["noise/uniform"]["potential"] == 0.0  # +3 pp already at 40 %
    assert groups["noise/uniform"]["excess_error"] == pytest.approx(
        [0.03, 0.18]
    )  # (0.28-0.10)-(0.25-0.10); (0.45-0.12)-0.15
    assert groups["fog"]["potential"] == pytest.approx(0.4)
    assert [m["prune_ratio"] for m in result["members"]] == pytest.approx([0.4, 0.8])
    assert plot_png(result, "t").startswith(b"\x89PNG")


def test_potential_cli_evaluates_a_family_once(tmp_path: Path, gate_case, capsys) -> None:
    from prunegate.prune import global_magnitude_prune
    from tests.conftest import _colour_net, _save_torchscript

    policy = gate_case(n=12, suite={"noise": [{"kind": "uniform", "levels": [0.1, 0.5]}]})
    members = []
    for ratio in (0.3, 0.9):
        path = tmp_path / f"m{ratio}.pt"
        _save_torchscript(global_magnitude_prune(_colour_net(), ratio), path)
        members.append(path)
    out, plot = tmp_path / "potential.json", tmp_path / "potential.png"
    code = main(
        [
            "potential",
            "--policy",
            str(policy),
            "--pruned",
            str(members[0]),
            str(members[1]),
            "--out",
            str(out),
            "--plot",
            str(plot),
            "--delta",
            "0.01",
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert [Path(m["path"]).name for m in result["members"]] == ["m0.3.pt", "m0.9.pt"]
    assert {t["name"] for t in result["tasks"]} == {"clean", "noise/uniform/0.1", "noise/uniform/0.5"}
    assert all(len(t["errors"]) == 2 for t in result["tasks"]) and plot.read_bytes().startswith(b"\x89PNG")
    assert "Prune potential" in capsys.readouterr().out


def test_potential_cli_names_a_bad_member(tmp_path: Path, gate_case, capsys) -> None:
    policy = gate_case()
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    code = main(["potential", "--policy", str(policy), "--pruned", str(tmp_path / "broken.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "broken.pt" in err and "--pruned.0" in err


def test_prune_cli_writes_a_family(tmp_path: Path, capsys) -> None:
    from tests.conftest import _colour_net

    state = tmp_path / "dense.pth"
    torch.save(_colour_net().state_dict(), state)
    arch = tmp_path / "arch.py"
    arch.write_text("from tests.conftest import TinyNet\n\ndef build():\n    return TinyNet(3, 8)\n")
    out = tmp_path / "family"
    code = main(
        [
            "prune",
            "--model",
            str(state),
            "--arch",
            f"{arch}:build",
            "--method",
            "ft",
            "--ratios",
            "0.25,0.5",
            "--input-size",
            "8",
            "--out",
            str(out),
        ]
    )
    printed, err = capsys.readouterr()
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["ft-25.onnx", "ft-25.pt", "ft-50.onnx", "ft-50.pt"]
    written = ", ".join(str(out / name) for name in ("ft-25.onnx", "ft-25.pt", "ft-50.onnx", "ft-50.pt"))
    assert f"wrote {written}" in printed  # every file named
    code = main(
        [
            "prune",
            "--model",
            str(state),
            "--arch",
            f"{arch}:build",
            "--ratios",
            "0.25",
            "--input-size",
            "8",
            "--out",
            str(out),
            "--method",
            "ft",
        ]
    )
    assert code == 2 and "already exists" in capsys.readouterr().err
    code = main(["prune", "--model", str(state), "--ratios", "1.5", "--input-size", "8", "--out", str(out)])
    assert code == 2 and "--ratios" in capsys.readouterr().err


def test_potential_of_a_segmentation_family_counts_errors_as_one_minus_miou(
    segmentation_report, tmp_path: Path, capsys
) -> None:
    """Two members of the tiny segmentation pair's family, a copy of the dense model and the
    class-dropped one: their errors are 1 - mIoU, exactly as a check report of each measures it
    (the copy's checked here; the class-dropped one's is the session's report of that pair)."""
    import yaml

    from prunegate.report.attest import read_envelope

    dropped, folder = segmentation_report
    dropped = dropped.model_dump(mode="json")
    copy_model = tmp_path / "copy.pt"
    copy_model.write_bytes((folder / "dense.pt").read_bytes())
    members = [copy_model, folder / "pruned.pt"]
    out = tmp_path / "potential.json"
    policy = folder / "policy.yaml"  # the session report's; nothing is written next to it
    code = main(["potential", "-p", str(policy), "--pruned", *map(str, members), "--out", str(out), "--delta", "0.01"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())

    document = yaml.safe_load(policy.read_text())  # the same policy, gating the copy
    document["models"].update({"dense": str(folder / "dense.pt"), "pruned": str(copy_model)})
    document["data"]["test"]["path"] = str(folder / "voc")
    (tmp_path / "copy.yaml").write_text(yaml.safe_dump(document))
    report = tmp_path / "copy.json"
    assert main(["check", "-p", str(tmp_path / "copy.yaml"), "-o", str(report), "-q"]) == 0
    copy = read_envelope(report.read_text(), str(report))[2]["predicate"]
    assert [d["sha256"] for d in dropped["data"]] == [d["sha256"] for d in copy["data"]]
    assert result["dense"]["sha256"] == copy["models"]["dense"]["sha256"] == dropped["models"]["dense"]["sha256"]
    shas = [copy["models"]["pruned"]["sha256"], dropped["models"]["pruned"]["sha256"]]
    assert [m["sha256"] for m in result["members"]] == shas

    rows = {row["name"]: row for row in result["tasks"]}
    assert list(rows) == [t["name"] for t in copy["tasks"]] == ["clean", "corruption/contrast/1"]
    for i, checked in enumerate((copy, dropped)):
        for task in checked["tasks"]:
            row = rows[task["name"]]
            assert row["dense_error"] == pytest.approx(1 - task["dense"]["miou"], abs=1e-12)
            assert row["errors"][i] == pytest.approx(1 - task["pruned"]["miou"], abs=1e-12)
            assert result["n"][task["name"]] == task["n"]
    clean = rows["clean"]
    assert clean["errors"][0] == clean["dense_error"] == 0.0 < 0.2 < clean["errors"][1]  # the lost class
    ratios = [m["prune_ratio"] for m in result["members"]]
    assert clean["potential"] == ratios[0]  # only the copy is within delta
    groups = {g["name"]: g for g in result["groups"]}
    assert set(groups) == {"clean", "contrast"} and groups["clean"]["excess_error"] == [0.0, 0.0]
