from __future__ import annotations

import re

import pytest
from markdown_it import MarkdownIt

from prunegate.cli import main
from prunegate.diff import compare, render_text
from prunegate.report.render.markdown import render_diff


def with_task(report, name: str, **changes):
    """A copy of `report` whose task `name` has `changes` (agreement=..., accuracy_drop=...)."""
    tasks = [t.model_copy(update=changes) if t.name == name else t for t in report.tasks]
    return report.model_copy(update={"tasks": tasks})


def with_rule(report, name: str, **changes):
    rules = [r.model_copy(update=changes) if r.name == name else r for r in report.rules]
    verdict = "pass" if all(r.passed for r in rules) else "fail"
    return report.model_copy(update={"rules": rules, "verdict": verdict})


@pytest.fixture(scope="module")
def base():
    from conftest import _sample_report

    return _sample_report(failing=False, corruptions=("fog",), severities=(1, 3))


def test_identical_reports_do_not_regress(base) -> None:
    diff = compare(base, base)
    assert not diff.regressed
    assert {c.change for c in diff.tasks} == {"same"} and {c.change for c in diff.rules} == {"same"}
    assert len(diff.tasks) == 5 * len(base.tasks)
    assert "no task metric changed" in render_text(diff)


@pytest.mark.parametrize(
    "metric, delta, change, regression",
    [
        ("agreement", -0.01, "worse", True),
        ("agreement", -0.004, "worse", False),  # within the margin of 0.005
        ("agreement", +0.02, "better", False),
        ("accuracy_drop", +0.006, "worse", True),
        ("accuracy_drop", +0.005, "worse", False),  # exactly the margin is not beyond it
        ("accuracy_drop", -0.03, "better", False),
        ("softmax_l2", +0.2, "worse", False),  # shown, but not one of the deciding metrics
    ],
)
def test_task_metric_changes(base, metric, delta, change, regression) -> None:
    task = base.tasks[1]
    new = with_task(base, task.name, **{metric: getattr(task, metric) + delta})
    diff = compare(base, new, margin=0.005)
    [moved] = [c for c in diff.tasks if c.change != "same"]
    assert (moved.task, moved.metric, moved.change, moved.regression) == (task.name, metric, change, regression)
    assert moved.delta == pytest.approx(delta)
    assert diff.regressed == regression


def test_a_rule_that_now_fails_regresses_whatever_the_margin(base) -> None:
    rule = base.rules[0]
    new = with_rule(base, rule.name, passed=False, status="fail", value=rule.threshold + 1e-4)
    diff = compare(base, new, margin=1.0)
    assert diff.regressed
    [flip] = [c for c in diff.rules if c.name == rule.name]
    assert flip.change == "now fails" and flip.old_status == "pass" and flip.new_status == "fail"
    back = compare(new, base)
    assert not back.regressed and [c.change for c in back.rules if c.name == rule.name] == ["now passes"]
    # an undecided rule did not pass either
    undecided = with_rule(base, rule.name, passed=False, status="undecided")
    assert [c.new_status for c in compare(base, undecided).rules if c.name == rule.name] == ["undecided"]


def test_rule_values_judged_by_their_comparison(base) -> None:
    agreement = next(r for r in base.rules if r.comparison == "min")
    diff = compare(base, with_rule(base, agreement.name, value=agreement.value - 0.001))
    assert [c.change for c in diff.rules if c.name == agreement.name] == ["worse"]
    drop = next(r for r in base.rules if r.comparison == "max")
    diff = compare(base, with_rule(base, drop.name, value=drop.value - 0.001))
    assert [c.change for c in diff.rules if c.name == drop.name] == ["better"]


def test_added_removed_and_incomparable_parts_are_noted(base) -> None:
    new = base.model_copy(
        update={
            "rules": base.rules[1:],
            "tasks": base.tasks[:-1],
            "seed": 9,
            "policy": base.policy.model_copy(update={"sha256": "00" * 32}),
        }
    )
    diff = compare(base, new)
    assert [c.change for c in diff.rules if c.name == base.rules[0].name] == ["removed"]
    assert not diff.regressed
    text = " ".join(diff.notes)
    assert "policy files differ" in text and "seeds differ" in text and base.tasks[-1].name in text
    with pytest.raises(ValueError):
        compare(base, base, margin=-0.1)


def test_markdown_diff_is_a_gfm_table(base) -> None:
    new = with_task(base, "clean", agreement=base.tasks[0].agreement - 0.05)
    text = render_diff(compare(base, new))
    html = MarkdownIt("commonmark").enable("table").render(text)
    assert html.count("<table>") == 2 and "regression" in text.splitlines()[0]
    assert re.search(r"<td[^>]*>clean</td>", html)


def test_diff_command_exit_codes(tmp_path, capsys, base, write_report) -> None:
    old = write_report(tmp_path / "old.json", base)
    same = write_report(tmp_path / "same.json", base)
    worse = write_report(tmp_path / "worse.json", with_task(base, "clean", agreement=base.tasks[0].agreement - 0.05))
    assert main(["diff", str(old), str(same)]) == 0
    assert "no regression" in capsys.readouterr().out
    assert main(["diff", str(old), str(worse)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("prunegate diff: REGRESSED") and "✗ clean" in out
    assert main(["diff", str(old), str(worse), "--margin", "0.1"]) == 0
    assert "no regression beyond the margin of 0.1" in capsys.readouterr().out
    assert main(["diff", str(old), str(worse), "--markdown"]) == 1
    assert capsys.readouterr().out.startswith("## ❌ prunegate diff")
    assert main(["diff", str(old), str(tmp_path / "missing.json")]) == 2
    assert main(["diff", str(old), str(same), "--margin", "2"]) == 2


def test_names_with_control_characters_stay_on_their_line(base) -> None:
    """Rule and task names come from the reports: in the text and Markdown diffs a line break, an
    escape sequence or a bidi override in one is shown escaped, not acted on."""
    hostile = "clean\x1b[2J\r\nerror: forged\u202e"
    tasks = [t.model_copy(update={"name": hostile}) if t.name == "clean" else t for t in base.tasks]
    rules = [r.model_copy(update={"name": f"{r.name}\x1b[31m\u2028"}) for r in base.rules]
    old = base.model_copy(update={"tasks": tasks, "rules": rules})
    new = with_task(old, hostile, agreement=base.tasks[0].agreement - 0.05)
    result = compare(old, new)
    for text in (render_text(result), render_diff(result)):
        assert "\x1b" not in text and "\r" not in text and "\u202e" not in text and "\u2028" not in text
        assert not any(line.startswith("error: forged") for line in text.splitlines())
    assert "clean\\x1b[2J\\r\\nerror: forged\\u202e" in render_text(result)


# --- segmentation reports (issue 15): miou_drop and pixel_agreement decide ---------------------------


@pytest.mark.parametrize(
    "metric, delta, change, regression",
    [
        ("miou_drop", +0.02, "worse", True),
        ("miou_drop", +0.004, "worse", False),  # within the margin of 0.005
        ("miou_drop", -0.02, "better", False),
        ("pixel_agreement", -0.01, "worse", True),
        ("pixel_agreement", +0.01, "better", False),
        ("pixel_accuracy_drop", +0.2, "worse", False),  # shown, but not one of the deciding metrics
    ],
)
def test_segmentation_task_metric_changes(segmentation_report, metric, delta, change, regression) -> None:
    report, _ = segmentation_report
    clean = report.tasks[0]
    new = with_task(report, "clean", **{metric: getattr(clean, metric) + delta})
    diff = compare(report, new, margin=0.005)
    [moved] = [c for c in diff.tasks if c.change != "same"]
    assert (moved.task, moved.metric, moved.change, moved.regression) == ("clean", metric, change, regression)
    assert moved.delta == pytest.approx(delta) and diff.regressed == regression


def test_pruned_miou_is_compared_through_the_model_side(segmentation_report) -> None:
    report, _ = segmentation_report
    clean = report.tasks[0]
    pruned = clean.pruned.model_copy(update={"miou": clean.pruned.miou - 0.1})
    diff = compare(report, with_task(report, "clean", pruned=pruned))
    [moved] = [c for c in diff.tasks if c.change != "same"]
    assert (moved.metric, moved.change, moved.regression) == ("pruned_miou", "worse", False)
    assert moved.delta == pytest.approx(-0.1) and not diff.regressed


def test_identical_segmentation_reports_do_not_regress(segmentation_report) -> None:
    report, _ = segmentation_report
    diff = compare(report, report)
    assert not diff.regressed and {c.change for c in diff.tasks} == {"same"}
    assert {c.metric for c in diff.tasks} == {
        "miou_drop",
        "pixel_agreement",
        "pruned_miou",
        "dense_miou",
        "pixel_accuracy_drop",
    }
    assert len(diff.tasks) == 5 * len(report.tasks) and "no task metric changed" in render_text(diff)
    # a metric neither report defines (NaN) did not change either
    undefined = with_task(report, "clean", class_iou_drop=None, pixel_agreement=None)
    again = compare(undefined, undefined)
    assert not again.regressed and {c.change for c in again.tasks} == {"same"}


def test_segmentation_diff_command_exit_codes(tmp_path, capsys, segmentation_report, write_report) -> None:
    report, _ = segmentation_report
    clean = report.tasks[0]
    old = write_report(tmp_path / "old.json", report)
    same = write_report(tmp_path / "same.json", report)
    worse = write_report(tmp_path / "worse.json", with_task(report, "clean", miou_drop=clean.miou_drop + 0.03))
    assert main(["diff", str(old), str(same)]) == 0
    assert "no regression" in capsys.readouterr().out
    assert main(["diff", str(old), str(worse)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("prunegate diff: REGRESSED: 1 change(s)")
    [line] = [line for line in out.splitlines() if line.lstrip().startswith("✗")]
    assert "clean" in line and "miou_drop" in line and "+3.00pp" in line
    assert main(["diff", str(old), str(worse), "--margin", "0.05"]) == 0
    assert "no regression beyond the margin of 0.05" in capsys.readouterr().out
    assert main(["diff", str(old), str(worse), "--markdown"]) == 1
    text = capsys.readouterr().out
    assert text.startswith("## ❌ prunegate diff") and "| ❌ | clean | miou\\_drop |" in text


def test_a_classification_and_a_segmentation_report_compare_only_rules(
    tmp_path, capsys, base, segmentation_report, write_report
) -> None:
    segmentation, _ = segmentation_report
    diff = compare(base, segmentation)
    assert "one report gates classification, the other segmentation: only their rules are compared" in diff.notes
    assert diff.tasks == [] and not diff.regressed
    changes = {c.name: c.change for c in diff.rules}
    assert changes == {
        **{r.name: "added" for r in segmentation.rules},
        **{r.name: "removed" for r in base.rules},
    }
    old = write_report(tmp_path / "classification.json", base)
    new = write_report(tmp_path / "segmentation.json", segmentation)
    assert main(["diff", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "only their rules are compared" in out and "no task metric changed" in out
    # a rule of the same name still compares: one that passed and now fails regresses
    passing = next(r for r in base.rules if r.passed)
    failing = next(r for r in segmentation.rules if not r.passed)
    rules = [r.model_copy(update={"name": passing.name}) if r is failing else r for r in segmentation.rules]
    renamed = segmentation.model_copy(update={"rules": rules})
    flipped = compare(base, renamed)
    assert flipped.regressed and flipped.tasks == []
    assert [c.change for c in flipped.regressions] == ["now fails"]
    assert any(f"rule {passing.name!r} is defined differently" in note for note in flipped.notes)
    assert main(["diff", str(old), str(write_report(tmp_path / "renamed.json", renamed))]) == 1
