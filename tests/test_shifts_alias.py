"""Alias tables (shot noise's Poisson draws) against scipy's Poisson law."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from prunegate.shifts import SampleRNG, get_preset
from prunegate.shifts._alias import AliasTable, build_alias_table, poisson_levels_table, poisson_pmf_rows

CPU = torch.device("cpu")


def implied_pmf(table: AliasTable, row: int) -> dict[int, float]:
    """The law a table row draws from, read off its columns."""
    entries = table.packed.view(-1, table.width)[row]
    own, other = entries & 0x7FFF, (entries >> 15) & 0x7FFF
    keep = (entries >> 30).double() / 2**32
    law: dict[int, float] = {}
    for o, a, t in zip(own.tolist(), other.tolist(), keep.tolist()):
        law[o] = law.get(o, 0.0) + t / table.width
        law[a] = law.get(a, 0.0) + (1.0 - t) / table.width
    return law


@pytest.mark.parametrize(
    "photons", sorted({get_preset(p).param("shot_noise", s) for p in ("cifar10-c", "imagenet-c") for s in range(1, 6)})
)
def test_level_tables_hold_the_poisson_law(photons: float) -> None:
    table = poisson_levels_table(float(photons), CPU)
    for level in (0, 1, 9, 100, 200, 255):
        law = implied_pmf(table, level)
        ks = np.array(sorted(law))
        got = np.array([law[k] for k in ks])
        want = stats.poisson.pmf(ks, level / 255.0 * photons)
        assert np.abs(got - want).max() < 1e-10
        assert got.sum() == pytest.approx(1.0, abs=1e-12)
        assert want.sum() > 1 - 1e-11  # the cut tails carry next to nothing


def test_draw_maps_the_32_bit_range_onto_the_law() -> None:
    """Every 2**16-th 32-bit pattern (as int32, so half of them negative) lands on each value in
    proportion to its probability."""
    pmf = torch.tensor([[0.5, 0.25, 0.125, 0.125], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    table = build_alias_table(torch.tensor([3, 10]), pmf)
    patterns = torch.arange(0, 2**32, 2**16, dtype=torch.int64)
    bits = torch.where(patterns >= 2**31, patterns - 2**32, patterns).to(torch.int32)
    for row, lo in ((0, 3), (1, 10)):
        values = table.draw(torch.full_like(patterns, row), bits)
        freq = torch.bincount(values - lo, minlength=4).double() / patterns.numel()
        assert torch.allclose(freq, pmf[row], atol=2.0 / patterns.numel())


def test_rows_share_a_window_wide_enough_for_the_largest_rate() -> None:
    lo, pmf = poisson_pmf_rows(torch.tensor([0.0, 0.5, 500.0], dtype=torch.float64))
    assert lo.tolist()[:2] == [0, 0] and 300 < int(lo[2]) < 400
    assert pmf[0, 0] == 1.0 and pmf.sum(dim=1).allclose(torch.ones(3, dtype=torch.float64))


def test_alias_draws_fit_scipy_and_do_not_depend_on_the_batch() -> None:
    table = poisson_levels_table(500.0, CPU)
    rows = torch.full((300, 200), 77, dtype=torch.int64)
    counts = SampleRNG(5, torch.arange(300)).alias(table, rows)
    k = counts.flatten().numpy()
    lam = 77 / 255 * 500.0
    observed = np.bincount(k, minlength=int(lam * 2))
    ks = np.arange(observed.size)
    expected = stats.poisson.pmf(ks, lam) * k.size
    keep = expected > 5
    chi = stats.chisquare(observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum())
    assert chi.pvalue > 1e-4
    alone = SampleRNG(5, torch.arange(7, 9)).alias(table, rows[:2])
    assert torch.equal(alone, counts[7:9])


def test_rates_beyond_the_packing_are_refused() -> None:
    with pytest.raises(ValueError, match="photons"):
        poisson_levels_table(1e6, CPU)
