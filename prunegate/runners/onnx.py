"""ONNX models in ONNX Runtime, with the provider actually used recorded."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING

import numpy as np
import torch

from prunegate.errors import DeviceError, ModelError
from prunegate.onnx_proto import read_onnx_proto
from prunegate.report.schema import ExternalData, ModelRecord

from .base import Counts, ModelFile, first_line, model_record, run_in_chunks
from .onnx_params import count_onnx_parameters, quantisation
from .opscan import scan_onnx_model
from .outputs import Key, onnx_output

if TYPE_CHECKING:
    from collections.abc import Iterable

    from onnx import GraphProto, ModelProto, NodeProto, TensorProto


def _tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Every tensor a model holds: initializers (sparse ones too) and tensor attributes, in the
    main graph, its subgraphs and its functions."""

    def graph_tensors(graph: GraphProto) -> Iterator[TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from node_tensors(graph.node)

    def node_tensors(nodes: Iterable[NodeProto]) -> Iterator[TensorProto]:
        for node in nodes:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    yield from graph_tensors(attribute.g)
                for graph in attribute.graphs:
                    yield from graph_tensors(graph)

    yield from graph_tensors(model.graph)
    for function in model.functions:
        yield from node_tensors(function.node)


def check_external_data(model: ModelProto, path: Path, field: str) -> list[str]:
    """Refuse external data outside the model file's folder: an absolute `location`, or one that
    leads (through '..' or symbolic links) elsewhere, would read any file the user can read.
    Returns the external data files' locations, sorted."""
    from onnx import TensorProto

    folder = path.parent.resolve()
    locations = set()
    for tensor in _tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), None)
        if not location:
            raise ModelError(f"tensor {tensor.name!r} has external data without a location", file=path, field=field)
        target = Path(location)
        outside = target.is_absolute() or location.startswith(("/", "\\")) or PureWindowsPath(location).drive
        if not outside:
            resolved = (path.parent / target).resolve()
            outside = not resolved.is_relative_to(folder)
        if outside:
            raise ModelError(
                f"tensor {tensor.name!r} reads external data {location!r}, outside the model's folder "
                f"{folder}: refusing to read it (keep external data files next to the model)",
                file=path,
                field=field,
            )
        if not (path.parent / target).is_file():
            raise ModelError(
                f"tensor {tensor.name!r}: its external data file {location!r} is missing "
                f"(expected next to the model, in {folder})",
                file=path,
                field=field,
            )
        locations.add(location)
    return sorted(locations)


def external_locations(path: Path, field: str) -> list[str]:
    """The external data files an ONNX model reads (relative to its folder), checked."""
    return check_external_data(read_onnx_proto(path, field), path, field)


def external_data_digests(path: Path, field: str) -> list[dict] | None:
    """sha256 of each external data file, so the report pins all the weights, not just the .onnx.
    (Read from the file again: a loaded model no longer says where its data came from.)"""
    from prunegate.digest import file_sha256

    locations = external_locations(path, field)
    return [{"path": loc, "sha256": file_sha256(path.parent / loc)} for loc in locations] or None


def pinned_external_data(path: Path, field: str) -> list[ExternalData] | None:
    """The report's external_data of an ONNX model: each external data file with its sha256 (None: none)."""
    digests = external_data_digests(path, field)
    return [ExternalData.model_validate(digest) for digest in digests] if digests else None


def load_onnx_model(path: Path, field: str) -> ModelProto:
    """The model proto with its external data, checked; ModelError naming the file otherwise."""
    import onnx

    model = read_onnx_proto(path, field)
    check_external_data(model, path, field)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises ValidationError, OSError, ValueError...
        raise ModelError(f"not a valid ONNX model ({first_line(exc)})", file=path, field=field) from None
    scan_onnx_model(model, path, field)
    return model


def requested_providers(
    names: tuple[str, ...], device: torch.device, allow_fallback: bool, path: Path
) -> list[str | tuple[str, dict]]:
    """runtime.providers as ONNX Runtime takes them: each must be in this ONNX Runtime (one that
    is not is an error, or skipped with allow_fallback); CUDA and TensorRT run on the run's CUDA
    device. The session's own list, recorded, says which it actually got."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [name for name in names if name not in available]
    if missing and not allow_fallback:
        raise DeviceError(
            f"ONNX Runtime here has no {', '.join(missing)} (it has {', '.join(available)}; install the "
            "onnxruntime build that does, or set runtime.allow_fallback: true to skip it)",
            file=path,
            field="runtime.providers",
        )
    chosen = [name for name in names if name in available] or ["CPUExecutionProvider"]
    on_device = {"device_id": _cuda_index(device)} if device.type == "cuda" else {}
    return [(name, on_device) if on_device and name in GPU_PROVIDERS else name for name in chosen]


GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")

# ONNX Runtime's tensor type -> (torch dtype, numpy dtype) for binding torch memory
_ELEMENT_TYPES = {
    "tensor(float)": (torch.float32, np.float32),
    "tensor(float16)": (torch.float16, np.float16),
    "tensor(double)": (torch.float64, np.float64),
}


def _cuda_index(device: torch.device) -> int:
    """The CUDA device a tensor sent to `device` lands on ('cuda' alone: the current one)."""
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


class OnnxRunner:
    """An ONNX model in ONNX Runtime, fed through IOBinding: the input is bound where the torch
    tensor lies (no copy), the logits are written into a torch tensor on the session's device (on
    CUDA they never pass through the host), on CPU and CUDA alike.

    `model`: an already loaded ModelProto (an export made by --backend auto) instead of reading
    `path`; `counts`: the parameter counts to record instead of the model's initializers' (an
    export's folded constants do not describe the user's file). Without `counts`, the model's
    own initializers are counted and its external data files pinned in the record. `output`:
    the graph output that holds the logits (models.output, policy field `output_field`; runners.outputs),
    with `preferred` (the kind's conventional names) when none is named."""

    def __init__(
        self,
        path: Path,
        field: str,
        device: torch.device,
        file: ModelFile,
        allow_fallback: bool,
        *,
        model: ModelProto | None = None,
        counts: Counts | None = None,
        providers: tuple[str, ...] | None = None,
        output: Key | None = None,
        preferred: tuple[str, ...] = ("logits",),
        output_field: str = "models.output",
    ):
        import onnxruntime as ort

        self.path, self.device = path, device
        if model is None:
            model = load_onnx_model(path, field)
        if counts is None:
            counts = count_onnx_parameters(model)
            file = dataclasses.replace(file, external_data=pinned_external_data(path, field))
        if providers:
            asked = requested_providers(providers, device, allow_fallback, path)
        else:
            asked = self._default_providers(device, allow_fallback, path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle intra-op threads sleep instead of spinning: the pass makes the next inputs on the
        # same cores while a model runs, and spinning threads took those cores from it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options, providers=asked)
        except Exception as exc:
            raise ModelError(f"ONNX Runtime cannot load it ({first_line(exc)})", file=path, field=field) from None
        used = self.session.get_providers()
        if device.type == "cuda" and not set(GPU_PROVIDERS) & set(used) and self.device.type == "cuda":
            # ONNX Runtime drops a provider it cannot load (missing CUDA or cuDNN libraries) with
            # only a warning: the session's providers, not the request, say where it runs.
            if not allow_fallback:
                raise DeviceError(
                    f"CUDA was requested but ONNX Runtime could not use CUDAExecutionProvider (the session "
                    f"has {', '.join(used)}: check the CUDA and cuDNN libraries, or set runtime.allow_fallback: true)",
                    file=path,
                    field="runtime.device",
                )
            self.device = torch.device("cpu")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"expected one input, found {len(inputs)}", file=path, field=field)
        self.input_name = inputs[0].name
        self.input_types = _ELEMENT_TYPES.get(inputs[0].type, _ELEMENT_TYPES["tensor(float)"])
        outputs = self.session.get_outputs()
        chosen, key = onnx_output([o.name for o in outputs], output, preferred, file=file.path, field=output_field)
        logits = outputs[chosen]
        self.output_name = logits.name
        self.output_types = _ELEMENT_TYPES.get(logits.type)  # None: not a float tensor; ORT allocates it
        declared = list(logits.shape or [])
        # [batch, classes] with a fixed class count: the logits buffer can be allocated before the
        # first run; otherwise the first run (ORT allocating) tells the class count.
        self.classes = declared[1] if len(declared) == 2 and isinstance(declared[1], int) and declared[1] > 0 else None
        self._shape = list(inputs[0].shape)
        batch = self._shape[0] if self._shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.record: ModelRecord = model_record(
            file,
            parameters=counts.parameters,
            nonzero_parameters=counts.nonzero,
            backend="onnxruntime",
            device=str(self.device),
            provider=self.session.get_providers()[0],
            providers=self.session.get_providers(),
            fixed_batch=self.fixed_batch,
            precision="fp32",
            channels_last=None,
            quantisation=quantisation(model),
            output=key,
        )

    def _default_providers(self, device: torch.device, allow_fallback: bool, path: Path) -> list:
        """CUDA (on this device) then CPU for a CUDA run, else the CPU; without CUDA in this ONNX
        Runtime, a CUDA run is an error unless allow_fallback (then it runs on the CPU)."""
        import onnxruntime as ort

        if device.type != "cuda":
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            if not allow_fallback:
                raise DeviceError(
                    "CUDA was requested but ONNX Runtime has no CUDAExecutionProvider "
                    "(install prunegate[gpu], or set runtime.allow_fallback: true)",
                    file=path,
                    field="runtime.device",
                )
            self.device = torch.device("cpu")
            return ["CPUExecutionProvider"]
        return [("CUDAExecutionProvider", {"device_id": _cuda_index(device)}), "CPUExecutionProvider"]

    def input_shape(self) -> list | None:
        return self._shape

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        home = x.device
        # A dense NCHW copy on the session's device: ONNX Runtime reads the raw buffer, so a
        # channels-last (or otherwise strided) tensor must not be bound as it is.
        torch_type, numpy_type = self.input_types
        x = x.detach().to(self.device, torch_type).contiguous()
        kind = self.device.type  # "cuda" or "cpu": ONNX Runtime's names for the same devices
        index = _cuda_index(self.device) if kind == "cuda" else 0
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, kind, index, numpy_type, tuple(x.shape), x.data_ptr())
        out = None
        if self.classes is not None and self.output_types is not None:
            out = torch.empty((x.shape[0], self.classes), dtype=self.output_types[0], device=self.device)
            binding.bind_output(self.output_name, kind, index, self.output_types[1], tuple(out.shape), out.data_ptr())
        else:
            binding.bind_output(self.output_name, kind, index)
        if kind == "cuda":
            # x was written on torch's stream; ONNX Runtime reads it on its own stream.
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the logits are in `out` before torch reads them
        if out is None:  # the first run of a model without a declared class count
            out = torch.from_numpy(np.ascontiguousarray(binding.copy_outputs_to_cpu()[0]))
            if out.ndim == 2 and out.shape[0] == x.shape[0] and self.output_types is not None:
                self.classes = int(out.shape[1])
        return out.to(home, torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return run_in_chunks(self._run, x, self.fixed_batch)
