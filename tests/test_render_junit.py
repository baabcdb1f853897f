from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from prunegate.report.render import junit

XSD = Path(__file__).parent / "data" / "junit.xsd"


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD)))


def parse_valid(text: str, schema: etree.XMLSchema) -> etree._Element:
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = etree.fromstring(text.encode("utf-8"))
    schema.assertValid(root)
    return root


@pytest.mark.parametrize("failing", [True, False])
@pytest.mark.parametrize("extras", [True, False])
def test_valid_junit_with_one_failure_per_failed_rule(sample_report, schema, failing, extras) -> None:
    report = sample_report(failing=failing, extras=extras)
    root = parse_valid(junit.render(report), schema)
    failed = {r.name for r in report.failed_rules()}
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    for element in (root, suite):
        assert int(element.get("failures")) == len(failed)
        assert int(element.get("tests")) == len(report.rules)
        assert element.get("errors") == "0"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [r.name for r in report.rules]
    # Only rules are test cases, so CI tools that count <failure> elements agree with the attribute.
    assert len(root.findall(".//failure")) == len(failed)
    for case, rule in zip(cases, report.rules):
        failure = case.find("failure")
        assert (failure is not None) == (rule.name in failed)
        if failure is not None:
            message = failure.get("message")
            value = junit.common.format_metric(rule.metric, rule.value)
            assert value in message and junit.common.threshold_text(rule) in message
            failing_tasks = [t.task for t in rule.per_task if not t.passed]
            assert all(t in failure.text for t in failing_tasks)
        # every selected task is listed in the case's output
        assert all(t.task in case.findtext("system-out") for t in rule.per_task)


def test_undecided_rule_is_a_failure_of_type_undecided(sample_report, schema) -> None:
    report = sample_report(failing=True)
    root = parse_valid(junit.render(report), schema)
    failure = root.find(".//testcase[@name='corruption drop']/failure")
    assert failure.get("type") == "undecided" and "4,200 samples" in failure.text


def test_per_task_results_are_properties(sample_report, schema) -> None:
    report = sample_report(failing=True)
    root = parse_valid(junit.render(report), schema)
    properties = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert properties["verdict"] == "fail" and properties["policy"] == report.policy.name
    per_task = {k: v for k, v in properties.items() if " :: " in k}
    assert len(per_task) == sum(len(r.per_task) for r in report.rules)
    assert per_task["noise agreement :: noise/uniform/0.3"].endswith(" fail")
    assert per_task["noise agreement :: noise/uniform/0.1"].endswith(" pass")


def test_names_with_markup_and_control_characters_stay_valid_xml(sample_report, schema) -> None:
    report = sample_report(failing=True)
    rules = [r.model_copy(update={"name": f'<b>&"{r.name}"\x07'}) for r in report.rules]
    report = report.model_copy(update={"rules": rules, "policy": report.policy.model_copy(update={"name": "a<b>\x01"})})
    root = parse_valid(junit.render(report), schema)
    # control characters are escaped, visibly (the XML may be printed to a terminal), never raw
    assert [c.get("name") for c in root.iter("testcase")][0] == '<b>&"clean accuracy"\\x07'
    assert root.find("testsuite").get("name") == "prunegate: a<b>\\x01"


def test_a_line_break_in_a_name_does_not_fake_a_line_of_output(sample_report, schema) -> None:
    report = sample_report(failing=True)
    tasks = [t.model_copy(update={"task": "clean\nPASS      everything\u2028ok"}) for t in report.rules[0].per_task]
    rules = [report.rules[0].model_copy(update={"per_task": tasks}), *report.rules[1:]]
    root = parse_valid(junit.render(report.model_copy(update={"rules": rules})), schema)
    out = next(root.iter("testcase")).find("system-out").text
    assert out.splitlines() == [line for line in out.split("\n")] and len(out.split("\n")) == len(tasks)
    assert "clean\\nPASS      everything\\u2028ok" in out


def test_report_junit_command(tmp_path, capsys, sample_report, write_report, schema) -> None:
    from prunegate.cli import main

    path = write_report(tmp_path / "report.json", sample_report(failing=True))
    assert main(["report", "junit", str(path)]) == 0
    root = parse_valid(capsys.readouterr().out, schema)
    assert int(root.get("failures")) == 2
    out = tmp_path / "junit.xml"
    assert main(["report", "junit", str(path), "--out", str(out)]) == 0
    parse_valid(out.read_text(), schema)
    assert main(["report", "junit", str(tmp_path / "missing.json")]) == 2


def test_the_schema_rejects_what_ci_tools_reject(sample_report, schema) -> None:
    root = etree.fromstring(junit.render(sample_report()).encode())
    case = root.find(".//testcase")
    del case.attrib["name"]  # a test case needs a name
    assert not schema.validate(root)


def test_a_segmentation_report_has_one_test_case_per_rule(segmentation_report, schema) -> None:
    report, _ = segmentation_report
    text = junit.render(report)
    root = parse_valid(text, schema)
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == [r.name for r in report.rules] == ["miou", "agreement"]
    assert int(root.get("failures")) == len(report.failed_rules()) == 1
    miou, agreement = report.rules
    failure = cases[0].find("failure")
    assert failure.get("message") == (
        f"miou_drop {junit.common.format_metric('miou_drop', miou.value)} ({junit.common.over_text(miou)}) "
        f"vs threshold {junit.common.threshold_text(miou)}"
    )
    for task in miou.per_task:
        assert f"{task.task}: miou_drop {junit.common.format_metric('miou_drop', task.value)}" in failure.text
    assert cases[1].find("failure") is None
    out = cases[1].findtext("system-out")
    assert out == f"PASS      clean: pixel_agreement {junit.common.format_metric('pixel_agreement', agreement.value)}"
    assert "accuracy" not in text


def test_rules_beyond_top1_have_sane_messages(sample_report) -> None:
    from prunegate.report.render.junit import failure_message

    rules = {r.name: r for r in sample_report(failing=True, beyond=True).rules}
    assert failure_message(rules["selective risk"]).startswith(
        "selective_risk_increase@0.9 +12.60pp (each of 2 tasks) vs threshold ≤ +5.00pp"
    )
    assert failure_message(rules["calibration"]).startswith("ece_increase +1.25pp (clean) vs threshold ≥ -5.00pp")
