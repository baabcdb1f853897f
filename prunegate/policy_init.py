"""`policy init --dense D --pruned P --data DIR`: a policy that runs as it is written.

It starts from a ready policy (the preset) or the commented template and fills in what the files
say: the models' paths, the test set's path and format (read from its layout), and the models'
input size and normalisation where the model records them (an ONNX graph's fixed input shape and
`mean`/`std` metadata; a Hugging Face folder's preprocessor_config.json). What no file says is
left at the preset's value, with a comment asking the user to check it: the gate is only as good
as the normalisation it feeds the models.
Torch files are not opened (reading them can run their code): their input is asked for.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

from prunegate import hf_folder
from prunegate.data_layout import guess_format
from prunegate.errors import ModelError, PolicyError, first_line, missing_reason
from prunegate.ready import ready_folder

PRESETS = ("cifar10", "imagenet", "voc-segmentation")
CROP_FRACTION = 0.875  # prunegate.data.CROP_FRACTION (not imported: it brings torch)
SMALL_INPUT = 64  # models with inputs up to this side get the cifar10 preset when none is asked for
MAX_PROCESSOR_BYTES = 1 << 20  # a preprocessor_config.json is a few hundred bytes


@dataclass
class ModelInput:
    """What a model file says about its input (None: it does not say)."""

    size: int | list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    notes: list[str] = field(default_factory=list)  # what the user should know of how it was read


@dataclass
class InitResult:
    text: str
    preset: str | None
    notes: list[str] = field(default_factory=list)  # what the user should check


def _channel_values(text: str) -> list[float] | None:
    """Three numbers from a metadata value: a JSON list or comma/space separated."""
    try:
        values = json.loads(text) if text.strip().startswith("[") else re.split(r"[,\s]+", text.strip())
        numbers = [float(v) for v in values]
    except (ValueError, TypeError):
        return None
    return numbers if len(numbers) == 3 else None


def read_model_input(path: Path, field_name: str) -> ModelInput:
    """The input an ONNX model declares, or a Hugging Face folder's image processor; an empty
    ModelInput for other formats."""
    if hf_folder.is_folder(path):
        return read_processor_input(path, field_name)
    if path.suffix.lower() != ".onnx":
        return ModelInput()
    from prunegate.onnx_proto import read_onnx_proto

    model = read_onnx_proto(path, field_name)
    found = ModelInput()
    initialisers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if inputs:
        dims = inputs[0].type.tensor_type.shape.dim
        sides = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
        if len(sides) == 4 and sides[2] > 0 and sides[3] > 0:
            found.size = sides[2] if sides[2] == sides[3] else [sides[2], sides[3]]
    metadata = {prop.key.lower(): prop.value for prop in model.metadata_props}
    found.mean = _channel_values(metadata.get("mean", ""))
    found.std = _channel_values(metadata.get("std", ""))
    return found


def _positive_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _processor_side(value: object) -> int | list[int] | None:
    """An image processor's `size`/`crop_size`: an int, {height, width} or {shortest_edge}."""
    if _positive_int(value):
        return value
    if not isinstance(value, dict):
        return None
    height, width = value.get("height"), value.get("width")
    if _positive_int(height) and _positive_int(width):
        return height if height == width else [height, width]
    edge = value.get("shortest_edge")
    return edge if _positive_int(edge) else None


def _processor_channels(value: object) -> list[float] | None:
    """image_mean/image_std: three numbers (or one, for every channel)."""
    values = [value] * 3 if isinstance(value, int | float) else value
    if not isinstance(values, list) or len(values) != 3:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def read_processor_input(folder: Path, field_name: str) -> ModelInput:
    """What a Hugging Face folder's preprocessor_config.json says of the input: the side the model
    sees (crop_size when it crops the centre, else size) and the normalisation, turned into
    prunegate's (pixels / 255 - mean) / std whatever the processor's rescale_factor. A field it
    does not have, or cannot be read as such, is left unsaid (the policy asks the user to check it)."""
    path = folder / hf_folder.PREPROCESSOR
    if not path.is_file():
        return ModelInput()
    from prunegate.report.attest import strict_json

    try:
        with path.open("rb") as file:
            raw = file.read(MAX_PROCESSOR_BYTES + 1)
        if len(raw) > MAX_PROCESSOR_BYTES:
            raise ValueError(f"larger than {MAX_PROCESSOR_BYTES >> 10} KiB")
        config = strict_json(raw)
    except (OSError, ValueError) as exc:
        raise ModelError(f"not readable JSON ({first_line(exc)})", file=path, field=field_name) from None
    if not isinstance(config, dict):
        raise ModelError("not a JSON object", file=path, field=field_name)
    crop = _processor_side(config.get("crop_size")) if config.get("do_center_crop") else None
    found = ModelInput(size=crop or _processor_side(config.get("size")))
    # (crop_pct: ConvNeXt's processor resizes the short side to size / crop_pct and crops, as prunegate does)
    cropped = crop is not None or "crop_pct" in config
    if found.size is not None and not cropped and config.get("do_resize", True) is not False:
        found.notes.append(
            f"models.input: the dense model's {hf_folder.PREPROCESSOR} resizes the whole image to its size; "
            f"prunegate covers the size (short side to size / {CROP_FRACTION}) and crops the centre"
        )
    mean: list[float] | None
    std: list[float] | None
    if config.get("do_normalize", True) is False:
        mean, std = [0.0] * 3, [1.0] * 3
    else:
        mean, std = _processor_channels(config.get("image_mean")), _processor_channels(config.get("image_std"))
    factor = config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) is not False else 1.0
    if mean and std and all(s > 0 for s in std) and isinstance(factor, int | float) and factor > 0:
        # (x * factor - mean) / std == (x / 255 - mean / k) / (std / k), k = 255 * factor
        scale = 255.0 * factor
        found.mean, found.std = [m / scale for m in mean], [s / scale for s in std]
    return found


def _relative(path: Path, folder: Path) -> str:
    return os.path.relpath(path.resolve(), folder.resolve())


def _source_text(preset: str | None) -> str:
    """The ready policy `preset`'s text, or the commented template's."""
    from importlib import resources

    if preset:
        return (ready_folder() / f"{preset}.yaml").read_text(encoding="utf-8")
    return resources.files("prunegate").joinpath("templates/policy.yaml").read_text(encoding="utf-8")


def _replace_line(text: str, key: str, value: str, comment: str | None = None) -> str:
    """The text with the `  key: ...` line under `models:`/`data:` replaced (a block-style value
    included), `comment` above it."""
    pattern = re.compile(rf"^  {key}:[^\n]*\n(?:    [^\n]*\n)*", re.MULTILINE)
    if not pattern.search(text):
        raise AssertionError(f"the policy source has no {key!r} line")  # a bug in a shipped file
    note = f"  # {comment}\n" if comment else ""
    return pattern.sub(lambda _: f"{note}  {key}: {value}\n", text, count=1)


def _flow_list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _input_line(source_text: str, said: ModelInput, origin: str) -> tuple[str, list[str], str]:
    """The `input:` value, what the user should check, and the comment above it."""
    import yaml

    default = yaml.safe_load(source_text)["models"]["input"]
    size = said.size if said.size is not None else default["size"]
    mean, std = (said.mean, said.std) if said.mean and said.std else (default["mean"], default["std"])
    unsaid = [name for name, value in (("size", said.size), ("mean and std", said.mean and said.std)) if not value]
    told = [name for name, value in (("size", said.size), ("mean and std", said.mean and said.std)) if value]
    notes = [f"models.input {name}: {origin}'s (the dense model does not record them)" for name in unsaid]
    comment = f"CHECK: {' and '.join(unsaid)} are {origin}'s (the model does not record them): use your training's"
    if told:
        comment = f"{' and '.join(told)} read from the dense model" + (f"; {comment}" if unsaid else "")
    value = f"{{size: {json.dumps(size)}, mean: {_flow_list(mean)}, std: {_flow_list(std)}}}"
    return value, notes, comment


def _preset_for(said: ModelInput, data_format: str) -> str | None:
    if data_format == "segmentation-folder":
        return "voc-segmentation"
    if said.size is not None:
        side = said.size if isinstance(said.size, int) else max(said.size)
        return "cifar10" if side <= SMALL_INPUT else "imagenet"
    return "cifar10" if data_format == "cifar10-binary" else None


def init_policy(out: Path, dense: Path, pruned: Path, data: Path, preset: str | None) -> InitResult:
    """The text of a policy for these files, to be written at `out`."""
    for option, path in (("--dense", dense), ("--pruned", pruned)):
        if path.is_dir() and not hf_folder.is_folder(path):
            raise ModelError(hf_folder.NOT_A_MODEL, file=path, field=option)
        if not (path.is_file() or path.is_dir()):
            raise ModelError(missing_reason(path, "model file"), file=path, field=option)
    data_format = guess_format(data)
    said = read_model_input(dense, "--dense")
    chosen = preset or _preset_for(said, data_format)
    if chosen == "voc-segmentation" and data_format != "segmentation-folder":
        raise PolicyError(
            f"the voc-segmentation preset needs a segmentation folder (images/ + masks/), not {data_format}",
            file=data,
            field="--data",
        )
    text = _source_text(chosen)
    folder = out.parent
    text = _replace_line(text, "dense", json.dumps(_relative(dense, folder)))
    text = _replace_line(text, "pruned", json.dumps(_relative(pruned, folder)))
    origin = f"the {chosen} policy" if chosen else "the template"
    value, notes, comment = _input_line(text, said, origin)
    notes += said.notes
    text = _replace_line(text, "input", value, comment)
    test: dict[str, object] = {"format": data_format, "path": _relative(data, folder)}
    if data_format == "segmentation-folder":
        test["ignore_index"] = 255
    text = _replace_line(text, "test", "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in test.items()) + "}")
    header = f"# Written by `prunegate policy init` from {origin}; paths are relative to this file.\n"
    _check_valid(header + text, out)
    return InitResult(header + text, chosen, notes)


def _check_valid(text: str, out: Path) -> None:
    """The written policy must validate as it is (a failure here is prunegate's bug, exit 3)."""
    import yaml

    from prunegate.plan import build_plan
    from prunegate.policy import policy_from_dict

    build_plan(policy_from_dict(yaml.safe_load(text), file=out))
