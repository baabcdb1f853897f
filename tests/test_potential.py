"""Prune potential: the paper's definition on hand-made errors, then end to end through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from prunegate.cli import main
from prunegate.plan import Task, TaskKind
from prunegate.potential import (
    Member,
    analyse,
    annotate,
    below_resolution,
    member_labels,
    plot_png,
    potential_figure,
    potential_metric,
    prune_potential,
)
from prunegate.report.render.console import render_potential


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
    out = capsys.readouterr().out
    assert "Prune potential" in out
    # 12 samples: one is 8.33 pp, far above delta = 1 pp, on every task
    assert result["below_resolution"] == {name: 12 for name in result["n"]}
    [warning] = result["warnings"]
    assert "delta 1 pp is at most one sample's error on 3 of 3 tasks" in warning and "n = 12" in warning
    assert "warning: delta 1 pp is at most one sample's error" in " ".join(out.split())
    assert [m["label"] for m in result["members"]] == ["m0.3", "m0.9"] and result["error"] == "top-1 error"
    flat = " ".join(out.split())
    assert f"m0.3: {result['members'][0]['path']}" in flat and f"m0.9: {result['members'][1]['path']}" in flat


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
    files = ["ft-25.onnx", "ft-25.pt", "ft-25.layers.json", "ft-50.onnx", "ft-50.pt", "ft-50.layers.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    written = ", ".join(str(out / name) for name in files)
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
    assert result["error"] == "1 - mIoU"


# --- issue 20: what the table and the plot show -------------------------------------------------------


def family_result(potentials=(0.4, 0.0)) -> dict:
    """A potential result of two members, as run_potential and annotate make it: clean's potential
    is potentials[0], the noise group's potentials[1]."""
    tasks = [
        Task("clean", TaskKind.CLEAN, "test"),
        Task("noise/uniform/0.1", TaskKind.NOISE, "test", "uniform", level=0.1),
    ]
    dense = {"clean": 0.10, "noise/uniform/0.1": 0.20}
    ratios = (0.2, 0.4)
    # a member more pruned than the group's potential is 5 points worse there, the others as good
    members = [
        {name: dense[name] + (0.05 if ratio > p else 0.0) for name, p in zip(dense, potentials)} for ratio in ratios
    ]
    family = [Member("/models/family/wt-20.onnx", "x", 100, 80), Member("/models/family/wt-40.onnx", "y", 100, 60)]
    result = analyse(tasks, dense, members, family, delta=0.005)
    result["n"] = {"clean": 200, "noise/uniform/0.1": 2000}
    return annotate(result, "classification")


def test_member_labels_are_short_and_unique() -> None:
    assert member_labels(["/a/wt-30.onnx", "/a/wt-50.onnx"]) == ["wt-30", "wt-50"]
    assert member_labels(["/a/wt-30.onnx", "/a/wt-30.pt"]) == ["wt-30.onnx", "wt-30.pt"]
    assert member_labels(["/a/m.onnx", "/b/m.onnx", None]) == ["#1", "#2", "#3"]


@pytest.mark.parametrize(
    "delta, n, below",
    [
        (0.005, 200, True),  # the case: 0.5 pp is one image at n = 200
        (0.005, 199, True),  # less than one image
        (0.005, 201, False),  # delta is more than one sample's error (0.4975 pp)
        (0.005, 10_000, False),
        (0.01, 50, True),
    ],
)
def test_delta_below_the_sampling_resolution(delta, n, below) -> None:
    assert (below_resolution(delta, {"clean": n}) == {"clean": n}) is below


def test_the_warning_names_the_tasks_and_the_smallest_n() -> None:
    result = family_result()
    assert result["below_resolution"] == {"clean": 200}  # noise: 2000 samples, 0.05 pp each
    [warning] = result["warnings"]
    assert warning.startswith("delta 0.5 pp is at most one sample's error on 1 of 2 tasks")
    assert "(one sample is 0.50 pp at n = 200, clean)" in warning
    text = " ".join(render_potential(result, width=200).split())
    assert f"warning: {warning}" in text
    result["n"] = {"clean": 5000, "noise/uniform/0.1": 5000}
    assert annotate(result, "classification")["warnings"] == []


def header_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("┃")]


def test_the_table_labels_ratios_errors_and_potential_and_names_the_files() -> None:
    result = family_result(potentials=(0.4, 0.0))
    text = render_potential(result, width=200)
    header = "\n".join(header_lines(text))
    for word in ("group", "dense", "wt-20", "wt-40", "prune ratio 20.0%", "prune ratio 40.0%", "top-1 error"):
        assert word in header, word
    assert "potential" in header and "(prune ratio)" in header
    assert "within 0.5 pp of dense" in " ".join(text.split())
    assert "wt-20: /models/family/wt-20.onnx (prune ratio 20.0%)" in text
    assert "wt-40: /models/family/wt-40.onnx (prune ratio 40.0%)" in text
    noise = next(line for line in text.splitlines() if line.startswith("│ noise/uniform"))
    assert noise.rstrip("│ ").endswith("0 (none within delta)")
    clean = next(line for line in text.splitlines() if line.startswith("│ clean"))
    assert clean.rstrip("│ ").endswith("40.00%")


def test_the_plot_labels_its_axes_names_the_members_and_shows_a_zero_potential() -> None:
    result = family_result(potentials=(0.4, 0.0))
    figure = potential_figure(result, "family")
    bars, lines = figure.axes[:2]
    assert "prune potential" in bars.get_ylabel() and "prune ratio" in bars.get_ylabel()
    assert "within 0.5 pp of dense" in bars.get_title()
    assert "prune ratio" in lines.get_xlabel() and "excess error" in lines.get_ylabel()
    assert "top-1 error" in lines.get_title()
    ticks = [t.get_text() for t in lines.get_xticklabels()]
    assert ticks == ["wt-20\n20.0%", "wt-40\n40.0%"]
    caption = figure.get_supxlabel()
    assert "wt-20 = wt-20.onnx (prune ratio 20.0%)" in caption and "wt-40 = wt-40.onnx" in caption
    # the noise group's potential is 0: no bar to see, so a marker stands on the axis at its place
    names = [t.get_text() for t in bars.get_xticklabels()]
    zero = names.index("noise/uniform")
    [marker] = [line for line in bars.get_lines() if line.get_marker() != "None"]
    assert list(marker.get_xdata()) == [zero] and list(marker.get_ydata()) == [0] and not marker.get_clip_on()
    values = [t.get_text() for t in bars.texts if t.get_text()]
    assert values == ["40", "0"]
    none_zero = potential_figure(family_result(potentials=(0.4, 0.2)), "family").axes[0]
    assert [line for line in none_zero.get_lines() if line.get_marker() != "None"] == []
    assert plot_png(result, "family").startswith(b"\x89PNG")


# --- issue 19: --metric, a potential for every paired metric with a tolerance -------------------------


def test_potential_metric_names_the_key_and_the_better_side() -> None:
    assert potential_metric("error", "classification") == ("error", "lower")
    assert potential_metric("top5_drop", "classification") == ("top5_drop", "lower")
    assert potential_metric("agreement", "classification") == ("agreement", "higher")
    assert potential_metric("probability_loyalty", "classification") == ("probability_loyalty", "higher")
    assert potential_metric("selective_risk_increase", "classification") == ("selective_risk_increase@0.8", "lower")
    assert potential_metric("selective_risk_increase@0.90", "classification")[0] == "selective_risk_increase@0.9"
    assert potential_metric("pixel_agreement", "segmentation") == ("pixel_agreement", "higher")


@pytest.mark.parametrize(
    ("metric", "kind", "reason"),
    [
        ("top6_drop", "classification", "unknown metric 'top6_drop'"),
        ("pruned_top5", "classification", "one model's own number"),
        ("newly_right", "classification", "has no tolerance"),
        ("miou_drop", "classification", "not a classification metric"),
        ("top5_drop", "segmentation", "not a segmentation metric"),
        ("agreement@0.9", "classification", "only selective_risk_increase takes a coverage"),
        ("selective_risk_increase@1.5", "classification", "must be a number in (0, 1]"),
        ("selective_risk_increase@x", "classification", "must be a number in (0, 1]"),
    ],
)
def test_potential_metric_refuses_what_has_no_potential(metric: str, kind: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        potential_metric(metric, kind)


def test_a_similarity_qualifies_at_one_minus_delta_and_a_signed_increase_below_zero() -> None:
    ratios = [0.2, 0.4, 0.6]
    assert prune_potential(1.0, [0.995, 0.99, 0.96], ratios, 0.005, "higher") == 0.2  # exactly 1 - delta
    assert prune_potential(1.0, [0.9, 0.9, 0.999], ratios, 0.005, "higher") == 0.6
    assert prune_potential(0.0, [0.02, -0.03, 0.5], ratios, 0.01) == 0.4  # better calibrated qualifies
    assert prune_potential(0.0, [float("nan")] * 3, ratios, 0.01) == 0.0  # undefined never qualifies


def test_another_metric_has_no_excess_error_and_says_so_in_the_plot() -> None:
    tasks = [Task("clean", TaskKind.CLEAN, "test"), Task("noise/uniform/0.1", TaskKind.NOISE, "test", "uniform", 0.1)]
    dense = {"clean": 0.0, "noise/uniform/0.1": 0.0}
    members = [{"clean": 0.004, "noise/uniform/0.1": 0.02}, {"clean": 0.03, "noise/uniform/0.1": 0.04}]
    family = [Member("a.pt", "x", 100, 70), Member("b.pt", "y", 100, 30)]
    result = analyse(tasks, dense, members, family, 0.01, "ece_increase", "lower")
    result["n"] = {"clean": 50, "noise/uniform/0.1": 50}
    result = annotate(result, "classification")
    groups = {g["name"]: g for g in result["groups"]}
    assert groups["clean"]["potential"] == pytest.approx(0.3) and groups["noise/uniform"]["potential"] == 0.0
    assert all(g["excess_error"] is None for g in result["groups"])
    assert result["metric"] == result["error"] == "ece_increase" and result["better"] == "lower"
    # ECE moves in no one-sample steps: no sampling-resolution warning even at delta = 1/n
    assert result["below_resolution"] == {} and result["warnings"] == []
    bars, right = potential_figure(result, "family").axes[:2]
    assert "ece_increase within 0.01 of dense" in bars.get_title()
    assert "excess error: only for --metric error" in right.texts[0].get_text()
    assert "ece_increase" in render_potential(result, width=200)


def six_class_net(sign: float = 1.0) -> torch.nn.Module:
    """A 6-class TinyNet whose class k scores the mean of colour channel k % 3: on
    `colour_dataset(classes=6)` the label and its colour twin rank first, so its top-5 is 1;
    `sign=-1` ranks them last (top-5 0)."""
    from tests.conftest import TinyNet, _colour_net

    colour, net = _colour_net(), TinyNet(6, 8)
    cells = 16
    with torch.no_grad():
        net.conv.load_state_dict(colour.conv.state_dict())
        net.head.weight.zero_()
        net.head.bias.zero_()
        for k in range(6):
            net.head.weight[k, (k % 3) * cells : (k % 3 + 1) * cells] = sign / cells
    return net.eval()


def six_class_family(tmp_path: Path, ratios=(0.3,)) -> tuple[Path, list[Path]]:
    """The 6-class dense net (top-5 is defined), members pruned from it and, last, its reversed
    copy (far from it on top-5), and a policy."""
    from prunegate.prune import global_magnitude_prune
    from tests.conftest import _colour_dataset, _save_torchscript, _write_npz, _write_policy

    images, labels = _colour_dataset(30, classes=6)
    _write_npz(tmp_path / "data.npz", images, labels)
    _save_torchscript(six_class_net(), tmp_path / "dense.pt")
    _save_torchscript(six_class_net(), tmp_path / "pruned.pt")
    members = []
    for ratio in ratios:
        path = tmp_path / f"m{ratio}.pt"
        _save_torchscript(global_magnitude_prune(six_class_net(), ratio), path)
        members.append(path)
    _save_torchscript(six_class_net(-1.0), tmp_path / "other.pt")
    members.append(tmp_path / "other.pt")
    rules = [{"name": "top5", "tasks": "clean", "metric": "top5_drop", "max": 0.01}]
    suite = {"noise": [{"kind": "uniform", "levels": [0.3]}]}
    return _write_policy(tmp_path / "policy.yaml", rules=rules, suite=suite), members


def test_potential_cli_on_top5_drop_agrees_with_check(tmp_path: Path, capsys) -> None:
    """--metric top5_drop --delta 0.01: a member's value is the top5_drop a check report of the
    pair records (checked for the other net), the dense model's is 0, and the potential follows."""
    import yaml

    from prunegate.report.attest import read_envelope

    policy, members = six_class_family(tmp_path)
    out, plot = tmp_path / "potential.json", tmp_path / "potential.png"
    args = ["potential", "-p", str(policy), "--pruned", *map(str, members), "--metric", "top5_drop"]
    code = main([*args, "--delta", "0.01", "--out", str(out), "--plot", str(plot)])
    printed, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["metric"] == "top5_drop" and result["error"] == "top5_drop" and "top5_drop" in printed
    assert plot.read_bytes().startswith(b"\x89PNG")
    rows = {row["name"]: row for row in result["tasks"]}
    assert set(rows) == {"clean", "noise/uniform/0.3"}
    ratios = [m["prune_ratio"] for m in result["members"]]
    document = yaml.safe_load(policy.read_text())
    document["models"]["pruned"] = str(members[-1])
    (tmp_path / "pair.yaml").write_text(yaml.safe_dump(document))
    report = tmp_path / "pair.json"
    assert main(["check", "-p", str(tmp_path / "pair.yaml"), "-o", str(report), "-q"]) == 1  # top-5 lost
    checked = read_envelope(report.read_text(), str(report))[2]["predicate"]
    for task in checked["tasks"]:
        assert rows[task["name"]]["errors"][-1] == pytest.approx(task["top5_drop"], abs=1e-12)
    for row in [*result["tasks"], *result["groups"]]:
        assert row["dense_error"] == 0.0 and row.get("excess_error") is None
        assert row["potential"] == prune_potential(0.0, row["errors"], ratios, 0.01)
    assert rows["clean"]["errors"][-1] > 0.01 and result["groups"][0]["potential"] == ratios[0]  # it can tell


def test_potential_cli_default_and_accuracy_drop_give_the_same_potential(tmp_path: Path, capsys) -> None:
    policy, members = six_class_family(tmp_path, ratios=())
    found = {}
    for metric in ("error", "accuracy_drop"):
        out = tmp_path / f"{metric}.json"
        args = ["potential", "-p", str(policy), "--pruned", str(members[0]), "--metric", metric]
        assert main([*args, "--delta", "0.05", "--out", str(out)]) == 0, capsys.readouterr().err
        found[metric] = json.loads(out.read_text())
    error, drop = found["error"], found["accuracy_drop"]
    assert [g["potential"] for g in error["groups"]] == [g["potential"] for g in drop["groups"]]
    for e, d in zip(error["tasks"], drop["tasks"]):
        assert e["errors"][0] - e["dense_error"] == pytest.approx(d["errors"][0], abs=1e-12)
    assert error["groups"][0]["excess_error"] is not None and drop["groups"][0]["excess_error"] is None


@pytest.mark.parametrize(
    ("metric", "reason"),
    [("top6_drop", "unknown metric 'top6_drop'"), ("group_accuracy_drop", "needs data.groups in the policy")],
)
def test_potential_cli_names_a_bad_metric(tmp_path: Path, gate_case, capsys, metric: str, reason: str) -> None:
    policy = gate_case()
    out = tmp_path / "p.json"
    code = main(["potential", "-p", str(policy), "--pruned", str(tmp_path / "pruned.pt"), "--metric", metric,
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --metric: ") and reason in err and "\n" not in err
    assert not out.exists()
