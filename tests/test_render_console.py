"""The console renderer shows the report's own text literally: a report may come from anyone, and
its names must neither drive the terminal (escape sequences, line breaks, bidi overrides) nor be
read as rich markup — in the rendering, and again when the CLI prints the rendering."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from prunegate.report.render import console

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
    text = console.render(report, color=color, width=400)
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

    rendered = console.render(hostile_report(sample_report), color=color, width=400)
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
    text = console.render(report, width=200)
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
