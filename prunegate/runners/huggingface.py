"""Hugging Face image classifiers: a folder with `config.json` and `model.safetensors`, as
`save_pretrained` writes it, loaded by transformers (`pip install prunegate[hf]`).

Offline and without the folder's own code: `local_files_only=True`, `trust_remote_code=False`,
and a config that asks for code of its own (`auto_map`) is refused before transformers reads it.
The weights are safetensors (plain data); config.json is JSON. The report pins both: the record's
sha256 is model.safetensors's, config.json is listed with its sha256 among the model's
`external_data` (it decides the network transformers builds, as an arch does).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from prunegate.digest import file_sha256
from prunegate.errors import ModelError, first_line
from prunegate.hf_folder import CONFIG, FORMAT, WEIGHTS, is_folder
from prunegate.report.schema import ExternalData

# (the folder's layout lives in prunegate.hf_folder, which imports nothing heavy; named here too)
__all__ = [
    "CONFIG",
    "FORMAT",
    "WEIGHTS",
    "check_folder",
    "is_folder",
    "load_module",
    "pinned_files",
    "transformers_installed",
    "weights_sha256",
]
INSTALL = "a Hugging Face folder needs `pip install prunegate[hf]` (transformers)"


def check_folder(path: Path, field: str) -> None:
    """ModelError unless the folder holds a config.json that asks for no code of its own and the
    weights as one model.safetensors, and transformers is installed."""
    from prunegate.report.attest import strict_json

    try:
        config = strict_json((path / CONFIG).read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{CONFIG} is not readable JSON ({first_line(exc)})", file=path, field=field) from None
    if not isinstance(config, dict):
        raise ModelError(f"{CONFIG} is not a JSON object", file=path, field=field)
    if "auto_map" in config or config.get("trust_remote_code"):
        raise ModelError(
            f"{CONFIG} asks for the model's own code (auto_map: remote code), which prunegate never runs "
            "(trust_remote_code is False): export the model with a transformers architecture, or to ONNX",
            file=path,
            field=field,
        )
    if not (path / WEIGHTS).is_file():
        sharded = (path / f"{WEIGHTS}.index.json").is_file()
        found = "sharded weights (model.safetensors.index.json)" if sharded else "none"
        raise ModelError(
            f"expected the weights in one {WEIGHTS} (save_pretrained's default), found {found}",
            file=path,
            field=field,
        )
    if not transformers_installed():
        raise ModelError(INSTALL, file=path, field=field)


def transformers_installed() -> bool:
    """Whether transformers can be imported (found without importing it: that takes seconds)."""
    return importlib.util.find_spec("transformers") is not None


def weights_sha256(path: Path) -> str:
    """The record's sha256 of a Hugging Face folder: its model.safetensors's."""
    return file_sha256(path / WEIGHTS)


def pinned_files(path: Path) -> list[ExternalData]:
    """The report's external_data of a Hugging Face folder: the files besides the weights it reads."""
    return [ExternalData(path=CONFIG, sha256=file_sha256(path / CONFIG))]


def load_module(path: Path, field: str) -> torch.nn.Module:
    """The folder's model (transformers' AutoModelForImageClassification), offline, no remote code."""
    check_folder(path, field)
    os.environ["HF_HUB_OFFLINE"] = "1"  # read before huggingface_hub's first import: never the network
    try:
        from transformers import AutoModelForImageClassification
    except ImportError as exc:
        raise ModelError(f"{INSTALL}: {first_line(exc)}", file=path, field=field) from None
    try:
        return AutoModelForImageClassification.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
    except Exception as exc:
        raise ModelError(f"cannot load the Hugging Face model ({first_line(exc)})", file=path, field=field) from None
