"""Running one check across processes and machines with torchrun (torch.distributed).

Each process evaluates a contiguous range of every data set's samples into full-size tallies;
the tallies are summable (an unfilled slot holds zeros), so one all_reduce per tensor merges
them exactly, and the merged `filled` count proves every sample was evaluated exactly once.
NCCL on GPUs, gloo on CPU. Rank 0 writes the report; the others return the same exit code.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from prunegate.errors import DeviceError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def part(self, indices: np.ndarray) -> np.ndarray:
        """This process's contiguous range of `indices`."""
        return np.array_split(indices, self.size)[self.rank] if self.size > 1 else indices


SINGLE = World()


def from_environment() -> World:
    """The process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK),
    initialised on first use; a plain run is a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    world = World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":  # NCCL collectives and object gathers use the current device
            torch.cuda.set_device(world.local_rank)
        try:
            dist.init_process_group(backend, timeout=dt.timedelta(minutes=30))
        except Exception as exc:  # a misconfigured launch is the user's to fix
            raise DeviceError(f"cannot join the torchrun process group ({backend}): {exc}") from None
    return world


def device_for(world: World, requested: torch.device) -> torch.device:
    """Under torchrun each process drives its own GPU (LOCAL_RANK)."""
    if requested.type == "cuda" and world.size > 1:
        return torch.device("cuda", world.local_rank)
    return requested


def merge_tallies(tallies: list[dict], world: World) -> None:
    """Merge every process's tallies in place; each tally declares how (TaskTally.all_reduce)."""
    if world.size <= 1:
        return
    for member in tallies:
        for tally in member.values():
            tally.all_reduce(dist.all_reduce)


def gather_digests(manifest_digests: dict[int, str], world: World) -> dict[int, str]:
    """Every process's sample digests, merged (a plain run: its own)."""
    if world.size <= 1:
        return manifest_digests
    parts: list[dict | None] = [None] * world.size
    dist.all_gather_object(parts, manifest_digests)
    merged: dict[int, str] = {}
    for part in parts:
        merged.update(part or {})
    return merged


def gather_objects(value: object, world: World) -> list:
    """Every process's `value` (picklable), in rank order; [value] in a plain run."""
    if world.size <= 1:
        return [value]
    parts: list = [None] * world.size
    dist.all_gather_object(parts, value)
    return parts


def slowest(timings: dict[str, float], world: World) -> dict[str, float]:
    """The slowest process's time per stage (the run waits for it)."""
    if world.size <= 1:
        return timings
    values = torch.tensor([timings[k] for k in sorted(timings)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return dict(zip(sorted(timings), values.tolist()))


def _collective_device() -> torch.device:
    """NCCL reduces only CUDA tensors; gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def agree_on(value: int, world: World) -> int:
    """Rank 0's value, on every rank (the exit code)."""
    if world.size <= 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return int(box[0])


def finish(world: World) -> None:
    """Leave the torchrun process group, if this run joined one."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
