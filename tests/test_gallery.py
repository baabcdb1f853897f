from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunegate.check import run_check
from prunegate.context import RunContext, task_pixels
from prunegate.data import fit_to_size, open_source
from prunegate.policy import load_policy
from prunegate.report.gallery import build_gallery, png, select_examples
from prunegate.report.schema import Example

SUITE = {
    "seed": 5,
    "noise": [{"kind": "uniform", "levels": [0.2]}, {"kind": "gaussian", "levels": [0.1], "draws": 2}],
    "corruptions": {"preset": "cifar10-c", "names": ["contrast", "gaussian_noise"], "severities": [2]},
}


@pytest.fixture
def gated(gate_case):
    """(policy path, a real report of the tiny case with a few examples recorded on every task)."""
    policy = gate_case("jitter", n=12, suite=SUITE)
    report = run_check(load_policy(policy))
    tasks = []
    for task in report.tasks:
        draws = 2 if task.name.startswith("noise/gaussian") else 1
        examples = [Example(index=i, draw=i % draws, label=i % 3, dense=i % 3, pruned=(i + 1) % 3) for i in (1, 7, 10)]
        tasks.append(task.model_copy(update={"examples": examples}))
    return policy, report.model_copy(update={"tasks": tasks})


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def engine_inputs(policy_path: Path, task_name: str, indices: list[int], draw: int, assets=None) -> np.ndarray:
    """What the engine fed the models, mapped back from the normalised input to uint8 pixels."""
    policy = load_policy(policy_path)
    ctx = RunContext.build(policy, sources=(), assets=assets)
    task = ctx.task(task_name)
    images = open_source(policy.data.test, policy.resolve, "data.test")
    pictures, _ = images.read(indices, policy.data.max_pixels)
    x = torch.stack([fit_to_size(p.permute(2, 0, 1), policy.models.input.size) for p in pictures]).float() / 255
    pre = ctx.pre
    out = task_pixels(ctx, task, x, torch.tensor(indices), draw).model_input(pre) * pre.std + pre.mean
    return out.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_rebuilds_exactly_the_inputs_the_engine_made(gated) -> None:
    policy, report = gated
    gallery = build_gallery(report, limit=100, per_task=3)
    assert gallery.notes == []
    assert len(gallery.images) == 3 * len(report.tasks)
    for task in report.tasks:
        for example in task.examples:
            made = decode(gallery.images[(task.name, example.index, example.draw)])
            expected = engine_inputs(policy, task.name, [example.index], example.draw)[0]
            assert made.shape == expected.shape == (8, 8, 3)
            # uniform noise lives in normalised space: mapping back costs at most one level of rounding
            tolerance = 1 if task.name.startswith("noise/uniform") else 0
            assert np.abs(made.astype(int) - expected.astype(int)).max() <= tolerance, task.name
    # the clean originals of shifted inputs, by (source, index)
    clean = decode(gallery.originals[("test", 7)])
    assert (clean == engine_inputs(policy, "clean", [7], 0)[0]).all()
    # draws differ: the second gaussian draw is another image
    second = decode(gallery.images[("noise/gaussian/0.1", 7, 1)])
    assert (second == engine_inputs(policy, "noise/gaussian/0.1", [7], 1)[0]).all()
    assert not (second == engine_inputs(policy, "noise/gaussian/0.1", [7], 0)[0]).all()


def test_missing_data_leaves_the_gallery_out_with_a_note(gated) -> None:
    policy, report = gated
    (policy.parent / "data.npz").unlink()
    gallery = build_gallery(report)
    assert gallery.images == {} and gallery.originals == {}
    assert "'test' is not readable here" in gallery.note and "data.npz" in gallery.note


def test_changed_data_is_not_shown(gated, colour_dataset, write_npz) -> None:
    policy, report = gated
    write_npz(policy.parent / "data.npz", *colour_dataset(15))
    gallery = build_gallery(report)
    assert gallery.images == {} and "has changed" in gallery.note


def test_an_unusable_policy_document_is_a_note(gated) -> None:
    _, report = gated
    document = {**report.policy.document, "suite": {"seed": "five"}}
    report = report.model_copy(update={"policy": report.policy.model_copy(update={"document": document})})
    gallery = build_gallery(report)
    assert gallery.images == {} and "policy cannot be rebuilt" in gallery.note


def test_examples_outside_the_data_set_are_skipped(gated) -> None:
    _, report = gated
    clean = report.tasks[0].model_copy(update={"examples": [Example(index=99, label=0, dense=0, pruned=1)]})
    report = report.model_copy(update={"tasks": [clean]})
    gallery = build_gallery(report)
    assert gallery.images == {} and "outside their data set" in gallery.note


def test_selection_puts_tasks_that_failed_a_rule_first(sample_report) -> None:
    report = sample_report(failing=True)
    chosen = select_examples(report, limit=5, per_task=2)
    assert len(chosen) == 5
    failing = {t.task for r in report.rules for t in r.per_task if not t.passed}
    assert [t.name for t, _ in chosen[:4]] == [t.name for t, _ in chosen[:4] if t.name in failing]
    assert chosen[0][0].name == "noise/uniform/0.3"  # the largest drop among the failing tasks
    assert select_examples(sample_report(extras=False)) == []


def test_png_thumbnails_are_small() -> None:
    big = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    assert decode(png(big, side=64)).shape == (64, 43, 3)
    small = np.zeros((8, 8, 3), dtype=np.uint8)
    assert decode(png(small)).shape == (8, 8, 3)


def test_frost_examples_are_rebuilt_with_the_policys_photographs(gate_case) -> None:
    from prunegate.shifts import NO_ASSETS, ShiftAssets
    from prunegate.shifts.textures import load_texture_folder

    suite = {
        "seed": 5,
        "corruptions": {"preset": "cifar10-c", "names": ["frost"], "severities": [3], "frost_textures": "frost"},
    }
    policy = gate_case("jitter", n=12, suite=suite)
    folder = policy.parent / "frost"
    folder.mkdir()
    Image.new("RGB", (300, 240), (0, 0, 0)).save(folder / "black.png")
    report = run_check(load_policy(policy))
    examples = [Example(index=i, draw=0, label=i % 3, dense=i % 3, pruned=(i + 1) % 3) for i in (1, 7)]
    report = report.model_copy(update={"tasks": [t.model_copy(update={"examples": examples}) for t in report.tasks]})
    gallery = build_gallery(report, limit=100, per_task=3)
    assert gallery.notes == []
    expected = engine_inputs(
        policy, "corruption/frost/3", [1, 7], 0, ShiftAssets(frost_textures=load_texture_folder(folder))
    )
    procedural = engine_inputs(policy, "corruption/frost/3", [1, 7], 0, NO_ASSETS)
    for i, index in enumerate((1, 7)):
        made = decode(gallery.images[("corruption/frost/3", index, 0)])
        assert (made == expected[i]).all()
        assert not (made == procedural[i]).all()

    # photographs changed since the report: the frost examples are left out, with a note
    Image.new("RGB", (300, 240), (255, 255, 255)).save(folder / "black.png")
    changed = build_gallery(report, limit=100, per_task=3)
    assert {key[0] for key in changed.images} == {"clean"} and any("differ" in n for n in changed.notes)
