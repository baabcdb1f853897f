"""JUnit XML for CI systems (Jenkins, GitLab, GitHub test reporters): one test case per rule.

Layout, valid against the common ("junit-10") JUnit XSD:

    <testsuites name="prunegate" tests=R failures=F errors="0">
      <testsuite name="prunegate: <policy>" tests=R failures=F ...>
        <properties>   verdict, policy, models, seed, and one property per (rule, selected task)
        <testcase name="<rule>" classname="prunegate.<policy>">      one per rule, in policy order
          <failure type="fail|undecided" message="value vs threshold">  only for a rule that did not pass
          <system-out>   one line per selected task: value and status

The failure count, at both levels, is the number of rules that did not pass: the rules are what
the gate decides on, so a CI dashboard shows exactly the gate's failures. A rule's selected tasks
are therefore not test cases of their own (a rule over 95 corruption tasks would otherwise show as
up to 95 failures); each is a property `<rule> :: <task>` = `<value> <status>` and a line in the
rule's output and failure text, so nothing is lost.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from prunegate.errors import printable
from prunegate.report.render import common
from prunegate.report.render.interface import Format, Renderer, RenderOptions
from prunegate.report.schema import Report, RuleRecord

_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: object) -> str:
    """One value, on one line: control characters escaped (`errors.printable`: the XML may be
    printed to a terminal, and a line break in a name must not fake a line), and what else XML 1.0
    cannot carry dropped."""
    return _NOT_XML.sub("", printable(text))


def _clean_lines(lines: list[str]) -> str:
    return "\n".join(_clean(line) for line in lines)


def _timestamp(report: Report) -> str:
    # JUnit timestamps are local ISO 8601 without a zone; the report's are UTC.
    return report.timing.started[:19]


def _task_lines(rule: RuleRecord) -> list[str]:
    lines = []
    for task in rule.per_task:
        bound = f" (bound {common.format_metric(rule.metric, task.bound)})" if task.bound is not None else ""
        lines.append(
            f"{common.STATUS_LABEL[common.task_status(task)]:<9} {task.task}: "
            f"{common.metric_label(rule)} {common.format_metric(rule.metric, task.value)}{bound}"
        )
    return lines


def failure_message(rule: RuleRecord) -> str:
    """'agreement 85.00% (min of 3 tasks) vs threshold ≥ 90.00%', plus bound and interval when known."""
    text = (
        f"{common.metric_label(rule)} {common.format_metric(rule.metric, rule.value)} ({common.over_text(rule)}) "
        f"vs threshold {common.threshold_text(rule)}"
    )
    if rule.bound is not None:
        text += f"; bound {common.rule_bound_text(rule)}"
    if rule.interval is not None:
        text += f"; interval {common.interval_text(rule)}"
    if common.rule_status(rule) == "undecided":
        text += "; undecided (the interval straddles the threshold: counted as a failure)"
    return text


def _testcase(suite: ET.Element, rule: RuleRecord, classname: str) -> None:
    case = ET.SubElement(suite, "testcase", name=_clean(rule.name), classname=_clean(classname), time="0")
    lines = _task_lines(rule)
    status = common.rule_status(rule)
    if status != "pass":
        failure = ET.SubElement(case, "failure", message=_clean(failure_message(rule)), type=status)
        failing = [line for line in lines if not line.startswith("PASS")]
        details = [failure_message(rule)]
        if rule.samples_needed:
            details.append(f"about {rule.samples_needed:,} samples per task would decide it")
        failure.text = _clean_lines(details + (["tasks that did not pass:"] + failing if failing else []))
    if lines:
        ET.SubElement(case, "system-out").text = _clean_lines(lines)


def _properties(suite: ET.Element, report: Report) -> None:
    properties = ET.SubElement(suite, "properties")

    def add(name: str, value: object) -> None:
        ET.SubElement(properties, "property", name=_clean(name), value=_clean(value))

    add("verdict", report.verdict)
    add("policy", report.policy.name)
    if report.policy.sha256:
        add("policy.sha256", report.policy.sha256)
    for role in ("dense", "pruned"):
        model = getattr(report.models, role)
        add(f"{role}.path", model.path)
        add(f"{role}.sha256", model.sha256)
        add(f"{role}.sparsity", f"{model.sparsity:.6g}")
    add("seed", report.seed)
    if report.confidence is not None:
        add("confidence", f"{report.confidence:g}")
    add("prunegate", report.tool.get("version", ""))
    for rule in report.rules:
        for task in rule.per_task:
            add(f"{rule.name} :: {task.task}", f"{task.value:.6g} {common.task_status(task)}")


def render(report: Report) -> str:
    """The report as JUnit XML: one test case per rule."""
    failures = str(len(report.failed_rules()))
    tests = str(len(report.rules))
    duration = f"{report.timing.duration_s:.3f}"
    root = ET.Element("testsuites", name="prunegate", tests=tests, failures=failures, errors="0", time=duration)
    suite = ET.SubElement(
        root,
        "testsuite",
        name=_clean(f"prunegate: {report.policy.name}"),
        tests=tests,
        failures=failures,
        errors="0",
        skipped="0",
        time=duration,
        timestamp=_timestamp(report),
    )
    _properties(suite, report)
    classname = f"prunegate.{report.policy.name}"
    for rule in report.rules:
        _testcase(suite, rule, classname)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


class JunitRenderer(Renderer):
    """JUnit XML for CI test reporters (no options)."""

    name = Format.junit

    def format(self, report: Report, options: RenderOptions = RenderOptions()) -> str:
        """The report as JUnit XML."""
        return render(report)
