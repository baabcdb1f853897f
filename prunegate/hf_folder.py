"""The layout of a Hugging Face model folder, as `save_pretrained` writes it, known without torch
or transformers (`policy init` and `verify` look at folders without importing either)."""

from __future__ import annotations

from pathlib import Path

FORMAT = "huggingface"
CONFIG, WEIGHTS = "config.json", "model.safetensors"
PREPROCESSOR = "preprocessor_config.json"  # the image processor's settings: input size, mean, std
NOT_A_MODEL = f"a folder without {CONFIG} is not a Hugging Face model"  # what a plain folder is told


def is_folder(path: Path) -> bool:
    """Whether `path` is a folder that looks like a Hugging Face export (it has a config.json)."""
    return path.is_dir() and (path / CONFIG).is_file()
