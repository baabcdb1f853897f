from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from prunegate.demo import CLASSES, PruneStep, build_demo, make_demo_dataset, pruned_name, to_input
from prunegate.prune import prunable_weights


def test_dataset_shape_dtype_and_balance():
    images, labels = make_demo_dataset(200, seed=3)
    assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (200,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=len(CLASSES)).tolist() == [20] * len(CLASSES)
    assert images.min() < 40 and images.max() > 215  # uses the range, not a flat grey
    # not sorted by class: a contiguous slice (a batch) holds several classes
    assert len(np.unique(labels[:20])) > 3


def test_dataset_is_deterministic_for_a_seed():
    a_images, a_labels = make_demo_dataset(50, seed=7)
    b_images, b_labels = make_demo_dataset(50, seed=7)
    c_images, _ = make_demo_dataset(50, seed=8)
    assert np.array_equal(a_images, b_images) and np.array_equal(a_labels, b_labels)
    assert not np.array_equal(a_images, c_images)


def test_dataset_classes_differ_on_average():
    images, labels = make_demo_dataset(400, seed=0)
    # Stripes have far more edge energy than flat shapes: a sanity check that labels mean something.
    grey = images.astype(np.float32).mean(-1)
    edges = np.abs(np.diff(grey, axis=1)).mean((1, 2)) + np.abs(np.diff(grey, axis=2)).mean((1, 2))
    shapes, textures = edges[labels < 5].mean(), edges[labels >= 5].mean()
    assert textures > 2 * shapes


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    steps = (PruneStep(0.5, 1, 1e-3), PruneStep(0.9, 1, 3e-3))
    return build_demo(out, seed=0, n_train=300, n_test=60, epochs=1, widths=(8, 8, 16, 16), steps=steps)


def test_build_writes_test_split(small_demo):
    assert small_demo.test_data == small_demo.root / "data" / "test.npz"
    with np.load(small_demo.test_data) as data:
        assert set(data.files) == {"images", "labels"}
        assert data["images"].shape == (60, 32, 32, 3) and data["images"].dtype == np.uint8
        assert data["labels"].shape == (60,) and data["labels"].dtype == np.int64
        # the held-out split, not the training one (which is drawn with seed 0)
        assert not np.array_equal(data["images"], make_demo_dataset(60, seed=0)[0])


def test_build_writes_models(small_demo):
    models = small_demo.root / "models"
    assert small_demo.dense == models / "dense.onnx"
    assert small_demo.pruned == {0.5: models / "pruned-50.onnx", 0.9: models / "pruned-90.onnx"}
    assert set(small_demo.models) == {"dense", "pruned-50", "pruned-90"}
    assert set(small_demo.accuracy) == set(small_demo.parameters) == set(small_demo.models)
    for path in [small_demo.dense, *small_demo.pruned.values()]:
        assert path.is_file() and path.stat().st_size < 200_000


@pytest.mark.parametrize("name", ["dense", "pruned-50", "pruned-90"])
def test_onnx_matches_torch(small_demo, name):
    session = ort.InferenceSession(str(small_demo.root / "models" / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    with np.load(small_demo.test_data) as data:
        images = data["images"]
    model = small_demo.models[name].eval()
    for batch in (1, 7, 60):  # the batch dimension is dynamic
        x = to_input(images[:batch])
        (logits,) = session.run(None, {"input": x.contiguous().numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        assert logits.shape == (batch, len(CLASSES))
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_pruned_models_keep_their_masks(small_demo):
    """The masks survive fine-tuning, the chain (90 % removes a superset of 50 %) and export."""
    previous = None
    for ratio in (0.5, 0.9):
        model = small_demo.models[pruned_name(ratio)]
        weights = torch.cat([w.detach().flatten() for _, w in prunable_weights(model)])
        zeros = weights == 0
        assert int(zeros.sum()) >= round(ratio * weights.numel())
        if previous is not None:
            assert bool(zeros[previous].all())
        previous = zeros
        total, nonzero = small_demo.parameters[pruned_name(ratio)]
        assert total - nonzero >= round(ratio * weights.numel())
        # BN is folded into the convs on export; scaling a zero keeps it zero
        graph = onnx.load(str(small_demo.pruned[ratio])).graph
        exported = np.concatenate([numpy_helper.to_array(t).ravel() for t in graph.initializer if len(t.dims) > 1])
        assert (exported == 0).sum() == int(zeros.sum())


def test_run_demo_gates_every_pruned_model_and_writes_reports(tmp_path):
    import base64
    import json

    from rich.console import Console

    from prunegate.cli.tools import run_demo_command

    console = Console(file=__import__("io").StringIO(), width=120)
    assert (
        run_demo_command(
            tmp_path,
            console,
            n_train=300,
            n_test=90,
            epochs=1,
            widths=(4, 8),
            steps=(PruneStep(0.5, 0, 1e-3), PruneStep(0.9, 0, 1e-3)),
            sanity_check=False,  # one epoch on 300 images learns nothing yet: at chance
        )
        == 0
    )
    text = console.file.getvalue()
    assert "pruned-50" in text and "pruned-90" in text and "what the demo shows" in text
    for name in ("pruned-50", "pruned-90"):
        envelope = json.loads((tmp_path / "reports" / f"{name}.json").read_text())
        predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
        assert predicate["policy"]["name"] == "demo"
        assert predicate["models"]["pruned"]["sparsity"] > 0.4
        assert [t["n"] for t in predicate["tasks"]] == [90] * len(predicate["tasks"])


def test_no_library_module_imports_the_cli():
    """The library (the demo included) returns what it made; only prunegate/cli/ prints and writes reports."""
    import ast
    from pathlib import Path

    import prunegate

    root = Path(prunegate.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if root / "cli" in path.parents or path == root / "__main__.py":  # (`python -m prunegate` runs the CLI)
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            offenders += [
                f"{path.relative_to(root)}: {n}"
                for n in names
                if n == "prunegate.cli" or n.startswith("prunegate.cli.")
            ]
    assert offenders == []
