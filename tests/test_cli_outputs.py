"""cli/outputs.py: outputs checked before the run, written all or none after it (issue 13)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from prunegate import files
from prunegate.cli import main, outputs
from prunegate.errors import PrunegateError


def test_an_output_may_not_be_another_output_an_input_or_inside_an_input_folder(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("x")
    (tmp_path / "images").mkdir()
    (tmp_path / "link.json").symlink_to(tmp_path / "policy.yaml")
    inputs = {"the policy": tmp_path / "policy.yaml", "data.test.path": tmp_path / "images"}
    with pytest.raises(PrunegateError, match="--html.*two outputs cannot share"):
        outputs.check_outputs({"--report": tmp_path / "r.json", "--html": tmp_path / "r.json"}, inputs)
    with pytest.raises(PrunegateError, match="--report: is the policy"):
        outputs.check_outputs({"--report": tmp_path / "link.json"}, inputs)
    with pytest.raises(PrunegateError, match="inside data.test.path"):
        outputs.check_outputs({"--report": tmp_path / "images" / "sub" / "r.json"}, inputs)
    assert outputs.check_outputs({"--report": tmp_path / "r.json", "--html": None}, inputs) == {
        "--report": tmp_path / "r.json"
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "link.json", "policy.yaml"]  # the probe is gone


def test_a_folder_that_cannot_be_written_is_found_before_the_run(tmp_path: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)  # (as root, a read-only mode would not stop us)
    with pytest.raises(PrunegateError, match=r"--report: cannot write into its folder \(Permission denied\)"):
        outputs.check_outputs({"--report": tmp_path / "r.json"}, {})


def test_files_are_written_all_or_none(tmp_path: Path, monkeypatch) -> None:
    real = files._staged

    def disk_full_on_the_report(path: Path, content):
        if path.name == "report.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, content)

    monkeypatch.setattr(files, "_staged", disk_full_on_the_report)
    with pytest.raises(PrunegateError, match=r"report.json: cannot write \(No space left on device\)"):
        outputs.write_together([(tmp_path / "page.html", "<p>"), (tmp_path / "report.json", "{}")])
    assert list(tmp_path.iterdir()) == []  # neither file, no temporary file
    monkeypatch.setattr(files, "_staged", real)
    outputs.write_together([(tmp_path / "page.html", "<p>"), (tmp_path / "report.json", "{}")])
    assert (tmp_path / "report.json").read_text() == "{}" and (tmp_path / "page.html").read_text() == "<p>"


def test_a_full_disk_at_the_end_of_check_is_exit_2_and_leaves_nothing(
    tmp_path: Path, capsys, gate_case, monkeypatch
) -> None:
    policy = gate_case("same")
    out = tmp_path / "out"
    out.mkdir()
    real = files._staged

    def disk_full(path: Path, content):
        if path.name == "report.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, content)

    monkeypatch.setattr(files, "_staged", disk_full)
    code = main(
        [
            "check",
            "-p",
            str(policy),
            "-o",
            str(out / "report.json"),
            "--html",
            str(out / "report.html"),
            "--junit",
            str(out / "junit.xml"),
        ]
    )
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.strip().splitlines() == [f"error: {out / 'report.json'}: cannot write (No space left on device)"]
    assert list(out.iterdir()) == []  # no signed report, no renderings of a report that does not exist
