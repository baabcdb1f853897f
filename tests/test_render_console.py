"""The console renderer shows the report's own text literally: a report may come from anyone, and
its names must neither drive the terminal (escape sequences, line breaks, bidi overrides) nor be
read as rich markup — in the rendering, and again when the CLI prints the rendering. The tasks
table shows the metrics of the report's kind (accuracies, or mIoU for segmentation)."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from prunegate.report.render import console
from prunegate.report.render.common import format_metric

ESCAPE = "a\x1b[2Jb"
MARKUP = "[bold red]x[/]"
HOSTILE = f"{ESCAPE} {MARKUP}\r\nerror: forged\u202e\x85\u2028"
SHOWN = "a\\x1b[2Jb [bold red]x[/]\\r\\nerror: forged\\u202e\\x85\\u2028"
NOT_SGR = re.compile(r"\x1b(?!\[[0-9;]*m)")  # any escape but the colours rich itself writes


def hostile_report(sample_report):
    """The sample report with HOSTILE in every name the console shows."""
    report = sample_report(failing=True, corruptions=("fog",))
    rules = [
        r.model_copy(
            update={
                "name": f"{HOSTILE}{i}",
                "per_task": [t.model_copy(update={"task": f"{t.task}{HOSTILE}"}) for t in r.per_task],
            }
        )
        for i, r in enumerate(report.rules)
    ]
    tasks = [t.model_copy(update={"name": f"{t.name}{HOSTILE}"}) for t in report.tasks]
    models = report.models.model_copy(
        update={
            role: getattr(report.models, role).model_copy(
                update={"path": f"/x/{HOSTILE}.onnx", "provider": HOSTILE, "format": HOSTILE, "device": HOSTILE}
            )
            for role in ("dense", "pruned")
        }
    )
    summary = report.corruption_summary.model_copy(
        update={
            "per_corruption": [c.model_copy(update={"name": HOSTILE}) for c in report.corruption_summary.per_corruption]
        }
    )
    return report.model_copy(
        update={
            "rules": rules,
            "tasks": tasks,
            "models": models,
            "corruption_summary": summary,
            "tool": {"version": HOSTILE},
            "policy": report.policy.model_copy(update={"name": HOSTILE}),
        }
    )


def _assert_literal(text: str, expected_count: int) -> None:
    assert not NOT_SGR.search(text), "an escape sequence from the report reached the output"
    for char in "\r\u202e\x85\u2028":
        assert char not in text
    assert text.count("a\\x1b[2Jb [bold red]x[/]") >= expected_count
    assert not any(line.lstrip("│┃ ").startswith("error: forged") for line in text.splitlines())


@pytest.mark.parametrize("color", [False, True])
def test_every_name_from_the_report_is_shown_literally(sample_report, color: bool) -> None:
    report = hostile_report(sample_report)
    text = console.render(report, color=color, width=400, verbose=True)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    _assert_literal(text, 1)
    assert SHOWN in plain
    # the head (version, policy), both models, every task, every rule, the mCE line, the verdict
    assert plain.count(SHOWN) >= 2 + 2 + len(report.tasks) + len(report.rules) + 1
    assert f"policy {SHOWN}" in plain and f"worst {SHOWN} CE" in plain


@pytest.mark.parametrize("color", [False, True])
def test_the_cli_printing_a_rendering_does_not_read_it_as_markup(sample_report, color: bool) -> None:
    """gating and `report show` hand the rendering to a rich console's print: it must come out as
    it went in (markup in a name, shown literally in the rendering, must not become a style)."""
    from prunegate.cli.common import SafeConsole

    rendered = console.render(hostile_report(sample_report), color=color, width=400, verbose=True)
    assert isinstance(rendered, console.Rendered) and isinstance(rendered, str)
    buffer = io.StringIO()
    out = SafeConsole(
        file=buffer,
        force_terminal=color,
        color_system="standard" if color else None,
        highlight=False,
        soft_wrap=True,
        width=400,
    )
    out.print(rendered, end="")
    assert buffer.getvalue() == rendered


def test_the_verdict_line_is_markup_with_the_names_escaped(sample_report) -> None:
    line = console.verdict_line(hostile_report(sample_report))
    buffer = io.StringIO()
    Console(file=buffer, width=400, color_system=None).print(line)
    printed = buffer.getvalue()
    assert printed.startswith("FAIL: ") and SHOWN in printed and MARKUP in printed
    assert "\x1b" not in printed


def test_plain_names_are_unchanged(sample_report) -> None:
    report = sample_report(failing=True)
    text = console.render(report, width=200, verbose=True)
    assert "noise agreement" in text and "noise/uniform/0.1" in text and "dense.onnx" in text
    assert "\\x" not in text and "\\[" not in text


def test_prune_potential_group_names_are_shown_literally() -> None:
    result = {
        "delta": 0.005,
        "members": [{"prune_ratio": 0.5}],
        "groups": [{"name": HOSTILE, "dense_error": 0.1, "errors": [0.12], "potential": 0.5}],
    }
    for color in (False, True):
        text = console.render_potential(result, color=color, width=200)
        _assert_literal(text, 1)


# --- segmentation (issue 15) --------------------------------------------------------------------


def header_cells(text: str) -> list[str]:
    """The cells of the first table header row (the tasks table) of a plain rendering."""
    line = next(line for line in text.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in line.strip("┃").split("┃")]


def table_line(text: str, name: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"│ {name} "))


def test_segmentation_tasks_show_miou_columns(segmentation_report) -> None:
    report, _ = segmentation_report
    text = console.render(report, width=250, verbose=True)
    assert header_cells(text) == [
        "task",
        "n",
        "dense mIoU",
        "pruned mIoU",
        "mIoU drop",
        "95% CI",
        "pixel agreement",
        "worst class",
    ]
    assert not any("acc" in cell for cell in header_cells(text))  # no accuracy column
    for task in report.tasks:
        cells = [c.strip() for c in table_line(text, task.name).strip("│").split("│")]
        interval = task.intervals["miou_drop"]
        worst = task.worst_class_iou
        assert cells[1:] == [
            str(task.n),
            format_metric("dense_miou", task.dense.miou),
            format_metric("pruned_miou", task.pruned.miou),
            format_metric("miou_drop", task.miou_drop),
            console.format_interval("miou_drop", interval.low, interval.high),
            format_metric("pixel_agreement", task.pixel_agreement),
            f"class {worst.label} {format_metric('class_iou_drop', worst.drop)}",  # no class names
        ]
    assert "non-finite" not in text  # none in this report


def test_segmentation_non_finite_pixels_and_class_names(segmentation_report) -> None:
    report, _ = segmentation_report
    first = report.tasks[0]
    broken = first.model_copy(
        update={
            "dense": first.dense.model_copy(update={"nonfinite": 1234}),
            "worst_class_iou": first.worst_class_iou.model_copy(update={"name": "[red]road[/]"}),
        }
    )
    text = console.render(report.model_copy(update={"tasks": [broken, *report.tasks[1:]]}), width=250, verbose=True)
    assert header_cells(text)[-1] == "non-finite px"
    line = table_line(text, first.name)
    assert line.rstrip("│ ").endswith("1,234 / 0")
    assert f"[red]road[/] {format_metric('class_iou_drop', first.worst_class_iou.drop)}" in line  # literally
    assert table_line(text, report.tasks[1].name).rstrip("│ ").endswith("0 / 0")


def test_segmentation_tasks_are_summarised_per_corruption_by_default(segmentation_report) -> None:
    report, _ = segmentation_report
    corruption = report.tasks[1]
    drops = (0.01, 0.07, 0.03)
    many = [
        corruption.model_copy(update={"name": f"corruption/contrast/{i}", "group": "contrast", "miou_drop": drop})
        for i, drop in enumerate(drops, 1)
    ]
    text = console.render(report.model_copy(update={"tasks": [report.tasks[0], *many]}), width=250)
    assert header_cells(text)[:8] == [
        "group",
        "tasks",
        "dense mIoU",
        "pruned mIoU",
        "mIoU drop",
        "worst",
        "worst task",
        "pixel agreement",
    ]
    cells = [c.strip() for c in table_line(text, "contrast").strip("│").split("│")]
    assert cells[1:7] == [
        "3",
        format_metric("dense_miou", corruption.dense.miou),
        format_metric("pruned_miou", corruption.pruned.miou),
        format_metric("miou_drop", sum(drops) / 3),
        format_metric("miou_drop", 0.07),
        "corruption/contrast/2",
    ]


def test_segmentation_corruption_line_says_its_error(segmentation_report, sample_report) -> None:
    report, _ = segmentation_report
    summary = report.corruption_summary
    per = [c.model_copy(update={"dense_error": 0.2, "ce": 1.5}) for c in summary.per_corruption]
    report = report.model_copy(
        update={"corruption_summary": summary.model_copy(update={"per_corruption": per, "mce": 1.5})}
    )
    assert console.corruption_line(report) == (
        f"corruptions (error: 1 - mIoU): mCE (pruned errors / dense errors) 1.500; worst {per[0].name} CE 1.500"
    )
    # classification's line is as it was
    assert console.corruption_line(sample_report(corruptions=("fog",))).startswith("corruptions: mCE (pruned")


def test_classification_tasks_keep_their_columns(sample_report) -> None:
    text = console.render(sample_report(failing=True), width=250, verbose=True)
    assert header_cells(text) == ["task", "n", "dense", "pruned", "drop", "95% CI", "agree", "broke", "err κ"]
    assert "mIoU" not in text and "worst class" not in text


# --- a console that fits (issue 20) -------------------------------------------------------------

LONG_NAMES = ("elastic_transform", "jpeg_compression")  # the longest task names of the benchmark


def long_report(sample_report):
    """A failing report whose corruption tasks have the benchmark's longest names, five severities."""
    return sample_report(failing=True, corruptions=LONG_NAMES, severities=(1, 2, 3, 4, 5))


def lines_of(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def rows_of(text: str) -> list[list[str]]:
    """The body rows of every table in a plain rendering, as their cells."""
    return [[c.strip() for c in line.strip("│").split("│")] for line in text.splitlines() if line.startswith("│")]


@pytest.mark.parametrize("width", [80, 160])
@pytest.mark.parametrize("verbose", [False, True])
def test_no_line_is_wider_than_the_console_and_no_name_is_cut(sample_report, width: int, verbose: bool) -> None:
    from rich.cells import cell_len

    report = long_report(sample_report)
    text = console.render(report, width=width, verbose=verbose, before_verdict=("wrote prunegate-report.json",))
    assert max(cell_len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    cells = {cell for row in rows_of(text) for cell in row}
    shown = {t.name for t in report.tasks} if verbose else {f"corruption/{c}/5" for c in LONG_NAMES}
    assert shown <= cells  # each a whole cell: not cut, not folded onto two lines


def test_a_wider_console_shows_more_columns(sample_report) -> None:
    report = long_report(sample_report)
    for verbose in (False, True):
        narrow = header_cells(console.render(report, width=80, verbose=verbose))
        wide = header_cells(console.render(report, width=160, verbose=verbose))
        assert set(narrow) < set(wide)
        assert {"drop"} <= set(narrow) and ({"task"} if verbose else {"group", "worst", "worst task"}) <= set(narrow)


def test_tasks_are_summarised_per_corruption_and_noise_kind_by_default(sample_report) -> None:
    report = long_report(sample_report)
    summary = console.render(report, width=160)
    groups = [row[0] for row in rows_of(summary)][: 2 + len(LONG_NAMES)]
    assert groups == ["clean", "noise/uniform", *LONG_NAMES]
    elastic = next(row for row in rows_of(summary) if row[0] == "elastic_transform")
    header = header_cells(summary)
    severities = [t for t in report.tasks if t.group == "elastic_transform"]
    worst = max(severities, key=lambda t: t.accuracy_drop)
    assert elastic[header.index("tasks")] == "5"
    assert elastic[header.index("drop")] == format_metric("accuracy_drop", sum(t.accuracy_drop for t in severities) / 5)
    assert elastic[header.index("worst")] == format_metric("accuracy_drop", worst.accuracy_drop)
    assert elastic[header.index("worst task")] == worst.name == "corruption/elastic_transform/5"
    assert not any(row[0] == "corruption/elastic_transform/3" for row in rows_of(summary))
    every = console.render(report, width=160, verbose=True)
    assert [row[0] for row in rows_of(every)][: len(report.tasks)] == [t.name for t in report.tasks]


@pytest.mark.parametrize("width", [80, 160])
def test_the_failed_rules_and_the_verdict_are_printed_last(sample_report, width: int) -> None:
    report = long_report(sample_report)
    text = console.render(report, width=width, verbose=True, before_verdict=(f"wrote {HOSTILE}.json",))
    plain = lines_of(text)
    end_of_tables = max(i for i, line in enumerate(plain) if line.startswith("└"))
    assert plain[end_of_tables - 1].startswith("│ PASS")  # the rules table is the last table
    tail = " ".join(plain[end_of_tables + 1 :])
    assert plain[-1].startswith("FAIL: 2 of 3 rules failed")
    assert tail.startswith(f"wrote {SHOWN}.json")  # the caller's line, shown literally
    failed = tail.index("failed noise agreement: agreement 83.00%")
    assert "needs ≥ 90.00%; worst noise/uniform/0.3 83.00%" in tail[failed:]
    assert failed < tail.index("undecided corruption drop") < tail.index("FAIL: ")


def test_a_passing_report_ends_with_its_verdict(sample_report) -> None:
    text = console.render(sample_report(failing=False), width=80, before_verdict=("wrote r.json",))
    assert lines_of(text)[-2:] == ["wrote r.json", "PASS: all 3 rules passed"]


def test_a_name_too_long_for_the_width_folds_instead_of_being_cut(sample_report) -> None:
    report = sample_report(failing=True)
    long_rule = "a-rule-name-" * 10
    report = report.model_copy(update={"rules": [report.rules[0].model_copy(update={"name": long_rule})]})
    text = console.render(report, width=80)
    rules = text[text.index("Rules") :]
    assert "…" not in text and "".join(row[1] for row in rows_of(rules)) == long_rule  # folded, whole


@pytest.mark.parametrize("width", [80, 160])
def test_the_summary_and_the_written_files_show_names_literally(sample_report, width: int) -> None:
    text = console.render(hostile_report(sample_report), color=True, width=width, before_verdict=(f"wrote {HOSTILE}",))
    _assert_literal(text, 1)


# --- beyond top-1 (issue 19): the columns the rules ask for -------------------------------------

ASKED = ["ECE +", "top-5 drop", "sel. risk +@0.9", "worst group"]


def test_rules_beyond_top1_add_their_columns_and_none_otherwise(sample_report) -> None:
    report = sample_report(failing=True, beyond=True)
    wide = console.render(report, width=400, verbose=True)
    header = header_cells(wide)
    assert [h for h in header if h in ASKED] == ASKED
    assert "NLL +" not in header and "KL" not in header and "loyalty" not in header  # no rule asks
    clean = next(row for row in rows_of(wide) if row[0] == "clean")
    task = report.tasks[0]
    assert clean[header.index("ECE +")] == format_metric("ece_increase", task.ece_increase) == "+1.25pp"
    assert clean[header.index("ECE +") + 1] == "[+0.25, +2.25]pp"  # its interval follows it
    assert clean[header.index("sel. risk +@0.9")] == "+0.35pp"  # the 0.9 coverage, not the 0.8
    assert clean[header.index("worst group")] == "cool +2.50pp"
    # the rules table names the coverage and formats the thresholds in their units
    assert "selective_risk_increase@0.9" in wide and "≥ -5.00pp" in wide
    # the same report without the rules: no column of them, as a policy without them always rendered
    plain = report.model_copy(update={"rules": report.rules[:3]})
    for verbose in (False, True):
        assert not set(ASKED) & set(header_cells(console.render(plain, width=400, verbose=verbose)))


@pytest.mark.parametrize("verbose", [False, True])
def test_asked_columns_fit_80_columns_first_asked_kept_longest(sample_report, verbose: bool) -> None:
    from rich.cells import cell_len

    for corruptions in (LONG_NAMES, ("fog", "contrast")):
        report = sample_report(failing=True, beyond=True, corruptions=corruptions)
        text = console.render(report, width=80, verbose=verbose)
        assert max(cell_len(line) for line in text.splitlines()) <= 80 and "…" not in text
    header = header_cells(text)  # of fog and contrast: room for some of the asked columns
    assert "ECE +" in header and "drop" in header  # the first asked outlasts agreement
    assert "agree" not in header
    shown = [h for h in ASKED if h in header]
    assert shown == ASKED[: len(shown)]  # the last asked go first


def test_metric_units_beyond_top1() -> None:
    assert format_metric("nll_increase", 0.0312) == "+0.031 nats"
    assert format_metric("kl_divergence", 0.0312) == "0.031 nats"
    assert format_metric("brier_increase", -0.0123) == "-0.0123"
    assert format_metric("dense_brier", 0.0123) == "0.0123"
    assert format_metric("ece_increase", -0.05) == "-5.00pp"
    assert format_metric("dense_ece", 0.05) == "5.00%"
    assert format_metric("selective_risk_increase@0.9", 0.01) == "+1.00pp"
    assert format_metric("probability_loyalty", 0.9) == "90.00%"
    assert console.format_interval("nll_increase", 0.01, 0.052) == "[+0.010, +0.052] nats"
    assert console.format_interval("brier_increase", -0.01, 0.02) == "[-0.0100, +0.0200]"


def test_a_group_name_from_the_report_is_shown_literally(sample_report) -> None:
    report = sample_report(failing=True, beyond=True)
    worst = report.tasks[0].worst_group.model_copy(update={"name": HOSTILE})
    tasks = [report.tasks[0].model_copy(update={"worst_group": worst}), *report.tasks[1:]]
    text = console.render(report.model_copy(update={"tasks": tasks}), width=400, verbose=True)
    _assert_literal(text, 1)
