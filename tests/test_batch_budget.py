"""runtime.batch_size: auto — the batch chosen from a memory budget, resolved once and recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunegate.check import Overrides, apply_overrides
from prunegate.cli import main
from prunegate.context import CPU_BUDGET_MIB, MAX_AUTO_BATCH, RunContext, choose_batch_size
from prunegate.data.base import PREFETCH, PREFETCH_BYTES, prefetch_factor
from prunegate.policy import load_policy
from prunegate.report.attest import read_envelope

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def test_auto_keeps_small_images_at_the_largest_batch() -> None:
    choice = choose_batch_size("auto", (32, 32), CPU)
    assert choice.size == MAX_AUTO_BATCH == 256  # CIFAR runs keep their speed
    assert choice.source.startswith("auto") and f"{CPU_BUDGET_MIB} MiB" in choice.source and "32x32" in choice.source


@pytest.mark.parametrize(("shape", "low", "high"), [((224, 224), 8, 32), ((513, 513), 1, 4)])
def test_auto_takes_few_large_images(shape: tuple[int, int], low: int, high: int) -> None:
    size = choose_batch_size("auto", shape, CPU).size
    assert low <= size <= high and size & (size - 1) == 0  # a power of two


def test_auto_scales_with_pixels_models_and_budget() -> None:
    sizes = [choose_batch_size("auto", (side, side), CPU).size for side in (32, 64, 128, 224, 513, 1024, 4096)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 1  # never 0, however large
    assert choose_batch_size("auto", (224, 224), CPU, models=6).size < choose_batch_size("auto", (224, 224), CPU).size
    assert (
        choose_batch_size("auto", (224, 224), CPU, budget_mib=4096).size
        == 4 * choose_batch_size("auto", (224, 224), CPU).size
    )
    small = choose_batch_size("auto", (224, 224), CPU, budget_mib=16)
    assert small.size == 1 and "runtime.memory_budget 16 MiB" in small.source


def test_a_number_is_used_as_given() -> None:
    assert choose_batch_size(300, (224, 224), CPU).size == 300  # above auto's clamp: the user's choice
    assert choose_batch_size(7, (32, 32), CPU).source == "given"  # policy.overrides says where from


def test_cuda_takes_a_share_of_free_device_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[torch.device] = []

    def free(gib: float):
        def mem_get_info(device: torch.device) -> tuple[int, int]:
            asked.append(device)
            return int(gib * (1 << 30)), 140 << 30

        return mem_get_info

    monkeypatch.setattr(torch.cuda, "mem_get_info", free(130))
    big = choose_batch_size("auto", (224, 224), CUDA)
    assert big.size == 256 and "free on cuda:0" in big.source and asked == [CUDA]
    monkeypatch.setattr(torch.cuda, "mem_get_info", free(2))
    assert choose_batch_size("auto", (224, 224), CUDA).size == choose_batch_size("auto", (224, 224), CPU).size
    monkeypatch.setattr(torch.cuda, "mem_get_info", free(0.01))
    assert choose_batch_size("auto", (224, 224), CUDA).size == 1
    # runtime.memory_budget wins over the device's free memory
    assert (
        choose_batch_size("auto", (224, 224), CUDA, budget_mib=1024).size
        == choose_batch_size("auto", (224, 224), CPU).size
    )


def test_the_context_resolves_auto_and_overrides(tmp_path: Path, policy_dict, write_policy, write_npz) -> None:
    import numpy as np

    write_npz(tmp_path / "data.npz", np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, np.int64))
    data = policy_dict()
    del data["runtime"]["batch_size"]
    policy = load_policy(write_policy(tmp_path / "policy.yaml", data))
    assert policy.runtime.batch_size == "auto"
    ctx = RunContext.build(policy)
    assert ctx.batch_size == MAX_AUTO_BATCH and ctx.batch_source.startswith("auto")
    assert ctx.on(CPU, models=3).batch_size == MAX_AUTO_BATCH
    given = RunContext.build(apply_overrides(policy, Overrides(batch_size=5)))
    assert (given.batch_size, given.batch_source) == (5, "given")


def test_the_report_records_the_batch_size_used(tmp_path: Path, capsys, gate_case) -> None:
    policy = gate_case("same", runtime={"batch_size": "auto", "isolation": "off"})
    report = tmp_path / "report.json"
    code = main(["check", "-p", str(policy), "-o", str(report), "-q"])
    assert code == 0, capsys.readouterr().err
    _, _, statement = read_envelope(report.read_text(), str(report))
    options = statement["predicate"]["options"]
    assert options["batch_size"] == MAX_AUTO_BATCH and options["batch_size_source"].startswith("auto")
    assert statement["predicate"]["policy"]["document"]["runtime"]["batch_size"] == "auto"  # as written
    code = main(["check", "-p", str(policy), "-o", str(report), "-q", "--batch-size", "3"])
    assert code == 0
    options = read_envelope(report.read_text(), str(report))[2]["predicate"]["options"]
    assert (options["batch_size"], options["batch_size_source"]) == (3, "given")
    assert read_envelope(report.read_text(), str(report))[2]["predicate"]["policy"]["overrides"] == {
        "runtime.batch_size": 3
    }


def test_prefetch_is_bounded_in_bytes() -> None:
    assert prefetch_factor(32, 256, 2) == PREFETCH  # CIFAR: the full prefetch
    assert prefetch_factor(224, 256, 2) == 1
    for size, batch, workers in [(224, 16, 2), (224, 64, 4), (513, 2, 2), (224, 256, 8)]:
        factor = prefetch_factor(size, batch, workers)
        assert 1 <= factor <= PREFETCH
        assert factor == 1 or factor * workers * batch * size * size * 4 <= PREFETCH_BYTES
