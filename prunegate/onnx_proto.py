"""Reading an ONNX file's graph without its external data and without torch (`policy init` reads
a model's input this way; the ONNX runner reads every model through it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prunegate.errors import ModelError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from onnx import ModelProto


def read_onnx_proto(path: Path, field: str) -> ModelProto:
    """The model proto without its external data; ModelError naming the file if it is none."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=False)
    except DecodeError as exc:
        raise ModelError(
            f"not a valid ONNX model: the file is truncated or corrupt ({first_line(exc)})", file=path, field=field
        ) from None
    except Exception as exc:  # onnx raises a few kinds for files that are not models
        raise ModelError(f"not a valid ONNX model ({first_line(exc)})", file=path, field=field) from None


def write_normalisation(path: Path, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Record the input normalisation in the model's metadata (`mean`, `std`: JSON lists), where
    `policy init` reads it (prunegate.policy_init.read_model_input)."""
    import json

    import onnx

    model = onnx.load(str(path))
    kept = [prop for prop in model.metadata_props if prop.key.lower() not in ("mean", "std")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, values in (("mean", mean), ("std", std)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(list(values))
    onnx.save(model, str(path))
