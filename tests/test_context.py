"""The run context: built once from a policy; shift assets travel with it, never globally."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunegate.check import run_check
from prunegate.context import RunContext, task_pixels
from prunegate.errors import DataError
from prunegate.plan import TaskKind
from prunegate.policy import load_policy

FROST = {
    "seed": 4,
    "corruptions": {"preset": "cifar10-c", "names": ["frost"], "severities": [5], "frost_textures": "frost"},
}


def frost_case(gate_case, colour: tuple[int, int, int]) -> Path:
    """A gate case whose policy overlays a one-colour frost photograph of `colour`."""
    policy = gate_case("jitter", n=12, suite=FROST, runtime={"isolation": "off"})
    folder = policy.parent / "frost"
    folder.mkdir()
    Image.new("RGB", (64, 48), colour).save(folder / "pane.png")
    return policy


@pytest.fixture
def two_cases(tmp_path_factory, policy_dict, write_policy):
    """Two policies over the same data and models, with a dark and a bright frost photograph."""
    from tests.conftest import _colour_dataset, _colour_net, _save_torchscript, _write_npz

    root = tmp_path_factory.mktemp("two")
    images, labels = _colour_dataset(12)
    _write_npz(root / "data.npz", images, labels)
    _save_torchscript(_colour_net(), root / "dense.pt")
    _save_torchscript(_colour_net(jitter=0.05, seed=1), root / "pruned.pt")
    policies = []
    for name, colour in (("dark", (0, 0, 0)), ("bright", (255, 255, 255))):
        folder = root / name
        folder.mkdir()
        Image.new("RGB", (64, 48), colour).save(folder / "pane.png")
        suite = {**FROST, "corruptions": {**FROST["corruptions"], "frost_textures": name}}
        policies.append(write_policy(root / f"{name}.yaml", suite=suite, runtime={"isolation": "off"}))
    return policies


def test_build_resolves_the_policy_once(gate_case) -> None:
    policy = load_policy(frost_case(gate_case, (9, 9, 9)))
    ctx = RunContext.build(policy)
    assert [t.name for t in ctx.tasks] == ["clean", "corruption/frost/5"]
    assert [s.name for s in ctx.sources] == ["test"] and ctx.sources[0].policy_field == "data.test"
    assert (ctx.seed, ctx.size, ctx.batch_size) == (4, policy.models.input.shape, policy.runtime.batch_size)
    assert ctx.assets.frost_textures is not None
    assert [r["name"] for r in ctx.data_records()] == ["test", "frost_textures"]
    assert ctx.task("corruption/frost/5").kind is TaskKind.CORRUPTION and ctx.task("nope") is None


def test_a_missing_asset_folder_names_its_policy_field(gate_case) -> None:
    policy = gate_case("jitter", n=12, suite=FROST)
    with pytest.raises(DataError) as caught:
        RunContext.build(load_policy(policy))
    assert caught.value.field == "suite.corruptions.frost_textures"


def test_contexts_with_other_frost_folders_interleave_without_leaking(two_cases) -> None:
    """Each context's frost images come from its own photographs, whatever ran in between."""
    dark, bright = (RunContext.build(load_policy(p)) for p in two_cases)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(3)

    def frost(ctx: RunContext) -> torch.Tensor:
        return task_pixels(ctx, ctx.task("corruption/frost/5"), x, ids, 0).values

    alone = {"dark": frost(dark), "bright": frost(bright)}
    interleaved = [("dark", frost(dark)), ("bright", frost(bright)), ("dark", frost(dark)), ("bright", frost(bright))]
    for name, made in interleaved:
        assert torch.equal(made, alone[name])
    assert float(alone["dark"].mean()) < float(alone["bright"].mean())


def test_two_checks_in_one_process_at_once_each_get_their_own_photographs(two_cases) -> None:
    """Two gate runs in two threads of one process, overlapping in time, give the reports each
    gives alone: the frost photographs of one never reach the other."""
    alone = [run_check(load_policy(p)) for p in two_cases]
    results: dict[int, object] = {}
    start = threading.Barrier(2)

    def run(i: int) -> None:
        start.wait()
        results[i] = run_check(load_policy(two_cases[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def frost_numbers(report) -> tuple:
        task = next(t for t in report.tasks if t.name == "corruption/frost/5")
        return task.dense.accuracy, task.pruned.accuracy, task.softmax_l2, task.agreement

    for i in range(2):
        # counts exactly; the distance to float rounding (two threads share torch's thread pool,
        # so reductions may be split differently)
        assert frost_numbers(results[i]) == pytest.approx(frost_numbers(alone[i]), rel=1e-6)
        assert [d.sha256 for d in results[i].data] == [d.sha256 for d in alone[i].data]
    assert frost_numbers(alone[0]) != pytest.approx(frost_numbers(alone[1]), rel=1e-3)  # the photographs matter
    assert np.isfinite(frost_numbers(alone[0])[2])
