"""Sanity before verdicts (prunegate.sanity): a dense model at chance on the clean set stops the
run (exit 2, one line, nothing written); a good model is unaffected; models.expected_accuracy."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import yaml
from scipy import stats

from prunegate.cli import main
from prunegate.sanity import binomial_tail, chance_level


@pytest.mark.parametrize(
    ("k", "n", "p"), [(0, 200, 0.001), (1, 200, 0.001), (3, 32, 0.001), (30, 60, 1 / 3), (6, 6, 1 / 3)]
)
def test_binomial_tail_matches_scipy(k: int, n: int, p: float) -> None:
    assert binomial_tail(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-9)


def test_chance_is_one_over_the_classes_or_the_mean_label_set_share() -> None:
    assert chance_level(np.array([0, 1, 2]), 4) == 0.25
    sets = np.array([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=bool)  # label 0: two classes right, label 1: one
    assert chance_level(np.array([0, 0, 1, 1]), 4, sets) == pytest.approx((0.5 + 0.5 + 0.25 + 0.25) / 4)


def _case(tmp_path: Path, gate_case, *, n: int = 12, wrong: int | None = None, **policy) -> Path:
    """gate_case's colour set and models; the first `wrong` labels (all, by default) moved to the
    next class, so the dense model gets them wrong."""
    path = gate_case("same", n=n, **policy)
    data = dict(np.load(tmp_path / "data.npz"))
    labels = data["labels"].copy()
    count = n if wrong is None else wrong
    labels[:count] = (labels[:count] + 1) % 3
    np.savez(tmp_path / "data.npz", images=data["images"], labels=labels)
    return path


def _run(capsys, policy: Path, out: Path, *extra: str) -> tuple[int, str]:
    code = main(
        ["check", "--policy", str(policy), "--report", str(out / "report.json"), "--html", str(out / "r.html"), *extra]
    )
    return code, capsys.readouterr().err


def _predicate(path: Path) -> dict:
    return json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))["predicate"]


def test_a_dense_model_at_chance_stops_the_run_with_one_line_and_writes_nothing(tmp_path, gate_case, capsys):
    policy = _case(tmp_path, gate_case)
    out = tmp_path / "out"
    out.mkdir()
    code, err = _run(capsys, policy, out)
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(f"error: {(tmp_path / 'data.npz').resolve()}: data.test: the dense model gets 0/12 clean")
    assert "no better than chance (33.33 % for 3 classes)" in line
    assert "the labels or the class order" in line and "--no-sanity-check" in line
    assert list(out.iterdir()) == []  # no report, no rendering, no checkpoint


def test_no_sanity_check_gates_it_anyway_and_the_report_says_so(tmp_path, gate_case, capsys):
    policy = _case(tmp_path, gate_case)
    code, err = _run(capsys, policy, tmp_path, "--no-sanity-check")
    assert code == 0, err  # both models 0 %: the drop alone passes
    sanity = _predicate(tmp_path / "report.json")["sanity"]
    assert sanity == {"checked": False, "reason": "--no-sanity-check"} | {
        k: None for k in sanity if k not in ("checked", "reason")
    }


def test_a_set_too_small_to_tell_is_not_checked_and_the_report_says_why(tmp_path, gate_case, capsys):
    policy = _case(tmp_path, gate_case, data={"limit": 4})  # (1/3)^4 > 1 %: even 4/4 could be luck
    code, err = _run(capsys, policy, tmp_path)
    assert code == 0, err
    sanity = _predicate(tmp_path / "report.json")["sanity"]
    assert not sanity["checked"] and sanity["dense_correct"] == 0
    assert sanity["reason"] == "4 images cannot tell a model from chance (33.33 %), even all right"


def test_a_good_model_is_unaffected_and_the_report_records_what_the_check_saw(tmp_path, gate_case, capsys):
    policy = gate_case("same")
    code, err = _run(capsys, policy, tmp_path)
    assert code == 0, err
    sanity = _predicate(tmp_path / "report.json")["sanity"]
    assert sanity["checked"] and sanity["task"] == "clean"
    assert (sanity["n"], sanity["dense_correct"], sanity["chance"]) == (12, 12, pytest.approx(1 / 3))
    assert sanity["p_value"] == pytest.approx(3.0**-12)


def test_a_weak_but_real_model_passes(tmp_path, gate_case, capsys):
    # 30 of 60 right at 3 classes: weak, but far from chance (p ~ 0.005)
    policy = _case(tmp_path, gate_case, n=60, wrong=30)
    code, err = _run(capsys, policy, tmp_path)
    assert code in (0, 1), err
    assert _predicate(tmp_path / "report.json")["sanity"]["dense_correct"] == 30


def test_far_below_the_expected_accuracy_stops_the_run(tmp_path, gate_case, capsys):
    policy = _case(tmp_path, gate_case, n=60, wrong=30, models={"expected_accuracy": 0.95})
    out = tmp_path / "out"
    out.mkdir()
    code, err = _run(capsys, policy, out)
    assert code == 2
    (line,) = err.splitlines()
    assert "30/60 clean images right (50.00 %), at most" in line
    assert "far below models.expected_accuracy 0.95 (less its tolerance 0.2)" in line
    assert list(out.iterdir()) == []


def test_within_the_expected_accuracy_tolerance_passes(tmp_path, gate_case, capsys):
    policy = _case(
        tmp_path, gate_case, n=60, wrong=30, models={"expected_accuracy": 0.95, "expected_accuracy_tolerance": 0.4}
    )
    code, err = _run(capsys, policy, tmp_path)
    assert code in (0, 1), err
    sanity = _predicate(tmp_path / "report.json")["sanity"]
    assert (sanity["expected_accuracy"], sanity["tolerance"]) == (0.95, 0.4)


def test_an_imagenet_like_folder_in_sorted_order_suggests_class_names(tmp_path, colour_net, save_torchscript, capsys):
    """Folders named like wnids whose sorted order is not the model's: class_names is the fix."""
    rng = np.random.default_rng(0)
    # the colour model's class c is channel c; the folders' sorted order puts channel 2 first
    for folder, channel in (("n00000001", 2), ("n00000002", 0), ("n00000003", 1)):
        (tmp_path / "images" / folder).mkdir(parents=True)
        for i in range(4):
            image = rng.integers(0, 90, size=(8, 8, 3)).astype(np.uint8)
            image[..., channel] += 130
            PIL.Image.fromarray(image).save(tmp_path / "images" / folder / f"{folder}_{i}.png")
    save_torchscript(colour_net(), tmp_path / "dense.pt")
    save_torchscript(colour_net(), tmp_path / "pruned.pt")
    policy = {
        "version": 1,
        "name": "wnids",
        "models": {"dense": "dense.pt", "pruned": "pruned.pt", "input": {"size": 8}},
        "data": {"test": {"format": "imagefolder", "path": "images"}},
        "gate": {"rules": [{"name": "drop", "tasks": "clean", "metric": "accuracy_drop", "max": 0.01}]},
        "runtime": {"device": "cpu", "workers": 0},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy))
    code, err = _run(capsys, tmp_path / "p.yaml", tmp_path)
    assert code == 2
    assert "0/12 clean images right" in err and "look like ImageNet wnids" in err and "set class_names" in err
    assert not (tmp_path / "report.json").exists()
