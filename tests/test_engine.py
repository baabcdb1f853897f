from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prunegate.context import Preprocess, RunContext, Source, task_pixels
from prunegate.data import select
from prunegate.data.arrays import NpzImages
from prunegate.engine import check_labels, evaluate, probe_classes, total_evaluations
from prunegate.errors import DataError, ModelError
from prunegate.plan import Task, TaskKind
from prunegate.policy import ModelSpec
from prunegate.runners import LoadOptions, load_runner

CPU = torch.device("cpu")
SIZE = 8
N = 10
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TASKS = [
    Task("clean", TaskKind.CLEAN, "test"),
    Task("noise/uniform/0.5", TaskKind.NOISE, "test", "uniform", level=0.5),
    Task("noise/gaussian/0.2", TaskKind.NOISE, "test", "gaussian", level=0.2, draws=2),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, colour_net, colour_dataset, save_onnx, write_npz, write_arch_file) -> Path:
    """data.npz (10 colour images), bad-labels.npz, dense.pt / pruned.pt (state dicts for the arch
    file tiny_arch.py: eager modules, quick to run at any batch size) and dense.onnx."""
    folder = tmp_path_factory.mktemp("engine")
    images, labels = colour_dataset(N)
    write_npz(folder / "data.npz", images, labels)
    labels_out_of_range = labels.copy()
    labels_out_of_range[4] = 5
    write_npz(folder / "bad-labels.npz", images, labels_out_of_range)
    write_arch_file(folder)
    torch.save(colour_net().state_dict(), folder / "dense.pt")
    torch.save(colour_net(jitter=0.3, seed=1).state_dict(), folder / "pruned.pt")
    save_onnx(colour_net(), folder / "dense.onnx")
    return folder


def runner(path: Path, arch: str | None = "tiny_arch.py:build"):
    arch = arch if path.name in ("dense.pt", "pruned.pt") else None
    return load_runner(
        ModelSpec(path=path.name, arch=arch),
        path,
        "models.dense",
        LoadOptions(base_dir=path.parent, backend="auto", device=CPU, allow_pickle=False, allow_fallback=False),
    )


def source(path: Path, limit: int | None = None) -> Source:
    images = NpzImages(path, "data.test")
    return Source("test", images, select(images.labels, limit))


def context(tasks=TASKS, sources=(), seed: int = 0, batch_size: int = 64, pre=None) -> RunContext:
    return RunContext(
        tuple(tasks),
        tuple(sources),
        pre or Preprocess.create(MEAN, STD, CPU),
        (SIZE, SIZE),
        seed,
        batch_size,
        workers=0,
        max_pixels=10**6,
        device=CPU,
    )


def task_input(task: Task, x, sample_ids, draw: int, seed: int, pre: Preprocess):
    """The model input of a task, as the engine makes it."""
    return task_pixels(context(seed=seed, pre=pre), task, x, sample_ids, draw).model_input(pre)


def run(folder: Path, batch_size: int, limit: int | None = None, tasks=TASKS, seed: int = 0, progress=None):
    src = source(folder / "data.npz", limit)
    ctx = context(tasks, [src], seed, batch_size)
    tallies, timings = evaluate(ctx, runner(folder / "dense.pt"), runner(folder / "pruned.pt"), progress=progress)
    return tallies, timings, src


def test_results_do_not_depend_on_the_batch_size(folder: Path) -> None:
    results = {bs: run(folder, bs)[0] for bs in (1, 3, 64)}
    reference = results[64]
    for bs in (1, 3):
        for name, tally in results[bs].items():
            ref = reference[name]
            assert torch.equal(tally.labels, ref.labels), (bs, name)
            assert torch.equal(tally.dense_pred, ref.dense_pred) and torch.equal(tally.pruned_pred, ref.pruned_pred)
            torch.testing.assert_close(tally.l2, ref.l2, rtol=1e-5, atol=1e-6)
            assert tally.summary()["agreement"] == ref.summary()["agreement"]


def test_noise_tasks_actually_change_the_outputs(folder: Path) -> None:
    tallies = run(folder, 64)[0]
    clean_l2 = tallies["clean"].l2
    assert not torch.allclose(tallies["noise/uniform/0.5"].l2, clean_l2)
    draws = tallies["noise/gaussian/0.2"].l2.view(N, 2)
    assert not torch.equal(draws[:, 0], draws[:, 1])  # two draws, two different noises


def test_same_seed_same_results_other_seed_other_noise(folder: Path) -> None:
    first, second, other = (run(folder, 4, seed=s)[0] for s in (0, 0, 1))
    assert torch.equal(first["noise/uniform/0.5"].l2, second["noise/uniform/0.5"].l2)
    assert not torch.equal(first["noise/uniform/0.5"].l2, other["noise/uniform/0.5"].l2)
    assert torch.equal(first["clean"].l2, other["clean"].l2)


@pytest.mark.parametrize(("limit", "batch_size"), [(None, 3), (None, 10), (7, 3), (7, 64), (1, 1)])
def test_every_task_counts_every_selected_sample(folder: Path, limit: int | None, batch_size: int) -> None:
    tallies, timings, src = run(folder, batch_size, limit)
    expected = N if limit is None else limit
    assert len(src.indices) == expected
    for task in TASKS:
        tally = tallies[task.name]
        assert tally.n == expected * task.draws and tally.summary()["n"] == expected * task.draws
        assert bool(tally.filled.all())
        labels = src.images.labels[np.repeat(src.indices, task.draws)]
        assert tally.labels.tolist() == labels.tolist()
    assert set(timings) == {"data_s", "shift_s", "models_s", "wait_s"}


def test_a_correct_model_scores_full_marks_on_clean(folder: Path) -> None:
    summary = run(folder, 4)[0]["clean"].summary()
    assert summary["dense"]["accuracy"] == 1.0 and summary["dense"]["correct"] == N


def test_progress_adds_up_to_the_total(folder: Path) -> None:
    counts: list[int] = []
    _, _, src = run(folder, 3, limit=7, progress=counts.append)
    assert sum(counts) == total_evaluations(context(TASKS, [src])) == 7 * (1 + 1 + 2)


def test_manifest_records_every_used_sample(folder: Path) -> None:
    _, _, src = run(folder, 3, limit=7)
    manifest = src.manifest.to_dict()
    assert manifest["used"] == 7 and manifest["size"] == N and len(manifest["sha256"]) == 64


def test_task_input_clean_is_the_normalised_batch() -> None:
    pre = Preprocess.create(MEAN, STD, CPU)
    x = torch.rand(2, 3, SIZE, SIZE)
    expected = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(task_input(TASKS[0], x, torch.arange(2), 0, 0, pre), expected)


def test_uniform_noise_is_bounded_in_normalised_space_and_keyed_by_sample() -> None:
    pre = Preprocess.create(MEAN, STD, CPU)
    x = torch.rand(4, 3, SIZE, SIZE)
    noisy = task_input(TASKS[1], x, torch.arange(4), 0, 0, pre)
    delta = noisy - pre(x)
    assert delta.abs().max() <= 0.5 + 1e-6 and delta.abs().max() > 0.4
    assert abs(delta.mean().item()) < 0.05 and delta.std().item() == pytest.approx(0.5 / 3**0.5, rel=0.1)
    alone = task_input(TASKS[1], x[2:3], torch.tensor([2]), 0, 0, pre)  # sample 2 in a batch of its own
    torch.testing.assert_close(alone, noisy[2:3])


def test_gaussian_noise_stays_in_the_pixel_range() -> None:
    pre = Preprocess.create((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), CPU)
    x = torch.rand(4, 3, SIZE, SIZE)
    noisy = task_input(TASKS[2], x, torch.arange(4), 1, 0, pre)
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0 and not torch.equal(noisy, x)
    assert not torch.equal(noisy, task_input(TASKS[2], x, torch.arange(4), 0, 0, pre))  # draws differ


def test_labels_outside_the_classes_are_a_data_error(folder: Path) -> None:
    with pytest.raises(DataError) as caught:
        check_labels(source(folder / "bad-labels.npz"), 3)
    assert "label 5" in str(caught.value) and str(folder / "bad-labels.npz") in str(caught.value)
    assert caught.value.field == "data.test"
    check_labels(source(folder / "data.npz"), 3)
    check_labels(source(folder / "bad-labels.npz", limit=3), 3)  # label 5 not among those used


def test_probe_returns_the_class_count(folder: Path) -> None:
    assert probe_classes(runner(folder / "dense.pt"), runner(folder / "dense.onnx"), SIZE) == 3


def test_models_with_different_class_counts_are_a_model_error(
    tmp_path: Path, folder: Path, random_net, save_torchscript
) -> None:
    four = save_torchscript(random_net(classes=4), tmp_path / "four.pt")
    with pytest.raises(ModelError) as caught:
        probe_classes(runner(folder / "dense.pt"), runner(four), SIZE)
    assert "3 classes" in str(caught.value) and "4" in str(caught.value) and str(four) in str(caught.value)


@pytest.mark.parametrize("model", ["dense.pt", "dense.onnx"])
def test_model_with_another_input_size_is_a_model_error(folder: Path, model: str) -> None:
    with pytest.raises(ModelError) as caught:
        probe_classes(runner(folder / model), runner(folder / model), 16)
    assert str(folder / model) in str(caught.value) and "16" in str(caught.value)
    assert caught.value.field == "models.dense"


def test_model_whose_output_is_not_logits_is_a_model_error(tmp_path: Path, folder: Path, save_torchscript) -> None:
    flat = save_torchscript(torch.nn.Flatten(0), tmp_path / "flat.pt")
    with pytest.raises(ModelError, match="not \\[batch, classes\\] logits"):
        probe_classes(runner(folder / "dense.pt"), runner(flat), SIZE)
