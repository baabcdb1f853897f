from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from prunegate.errors import PolicyError
from prunegate.plan import build_plan
from prunegate.policy import load_policy, policy_from_dict, policy_json_schema

REPO = Path(__file__).resolve().parents[1]

EXAMPLE = """\
version: 1
name: resnet20-pruned-70
models:
  dense: models/dense.onnx
  pruned: {path: models/pruned.pt, arch: "archs/net.py:build"}
  arch: prunegate.archs.cifar_resnet:resnet20
  input: {size: 32, mean: [0.49, 0.48, 0.45], std: [0.25, 0.24, 0.26]}
data:
  test: {format: imagefolder, path: ../images/test}
  limit: 2000
  ood:
    - {name: other-camera, format: npz, path: ood.npz, images_key: x, labels_key: y}
    - {name: raw, format: npy, path: raw.npy, labels: raw-labels.npy}
  max_pixels: 1000000
suite:
  seed: 7
  noise:
    - {kind: uniform, levels: [0.1, 0.2], draws: 2}
    - {kind: gaussian, levels: [0.05]}
  corruptions: {preset: cifar10-c, names: [fog, brightness], severities: [1, 5]}
gate:
  rules:
    - {name: clean, tasks: clean, metric: accuracy_drop, max: 0.01}
    - {name: noise, tasks: ["noise/*", "ood/*"], metric: agreement, aggregate: min, min: 0.9}
    - {name: corruptions, tasks: "corruption/*", metric: softmax_l2, aggregate: mean, max: 0.2}
runtime: {device: cpu, backend: auto, batch_size: 64, workers: 0, allow_fallback: true}
"""


def example_dict() -> dict:
    return yaml.safe_load(EXAMPLE)


def write(tmp_path: Path, data: dict | str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def load_error(path: Path) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    return caught.value


def set_at(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data[int(part)] if isinstance(data, list) else data[part]
    if isinstance(data, list):
        data[int(last)] = value
    else:
        data[last] = value


def test_example_policy_validates(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, EXAMPLE))
    assert policy.name == "resnet20-pruned-70"
    assert policy.models.spec("dense").arch == "prunegate.archs.cifar_resnet:resnet20"  # the default arch
    assert policy.models.spec("pruned").arch == "archs/net.py:build"  # its own arch wins
    assert policy.data.limit == 2000 and [o.name for o in policy.data.ood] == ["other-camera", "raw"]
    assert policy.suite.noise[0].draws == 2 and policy.suite.corruptions.severities == [1, 5]
    assert policy.runtime.workers == 0 and policy.runtime.allow_fallback is True


def test_defaults_fill_optional_sections(tmp_path: Path) -> None:
    data = example_dict()
    for key in ("suite", "runtime"):
        del data[key]
    del data["gate"]["rules"][1:]
    policy = load_policy(write(tmp_path, data))
    assert policy.suite.seed == 0 and policy.suite.noise == [] and policy.suite.corruptions is None
    assert policy.runtime.device == "auto" and policy.runtime.batch_size == "auto"
    assert policy.runtime.memory_budget is None
    assert policy.models.input.size == 32


@pytest.mark.parametrize("value", ["auto", 1, 64, 65536])
def test_batch_size_is_auto_or_a_number(tmp_path: Path, value: int | str) -> None:
    data = example_dict()
    data["runtime"]["batch_size"] = value
    assert load_policy(write(tmp_path, data)).runtime.batch_size == value


@pytest.mark.parametrize("value", [0, -3, 65537, "64", "Auto", 2.5, True, None, [8]])
def test_batch_size_junk_is_refused_naming_the_field(tmp_path: Path, value: object) -> None:
    data = example_dict()
    data["runtime"]["batch_size"] = value
    path = write(tmp_path, data)
    error = load_error(path)
    assert error.field == "runtime.batch_size", error
    assert str(path) in str(error) and "expected auto or a whole number of images" in str(error)


def test_sha256_is_that_of_the_file_bytes(tmp_path: Path) -> None:
    import hashlib

    path = write(tmp_path, EXAMPLE)
    assert load_policy(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "field",
    [
        "nmae",
        "models.dens",
        "models.input.sise",
        "models.pruned.pathh",
        "data.test.fromat",
        "data.ood.0.nmae",
        "suite.noise.0.levls",
        "suite.corruptions.severity",
        "gate.rules.1.maxx",
        "gate.ruls",
        "runtime.batchsize",
    ],
)
def test_unknown_key_names_file_and_dotted_field(tmp_path: Path, field: str) -> None:
    data = example_dict()
    set_at(data, field, 1)
    path = write(tmp_path, data)
    error = load_error(path)
    assert error.field == field
    assert str(path) in str(error) and field in str(error)
    assert "unknown field" in str(error)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 2),
        ("name", 5),
        ("models.input.size", "32"),
        ("models.input.size", 32.0),
        ("models.input.size", 0),
        ("models.input.std", [0.2, 0.2]),
        ("models.input.std.1", 0.0),
        ("models.dense", 3),
        ("data.test.format", "png"),
        ("data.limit", 0),
        ("data.limit", "all"),
        ("suite.seed", -1),
        ("suite.noise.0.levels", []),
        ("suite.noise.0.levels.0", -0.1),
        ("suite.noise.0.draws", 0),
        ("suite.noise.0.kind", "pink"),
        ("suite.corruptions.severities.0", 6),
        ("gate.rules.0.metric", "accuracy"),
        ("gate.rules.0.aggregate", "median"),
        ("gate.rules.0.max", "0.01"),
        ("gate.rules.0.tasks", 3),
        ("runtime.workers", -1),
        ("runtime.batch_size", 0),
        ("runtime.batch_size", "big"),
        ("runtime.memory_budget", "1G"),
        ("runtime.memory_budget", 0),
        ("runtime.device", "tpu"),
        ("runtime.allow_fallback", "yes"),
    ],
)
def test_wrong_value_names_file_and_dotted_field(tmp_path: Path, field: str, value) -> None:
    data = example_dict()
    set_at(data, field, value)
    path = write(tmp_path, data)
    error = load_error(path)
    assert error.field == field, error
    assert str(path) in str(error) and field in str(error)


@pytest.mark.parametrize("threshold", [-0.01, -1.0, 1.01, 2.0])
def test_tolerance_out_of_range_is_refused(tmp_path: Path, threshold: float) -> None:
    data = example_dict()
    data["gate"]["rules"][0]["max"] = threshold
    path = write(tmp_path, data)
    error = load_error(path)
    assert error.field == "gate.rules.0.max" and str(path) in str(error)  # the field, not just the rule
    assert str(threshold) in str(error)


@pytest.mark.parametrize("threshold", [0.0, 0.01, 1.0])
def test_tolerance_at_the_ends_of_its_range_is_accepted(tmp_path: Path, threshold: float) -> None:
    data = example_dict()
    data["gate"]["rules"][0]["max"] = threshold
    assert load_policy(write(tmp_path, data)).gate.rules[0].max == threshold


def test_rule_needs_exactly_one_threshold(tmp_path: Path) -> None:
    data = example_dict()
    data["gate"]["rules"][0]["min"] = 0.0
    both = load_error(write(tmp_path, data))
    assert both.field == "gate.rules.0.min" and "both" in str(both)
    del data["gate"]["rules"][0]["min"], data["gate"]["rules"][0]["max"]
    assert load_error(write(tmp_path, data)).field == "gate.rules.0"  # (no field to name: the rule lacks both)


def test_empty_rules_are_refused(tmp_path: Path) -> None:
    data = example_dict()
    data["gate"]["rules"] = []
    path = write(tmp_path, data)
    error = load_error(path)
    assert error.field == "gate.rules" and str(path) in str(error)


def test_rule_with_an_empty_task_list_is_refused(tmp_path: Path) -> None:
    data = example_dict()
    data["gate"]["rules"][1]["tasks"] = []
    error = load_error(write(tmp_path, data))
    assert error.field == "gate.rules.1.tasks"


def test_duplicate_rule_and_ood_names_are_refused(tmp_path: Path) -> None:
    data = example_dict()
    data["gate"]["rules"][1]["name"] = "clean"
    error = load_error(write(tmp_path, data))
    assert error.field == "gate.rules.1.name" and "'clean' is also the name of rule 0" in str(error)
    data = example_dict()
    data["data"]["ood"][1]["name"] = "other-camera"
    error = load_error(write(tmp_path, data))
    assert error.field == "data.ood.1.name" and "'other-camera'" in str(error)


def test_missing_required_field_is_named(tmp_path: Path) -> None:
    data = example_dict()
    del data["models"]["input"]["size"]
    error = load_error(write(tmp_path, data))
    assert error.field == "models.input.size" and "missing" in str(error)


def test_npy_data_needs_labels(tmp_path: Path) -> None:
    data = example_dict()
    del data["data"]["ood"][1]["labels"]
    error = load_error(write(tmp_path, data))
    assert error.field == "data.ood.1.labels" and "format npy needs 'labels'" in str(error)


def test_class_names_for_a_format_without_classes_names_the_field(tmp_path: Path) -> None:
    data = example_dict()
    data["data"]["ood"][0]["class_names"] = "classes.txt"
    error = load_error(write(tmp_path, data))
    assert error.field == "data.ood.0.class_names" and "imagefolder" in str(error)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("gate.rules.1.name", "clean ", "whitespace"),  # would differ from rule 'clean' only by a space
        ("gate.rules.0.name", " clean", "whitespace"),
        ("gate.rules.0.name", "\t", "whitespace"),
        ("name", "tiny\n", "whitespace"),
        ("data.ood.1.name", "raw ", "pattern"),
        ("gate.rules.2.min", 0.1, "both"),
        ("gate.rules.2.max", -0.5, "within [0, 1.41421]"),
        ("suite.corruptions.names.1", "fogg", "did you mean 'fog'"),
        ("suite.noise.0.levels.1", float("nan"), "not a number"),
    ],
)
def test_errors_name_the_exact_field(tmp_path: Path, field: str, value, expected: str) -> None:
    data = example_dict()
    set_at(data, field, value)
    error = load_error(write(tmp_path, data))
    assert error.field == field and expected in str(error), error


@pytest.mark.parametrize("value", [".nan", ".NaN"])
def test_nan_confidence_is_not_a_number(tmp_path: Path, value: str) -> None:
    error = load_error(write(tmp_path, EXAMPLE.replace("gate:\n", f"gate:\n  confidence: {value}\n")))
    assert error.field == "gate.confidence" and "not a number" in str(error) and "less than" not in str(error)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-2", 0.01),
        ("1E-2", 0.01),
        ("+1e-2", 0.01),
        ("1.e-2", 0.01),
        (".1e-1", 0.01),
        ("10e-3", 0.01),
        ("1.0e-2", 0.01),
    ],
)
def test_exponent_notation_is_a_float_as_in_yaml_1_2(tmp_path: Path, text: str, value: float) -> None:
    document = EXAMPLE.replace("metric: accuracy_drop, max: 0.01", f"metric: accuracy_drop, max: {text}")
    policy = load_policy(write(tmp_path, document))
    assert policy.gate.rules[0].max == pytest.approx(value)


def test_the_float_resolver_leaves_ints_bools_and_strings_alone() -> None:
    from prunegate.policy import _UniqueKeyLoader

    text = "a: 10\nb: 0x1f\nc: yes\nd: off\ne: 1e\nf: e5\ng: 1e5x\nh: '1e-2'\ni: 1_000\nj: 1.5\nk: .5e3\nl: 1E5\n"
    assert yaml.load(text, Loader=_UniqueKeyLoader) == {
        "a": 10,
        "b": 31,
        "c": True,
        "d": False,
        "e": "1e",
        "f": "e5",
        "g": "1e5x",
        "h": "1e-2",
        "i": 1000,
        "j": 1.5,
        "k": 500.0,
        "l": 100000.0,
    }
    assert yaml.safe_load("a: 1e-2") == {"a": "1e-2"}  # (PyYAML's own loader is unchanged)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("models.input.std.0", 1.0e-300, "is 0 there"),  # valid as a float64, 0 in float32: every logit NaN
        ("models.input.std.1", 1e-7, "1e-06"),
        ("models.input.std.2", 1e39, "inf"),
        ("models.input.mean.0", 1e39, "inf"),
        ("models.input.mean.1", -2e6, "±1e+06"),
    ],
)
def test_normalisation_constants_must_be_usable_in_float32(
    tmp_path: Path, field: str, value: float, expected: str
) -> None:
    data = example_dict()
    set_at(data, field, value)
    error = load_error(write(tmp_path, data))
    assert error.field == field and "float32" in str(error) and expected in str(error), error


def test_normalisation_constants_at_the_float32_limits_are_accepted(tmp_path: Path) -> None:
    data = example_dict()
    data["models"]["input"].update(std=[1e-6, 1.0, 1e6], mean=[-1e6, 0.0, 1e6])
    assert load_policy(write(tmp_path, data)).models.input.std == [1e-6, 1.0, 1e6]


def test_symbolic_link_loop_and_dangling_link_are_named(tmp_path: Path) -> None:
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    error = load_error(loop)
    assert str(loop) in str(error) and "symbolic link loop" in str(error) and "not found" not in str(error)
    dangling = tmp_path / "dangling.yaml"
    dangling.symlink_to(tmp_path / "gone.yaml")
    error = load_error(dangling)
    assert str(dangling) in str(error) and "broken symbolic link" in str(error) and "gone.yaml" in str(error)


def test_control_characters_in_policy_values_stay_on_one_line(tmp_path: Path) -> None:
    data = example_dict()
    data["gate"]["rules"][0]["drop\r\x1b[2J\nerror: forged\u202e"] = 1  # an unknown key: its name is the field
    error = load_error(write(tmp_path, data))
    text = str(error)
    assert error.field.startswith("gate.rules.0.drop") and "unknown field" in text and len(text.splitlines()) == 1
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text and "\\x1b[2J" in text


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("version: 1\nname: a\nname: b\n", "line 3"),  # duplicate top-level key
        ("version: 1\nmodels:\n  dense: a.onnx\n  dense: b.onnx\n", "line 4"),  # duplicate nested key
    ],
)
def test_duplicate_yaml_keys_are_refused(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    error = load_error(path)
    assert "duplicate key" in str(error) and str(path) in str(error) and where in str(error)


@pytest.mark.parametrize("text", ["version: 1\nname: [unclosed\n", "version: 1\n\tname: tab\n", "a: b: c\n"])
def test_invalid_yaml_is_a_policy_error_with_a_position(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    error = load_error(path)
    assert "invalid YAML" in str(error) and str(path) in str(error) and "line" in str(error)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert str(path) in str(load_error(path))


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    assert "UTF-8" in str(load_error(path))


def test_directory_and_missing_path_are_policy_errors(tmp_path: Path) -> None:
    assert "directory" in str(load_error(tmp_path)) and str(tmp_path) in str(load_error(tmp_path))
    missing = tmp_path / "absent.yaml"
    error = load_error(missing)
    assert "not found" in str(error) and str(missing) in str(error)


def test_paths_resolve_relative_to_the_policy_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    write(folder, EXAMPLE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    policy = load_policy(Path("..") / "conf" / "policy.yaml")  # a relative path to the policy
    assert policy.resolve("models/dense.onnx") == folder.resolve() / "models" / "dense.onnx"
    assert policy.resolve("../images/test").resolve() == (tmp_path / "images" / "test").resolve()
    absolute = tmp_path / "abs.npz"
    assert policy.resolve(str(absolute)) == absolute


def test_policy_without_a_file_resolves_against_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    from prunegate.policy import policy_from_dict

    monkeypatch.chdir(tmp_path)
    policy = policy_from_dict(example_dict())
    assert policy.resolve("x.npz") == tmp_path / "x.npz"


def test_policy_is_immutable(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, EXAMPLE))
    with pytest.raises(ValidationError, match="frozen"):
        policy.name = "other"  # type: ignore[misc]


def test_template_policy_validates(tmp_path: Path) -> None:
    from importlib import resources

    text = resources.files("prunegate").joinpath("templates/policy.yaml").read_text(encoding="utf-8")
    policy = load_policy(write(tmp_path, text))
    assert build_plan(policy)


SHIPPED = sorted((REPO / "prunegate" / "policies").glob("*.yaml"))


@pytest.mark.parametrize(
    "path",
    SHIPPED or [pytest.param(None, marks=pytest.mark.skip(reason="policies/ holds no *.yaml yet"))],
    ids=[p.name for p in SHIPPED] or None,
)
def test_shipped_policies_validate(path: Path) -> None:
    policy = load_policy(path)
    assert build_plan(policy)


def test_json_schema_is_json_with_the_top_level_fields() -> None:
    schema = json.loads(policy_json_schema())
    assert schema["type"] == "object"
    assert {"version", "name", "models", "data", "suite", "gate", "runtime"} <= set(schema["properties"])
    assert {"version", "name", "models", "data", "gate"} <= set(schema["required"])
    assert schema.get("additionalProperties") is False


# --- task: segmentation (issue 15) ----------------------------------------------------------------


def segmentation_document(**changes) -> dict:
    document = {
        "version": 1,
        "name": "seg",
        "task": "segmentation",
        "models": {"dense": "d.onnx", "pruned": "p.onnx", "input": {"size": 513}},
        "data": {"test": {"format": "segmentation-folder", "path": "voc"}},
        "gate": {"rules": [{"name": "miou", "tasks": "*", "metric": "miou_drop", "max": 0.01}]},
    }
    for key, value in changes.items():
        document[key] = value
    return document


def test_task_defaults_to_classification_and_size_takes_height_and_width() -> None:
    document = segmentation_document()
    del document["task"]
    document["data"]["test"] = {"format": "npz", "path": "x.npz"}
    document["gate"]["rules"][0]["metric"] = "accuracy_drop"
    policy = policy_from_dict(document)
    assert policy.task == "classification" and policy.models.input.shape == (513, 513)
    seg = policy_from_dict(segmentation_document(models={"dense": "d", "pruned": "p", "input": {"size": [480, 640]}}))
    assert seg.task == "segmentation" and seg.models.input.shape == (480, 640)
    assert seg.data.test.mask_ignore == 255


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"task": "detection"}, "task", "'classification' or 'segmentation'"),
        (
            {"gate": {"rules": [{"name": "top1", "tasks": "*", "metric": "accuracy_drop", "max": 0.01}]}},
            "gate.rules.0.metric",
            "rule 'top1': accuracy_drop is a classification metric",
        ),
        ({"data": {"test": {"format": "npz", "path": "x.npz"}}}, "data.test.format", "segmentation-folder"),
        (
            {"data": {"test": {"format": "segmentation-folder", "path": "v", "ignore_index": -1}}},
            "data.test.ignore_index",
            "greater than or equal to 0",
        ),
        (
            {"suite": {"corruptions": {"precomputed": "cifar10-c"}}},
            "suite.corruptions.precomputed",
            "hold no masks",
        ),
        ({"models": {"dense": "d", "pruned": "p", "input": {"size": [1, 2, 3]}}}, "models.input.size", "at most 2"),
        ({"models": {"dense": "d", "pruned": "p", "input": {"size": [0, 2]}}}, "models.input.size", "greater than 0"),
    ],
)
def test_segmentation_policy_errors_name_the_field(change: dict, field: str, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        policy_from_dict(segmentation_document(**change))
    assert info.value.field is not None and info.value.field.startswith(field), str(info.value)
    assert words in str(info.value)


def test_a_segmentation_metric_in_a_classification_policy_names_the_rule() -> None:
    document = segmentation_document(task="classification", data={"test": {"format": "npz", "path": "x.npz"}})
    with pytest.raises(PolicyError) as info:
        policy_from_dict(document)
    assert info.value.field == "gate.rules.0.metric"
    assert "rule 'miou': miou_drop is a segmentation metric but the policy's task is classification" in str(info.value)


def test_ignore_index_is_for_segmentation_folders_only() -> None:
    document = segmentation_document(task="classification")
    document["data"] = {"test": {"format": "npz", "path": "x.npz", "ignore_index": 0}}
    document["gate"]["rules"][0]["metric"] = "accuracy_drop"
    with pytest.raises(PolicyError) as info:
        policy_from_dict(document)
    assert info.value.field == "data.test.ignore_index"


@pytest.mark.parametrize(
    ("source", "field", "expected"),
    [
        ({"format": "imagefolder-flat", "labels": "val.txt"}, "labels", "format imagefolder-flat does not read labels"),
        ({"format": "npy", "labels": "y.npy", "images_key": "x"}, "images_key", "images_key is for the npz format"),
        ({"format": "imagefolder", "labels_key": "y"}, "labels_key", "imagefolder does not read labels_key"),
        ({"format": "cifar10-binary", "class_names": "c.txt"}, "class_names", "format cifar10-binary does not read"),
        ({"format": "filelist", "ignore_index": 255}, "ignore_index", "is for the segmentation-folder format"),
        ({"format": "imagefolder", "path_column": "file"}, "path_column", "path_column is for the filelist format"),
        ({"format": "npz", "label_column": "label"}, "label_column", "format npz does not read label_column"),
        ({"format": "filelist", "image_column": "img"}, "image_column", "image_column is for the parquet format"),
        ({"format": "webdataset", "label_column": "y"}, "label_column", "is for the formats filelist, parquet"),
        ({"format": "webdataset", "path_column": "p"}, "path_column", "format webdataset does not read path_column"),
        ({"format": "parquet", "path_column": "p"}, "path_column", "path_column is for the filelist format"),
        ({"format": "parquet", "labels_key": "y"}, "labels_key", "format parquet does not read labels_key"),
        ({"format": "parquet", "ignore_index": 0}, "ignore_index", "is for the segmentation-folder format"),
    ],
)  # fmt: skip
def test_a_field_the_format_does_not_read_is_an_error(tmp_path: Path, source: dict, field: str, expected: str) -> None:
    data = example_dict()
    data["data"]["test"] = {"path": "data", **source}
    error = load_error(write(tmp_path, data))
    assert error.field == f"data.test.{field}" and expected in str(error)


@pytest.mark.parametrize(
    "source",
    [
        {"format": "imagefolder", "path": "d"},
        {"format": "imagefolder-flat", "path": "d", "label_map": "m.json"},
        {"format": "npy", "path": "x.npy", "labels": "y.npy"},
        {"format": "filelist", "path": "l.csv", "label_column": "cls"},
        {"format": "webdataset", "path": "s-{0..3}.tar", "class_names": "c.txt", "label_map": "m.json"},
        {"format": "parquet", "path": "t.parquet", "image_column": "img", "label_column": "cls"},
    ],
)
def test_a_recorded_document_validates_again(source: dict) -> None:
    """A report records the policy with every default spelt out (images_key: images for an image
    folder too); the gallery and `verify --policy` read it back, so a default is never an error."""
    data = example_dict()
    data["data"]["test"] = source
    document = policy_from_dict(data).model_dump(mode="json")
    assert document["data"]["test"]["images_key"] == "images"
    assert policy_from_dict(document).data.test == policy_from_dict(data).data.test


def test_each_format_takes_its_own_fields(tmp_path: Path) -> None:
    data = example_dict()
    data["data"]["test"] = {"format": "filelist", "path": "val.csv", "class_names": "wnids.txt",
                            "path_column": "file", "label_column": "wnid"}  # fmt: skip
    data["data"]["ood"] = [
        {"name": "flat", "format": "imagefolder-flat", "path": "flat", "class_names": None},
        {"name": "arrays", "format": "npz", "path": "x.npz", "images_key": "x", "labels_key": "y"},
    ]
    policy = load_policy(write(tmp_path, data))
    assert (policy.data.test.path_column, policy.data.test.label_column) == ("file", "wnid")
    assert policy.data.ood[1].images_key == "x"


def test_a_file_lists_label_column_is_not_its_path_column(tmp_path: Path) -> None:
    data = example_dict()
    data["data"]["test"] = {"format": "filelist", "path": "val.csv", "label_column": "path"}
    error = load_error(write(tmp_path, data))
    assert error.field == "data.test.label_column" and "cannot be the path column too ('path')" in str(error)


def test_a_parquet_label_column_is_not_its_image_column(tmp_path: Path) -> None:
    data = example_dict()
    data["data"]["test"] = {"format": "parquet", "path": "t.parquet", "label_column": "image"}
    error = load_error(write(tmp_path, data))
    assert error.field == "data.test.label_column" and "cannot be the image column too ('image')" in str(error)
    data["data"]["test"] = {"format": "parquet", "path": "t.parquet", "image_column": "png", "label_column": "path"}
    assert policy_from_dict(data).data.test.columns == ("png", "path")  # a filelist's default means nothing here


def test_the_recorded_document_has_the_list_columns_only_where_set() -> None:
    """Reports record `model_dump`: other formats' documents read as before the columns existed."""
    data = example_dict()
    data["data"]["ood"] = [{"name": "list", "format": "filelist", "path": "val.tsv", "label_column": "wnid"}]
    document = policy_from_dict(data).model_dump(mode="json")["data"]
    assert "path_column" not in document["test"] and "label_column" not in document["test"]
    assert "image_column" not in document["test"] and "image_column" not in document["ood"][0]
    assert "path_column" not in document["ood"][0] and document["ood"][0]["label_column"] == "wnid"
    assert policy_from_dict(data).data.ood[0].columns == ("path", "wnid")


@pytest.mark.parametrize(
    ("metric", "threshold"), [("ece_increase", -0.05), ("nll_increase", -0.5), ("brier_increase", -0.1)]
)
def test_a_signed_metric_takes_a_negative_min(tmp_path: Path, metric: str, threshold: float) -> None:
    """'must not become under-confident': the ECE/NLL/Brier increases are signed (issue 19)."""
    data = example_dict()
    data["gate"]["rules"][0] = {"name": "calibrated", "tasks": "clean", "metric": metric, "min": threshold}
    assert load_policy(write(tmp_path, data)).gate.rules[0].min == threshold


@pytest.mark.parametrize("metric", ["top5_drop", "kl_divergence", "selective_risk_increase", "group_accuracy_drop"])
def test_a_negative_threshold_on_an_unsigned_metric_is_refused(tmp_path: Path, metric: str) -> None:
    data = example_dict()
    data["gate"]["rules"][0] = {"name": "r", "tasks": "clean", "metric": metric, "min": -0.01}
    error = load_error(write(tmp_path, data))
    assert error.field == "gate.rules.0.min" and "must be within [0" in str(error), error


def test_coverage_belongs_to_the_selective_risk_rule_only(tmp_path: Path) -> None:
    data = example_dict()
    data["gate"]["rules"][0] = {"name": "r", "tasks": "clean", "metric": "selective_risk_increase", "max": 0.02}
    rule = load_policy(write(tmp_path, data)).gate.rules[0]
    assert rule.key == "selective_risk_increase@0.8"  # the default coverage
    data["gate"]["rules"][0]["coverage"] = 0.9
    assert load_policy(write(tmp_path, data)).gate.rules[0].key == "selective_risk_increase@0.9"
    data["gate"]["rules"][0] = {"name": "r", "tasks": "clean", "metric": "top5_drop", "max": 0.02, "coverage": 0.9}
    error = load_error(write(tmp_path, data))
    assert error.field == "gate.rules.0.coverage" and "selective_risk_increase" in str(error), error
    data["gate"]["rules"][0] = {"name": "r", "tasks": "clean", "metric": "selective_risk_increase", "max": 0.1,
                                "coverage": 0}  # fmt: skip
    assert load_error(write(tmp_path, data)).field == "gate.rules.0.coverage"
