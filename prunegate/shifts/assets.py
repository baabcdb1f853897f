"""What some shifts overlay that they do not compute: passed in with every call, never global.

Today that is the frost photographs a user may supply (policy `suite.corruptions.frost_textures`,
`prunegate corrupt --frost-textures`); a shift declares that it takes assets when it registers
(`register_shift("frost", assets=True)`) and then receives them as its fourth argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from prunegate.shift_names import ASSET_NAMES

from .textures import TextureFolder, load_texture_folder


@dataclass(frozen=True)
class ShiftAssets:
    """The assets of one run: the user's frost photographs (None: prunegate's procedural ones)."""

    frost_textures: TextureFolder | None = None

    @classmethod
    def load(cls, folders: dict[str, Path], field: Callable[[str], str] = str) -> ShiftAssets:
        """Load each asset folder (name -> folder, names from ASSET_NAMES); errors name the
        setting `field(name)` that gave the folder (a policy field, a command-line option)."""
        unknown = set(folders) - set(ASSET_NAMES)
        if unknown:
            raise ValueError(f"unknown shift assets {sorted(unknown)}; known: {', '.join(ASSET_NAMES)}")
        loaded = {name: load_texture_folder(folder, field(name)) for name, folder in folders.items()}
        return cls(**loaded)

    @property
    def frost_photos(self) -> tuple[torch.Tensor, ...] | None:
        """The frost photographs to crop, or None for the procedural textures."""
        return self.frost_textures.photos if self.frost_textures is not None else None

    def records(self) -> list[dict]:
        """What the report's `data` lists of them: one record per asset folder in use."""
        found = [(name, getattr(self, name)) for name in ASSET_NAMES]
        return [{"name": name, **folder.record} for name, folder in found if folder is not None]


NO_ASSETS = ShiftAssets()
