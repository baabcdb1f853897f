"""data.label_map: a data set's labels mapped to sets of model classes (issue 17, item 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from prunegate.cli import main
from prunegate.data.label_map import read_label_map
from prunegate.errors import DataError, PolicyError
from prunegate.metrics import functional as F
from prunegate.policy import policy_from_dict
from prunegate.report.attest import read_envelope


def write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_in_label_set_is_membership_of_the_prediction_in_its_labels_set() -> None:
    rng = np.random.default_rng(0)
    sets = torch.from_numpy(rng.random((5, 7)) < 0.3)
    labels = torch.from_numpy(rng.integers(-1, 5, 200)).to(torch.int32)
    preds = torch.from_numpy(rng.integers(-1, 7, 200)).to(torch.int32)
    expected = [bool(p >= 0 and q >= 0 and sets[q, p]) for p, q in zip(preds.tolist(), labels.tolist())]
    assert F.in_label_set(preds, labels, sets).tolist() == expected


def test_keys_are_the_data_sets_class_names_and_values_model_indices_or_names(tmp_path) -> None:
    path = write(tmp_path / "map.json", {"chair": [3, "n2"], "cup": ["n1"]})
    found = read_label_map(tmp_path / "map.json", "data.test.label_map", np.array([0, 1, 1]), ["chair", "cup"],
                           ["n0", "n1", "n2", "n3"])  # fmt: skip
    assert found.sets == ((2, 3), (1,)) and found.path == path and len(found.sha256) == 64
    assert found.matrix(4).tolist() == [[False, False, True, True], [False, True, False, False]]
    found.check_model_classes(4)
    with pytest.raises(DataError, match="names model class 3, but the models have 3 outputs"):
        found.check_model_classes(3)


def test_without_class_names_the_keys_are_the_label_numbers(tmp_path) -> None:
    write(tmp_path / "m.json", {"0": [0, 5], "1": [1]})
    assert read_label_map(tmp_path / "m.json", "f", np.array([0, 1]), None, None).sets == ((0, 5), (1,))


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([1, 2], "expected a JSON object"),
        ({"0": [1], "7": [2]}, "'7' is not one of the data set's labels"),
        ({"0": [1]}, "the data set's label '1' is not in the map"),
        ({"0": [], "1": [1]}, "'0': expected a non-empty list"),
        ({"0": [1.5], "1": [1]}, "model classes must be indices or class names"),
        ({"0": [-1], "1": [1]}, "model class -1 is negative"),
        ({"0": ["n1"], "1": [1]}, "is a name, but no class_names file"),
    ],
)
def test_a_bad_map_is_a_one_line_error_naming_the_file(tmp_path, document, reason) -> None:
    write(tmp_path / "m.json", document)
    with pytest.raises(DataError, match=reason) as caught:
        read_label_map(tmp_path / "m.json", "data.test.label_map", np.array([0, 1, 0]), None, None)
    assert caught.value.field == "data.test.label_map" and "\n" not in str(caught.value)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a JSON label map"):
        read_label_map(tmp_path / "bad.json", "f", np.array([0]), None, None)


def test_label_map_is_for_classification_sets_only(policy_dict) -> None:
    document = policy_dict(task="segmentation")
    document["data"]["test"] = {"format": "segmentation-folder", "path": "seg", "label_map": "m.json"}
    with pytest.raises(PolicyError, match="does not read label_map: label_map is for the formats imagefolder"):
        policy_from_dict(document)


def run_check(tmp_path: Path, policy: dict, name: str, capsys) -> dict:
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(policy))
    report = tmp_path / f"{name}.json"
    code = main(["check", "--policy", str(tmp_path / f"{name}.yaml"), "-o", str(report)])
    assert code in (0, 1), capsys.readouterr().err
    return read_envelope(report.read_text(), name)[2]["predicate"]


def test_check_judges_each_prediction_by_its_labels_set(
    tmp_path, capsys, colour_net, colour_dataset, random_net, save_torchscript, write_npz, policy_dict
) -> None:
    """An identity map changes nothing; a map that accepts every class makes every finite
    prediction right; agreement never changes (it compares the models, not the labels)."""
    images, labels = colour_dataset(30)
    write_npz(tmp_path / "data.npz", images, labels)
    save_torchscript(colour_net(), tmp_path / "dense.pt")
    save_torchscript(random_net(seed=4), tmp_path / "pruned.pt")
    plain = run_check(tmp_path, policy_dict(), "plain", capsys)
    write(tmp_path / "identity.json", {str(i): [i] for i in range(3)})
    write(tmp_path / "all.json", {str(i): [0, 1, 2] for i in range(3)})
    same = run_check(tmp_path, policy_dict(data={"test": {"format": "npz", "path": "data.npz",
                                                         "label_map": "identity.json"}}), "same", capsys)  # fmt: skip
    loose = run_check(tmp_path, policy_dict(data={"test": {"format": "npz", "path": "data.npz",
                                                          "label_map": "all.json"}}), "loose", capsys)  # fmt: skip
    clean = {name: next(t for t in p["tasks"] if t["name"] == "clean") for name, p in
             (("plain", plain), ("same", same), ("loose", loose))}  # fmt: skip
    judged = ("accuracy", "correct", "nonfinite", "top5", "ece")  # what a prediction in its label's set decides
    for side in ("dense", "pruned"):
        assert {k: clean["same"][side].get(k) for k in judged} == {k: clean["plain"][side].get(k) for k in judged}
        # a label that is a set of classes has no probability of its own: no NLL or Brier score
        assert clean["same"][side]["nll"] is None and clean["plain"][side]["nll"] is not None
    assert clean["same"]["agreement"] == clean["plain"]["agreement"]
    assert clean["loose"]["dense"]["accuracy"] == 1.0 and clean["loose"]["pruned"]["accuracy"] == 1.0
    assert clean["loose"]["agreement"] == clean["plain"]["agreement"]
    assert clean["plain"]["dense"]["accuracy"] > 0.9  # the colour net is right by itself
    recorded = next(d for d in loose["data"] if d["name"] == "test")
    assert recorded["label_map"] == __import__("hashlib").sha256((tmp_path / "all.json").read_bytes()).hexdigest()
    assert next(d for d in plain["data"] if d["name"] == "test")["label_map"] is None


def test_a_map_naming_a_class_the_models_lack_stops_the_run(
    tmp_path, capsys, colour_net, colour_dataset, save_torchscript, write_npz, policy_dict
) -> None:
    images, labels = colour_dataset(6)
    write_npz(tmp_path / "data.npz", images, labels)
    save_torchscript(colour_net(), tmp_path / "dense.pt")
    save_torchscript(colour_net(), tmp_path / "pruned.pt")
    write(tmp_path / "m.json", {"0": [0], "1": [1], "2": [9]})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(policy_dict(data={"test": {"format": "npz", "path": "data.npz",
                                                                              "label_map": "m.json"}})))  # fmt: skip
    code = main(["check", "--policy", str(tmp_path / "p.yaml"), "-o", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and "names model class 9, but the models have 3 outputs" in err and "m.json" in err
    assert not (tmp_path / "r.json").exists()
