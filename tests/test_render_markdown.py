from __future__ import annotations

import re

from markdown_it import MarkdownIt

from prunegate.report.render import common, markdown


def gfm(text: str) -> str:
    """HTML as a GitHub-flavoured renderer makes it (CommonMark + GFM tables and strikethrough)."""
    return MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(text)


def table_rows(html: str, index: int = 0) -> list[list[str]]:
    tables = re.findall(r"<table>(.*?)</table>", html, re.S)
    rows = re.findall(r"<tr>(.*?)</tr>", tables[index], re.S)
    cells = r"<t[hd][^>]*>(.*?)</t[hd]>"
    return [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(cells, row, re.S)] for row in rows]


def test_failing_report_verdict_first_then_failed_rules(sample_report) -> None:
    report = sample_report(failing=True)
    text = markdown.render(report)
    first = text.splitlines()[0]
    assert first.startswith("## ") and "FAIL" in first and report.policy.name in first
    html = gfm(text)
    assert html.count("<table>") == 2  # rules, and the folded tasks
    rows = table_rows(html)
    header, body = rows[0], rows[1:]
    assert header[:6] == ["status", "rule", "metric", "over", "value", "threshold"]
    assert [r[1] for r in body] == ["noise agreement", "corruption drop", "clean accuracy"]  # failed first
    assert "FAIL" in body[0][0] and "UNDECIDED" in body[1][0] and "PASS" in body[2][0]
    assert all(len(r) == len(header) for r in body)
    assert "≥ 90.00%" in body[0][header.index("threshold")]
    assert "about 4,200 samples per task" in text
    tasks = table_rows(html, 1)
    assert [r[0] for r in tasks[1:]] == [t.name for t in report.tasks]


def test_passing_report_without_optional_fields(sample_report) -> None:
    report = sample_report(failing=False, extras=False)
    text = markdown.render(report)
    assert "PASS" in text.splitlines()[0] and "All 3 rules passed." in text
    header = table_rows(gfm(text))[0]
    assert "interval" not in header and "bound" not in header


def test_cells_with_pipes_and_markup_do_not_break_the_table(sample_report) -> None:
    report = sample_report(failing=True)
    rules = [r.model_copy(update={"name": f"a|b <i>*{r.name}*</i>"}) for r in report.rules]
    report = report.model_copy(update={"rules": rules})
    html = gfm(markdown.render(report))
    rows = table_rows(html)
    assert all(len(r) == len(rows[0]) for r in rows)
    assert rows[1][1] == "a|b &lt;i&gt;*noise agreement*&lt;/i&gt;"
    assert "<i>" not in html.split("<table>")[1]


def test_many_tasks_are_summarised_per_group(sample_report) -> None:
    names = ("fog", "contrast", "brightness", "snow", "frost", "zoom_blur", "pixelate", "saturate", "spatter")
    report = sample_report(corruptions=names, severities=(1, 2, 3, 4, 5))
    assert len(report.tasks) > markdown.MAX_TASK_ROWS
    tasks = table_rows(gfm(markdown.render(report)), 1)
    assert tasks[0][0] == "task group"
    assert [r[0] for r in tasks[1:]][:3] == ["clean", "noise (mean of 2)", "fog (mean of 5)"]


def test_report_markdown_command(tmp_path, capsys, sample_report, write_report) -> None:
    from prunegate.cli import main

    path = write_report(tmp_path / "report.json", sample_report(failing=True))
    assert main(["report", "markdown", str(path)]) == 0
    out = capsys.readouterr().out
    assert out == markdown.render(sample_report(failing=True))  # printed as is: no console markup
    target = tmp_path / "summary.md"
    assert main(["report", "markdown", str(path), "-o", str(target)]) == 0
    assert target.read_text() == out
    (tmp_path / "bad.json").write_text("{}")
    assert main(["report", "markdown", str(tmp_path / "bad.json")]) == 2


def test_control_characters_in_names_are_escaped_not_printed(sample_report) -> None:
    """`prunegate report markdown` prints to the terminal: a report's names must not drive it."""
    report = sample_report(failing=True)
    rules = [r.model_copy(update={"name": f"{r.name}\x1b[2J\u202e\x9b"}) for r in report.rules]
    policy = report.policy.model_copy(update={"name": "p\x1b]0;t\x07"})
    report = report.model_copy(update={"rules": rules, "policy": policy})
    text = markdown.render(report)
    assert not any(c in text for c in "\x1b\u202e\x9b\x07")
    assert "noise agreement\\\\x1b\\[2J\\\\u202e\\\\x9b" in text  # markdown-escaped, so GFM shows \x1b[2J...
    assert "noise agreement\\x1b[2J\\u202e\\x9b" in gfm(text)


# --- segmentation (issue 15) --------------------------------------------------------------------


def test_segmentation_tasks_show_miou_columns(segmentation_report) -> None:
    report, _ = segmentation_report
    text = markdown.render(report)
    html = gfm(text)
    rules = table_rows(html)
    assert [r[2] for r in rules[1:]] == ["miou_drop", "pixel_agreement"]
    header, *body = table_rows(html, 1)
    assert header == ["task", "n", "dense mIoU", "pruned mIoU", "mIoU drop", "95% CI", "pixel agreement", "worst class"]
    assert not any("acc" in cell for cell in header)  # no accuracy column
    assert "n/a" not in text
    for row, task in zip(body, report.tasks, strict=True):
        worst = task.worst_class_iou
        assert row == [
            task.name,
            str(task.n),
            common.format_metric("dense_miou", task.dense.miou),
            common.format_metric("pruned_miou", task.pruned.miou),
            common.format_metric("miou_drop", task.miou_drop),
            common.format_interval("miou_drop", task.intervals["miou_drop"]),
            common.format_metric("pixel_agreement", task.pixel_agreement),
            f"class {worst.label} {common.format_metric('class_iou_drop', worst.drop)}",
        ]


def test_segmentation_non_finite_pixels_and_groups(segmentation_report) -> None:
    report, _ = segmentation_report
    corruption = report.tasks[1]
    broken = corruption.model_copy(update={"pruned": corruption.pruned.model_copy(update={"nonfinite": 7})})
    many = [broken.model_copy(update={"name": f"corruption/contrast/{i}"}) for i in range(markdown.MAX_TASK_ROWS)]
    html = gfm(markdown.render(report.model_copy(update={"tasks": [report.tasks[0], *many]})))
    header, clean, group = table_rows(html, 1)
    assert header == ["task group", "n", "dense mIoU", "pruned mIoU", "mIoU drop", "pixel agreement"] + [
        "worst class",
        "non-finite px",
    ]  # no interval for a group's mean
    assert clean[0] == "clean" and clean[-1] == "0 / 0"
    assert group[0] == f"contrast (mean of {len(many)})" and group[-1] == f"0 / {7 * len(many)}"
    assert group[4] == common.format_metric("miou_drop", corruption.miou_drop)


def test_classification_tasks_keep_their_columns(sample_report) -> None:
    html = gfm(markdown.render(sample_report(failing=True)))
    assert table_rows(html, 1)[0] == ["task", "n", "dense acc", "pruned acc", "drop", "agreement"]
    assert "mIoU" not in html


def test_rules_beyond_top1_add_their_columns(sample_report) -> None:
    report = sample_report(failing=True, beyond=True)
    html = gfm(markdown.render(report))
    header, *rows = table_rows(html, 1)
    asked = ["ECE +", "top-5 drop", "sel. risk +@0.9", "worst group"]
    assert header == ["task", "n", "dense acc", "pruned acc", "drop", "agreement", *asked]  # all, in rule order
    clean = dict(zip(header, rows[0]))
    assert clean["ECE +"] == "+1.25pp [+0.25, +2.25]pp" and clean["worst group"] == "cool +2.50pp [+1.50, +3.50]pp"
    rules = table_rows(html)
    metrics = {r[1]: r[2] for r in rules[1:]}
    assert metrics["selective risk"] == "selective_risk_increase@0.9"  # the coverage named
    calibration = next(r for r in rules if r[1] == "calibration")
    assert calibration[rules[0].index("threshold")] == "≥ -5.00pp"  # a signed threshold
    # no such rule: no such column
    plain = report.model_copy(update={"rules": report.rules[:3]})
    assert table_rows(gfm(markdown.render(plain)), 1)[0] == [
        "task",
        "n",
        "dense acc",
        "pruned acc",
        "drop",
        "agreement",
    ]
