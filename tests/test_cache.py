"""The dense model's outputs kept between runs (`check --cache`, issue 16 item 4).

A second check of another pruned model against the same dense model and policy takes the dense
outputs from the cache, and its report equals an uncached run's (timing and the cache's own
record apart); a changed image, a damaged entry or another seed is computed again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import SIZE, segmentation_policy
from prunegate.cache import DenseCache
from prunegate.cli import main
from prunegate.report.attest import read_envelope

VOLATILE = ("timing", "environment")


def predicate(report: Path) -> dict:
    return read_envelope(report.read_text(), str(report))[2]["predicate"]


def comparable(found: dict) -> dict:
    """A predicate less what differs between equal runs: timing, environment, the cache option."""
    found = {k: v for k, v in found.items() if k not in VOLATILE}
    found["options"] = {k: v for k, v in found["options"].items() if k != "cache"}
    found["policy"] = {k: v for k, v in found["policy"].items() if k not in ("overrides", "document")}
    return found


def check(policy: Path, report: Path, *extra: str) -> int:
    return main(["check", "-p", str(policy), "-o", str(report), "-q", *extra])


def two_candidates(gate_case, folder: Path, colour_net, save_torchscript, suite: dict) -> tuple[Path, Path]:
    """A policy of `suite` and a second pruned candidate, other.pt."""
    # backend pinned: backend auto records its timings, which differ run to run
    policy = gate_case("jitter", n=20, suite=suite, runtime={"backend": "torch"})
    save_torchscript(colour_net(jitter=0.08, seed=5), folder / "other.pt")
    return policy, folder


@pytest.fixture
def classification(gate_case, tmp_path: Path, colour_net, save_torchscript):
    """Clean + 2 noise levels, 2 draws, and a second candidate."""
    suite = {"seed": 2, "noise": [{"kind": "gaussian", "levels": [0.05, 0.2], "draws": 2}]}
    return two_candidates(gate_case, tmp_path, colour_net, save_torchscript, suite)


def test_a_second_candidate_reuses_the_dense_outputs_and_reports_the_same(classification, capsys) -> None:
    policy, folder = classification
    cache = folder / "cache"
    assert check(policy, folder / "first.json", "--cache", str(cache)) in (0, 1), capsys.readouterr().err
    first = predicate(folder / "first.json")["options"]["cache"]
    assert first["reused"] == {} and set(first["entries"]) == {"clean", "noise/gaussian/0.05", "noise/gaussian/0.2"}
    assert len(list(cache.glob("*.npy"))) == 3 and len(list(cache.glob("*.json"))) == 3

    other = str(folder / "other.pt")
    assert check(policy, folder / "cached.json", "--cache", str(cache), "--pruned", other) in (0, 1)
    assert check(policy, folder / "plain.json", "--pruned", other) in (0, 1)
    cached, plain = predicate(folder / "cached.json"), predicate(folder / "plain.json")
    assert cached["options"]["cache"]["reused"] == {"clean": 20, "noise/gaussian/0.05": 20, "noise/gaussian/0.2": 20}
    assert cached["options"]["cache"]["entries"] == first["entries"]  # the same keys: the same dense model and data
    assert "cache" not in plain["options"]
    assert comparable(cached) == comparable(plain)  # byte for byte, every metric and interval
    assert cached["policy"]["overrides"]["runtime.cache"] == str(cache.resolve())


def test_a_changed_image_a_damaged_entry_and_another_seed_are_computed_again(classification, capsys) -> None:
    policy, folder = classification
    cache = folder / "cache"
    assert check(policy, folder / "first.json", "--cache", str(cache)) in (0, 1)

    data = np.load(folder / "data.npz")
    images = data["images"].copy()
    images[7] = 255 - images[7]  # one image changed: its batch (of 16) is computed again, the other is reused
    np.savez(folder / "data.npz", images=images, labels=data["labels"])
    assert check(policy, folder / "changed.json", "--cache", str(cache)) in (0, 1)
    assert check(policy, folder / "changed-plain.json") in (0, 1)
    changed = predicate(folder / "changed.json")
    # the data set's fingerprint (sizes, mtimes) changed: every entry has a new key, nothing is reused
    assert changed["options"]["cache"]["reused"] == {}
    assert comparable(changed) == comparable(predicate(folder / "changed-plain.json"))

    entry = sorted(cache.glob("*.npy"), key=lambda p: p.stat().st_mtime)[-1]
    raw = bytearray(entry.read_bytes())
    raw[-1] ^= 0xFF
    entry.write_bytes(bytes(raw))
    assert check(policy, folder / "damaged.json", "--cache", str(cache)) in (0, 1)
    damaged = predicate(folder / "damaged.json")
    assert sum(damaged["options"]["cache"]["reused"].values()) == 40  # two of three tasks
    assert any("damaged or edited" in w for w in damaged["warnings"])
    assert comparable({**damaged, "warnings": []}) == comparable({**changed, "warnings": []})

    document = yaml.safe_load(policy.read_text())
    document["suite"]["seed"] = 3
    policy.write_text(yaml.safe_dump(document))
    assert check(policy, folder / "seed.json", "--cache", str(cache)) in (0, 1)
    assert predicate(folder / "seed.json")["options"]["cache"]["reused"] == {}


def test_a_segmentation_pass_caches_the_dense_pixel_classes(segmentation_case, capsys) -> None:
    folder, _ = segmentation_case
    policy = segmentation_policy(folder, runtime={"device": "cpu", "workers": 0, "batch_size": 4, "backend": "torch"})
    cache = folder / "cache"
    assert check(policy, folder / "first.json", "--cache", str(cache)) == 1, capsys.readouterr().err
    assert check(policy, folder / "second.json", "--cache", str(cache)) == 1
    second = predicate(folder / "second.json")
    assert second["options"]["cache"]["reused"] == {"clean": 6, "corruption/contrast/1": 6}
    assert comparable(second) == comparable(predicate(folder / "first.json"))
    kept = np.load(next(p for p in cache.glob("*.npy") if not p.name.startswith("images-")))
    assert kept.dtype == np.int16 and kept.shape == (6, 16, 16)  # classes, not logits
    images = np.load(next(cache.glob("images-*.npy")))  # contrast's shifted images, as uint8
    assert images.dtype == np.uint8 and images.shape == (6, 3, 16, 16)
    assert second["options"]["cache"]["images_reused"] == {"corruption/contrast/1": 6}


def test_the_engine_does_not_run_the_dense_model_on_cached_batches(classification, capsys) -> None:
    from prunegate.check import prepare
    from prunegate.engine import evaluate_family
    from prunegate.policy import load_policy

    policy, folder = classification
    loaded = load_policy(policy)
    with prepare(loaded) as setup:
        calls = []
        dense = setup.dense

        def counted(x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return dense(x)

        counted.record = dense.record  # type: ignore[attr-defined]
        cache = DenseCache.open(folder / "cache", setup.cache_key())
        options = {"kind": setup.kind, "classes": setup.classes}
        first, _ = evaluate_family(setup.ctx, counted, setup.pruned, cache=cache, **options)  # type: ignore[arg-type]
        assert sum(calls) == 20 * (1 + 2 + 2)
        calls.clear()
        again = DenseCache.open(folder / "cache", setup.cache_key())
        second, _ = evaluate_family(setup.ctx, counted, setup.pruned, cache=again, **options)  # type: ignore[arg-type]
        assert calls == []
    for name, tally in first[0].items():
        assert torch.equal(tally.l2, second[0][name].l2) and torch.equal(tally.dense_pred, second[0][name].dense_pred)


@pytest.fixture
def corrupted(gate_case, tmp_path: Path, colour_net, save_torchscript):
    """Clean + two corruptions, and a second candidate."""
    corruptions = {"preset": "cifar10-c", "names": ["gaussian_noise", "contrast"], "severities": [2]}
    return two_candidates(gate_case, tmp_path, colour_net, save_torchscript, {"seed": 2, "corruptions": corruptions})


def test_the_corruptions_images_are_kept_and_a_second_candidate_sees_the_same_pixels(corrupted, capsys) -> None:
    policy, folder = corrupted
    cache = folder / "cache"
    assert check(policy, folder / "first.json", "--cache", str(cache)) in (0, 1), capsys.readouterr().err
    first = predicate(folder / "first.json")["options"]["cache"]
    tasks = {"corruption/gaussian_noise/2", "corruption/contrast/2"}
    assert set(first["images"]) == tasks and first["images_reused"] == {}
    kept = {p.name: np.load(p) for p in cache.glob("images-*.npy")}
    assert len(kept) == 2 and all(a.dtype == np.uint8 and a.shape == (20, 3, SIZE, SIZE) for a in kept.values())

    other = str(folder / "other.pt")
    assert check(policy, folder / "cached.json", "--cache", str(cache), "--pruned", other) in (0, 1)
    assert check(policy, folder / "plain.json", "--pruned", other) in (0, 1)
    cached = predicate(folder / "cached.json")
    assert cached["options"]["cache"]["images_reused"] == dict.fromkeys(tasks, 20)
    assert comparable(cached) == comparable(predicate(folder / "plain.json"))  # the same pixels, bit for bit

    # an edited images entry (its index's sha256 no longer fits) is not used: computed and rewritten
    edited = next(iter(cache.glob("images-*.npy")))
    array = np.load(edited)
    array[0] ^= 0xFF
    np.save(edited, array)
    assert check(policy, folder / "edited.json", "--cache", str(cache), "--pruned", other) in (0, 1)
    found = predicate(folder / "edited.json")
    assert sum(found["options"]["cache"]["images_reused"].values()) == 20
    assert any("damaged or edited" in w for w in found["warnings"])
    assert comparable({**found, "warnings": []}) == comparable({**cached, "warnings": []})


def test_the_images_entry_is_not_the_models_and_keeps_only_exact_8_bit_values() -> None:
    from prunegate.cache import as_float, quantised

    levels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(quantised(as_float(levels)), levels)
    assert quantised(as_float(levels) + 1e-3) is None  # not exactly 8-bit: such a task's images are not kept


def test_a_cache_folder_inside_an_input_folder_is_refused(segmentation_case, capsys) -> None:
    folder, _ = segmentation_case
    policy = segmentation_policy(folder)
    code = check(policy, folder / "report.json", "--cache", str(folder / "voc" / "cache"))
    err = capsys.readouterr().err
    assert code == 2 and "--cache" in err and "data.test.path" in err
    assert not (folder / "voc" / "cache").exists() and not (folder / "report.json").exists()
