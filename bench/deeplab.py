"""The segmentation suite vs the two models alone, on the real DeepLabV3 and 14 VOC images (issue 15).

    .venv/bin/python bench/deeplab.py prepare /tmp/deeplab     # pruned copy + policy
    farm-bench -n 3 --timeout 1800 \\
        --vs '.venv/bin/python bench/deeplab.py models /tmp/deeplab' \\
        -- .venv/bin/prunegate check -p /tmp/deeplab/policy.yaml -o /tmp/deeplab/report.json -q

`prepare` writes pruned.onnx (30 % of each non-depthwise conv's smallest weights zeroed) and a
policy: clean + gaussian_noise, contrast, jpeg_compression at severity 3, ONNX Runtime on the CPU.
`models` is the yardstick: a fresh process that runs both ONNX models through ONNX Runtime on the
14 images once per task (4 x 14 x 2 forward passes, the same as the check), on inputs made ahead of
time: no decoding, no corruption, no tallies, no sandbox, no report.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "models" / "voc-deeplabv3-mobilenetv2" / "deeplabv3_mnv2_pascal.onnx"
CLASS_NAMES = SHARED / "models" / "voc-deeplabv3-mobilenetv2" / "voc-classes.txt"
DATA = SHARED / "data" / "voc2012-val-14"
NORMAL = 128 / 255
TASKS = 4  # clean + 3 corruptions

POLICY = f"""
version: 1
name: bench-deeplab
task: segmentation
models:
  dense: {MODEL}
  pruned: pruned.onnx
  input: {{size: 513, mean: [{NORMAL}, {NORMAL}, {NORMAL}], std: [{NORMAL}, {NORMAL}, {NORMAL}]}}
data:
  test: {{format: segmentation-folder, path: {DATA}, class_names: {CLASS_NAMES}}}
suite:
  seed: 0
  corruptions: {{names: [gaussian_noise, contrast, jpeg_compression], severities: [3]}}
gate:
  rules:
    - {{name: miou, tasks: "*", metric: miou_drop, max: 0.05}}
runtime: {{device: cpu, backend: onnx, batch_size: 2, workers: 1}}
"""


def prepare(folder: Path) -> None:
    """Write the pruned copy and the policy into `folder`."""
    import onnx
    from onnx import numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(MODEL))
    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group == 1 and node.input[1] in initializers:
            weight = initializers[node.input[1]]
            values = numpy_helper.to_array(weight).copy()
            values[np.abs(values) < np.sort(np.abs(values).ravel())[int(0.3 * values.size)]] = 0.0
            weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(folder / "pruned.onnx"))
    (folder / "policy.yaml").write_text(POLICY)


def models_alone(folder: Path) -> None:
    """Both models on the preprocessed images, once per task: the check's forward passes alone."""
    import onnxruntime as ort
    import PIL.Image

    inputs = [
        ((np.asarray(PIL.Image.open(f).convert("RGB"), np.float32) / 255 - NORMAL) / NORMAL).transpose(2, 0, 1)[None]
        for f in sorted((DATA / "images").glob("*.png"))
    ]
    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (MODEL, folder / "pruned.onnx")
    ]
    for _ in range(TASKS):
        for x in inputs:
            for session in sessions:
                session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0].argmax(axis=1)


if __name__ == "__main__":
    command, where = sys.argv[1], Path(sys.argv[2])
    prepare(where) if command == "prepare" else models_alone(where)
