"""`check --html --markdown --junit` and the GitHub step summary, end to end on the tiny case."""

from __future__ import annotations

from pathlib import Path

from lxml import etree
from lxml import html as lxml_html

from prunegate.cli import main

XSD = Path(__file__).parent / "data" / "junit.xsd"


def test_check_writes_every_rendering_and_the_step_summary(tmp_path, capsys, gate_case, monkeypatch) -> None:
    policy = gate_case("zero", suite={"noise": [{"kind": "gaussian", "levels": [0.1]}]})
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    out = {name: tmp_path / f"report.{name}" for name in ("json", "html", "md", "xml")}
    code = main(
        [
            "check",
            "-p",
            str(policy),
            "-o",
            str(out["json"]),
            "--html",
            str(out["html"]),
            "--markdown",
            str(out["md"]),
            "--junit",
            str(out["xml"]),
            "--quiet",
        ]
    )
    assert code == 1, capsys.readouterr().err
    markdown = out["md"].read_text()
    assert markdown.startswith("## ❌ prunegate: FAIL")
    assert summary.read_text() == "earlier step\n" + markdown + "\n"  # appended, not replaced
    junit = etree.parse(str(out["xml"]))
    etree.XMLSchema(etree.parse(str(XSD))).assertValid(junit)
    assert junit.getroot().get("failures") == "2"
    page = lxml_html.document_fromstring(out["html"].read_text())
    assert "verdict-fail" in page.xpath("//header/@class")[0]
    assert "UNSIGNED" not in page.xpath("string(//header)") and "unsigned" in page.xpath("string(//header)")


def test_check_refuses_unwritable_outputs_before_running(tmp_path, capsys, gate_case) -> None:
    policy = gate_case("same")
    report = tmp_path / "report.json"
    for option in ("--html", "--markdown", "--junit"):
        code = main(["check", "-p", str(policy), "-o", str(report), option, str(tmp_path / "missing" / "x")])
        err = capsys.readouterr().err
        assert code == 2 and f"{option}: the folder to write into does not exist" in err
        assert not report.exists()  # nothing ran


def test_an_unwritable_step_summary_is_only_a_warning(tmp_path, capsys, gate_case, monkeypatch) -> None:
    policy = gate_case("same")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "no" / "summary.md"))
    code = main(["check", "-p", str(policy), "-o", str(tmp_path / "report.json"), "--quiet"])
    assert code == 0
    assert "warning: cannot append the summary to GITHUB_STEP_SUMMARY" in capsys.readouterr().err
