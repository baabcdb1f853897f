"""ONNX models in ONNX Runtime, with the provider actually used recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from prunegate.errors import DeviceError, ModelError

from .base import Counts, ModelInfo, first_line, run_in_chunks

_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def count_onnx_parameters(model) -> Counts:
    """Parameters are the float initializers (weights, biases, folded batch norms)."""
    from onnx import numpy_helper

    counts = Counts()
    for tensor in model.graph.initializer:
        if tensor.data_type in _FLOAT_TYPES:
            array = numpy_helper.to_array(tensor)
            if array.dtype.kind != "f":  # bfloat16 (an ml_dtypes type) is not one torch can take
                array = array.astype(np.float32)
            counts.add(torch.from_numpy(np.array(array)))  # a writable copy: torch warns on read-only
    return counts


class OnnxRunner:
    def __init__(self, path: Path, field: str, device: torch.device, info: ModelInfo, allow_fallback: bool):
        import onnx
        import onnxruntime as ort

        self.path, self.device = path, device
        try:
            model = onnx.load(str(path), load_external_data=True)
            onnx.checker.check_model(model)
        except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError...
            raise ModelError(f"not a valid ONNX model ({first_line(exc)})", file=path, field=field) from None
        counts = count_onnx_parameters(model)
        info.parameters, info.nonzero_parameters = counts.parameters, counts.nonzero
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                if not allow_fallback:
                    raise DeviceError(
                        "CUDA was requested but ONNX Runtime has no CUDAExecutionProvider "
                        "(install prunegate[gpu], or set runtime.allow_fallback: true)",
                        field="runtime.device",
                    )
                self.device = torch.device("cpu")
            else:
                providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        except Exception as exc:
            raise ModelError(f"ONNX Runtime cannot load it ({first_line(exc)})", file=path, field=field) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"expected one input, found {len(inputs)}", file=path, field=field)
        self.input_name = inputs[0].name
        self.input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        self._shape = list(inputs[0].shape)
        batch = self._shape[0] if self._shape else None
        info.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        info.backend, info.provider = "onnxruntime", self.session.get_providers()[0]
        info.device = str(self.device)
        self.info = info

    def input_shape(self) -> Optional[list]:
        return self._shape

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).numpy().astype(self.input_dtype, copy=False)
        logits = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(x.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return run_in_chunks(self._run, x, self.info.fixed_batch)
