from __future__ import annotations

import pytest

from prunegate.errors import PolicyError
from prunegate.plan import TaskKind, build_plan, format_level, match_tasks
from prunegate.policy import load_policy, policy_from_dict


def make_policy(policy_dict, **sections):
    return policy_from_dict(policy_dict(**sections))


def test_clean_only_plan(policy_dict) -> None:
    tasks = build_plan(make_policy(policy_dict))
    assert [t.name for t in tasks] == ["clean"]
    assert tasks[0].kind == "clean" and tasks[0].source == "test" and tasks[0].group == "clean"


def test_noise_task_names_and_order(policy_dict) -> None:
    suite = {
        "noise": [{"kind": "uniform", "levels": [0.1, 0.3, 1]}, {"kind": "gaussian", "levels": [0.05], "draws": 3}]
    }
    tasks = build_plan(make_policy(policy_dict, suite=suite))
    assert [t.name for t in tasks] == [
        "clean",
        "noise/uniform/0.1",
        "noise/uniform/0.3",
        "noise/uniform/1",
        "noise/gaussian/0.05",
    ]
    uniform = tasks[1]
    assert (uniform.kind, uniform.source, uniform.shift, uniform.level, uniform.draws) == (
        "noise",
        "test",
        "uniform",
        0.1,
        1,
    )
    assert uniform.kind is TaskKind.NOISE and uniform.severity is None
    assert tasks[-1].draws == 3 and tasks[-1].group == "noise"


@pytest.mark.parametrize(("level", "text"), [(0.1, "0.1"), (1.0, "1"), (0.05, "0.05"), (2.5, "2.5"), (0.0, "0")])
def test_format_level(level: float, text: str) -> None:
    assert format_level(level) == text


def test_ood_tasks_follow_clean_in_policy_order(policy_dict) -> None:
    data = {
        "test": {"format": "npz", "path": "t.npz"},
        "ood": [
            {"name": "night", "format": "npz", "path": "n.npz"},
            {"name": "blurry", "format": "imagefolder", "path": "b"},
        ],
    }
    suite = {"noise": [{"kind": "uniform", "levels": [0.2]}]}
    tasks = build_plan(make_policy(policy_dict, data=data, suite=suite))
    assert [t.name for t in tasks] == ["clean", "ood/night", "ood/blurry", "noise/uniform/0.2"]
    assert [(t.kind, t.source) for t in tasks[1:3]] == [("ood", "night"), ("ood", "blurry")]


def test_corruption_tasks_by_name_then_severity(policy_dict) -> None:
    suite = {"corruptions": {"preset": "cifar10-c", "names": ["fog", "brightness"], "severities": [1, 3]}}
    tasks = build_plan(make_policy(policy_dict, suite=suite))
    assert [t.name for t in tasks] == [
        "clean",
        "corruption/fog/1",
        "corruption/fog/3",
        "corruption/brightness/1",
        "corruption/brightness/3",
    ]
    assert tasks[1].preset == "cifar10-c" and tasks[1].group == "fog" and tasks[1].severity == 1
    assert tasks[1].kind is TaskKind.CORRUPTION and tasks[1].level is None


def test_all_corruptions_gives_every_benchmark_name(policy_dict) -> None:
    from prunegate.shifts import CORRUPTION_NAMES

    suite = {"corruptions": {"severities": [2]}}
    names = [t.name for t in build_plan(make_policy(policy_dict, suite=suite))]
    assert names == ["clean"] + [f"corruption/{c}/2" for c in CORRUPTION_NAMES]


def test_rule_glob_matching_nothing_names_the_rule_field(tmp_path, write_policy) -> None:
    rules = [
        {"name": "ok", "tasks": "clean", "metric": "agreement", "min": 0.5},
        {"name": "typo", "tasks": ["clean", "nosie/*"], "metric": "agreement", "min": 0.5},
    ]
    path = write_policy(tmp_path / "p.yaml", rules=rules, suite={"noise": [{"kind": "uniform", "levels": [0.1]}]})
    with pytest.raises(PolicyError) as caught:
        build_plan(load_policy(path))
    assert caught.value.field == "gate.rules.1.tasks"
    assert "nosie/*" in str(caught.value) and str(path.resolve()) in str(caught.value)


def test_repeated_noise_level_is_refused(policy_dict) -> None:
    suite = {"noise": [{"kind": "uniform", "levels": [0.1, 0.10]}]}
    with pytest.raises(PolicyError, match="noise/uniform/0.1"):
        build_plan(make_policy(policy_dict, suite=suite))


def test_match_tasks_keeps_task_order_and_globs() -> None:
    names = ["clean", "noise/uniform/0.1", "noise/gaussian/0.1", "corruption/fog/3", "corruption/fog/1"]
    assert match_tasks(["corruption/*/1", "clean"], names) == ["clean", "corruption/fog/1"]
    assert match_tasks(["noise/*"], names) == ["noise/uniform/0.1", "noise/gaussian/0.1"]
    assert match_tasks(["Clean"], names) == []  # case-sensitive
