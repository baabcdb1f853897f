from __future__ import annotations

import base64
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
from prunegate.report.gallery import build_gallery, png, rebuild_inputs, select_cards
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
    gallery = rebuild_inputs(report, [(t, e) for t in report.tasks for e in t.examples])
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
    report = with_examples(report, lambda position, task: [10 * position + k for k in range(3)])
    cards = select_cards(report, limit=5, per_task=2)
    assert len(cards) == 5
    failing = {t.task for r in report.rules for t in r.per_task if not t.passed}
    shown = [card.shown[0].name for card in cards]
    assert set(shown[:4]) <= failing and shown[0] == "noise/uniform/0.3"  # the largest drop among the failing
    assert [len(c.examples) for c in cards] == [1] * 5  # each image recorded on one task only
    assert select_cards(sample_report(extras=False)) == []


def with_examples(report, indices):
    """The report with examples at `indices(position, task)` on every task."""
    tasks = [
        t.model_copy(update={"examples": [Example(index=i, label=0, dense=0, pruned=1) for i in indices(k, t)]})
        for k, t in enumerate(report.tasks)
    ]
    return report.model_copy(update={"tasks": tasks})


def test_one_card_per_image_listing_every_task_that_broke_it(sample_report) -> None:
    report = sample_report(failing=True)  # every task records samples 0 and 4
    cards = select_cards(report)
    assert [(c.source, c.index) for c in cards] == [("test", 0), ("test", 4)]
    for card in cards:
        assert sorted(t.name for t, _ in card.examples) == sorted(t.name for t in report.tasks)
        assert all(e.index == card.index for _, e in card.examples)
        assert card.shown[0].name == "noise/uniform/0.3"  # the first task in the ranking
    # an image a task records beyond its first `per_task` examples is listed, not added
    late = with_examples(report, lambda k, t: [k] if k else [1, 2, 3, 4, 5])
    cards = select_cards(late, per_task=2)
    clean = next(t for t in late.tasks if t.name == "clean")
    assert not any(c.shown[0] is clean and c.index > 2 for c in cards)
    [card] = [c for c in cards if c.index == 3]
    assert {t.name for t, _ in card.examples} == {"clean", late.tasks[3].name}
    assert len(select_cards(late, limit=3)) == 3


def test_cards_are_named_by_the_image_file(gate_case, tmp_path) -> None:
    """An image folder names each image's file relative to the set's folder; the page shows it."""
    from prunegate.report.render import html

    for label, name in enumerate(("red", "green", "blue")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for k in range(2):
            colour = [30 * k] * 3
            colour[label] = 220
            Image.new("RGB", (8, 8), tuple(colour)).save(tmp_path / "images" / name / f"img{k}.png")
    policy = gate_case("jitter", data={"test": {"format": "imagefolder", "path": "images"}})
    # The folders' sorted order (blue, green, red) is not the colour model's (red, green, blue): at
    # chance, which the sanity check would stop; the names are what this test is about.
    report = run_check(load_policy(policy), sanity_check=False)
    report = with_examples(report, lambda k, t: [3, 5])
    gallery = build_gallery(report)
    assert gallery.notes == [] and gallery.names == {
        ("test", 3): "green/img1.png",
        ("test", 5): "red/img1.png",
    }  # blue, green, red
    page = html.render(report, gallery=gallery)
    assert "green/img1.png" in page and "red/img1.png" in page and "test #3" not in page


def test_array_formats_name_the_file_and_index(gated) -> None:
    _, report = gated
    gallery = build_gallery(report)
    assert gallery.names[("test", 7)] == "data.npz #7"
    assert set(gallery.names) == {("test", i) for i in (1, 7, 10)}


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
    every = [(t, e) for t in report.tasks for e in t.examples]
    gallery = rebuild_inputs(report, every)
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
    changed = rebuild_inputs(report, every)
    assert {key[0] for key in changed.images} == {"clean"} and any("differ" in n for n in changed.notes)


# --- segmentation (issue 15): the worst image's panel ---------------------------------------------


def b64png(mask: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_voc_palette_and_overlay() -> None:
    from prunegate.data import IGNORED
    from prunegate.report.gallery import overlay, voc_palette

    palette = voc_palette()
    assert palette.shape == (256, 3)
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[15].tolist() == [192, 128, 128] and palette[255].tolist() == [224, 224, 192]
    image = np.full((2, 3, 3), 100, np.uint8)
    mask = np.array([[0, 1, IGNORED], [2, 7, 255]])
    out = overlay(image, mask, classes=3, alpha=0.5)
    assert out[0, 2].tolist() == [100, 100, 100]  # ignored: uncoloured
    assert out[1, 1].tolist() == out[1, 2].tolist() == [100, 100, 100]  # not a class of the models
    assert out[0, 0].tolist() == [50, 50, 50] and out[0, 1].tolist() == [114, 50, 50]
    assert out[1, 0].tolist() == [50, 114, 50]
    assert overlay(image[..., :1], mask, classes=3).shape == (2, 3, 3)  # grey input


def test_decode_mask_checks_what_it_reads() -> None:
    from prunegate.report.gallery import decode_mask

    mask = np.arange(12).reshape(3, 4) % 3
    assert (decode_mask(b64png(mask), (3, 4)) == mask).all()
    with pytest.raises(ValueError, match="4x3 pixels, the input is 3x4"):
        decode_mask(b64png(mask), (4, 3))
    with pytest.raises(ValueError, match="not a base64 PNG"):
        decode_mask("not base64!", (3, 4))
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="single-channel"):
        decode_mask(base64.b64encode(buffer.getvalue()).decode(), (3, 4))


def masked(report, dense: str | None, pruned: str | None):
    """The report with these masks on the first example of its task with the largest mIoU drop
    (and none elsewhere)."""
    worst = max(report.tasks, key=lambda t: t.miou_drop)
    tasks = []
    for task in report.tasks:
        examples = [e.model_copy(update={"dense_mask": None, "pruned_mask": None}) for e in task.segmentation_examples]
        if task is worst:
            examples[0] = examples[0].model_copy(update={"dense_mask": dense, "pruned_mask": pruned})
        tasks.append(task.model_copy(update={"segmentation_examples": examples}))
    return report.model_copy(update={"tasks": tasks}), worst, worst.segmentation_examples[0]


def test_panel_rebuilds_the_input_and_overlays_the_masks(segmentation_report) -> None:
    from prunegate.data import IGNORED
    from prunegate.report.gallery import build_gallery, overlay

    report, folder = segmentation_report
    policy = load_policy(folder / "policy.yaml")
    ctx = RunContext.build(policy, sources=())
    images = open_source(policy.data.test, policy.resolve, "data.test")
    worst = max(report.tasks, key=lambda t: t.miou_drop)
    index = worst.segmentation_examples[0].index
    batch, truth, _ = images.read_batch([index], ctx.size, policy.data.max_pixels)
    x = batch.permute(0, 3, 1, 2).float() / 255
    shown = task_pixels(ctx, ctx.task(worst.name), x, torch.tensor([index]), 0).pixels(ctx.pre)
    expected = shown.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)[0].numpy()
    truth = truth[0].numpy()
    assert (truth[0] == IGNORED).all()  # the void border row
    dense = np.where(truth == IGNORED, 0, truth)
    pruned = np.where(dense == 2, 1, dense)
    report, task, example = masked(report, b64png(dense), b64png(pruned))

    gallery = build_gallery(report)
    assert gallery.notes == []
    panel = gallery.panels[(task.name, example.index, 0)]
    assert (decode(panel.input) == expected).all()
    assert (decode(panel.truth) == overlay(expected, truth, 3)).all()
    assert (decode(panel.truth)[0] == expected[0]).all()  # ignored pixels stay uncoloured
    assert (decode(panel.dense) == overlay(expected, dense, 3)).all()
    assert (decode(panel.pruned) == overlay(expected, pruned, 3)).all()
    assert panel.classes == sorted(set(np.unique(dense).tolist()) | set(np.unique(pruned).tolist()))


def test_panel_without_masks_or_with_bad_ones(segmentation_report) -> None:
    from prunegate.report.gallery import build_gallery

    report, _ = segmentation_report
    bare, _, _ = masked(report, None, None)
    assert build_gallery(bare).panels == {} and build_gallery(bare).notes == []
    good = b64png(np.zeros((16, 16)))
    odd, task, example = masked(report, good, b64png(np.zeros((8, 8))))
    gallery = build_gallery(odd)
    panel = gallery.panels[(task.name, example.index, 0)]
    assert panel.input and panel.truth and panel.dense and panel.pruned is None
    assert "pruned model's recorded mask" in gallery.note and "8x8 pixels, the input is 16x16" in gallery.note
