"""Determinism and no silent loss (issue #8), end to end through `prunegate check`.

The same inputs and seed give the same report, byte for byte, apart from the fields that measure
time (listed below); every sample is counted exactly once in every task, whatever the batch size
(1, one that leaves a partial last batch, one larger than the set) and the number of decoding
workers; and the counts agree with running the models directly.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_same_report
from prunegate.cli import main
from prunegate.report.attest import read_envelope

N, OOD_N = 13, 5  # 13: a prime, so no batch size but 1 and 13+ divides it
SEED = 11
NOISE = [{"kind": "uniform", "levels": [0.5]}, {"kind": "gaussian", "levels": [0.1], "draws": 3}]
CORRUPTIONS = {"preset": "cifar10-c", "names": ["gaussian_noise", "contrast"], "severities": [2, 5]}
DRAWS = {"noise/gaussian/0.1": 3}

# Fields that measure time. Nothing else in a report may differ between two runs of the same inputs.
TIME_FIELDS = [
    "timing.started",
    "timing.duration_s",
    "timing.data_s",
    "timing.shift_s",
    "timing.models_s",
    "timing.wait_s",
]
# Fields that record the run options themselves, which the comparisons across options vary.
OPTION_FIELDS = [
    "options.batch_size",
    "policy.document.runtime.batch_size",
    "options.workers",
    "policy.document.runtime.workers",
    "policy.overrides",
]


@pytest.fixture(scope="module")
def case(tmp_path_factory, colour_net, colour_dataset, save_torchscript, write_npz, write_policy) -> Path:
    folder = tmp_path_factory.mktemp("determinism")
    images, labels = colour_dataset(N, seed=3)
    write_npz(folder / "data.npz", images, labels)
    ood_images, ood_labels = colour_dataset(OOD_N, seed=4)
    write_npz(folder / "ood.npz", ood_images // 2, ood_labels)  # darker: another distribution
    save_torchscript(colour_net(), folder / "dense.pt")
    save_torchscript(colour_net(jitter=0.3, seed=2), folder / "pruned.pt")  # disagrees on some samples
    return write_policy(
        folder / "policy.yaml",
        models={"input": {"size": 8, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}},
        data={"ood": [{"name": "dark", "format": "npz", "path": "ood.npz"}]},
        suite={"seed": SEED, "noise": NOISE, "corruptions": CORRUPTIONS},
        # backend auto picks torch or ONNX Runtime by timing, which can differ between two runs
        # (and with it the last bits of the logits): a pinned backend makes the runs comparable.
        runtime={"backend": "torch"},
        rules=[
            {"name": "clean drop", "tasks": "clean", "metric": "accuracy_drop", "max": 0.2},
            {
                "name": "shift agreement",
                "tasks": ["noise/*", "corruption/*", "ood/*"],
                "metric": "agreement",
                "aggregate": "mean",
                "min": 0.5,
            },
        ],
    )


def check(policy: Path, out: Path, *options: str) -> tuple[bytes, dict]:
    """(the report file's bytes, the statement) of one `prunegate check`."""
    report = out / "report.json"
    code = main(["check", "--policy", str(policy), "--report", str(report), "--quiet", *options])
    assert code in (0, 1)
    raw = report.read_bytes()
    report.unlink()
    return raw, read_envelope(raw.decode(), str(report))[2]


def without(statement: dict, fields: list[str]) -> dict:
    """A copy of the statement's predicate without the dotted `fields` (each must exist)."""
    predicate = copy.deepcopy(statement["predicate"])
    for dotted in fields:
        *parents, last = dotted.split(".")
        node = predicate
        for part in parents:
            node = node[part]
        assert last in node, f"{dotted} is not in the report: update TIME_FIELDS / OPTION_FIELDS"
        del node[last]
    return {**statement, "predicate": predicate}


def canonical(statement: dict) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def test_same_inputs_and_seed_give_the_same_report_but_for_the_time(case: Path, tmp_path: Path) -> None:
    first_raw, first = check(case, tmp_path)
    second_raw, second = check(case, tmp_path)
    assert set(first["predicate"]["timing"]) == {f.split(".")[1] for f in TIME_FIELDS}, (
        "a new timing field: list it in TIME_FIELDS"
    )
    assert canonical(without(first, TIME_FIELDS)) == canonical(without(second, TIME_FIELDS))
    # The report file is the envelope of those canonical bytes: nothing else in it can differ.
    assert canonical(first) == read_envelope(first_raw.decode(), "first")[1]
    assert canonical(second) == read_envelope(second_raw.decode(), "second")[1]


def test_another_seed_changes_the_shifted_tasks_only(case: Path, tmp_path: Path) -> None:
    other = case.parent / "other-seed.yaml"
    other.write_text(case.read_text().replace(f"seed: {SEED}", f"seed: {SEED + 1}"))
    _, first = check(case, tmp_path)
    _, second = check(other, tmp_path)
    tasks = {t["name"]: t for t in first["predicate"]["tasks"]}
    changed = {t["name"] for t in second["predicate"]["tasks"] if t["softmax_l2"] != tasks[t["name"]]["softmax_l2"]}
    assert "clean" not in changed and "ood/dark" not in changed
    assert {"noise/uniform/0.5", "noise/gaussian/0.1", "corruption/gaussian_noise/5"} <= changed


def expected_n(task: dict, used: dict[str, int]) -> int:
    return used[task["source"]] * DRAWS.get(task["name"], 1)


@pytest.mark.parametrize("limit", [None, 10])
def test_every_sample_is_counted_once_whatever_the_batch_size_and_workers(case: Path, tmp_path: Path, limit) -> None:
    limited = ["--limit", str(limit)] if limit else []
    runs = {}
    for batch_size, workers in ((1, 0), (7, 0), (64, 0), (7, 2)):
        _, statement = check(case, tmp_path, "--batch-size", str(batch_size), "--workers", str(workers), *limited)
        runs[(batch_size, workers)] = statement
        predicate = statement["predicate"]
        assert predicate["options"]["batch_size"] == batch_size and predicate["options"]["workers"] == workers
        used = {d["name"]: d["used"] for d in predicate["data"]}
        assert used == {"test": min(N, limit or N), "dark": min(OOD_N, limit or OOD_N)}
        assert len(predicate["tasks"]) == 1 + 1 + 2 + 2 * 2
        for task in predicate["tasks"]:
            assert task["n"] == expected_n(task, used), (batch_size, workers, task["name"])
            for side in ("dense", "pruned"):
                assert 0 <= task[side]["correct"] <= task["n"] and task[side]["nonfinite"] == 0
                assert task[side]["accuracy"] == pytest.approx(task[side]["correct"] / task["n"])
    # Decoding workers change nothing at all.
    assert canonical(without(runs[(7, 2)], TIME_FIELDS + OPTION_FIELDS)) == canonical(
        without(runs[(7, 0)], TIME_FIELDS + OPTION_FIELDS)
    )
    # Other batch sizes: every count, prediction and random draw is the same; the models' float
    # outputs may differ in the last bits (BLAS kernels depend on the batch), and with them the
    # softmax distances.
    reference = without(runs[(64, 0)], TIME_FIELDS + OPTION_FIELDS)
    for options, statement in runs.items():
        assert_same_report(without(statement, TIME_FIELDS + OPTION_FIELDS), reference, str(options))


def test_clean_counts_equal_running_the_models_directly(case: Path, tmp_path: Path) -> None:
    """An independent count: the models run here on the whole set, in one batch."""
    _, statement = check(case, tmp_path, "--batch-size", "5")
    clean = next(t for t in statement["predicate"]["tasks"] if t["name"] == "clean")
    with np.load(case.parent / "data.npz") as archive:
        images, labels = archive["images"], archive["labels"]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        dense = torch.jit.load(str(case.parent / "dense.pt"))(x).argmax(1).numpy()
        pruned = torch.jit.load(str(case.parent / "pruned.pt"))(x).argmax(1).numpy()
    assert clean["n"] == N
    assert clean["dense"]["correct"] == int((dense == labels).sum())
    assert clean["pruned"]["correct"] == int((pruned == labels).sum())
    assert clean["agreement"] == pytest.approx(float((dense == pruned).mean()))
    assert 0 < clean["agreement"] < 1  # the pair disagrees somewhere: the comparison means something
