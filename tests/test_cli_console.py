"""What the commands print (issue 20): a console that fits its width, the files written named,
the verdict last, a spinner while the models load, and a progress count that says what it counts."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.progress import Progress

from prunegate.cli import common, main

NOISE = {"noise": [{"kind": "gaussian", "levels": [0.1, 0.2]}]}


def first_cells(text: str) -> list[str]:
    """The first cell of every table row of a plain rendering."""
    return [line.strip("│").split("│")[0].strip() for line in text.splitlines() if line.startswith("│")]


def test_check_fits_80_columns_names_every_file_and_ends_with_the_verdict(
    tmp_path: Path, capsys, gate_case, monkeypatch
) -> None:
    policy = gate_case("zero", suite=NOISE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    outputs = ["--html", "report.html", "--markdown", "report.md", "--junit", "report.xml"]
    assert main(["check", "-p", str(policy), "-o", "report.json", *outputs]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert max(cell_len(line) for line in out.splitlines()) <= 80
    wrote = "wrote report.json (UNSIGNED: pass --key to sign), report.html, report.md, report.xml"
    assert wrote in " ".join(line.strip() for line in lines)  # (wrapped at 80)
    assert lines[-1].startswith("FAIL: ")
    assert "noise/gaussian" in first_cells(out) and "noise/gaussian/0.1" not in first_cells(out)  # a summary row

    monkeypatch.setenv("COLUMNS", "160")
    assert main(["report", "show", "report.json"]) == 0
    summary = capsys.readouterr().out
    assert main(["report", "show", "report.json", "--verbose"]) == 0
    every = capsys.readouterr().out
    assert [c for c in first_cells(every) if c.startswith("noise/")] == ["noise/gaussian/0.1", "noise/gaussian/0.2"]
    assert [c for c in first_cells(summary) if c.startswith("noise/")] == ["noise/gaussian"]
    for text in (summary, every):
        lines = [line for line in text.splitlines() if line.strip()]
        assert max(cell_len(line) for line in lines) <= 160
        assert "report.json: UNSIGNED" in lines and lines[-1].startswith("FAIL: ")


def test_check_verbose_shows_every_task(tmp_path: Path, capsys, gate_case, monkeypatch) -> None:
    policy = gate_case("zero", suite=NOISE)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["check", "-p", str(policy), "-o", str(tmp_path / "r.json"), "--verbose"]) == 1
    out = capsys.readouterr().out
    assert first_cells(out)[:3] == ["clean", "noise/gaussian/0.1", "noise/gaussian/0.2"]


# --- progress -----------------------------------------------------------------------------------


def test_the_progress_bar_counts_task_images() -> None:
    with Progress(disable=True) as bar:
        task = bar.add_task("evaluating", total=3800)
        bar.advance(task, 1234)
        assert str(common.TaskImagesColumn().render(bar.tasks[0])) == "1,234/3,800 task-images"


def terminal(monkeypatch) -> io.StringIO:
    """Make stderr a terminal (rich's view of it) that writes into the returned buffer."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr(common, "stderr_console", lambda: console)
    return buffer


def test_a_spinner_shows_while_the_models_load_then_the_bar(monkeypatch) -> None:
    buffer = terminal(monkeypatch)
    with common.pass_progress(show=True) as progress:
        time.sleep(0.3)  # the models loading: the spinner refreshes on its own
        loading = buffer.getvalue()
        progress.start(10)
        progress.advance(4)
        progress.progress.refresh()
        shown = buffer.getvalue()[len(loading) :]
    assert "loading the models" in loading and "task-images" not in loading
    bar = shown[shown.index("evaluating") :]  # the spinner's last frame is erased before the bar starts
    assert "4/10 task-images" in bar and "loading the models" not in bar


@pytest.mark.parametrize("show, is_terminal", [(False, True), (True, False)])
def test_no_spinner_when_quiet_or_not_a_terminal(monkeypatch, capsys, show: bool, is_terminal: bool) -> None:
    buffer = terminal(monkeypatch) if is_terminal else None
    with common.pass_progress(show=show) as progress:
        time.sleep(0.2)
        progress.start(10)
    assert progress.spinner is None
    assert (buffer.getvalue() if buffer else capsys.readouterr().err) == ""
