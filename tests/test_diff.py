from __future__ import annotations

import json
import re

import pytest
from markdown_it import MarkdownIt

from prunegate.cli import main
from prunegate.diff import REGRESSION_METRICS, TASK_METRICS, change_interval, compare, render_text
from prunegate.metrics.intervals import newcombe_paired, wilson
from prunegate.report.render.markdown import render_diff
from prunegate.report.schema import Interval


def with_task(report, name: str, **changes):
    """A copy of `report` whose task `name` has `changes` (agreement=..., accuracy_drop=...)."""
    tasks = [t.model_copy(update=changes) if t.name == name else t for t in report.tasks]
    return report.model_copy(update={"tasks": tasks})


def moved(report, name: str, metric: str, delta: float):
    """A copy of `report` whose task `name` measured `metric` `delta` higher, its interval moved with it."""
    task = next(t for t in report.tasks if t.name == name)
    intervals = dict(task.intervals)
    if metric in intervals:
        old = intervals[metric]
        intervals[metric] = old.model_copy(update={"low": old.low + delta, "high": old.high + delta})
    return with_task(report, name, **{metric: getattr(task, metric) + delta, "intervals": intervals})


def without_intervals(report):
    return report.model_copy(update={"tasks": [t.model_copy(update={"intervals": {}}) for t in report.tasks]})


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
    assert len(diff.tasks) == len(TASK_METRICS["classification"]) * len(base.tasks)
    assert f"0 task metrics changed in {len(base.tasks)} tasks" in render_text(diff)


@pytest.mark.parametrize(
    "metric, delta, change, regression, why",
    [
        # the sample report's intervals: agreement +-3 points, accuracy_drop +-2 points, so the
        # change's interval is about +-4.2 and +-2.8 points
        ("agreement", -0.05, "worse", True, "beyond the margin and the change's interval [-9.24pp, -0.76pp]"),
        ("agreement", -0.01, "worse", False, "within sampling noise"),  # beyond the margin, not the noise
        ("agreement", -0.004, "worse", False, "within the margin of 0.005"),
        ("agreement", +0.02, "better", False, ""),
        ("accuracy_drop", +0.03, "worse", True, "beyond the margin and the change's interval"),
        ("accuracy_drop", +0.02, "worse", False, "within sampling noise: the change's interval [-0.83pp, +4.83pp]"),
        ("accuracy_drop", +0.005, "worse", False, "within the margin"),  # exactly the margin is not beyond it
        ("accuracy_drop", -0.03, "better", False, ""),
        ("softmax_l2", +0.2, "worse", False, ""),  # shown, but not one of the deciding metrics
    ],
)
def test_task_metric_changes(base, metric, delta, change, regression, why) -> None:
    task = base.tasks[1]
    diff = compare(base, moved(base, task.name, metric, delta), margin=0.005)
    [moved_metric] = [c for c in diff.tasks if c.change != "same"]
    assert (moved_metric.task, moved_metric.metric, moved_metric.change) == (task.name, metric, change)
    assert moved_metric.regression == regression == diff.regressed
    assert moved_metric.delta == pytest.approx(delta)
    assert moved_metric.reason.startswith(why)


def test_without_intervals_the_margin_alone_decides(base) -> None:
    bare = without_intervals(base)
    diff = compare(bare, with_task(bare, "clean", agreement=bare.tasks[0].agreement - 0.01))
    [regression] = diff.regressions
    assert regression.reason == "beyond the margin (no interval in either report: the margin alone decides)"
    one_sided = compare(base, with_task(bare, "clean", agreement=bare.tasks[0].agreement - 0.01))
    assert "no interval in the new report" in one_sided.regressions[0].reason


@pytest.mark.parametrize("old, new, n_old, n_new", [(180, 170, 200, 200), (50, 61, 60, 80), (999, 950, 1000, 1000)])
def test_the_change_interval_of_two_wilson_intervals_is_newcombes_for_independent_proportions(
    old, new, n_old, n_new
) -> None:
    """MOVER on two Wilson intervals is Newcombe's hybrid score interval (method 10): statsmodels'."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    def interval(k: int, n: int) -> Interval:
        low, high = wilson(k, n, 0.95)
        return Interval(low=low, high=high, method="wilson")

    found = change_interval(old / n_old, interval(old, n_old), new / n_new, interval(new, n_new))
    expected = confint_proportions_2indep(new, n_new, old, n_old, method="newcomb", compare="diff", alpha=0.05)
    assert found == pytest.approx(expected, abs=1e-9)


def test_intervals_that_do_not_overlap_are_named(base) -> None:
    # -10 points: the new interval [0.84, 0.90] lies wholly below the old [0.94, 1.0]
    diff = compare(base, moved(base, "clean", "agreement", -0.10))
    [regression] = diff.regressions
    assert regression.reason.endswith("; the reports' intervals do not overlap")
    just = compare(base, moved(base, "clean", "agreement", -0.05))  # beyond the change's interval, overlapping
    assert just.regressed and "do not overlap" not in just.regressions[0].reason


def test_a_metric_undefined_on_one_side_is_named(base) -> None:
    """Defined before and undefined now, a deciding metric regresses (the new report no longer
    shows it within the margin); undefined before, it is named but does not decide."""
    lost = compare(base, with_task(base, "clean", agreement=None))
    [regression] = lost.regressions
    assert (regression.task, regression.metric, regression.change) == ("clean", "agreement", "now undefined")
    assert "✗ clean" in render_text(lost)
    found = compare(with_task(base, "clean", agreement=None), base)
    assert not found.regressed and [c.change for c in found.undefined] == ["now defined"]
    text = render_text(found)
    assert "undefined in one report (1):" in text and "! clean" in text
    quiet = compare(base, with_task(base, "clean", softmax_l2=None))  # not a deciding metric
    assert not quiet.regressed and [c.metric for c in quiet.undefined] == ["softmax_l2"]


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
    new = moved(base, "clean", "agreement", -0.05)
    text = render_diff(compare(base, new))
    html = MarkdownIt("commonmark").enable("table").render(text)
    # the rules, the task groups and the regressions
    assert html.count("<table>") == 3 and "regression" in text.splitlines()[0]
    assert re.search(r"<td[^>]*>clean</td>", html)


def test_diff_command_exit_codes(tmp_path, capsys, base, write_report) -> None:
    old = write_report(tmp_path / "old.json", base)
    same = write_report(tmp_path / "same.json", base)
    worse = write_report(tmp_path / "worse.json", moved(base, "clean", "agreement", -0.05))
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
    # the tiny report's six images give wide intervals: without them the margin alone decides
    report = without_intervals(segmentation_report[0])
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
    assert len(diff.tasks) == 5 * len(report.tasks) and "0 task metrics changed in 2 tasks" in render_text(diff)
    # a metric neither report defines (NaN) did not change either
    undefined = with_task(report, "clean", class_iou_drop=None, pixel_agreement=None)
    again = compare(undefined, undefined)
    assert not again.regressed and {c.change for c in again.tasks} == {"same"}


def test_segmentation_diff_command_exit_codes(tmp_path, capsys, segmentation_report, write_report) -> None:
    report = without_intervals(segmentation_report[0])  # the margin alone decides
    clean = report.tasks[0]
    old = write_report(tmp_path / "old.json", report)
    same = write_report(tmp_path / "same.json", report)
    worse = write_report(tmp_path / "worse.json", with_task(report, "clean", miou_drop=clean.miou_drop + 0.03))
    assert main(["diff", str(old), str(same)]) == 0
    assert "no regression" in capsys.readouterr().out
    assert main(["diff", str(old), str(worse)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("prunegate diff: REGRESSED: 1 regression (1 task metric worse")
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
    assert "only their rules are compared" in out and "no task compared" in out
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


# --- issue 20: a diff CI can trust -----------------------------------------------------------------


def measured(task, n: int, dense_right: int, newly_wrong: int, newly_right: int, disagree: int):
    """`task` as a run on n samples would record it: the metrics and their intervals from the
    counts (dense right, newly wrong / right, samples where the models disagree)."""
    both_right = dense_right - newly_wrong
    both_wrong = n - both_right - newly_wrong - newly_right
    pruned_right = both_right + newly_right
    agree = n - disagree
    low, high = newcombe_paired(both_right, newly_wrong, newly_right, both_wrong, 0.95)
    intervals = {"accuracy_drop": Interval(low=low, high=high, method="newcombe")}
    for metric, k in (("agreement", agree), ("dense_accuracy", dense_right), ("pruned_accuracy", pruned_right)):
        low, high = wilson(k, n, 0.95)
        intervals[metric] = Interval(low=low, high=high, method="wilson")
    dense = task.dense.model_copy(update={"accuracy": dense_right / n, "correct": dense_right})
    pruned = task.pruned.model_copy(update={"accuracy": pruned_right / n, "correct": pruned_right})
    return task.model_copy(
        update={
            "n": n,
            "dense": dense,
            "pruned": pruned,
            "accuracy_drop": (dense_right - pruned_right) / n,
            "agreement": agree / n,
            "intervals": intervals,
        }
    )


def run_at_200(base, newly_wrong: int, disagree: int):
    """`base` with every task measured on n = 200 (dense right on 180)."""
    tasks = [measured(t, 200, 180, newly_wrong, 2, disagree) for t in base.tasks]
    return base.model_copy(update={"tasks": tasks})


def test_one_image_at_n_200_stays_quiet_five_points_beyond_the_intervals_exit_1(
    tmp_path, capsys, base, write_report
) -> None:
    """The issue's acceptance test: reports that differ by one image (0.5 points at n = 200), or
    by two (1 point, beyond the margin but not the noise), stay quiet; 5 points beyond the
    intervals exit 1."""
    old = write_report(tmp_path / "old.json", run_at_200(base, newly_wrong=3, disagree=6))
    one = write_report(tmp_path / "one.json", run_at_200(base, newly_wrong=4, disagree=7))
    two = write_report(tmp_path / "two.json", run_at_200(base, newly_wrong=5, disagree=8))
    five = write_report(tmp_path / "five.json", run_at_200(base, newly_wrong=13, disagree=16))
    assert main(["diff", str(old), str(one)]) == 0
    assert main(["diff", str(old), str(two)]) == 0
    out = capsys.readouterr().out
    assert "no regression" in out and "within sampling noise" not in out  # the default is a summary
    assert main(["diff", str(old), str(two), "--verbose"]) == 0
    assert "within sampling noise: the change's interval" in capsys.readouterr().out
    assert main(["diff", str(old), str(five)]) == 1
    out = capsys.readouterr().out
    regressions = [line for line in out.splitlines() if line.lstrip().startswith("✗")]
    assert len(regressions) == 2 * len(base.tasks)  # accuracy_drop and agreement of every task
    assert all("beyond the margin and the change's interval" in line for line in regressions)


def count_text(pattern: str, text: str) -> int:
    return int(re.search(pattern, text).group(1))


def test_the_headline_counts_what_the_body_lists(base) -> None:
    """A rule that now fails, three task metrics worse beyond the noise, two within it: the
    headline's counts are the ✗ lines and the groups' changes, in text and in Markdown."""
    rule = base.rules[0]
    new = with_rule(base, rule.name, passed=False, status="fail", value=rule.threshold + 1e-4)
    for name, metric, delta in (
        ("clean", "agreement", -0.06),
        ("clean", "accuracy_drop", +0.04),
        ("corruption/fog/3", "agreement", -0.06),
        ("noise/uniform/0.1", "agreement", -0.01),
        ("corruption/fog/1", "accuracy_drop", +0.01),
    ):
        new = moved(new, name, metric, delta)
    diff = compare(base, new)
    text = render_text(diff)
    headline = text.splitlines()[0]
    assert headline.startswith("prunegate diff: REGRESSED: 4 regressions (1 rule now failing, 3 task metrics")
    marked = [line for line in text.splitlines() if line.lstrip().startswith("✗")]
    assert len(marked) == 4 == len(diff.regressions)
    changed = count_text(r"; (\d+) task metrics? changed in", headline)
    groups = [int(n) for n in re.findall(r"(\d+) metrics? changed, \d+ regressed", text)]
    assert changed == sum(groups) == len(diff.changed) == 5
    regressed = [int(n) for n in re.findall(r"metrics? changed, (\d+) regressed", text)]
    assert sum(regressed) == 3
    markdown = render_diff(diff)
    assert markdown.splitlines()[0].startswith("## ❌ prunegate diff: REGRESSED: 4 regressions")
    assert markdown.count("| ❌ |") == 4


def test_the_default_is_a_summary_and_verbose_lists_every_task(base) -> None:
    from conftest import _sample_report

    corruptions = ("fog", "contrast", "snow", "frost", "glass_blur")
    wide = _sample_report(failing=False, corruptions=corruptions, severities=(1, 2, 3, 4, 5))
    new = moved(wide, "corruption/snow/5", "agreement", -0.08)
    diff = compare(wide, new)
    short, long = render_text(diff), render_text(diff, verbose=True)
    names = [t.name for t in wide.tasks]
    unchanged = [name for name in names if name != "corruption/snow/5"]
    assert not any(name in short for name in unchanged if "/" in name and name.count("/") == 2)
    assert "corruption/snow  " in short and "✗ corruption/snow/5" in short
    assert len(short.splitlines()) < len(names)
    for name in names:
        assert re.search(rf"^\s+[✗✓! ]?\s*{re.escape(name)}\s", long, re.MULTILINE), name
    assert f"tasks ({len(names)}):" in long and long.count("no metric changed") == len(unchanged)
    markdown = render_diff(diff, verbose=True)
    assert f"### Tasks ({len(names)})" in markdown and markdown.count("no metric changed") == len(unchanged)


@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    """(private key, public key file, another public key file)."""
    from prunegate.report import keys

    folder = tmp_path_factory.mktemp("keys")
    key, other = keys.generate(), keys.generate()
    (folder / "release.pub").write_bytes(keys.public_pem(key.public_key()))
    (folder / "other.pub").write_bytes(keys.public_pem(other.public_key()))
    return key, folder / "release.pub", folder / "other.pub"


def write_signed(path, report, key):
    from prunegate.report.attest import envelope_json, sign, statement_bytes

    path.write_text(envelope_json(sign(statement_bytes(report), key)))
    return path


def test_with_a_key_both_signatures_are_checked_first(tmp_path, capsys, base, signing, write_report) -> None:
    key, public, other = signing
    old = write_signed(tmp_path / "old.json", base, key)
    new = write_signed(tmp_path / "new.json", moved(base, "clean", "agreement", -0.06), key)
    unsigned = write_report(tmp_path / "unsigned.json", base)
    assert main(["diff", str(old), str(new), "--key", str(public)]) == 1
    out = capsys.readouterr().out
    assert "signatures: both reports verify with key" in out and "✗ clean" in out
    assert main(["diff", str(old), str(new), "--key", str(public), "--markdown"]) == 1
    assert "Signatures: both reports verify with key" in capsys.readouterr().out

    def refused(*args: str) -> str:
        assert main(["diff", *args]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
        return captured.err.strip()

    err = refused(str(unsigned), str(new), "--key", str(public))
    assert err.startswith(f"error: {unsigned}: signatures: does not verify") and "unsigned" in err
    err = refused(str(old), str(new), "--key", str(other))  # another key: the first report is named
    assert err.startswith(f"error: {old}: signatures: does not verify") and "no signature verifies" in err
    altered = tmp_path / "altered.json"  # new's signature over old's statement
    envelope = json.loads(new.read_text())
    envelope["payload"] = json.loads(old.read_text())["payload"]
    altered.write_text(json.dumps(envelope))
    err = refused(str(old), str(altered), "--key", str(public))
    assert err.startswith(f"error: {altered}: signatures: does not verify")
    # without --key the signature is not looked at
    assert main(["diff", str(unsigned), str(new)]) == 1


def test_many_regressions_are_listed_up_to_a_limit_and_counted(base) -> None:
    from conftest import _sample_report
    from prunegate.diff import LISTED

    corruptions = ("fog", "contrast", "snow", "frost", "glass_blur")
    wide = _sample_report(failing=False, corruptions=corruptions, severities=(1, 2, 3, 4, 5))
    new = wide
    for task in wide.tasks:
        new = moved(new, task.name, "agreement", -0.08)
    diff = compare(wide, new)
    text = render_text(diff)
    total = count_text(r"REGRESSED: (\d+) regressions", text)
    marked = [line for line in text.splitlines() if line.lstrip().startswith("✗")]
    more = count_text(r"… and (\d+) more \(--verbose lists every task\)", text)
    assert total == len(wide.tasks) == len(marked) + more and len(marked) == LISTED
    assert len(text.splitlines()) < 2 * LISTED
    assert render_text(diff, verbose=True).count("✗") == total
    markdown = render_diff(diff)
    assert markdown.count("| ❌ |") == LISTED and f"… and {more} more" in markdown


# --- issue 19: the beyond-top-1 metrics -----------------------------------------------------------


def beyond_top1(report):
    """`report` with every task's top-5, calibration, divergence, selective-risk and subgroup
    numbers, as a report since issue 19 has them (intervals on top5_drop and ece_increase)."""
    from prunegate.report.schema import GroupResult, SelectiveRisk

    tasks = []
    for t in report.tasks:
        sides = {
            side: getattr(t, side).model_copy(update={"top5": top5, "ece": ece, "nll": nll, "brier": brier})
            for side, top5, ece, nll, brier in (("dense", 0.99, 0.03, 0.3, 0.15), ("pruned", 0.98, 0.04, 0.35, 0.17))
        }
        group = GroupResult(name="animals", n=100, dense_accuracy=0.9, pruned_accuracy=0.88, drop=0.02)
        intervals = {
            **t.intervals,
            "top5_drop": Interval(low=-0.01, high=0.03, method="newcombe"),
            "ece_increase": Interval(low=-0.01, high=0.03, method="bootstrap"),
        }
        tasks.append(
            t.model_copy(
                update={
                    **sides,
                    "top5_drop": 0.01,
                    "ece_increase": 0.01,
                    "nll_increase": 0.05,
                    "brier_increase": 0.02,
                    "kl_divergence": 0.04,
                    "probability_loyalty": 0.95,
                    "selective_risk": [SelectiveRisk(coverage=0.8, dense=0.05, pruned=0.06, increase=0.01)],
                    "group_accuracy_drop": 0.02,
                    "worst_group": group,
                    "groups": [group],
                    "intervals": intervals,
                }
            )
        )
    return report.model_copy(update={"tasks": tasks})


def test_the_new_metrics_are_compared_and_three_decide() -> None:
    metrics = TASK_METRICS["classification"]
    assert {m: metrics[m] for m in ("pruned_top5", "probability_loyalty")} == {m: "higher" for m in
            ("pruned_top5", "probability_loyalty")}  # fmt: skip
    lower = ("top5_drop", "ece_increase", "pruned_ece", "pruned_nll", "pruned_brier", "kl_divergence",
             "selective_risk_increase@0.8", "group_accuracy_drop")  # fmt: skip
    assert all(metrics[m] == "lower" for m in lower)
    assert {"top5_drop", "ece_increase", "group_accuracy_drop"} <= set(REGRESSION_METRICS["classification"])
    assert not {"pruned_nll", "kl_divergence", "selective_risk_increase@0.8"} & set(
        REGRESSION_METRICS["classification"]
    )


@pytest.mark.parametrize(
    "metric, delta, change, regression, why",
    [
        ("top5_drop", +0.05, "worse", True, "beyond the margin and the change's interval"),
        ("top5_drop", +0.02, "worse", False, "within sampling noise"),
        ("ece_increase", +0.05, "worse", True, "beyond the margin and the change's interval"),
        ("ece_increase", -0.05, "better", False, ""),  # a better calibrated pruned model
        ("group_accuracy_drop", +0.03, "worse", True, "beyond the margin (no interval in either report"),
        ("group_accuracy_drop", +0.004, "worse", False, "within the margin"),
        ("kl_divergence", +0.2, "worse", False, ""),  # compared, not deciding
        ("probability_loyalty", -0.1, "worse", False, ""),
    ],
)
def test_beyond_top1_metric_changes(base, metric, delta, change, regression, why) -> None:
    rich = beyond_top1(base)
    task = rich.tasks[1]
    diff = compare(rich, moved(rich, task.name, metric, delta), margin=0.005)
    [moved_metric] = [c for c in diff.tasks if c.change != "same"]
    assert (moved_metric.task, moved_metric.metric, moved_metric.change) == (task.name, metric, change)
    assert moved_metric.regression == regression == diff.regressed
    assert moved_metric.reason.startswith(why)


def test_model_sides_and_selective_risk_are_compared_through_their_records(base) -> None:
    rich = beyond_top1(base)
    clean = rich.tasks[0]
    worse_nll = clean.pruned.model_copy(update={"nll": 0.5})
    risk = clean.selective_risk[0].model_copy(update={"increase": 0.04})
    new = with_task(rich, clean.name, pruned=worse_nll, selective_risk=[risk])
    changes = {c.metric: c for c in compare(rich, new).changed}
    assert set(changes) == {"pruned_nll", "selective_risk_increase@0.8"}
    assert changes["pruned_nll"].delta == pytest.approx(0.15) and changes["pruned_nll"].delta_text == "+0.1500"
    assert changes["selective_risk_increase@0.8"].delta_text == "+3.00pp"
    assert not any(c.regression for c in changes.values())


def test_a_report_from_before_the_new_metrics_still_compares(base) -> None:
    """The sample report has none of them (None): against a report that has them, they are
    'now defined' (named, not deciding); the other way round a deciding one is 'now undefined'."""
    rich = beyond_top1(base)
    forward = compare(base, rich)
    assert not forward.regressed
    defined = {c.metric for c in forward.undefined}
    assert defined == set(TASK_METRICS["classification"]) - {"accuracy_drop", "agreement", "pruned_accuracy",
                                                             "dense_accuracy", "softmax_l2"}  # fmt: skip
    assert {c.change for c in forward.undefined} == {"now defined"}
    assert not compare(base, base).regressed and not compare(rich, rich).regressed
    back = compare(rich, base)
    assert {c.metric for c in back.task_regressions} == {"top5_drop", "ece_increase", "group_accuracy_drop"}
    assert all(c.change == "now undefined" for c in back.task_regressions)
    render_text(back, verbose=True)  # renders without the fields
