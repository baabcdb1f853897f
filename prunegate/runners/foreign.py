"""Model files of other frameworks, named as such rather than called damaged.

A TensorFlow Lite or Keras file handed to prunegate would otherwise go to the torch loader and
fail as "truncated or corrupt", which sends the user re-downloading a good file.
"""

from __future__ import annotations

from pathlib import Path

READS = (
    "prunegate reads ONNX, TorchScript, torch.export (.pt2), torch state dicts, safetensors and Hugging Face folders"
)
TO_ONNX = {
    "TensorFlow Lite": "tf2onnx (python -m tf2onnx.convert --tflite)",
    "Keras": "tf2onnx",
    "TensorFlow": "tf2onnx",
    "Core ML": "coremltools, then ONNX from the source model",
    "OpenVINO IR": "the source model's ONNX export",
    "TensorRT engine": "the ONNX file the engine was built from",
    "Caffe": "a Caffe-to-ONNX converter",
    "PaddlePaddle": "paddle2onnx",
}
SUFFIXES = {
    ".tflite": "TensorFlow Lite",
    ".h5": "Keras",
    ".hdf5": "Keras",
    ".keras": "Keras",
    ".pb": "TensorFlow",
    ".mlmodel": "Core ML",
    ".mlpackage": "Core ML",
    ".xml": "OpenVINO IR",
    ".engine": "TensorRT engine",
    ".plan": "TensorRT engine",
    ".trt": "TensorRT engine",
    ".caffemodel": "Caffe",
    ".prototxt": "Caffe",
    ".pdmodel": "PaddlePaddle",
}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def foreign_format(path: Path) -> str | None:
    """The other framework whose file (or folder) `path` is, from its first bytes or its name."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "TensorFlow"
        return SUFFIXES.get(path.suffix.lower())
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head[4:8] == b"TFL3":
        return "TensorFlow Lite"
    if head == HDF5_MAGIC:
        return "Keras"
    return SUFFIXES.get(path.suffix.lower())


def foreign_message(framework: str) -> str:
    """The one-line reason for a model of `framework`."""
    return f"is a {framework} model: not a format prunegate runs ({READS}); convert it with {TO_ONNX[framework]}"
