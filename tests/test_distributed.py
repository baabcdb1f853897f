"""torchrun: sharding by sample ranges, merging tallies, and identical results to one process."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prunegate.cli import main
from prunegate.distributed import SINGLE, World, from_environment

# Fields that legitimately differ between a one-process and a torchrun run.
RUN_SPECIFIC = {"timing", "environment", "options"}


def predicate(path: Path) -> dict:
    return json.loads(base64.b64decode(json.loads(path.read_text())["payload"]))["predicate"]


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_parts_are_contiguous_and_cover_every_sample_once(size: int) -> None:
    indices = np.array([0, 3, 4, 9, 10, 11, 20, 21, 22, 30])
    parts = [World(rank, size).part(indices) for rank in range(size)]
    assert np.array_equal(np.concatenate(parts), indices)
    assert all(len(p) in (len(indices) // size, len(indices) // size + 1) for p in parts)


def test_a_plain_run_is_a_world_of_one(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_environment() == SINGLE and SINGLE.is_main


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "prunegate",
        *args,
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def compare_with_torchrun(policy: Path, tmp_path: Path) -> tuple[dict, dict]:
    single, sharded = tmp_path / "single.json", tmp_path / "sharded.json"
    code = main(["check", "--policy", str(policy), "--report", str(single), "--quiet"])
    done = torchrun("check", "--policy", str(policy), "--report", str(sharded), "--quiet", cwd=tmp_path)
    assert done.returncode == code, done.stderr[-3000:]
    one, two = predicate(single), predicate(sharded)
    assert two["options"]["processes"] == 2 and one["options"]["processes"] == 1
    for key in set(one) - RUN_SPECIFIC:
        assert one[key] == two[key], key
    return one, two


def test_torchrun_gives_the_same_report_as_one_process(tmp_path: Path, gate_case) -> None:
    # 37 images in batches of 5 over 2 processes: uneven parts and partial last batches; noise
    # with 2 draws, random and deterministic corruptions, bootstrap intervals and a mean rule.
    policy = gate_case(
        "jitter",
        n=37,
        suite={
            "seed": 1,
            "noise": [{"kind": "uniform", "levels": [0.5, 1.0], "draws": 2}],
            "corruptions": {"preset": "cifar10-c", "names": ["fog", "shot_noise"], "severities": [1, 5]},
        },
        gate={
            "confidence": 0.9,
            "rules": [{"name": "mean drop", "tasks": "*", "metric": "accuracy_drop", "aggregate": "mean", "max": 0.2}],
        },
        runtime={"batch_size": 5, "backend": "torch"},
    )  # auto's timed choice may differ between the two runs
    one, _ = compare_with_torchrun(policy, tmp_path)
    assert [t["n"] for t in one["tasks"]] == [37, 74, 74, 37, 37, 37, 37]


def test_torchrun_gives_the_same_segmentation_report_as_one_process(tmp_path: Path) -> None:
    # 7 images in batches of 3 over 2 processes: parts of 4 and 3 images, partial last batches;
    # clean, a corruption and a noise task with 2 draws (14 slots), bootstrap intervals and rules
    # on the mean mIoU drop and on the clean pixel agreement.
    import torch

    from conftest import SEG_SIZE, PixelNet, segmentation_policy, write_segmentation_folder

    write_segmentation_folder(tmp_path / "voc", images=7, seed=3)
    for name, net in (("dense", PixelNet()), ("pruned", PixelNet(dropped=2))):
        torch.jit.trace(net.eval(), torch.rand(2, 3, SEG_SIZE, SEG_SIZE)).save(str(tmp_path / f"{name}.pt"))
    policy = segmentation_policy(
        tmp_path,
        rules=[
            {"name": "mean miou", "tasks": "*", "metric": "miou_drop", "aggregate": "mean", "max": 0.05},
            {"name": "agreement", "tasks": "clean", "metric": "pixel_agreement", "min": 0.5},
        ],
        suite={
            "seed": 1,
            "noise": [{"kind": "gaussian", "levels": [0.2], "draws": 2}],
            "corruptions": {"names": ["contrast"], "severities": [1]},
        },
        runtime={"device": "cpu", "workers": 0, "batch_size": 3, "backend": "torch"},
    )
    one, _ = compare_with_torchrun(policy, tmp_path)
    assert one["task"] == "segmentation"
    assert [(t["name"], t["n"]) for t in one["tasks"]] == [
        ("clean", 7),
        ("noise/gaussian/0.2", 14),
        ("corruption/contrast/1", 7),
    ]
    for task in one["tasks"]:  # the compared records carry the segmentation metrics and intervals
        assert task["miou_drop"] > 0 and task["pixels"] == 7 * (SEG_SIZE - 1) * SEG_SIZE * (task["n"] // 7)
        assert {"miou_drop", "pixel_agreement", "pruned_miou", "class_iou_drop"} <= set(task["intervals"])


@pytest.mark.parametrize(
    ("pruned", "stopped"), [("zero", "a rule was decided fail"), ("same", "every rule was decided")]
)
def test_torchrun_stops_a_sequential_gate_where_one_process_does(tmp_path: Path, gate_case, pruned, stopped) -> None:
    # 203 images in batches of 10 over 2 processes: each reads its share of every prefix of the
    # seeded order, the shares end a batch apart (102 and 101 images), and both look together.
    policy = gate_case(
        pruned,
        n=203,
        suite={"seed": 3, "noise": [{"kind": "uniform", "levels": [0.1], "draws": 2}]},
        gate={
            "confidence": 0.9,
            "sequential": True,
            "min_samples": 40,
            "rules": [
                {"name": "drop", "tasks": "*", "metric": "accuracy_drop", "aggregate": "mean", "max": 0.2},
                {"name": "agree", "tasks": "clean", "metric": "agreement", "min": 0.5},
            ],
        },
        runtime={"batch_size": 10, "backend": "torch"},
    )
    one, two = compare_with_torchrun(policy, tmp_path)
    assert one["sequential"]["stopped"] == stopped
    assert 40 <= one["sequential"]["sources"][0]["used"] < 203
