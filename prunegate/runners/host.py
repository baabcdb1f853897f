"""The model's process: `main([FD])`, in a fork of the zygote (runners/zygote.py).

It has nothing of prunegate's but a socket (FD): no signing key,
no secrets in its environment, no terminal. It sandboxes itself first (runners/sandbox.py), then
loads the one model it was asked for with the ordinary loaders (runners/__init__.load_runner:
the op check of runners/opscan.py included), and serves calls: an input in shared memory in,
the model's output in shared memory out. Whatever the model does here, it can only change its
own outputs, which prunegate checks like any other.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prunegate.errors import DeviceError, PrunegateError

from . import _wire, sandbox

if TYPE_CHECKING:
    import mmap

    import torch

    from prunegate.policy import Arch

    from .base import LoadOptions, Runner


@dataclass(frozen=True)
class LoadRequest:
    """What prunegate asks the model's process to load (load_runner's arguments), and how to isolate it."""

    path: str
    field: str
    arch: Arch | None  # models.arch, either form
    options: LoadOptions  # its `gather` is None: a function does not travel (see `gather` below)
    hidden: tuple[str, ...]  # files the model may not read (the signing key)
    strict: bool  # refuse to load unless every restriction of the sandbox took effect
    gather: bool  # --backend auto under torchrun: ask prunegate for every process's timing
    threads: int  # torch's intra-op threads: prunegate's own count, as when models ran in its process
    scratch: str | None = None  # the model process's own temporary folder: the one place it may write
    output: str | int | None = None  # models.output: which of the model's outputs holds the logits
    output_field: str = "models.output"  # the policy field that set it, for errors


def _error(kind: str, message: str, field: str | None = None, file: str | None = None) -> dict:
    return {"error": {"kind": kind, "message": message[:500], "field": field, "file": file}}


def _load(request: LoadRequest, sock: socket.socket) -> Runner:
    from prunegate.policy import ModelSpec

    from . import load_runner

    def gather(measured: dict) -> list:
        _wire.send_reply(sock, {"measured": measured})
        command, _ = _wire.receive_command(sock)
        return command[1]

    import torch

    torch.set_num_threads(max(1, request.threads))
    options = dataclasses.replace(request.options, gather=gather) if request.gather else request.options
    spec = ModelSpec(path=request.path, arch=request.arch, output=request.output)
    return load_runner(spec, Path(request.path), request.field, options, output_field=request.output_field)


class _Server:
    """Calls on the loaded model: ("input", size) + fd, ("output", size) + fd, ("run", shape), ("close",)."""

    def __init__(self, runner: Runner, sock: socket.socket):
        self.runner, self.sock = runner, sock
        self.inputs: mmap.mmap | None = None
        self.outputs: mmap.mmap | None = None
        self.pending: torch.Tensor | None = None  # the last output, until it has been delivered

    def serve(self) -> None:
        while True:
            try:
                command, fds = _wire.receive_command(self.sock)
            except _wire.WireClosed:
                return
            op = command[0]
            if op == "input":
                self.inputs = _wire.map_received(fds[0], command[1], writable=False)
            elif op == "output":
                self.outputs = _wire.map_received(fds[0], command[1], writable=True)
                _wire.send_reply(self.sock, self._deliver())
            elif op == "run":
                _wire.send_reply(self.sock, self._run(tuple(command[1]), bool(command[2])))
            elif op == "close":
                return

    def _run(self, shape: tuple[int, ...], channels_last: bool) -> dict:
        import torch

        from .base import first_line

        count = math.prod(shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "the given buffer is not writable": it is copied next
            flat = torch.frombuffer(self.inputs, dtype=torch.float32, count=count)
        if channels_last:  # the layout prunegate's tensor had: NHWC memory, seen as NCHW
            n, c, h, w = shape
            view = flat.view(n, h, w, c).permute(0, 3, 1, 2)
        else:
            view = flat.view(shape)
        x = view.to(self.runner.device, copy=True)  # the model may change its input in place
        try:
            out = self.runner(x)
        except PrunegateError as exc:
            return _error("model", exc.detail, exc.field)
        except Exception as exc:
            return _error("model", f"fails on a {list(shape)} input ({first_line(exc)})")
        if not isinstance(out, torch.Tensor):
            return _error("output", f"returned a {type(out).__name__}, not a tensor")
        self.pending = out.detach().to("cpu", torch.float32).contiguous()
        return self._deliver()

    def _deliver(self) -> dict:
        import torch

        out = self.pending
        if out is None:
            return _error("output", "no output to deliver")
        written = self.outputs is not None and out.numel() * 4 <= len(self.outputs)
        if written:
            target = torch.frombuffer(self.outputs, dtype=torch.float32, count=out.numel())
            target.copy_(out.reshape(-1))
            self.pending = None
        return {"shape": list(out.shape), "written": written}


def main(argv: list[str] | None = None) -> int:
    """The model process: sandbox itself, load the model it is asked for, serve calls on it."""
    args = sys.argv[1:] if argv is None else argv
    sandbox.set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is prunegate's to handle; it closes this process
    sock = socket.socket(fileno=int(args[0]))
    command, _ = _wire.receive_command(sock)
    request: LoadRequest = command[1]
    if request.scratch:  # its own temporary folder, the one place it may write
        import tempfile

        os.environ["TMPDIR"] = tempfile.tempdir = request.scratch
    applied = sandbox.restrict(
        [Path(p) for p in request.hidden], scratch=Path(request.scratch) if request.scratch else None
    )
    if request.strict and not sandbox.complete(applied):
        _wire.send_reply(
            sock,
            _error(
                "device",
                f"runtime.isolation is strict, but this machine's kernel cannot "
                f"sandbox the model ({sandbox.describe(applied)})",
                "runtime.isolation",
            ),
        )
        return 0
    try:
        runner = _load(request, sock)
    except DeviceError as exc:
        _wire.send_reply(sock, _error("device", exc.detail, exc.field, exc.file))
        return 0
    except PrunegateError as exc:
        _wire.send_reply(sock, _error("model", exc.detail, exc.field, exc.file))
        return 0
    except Exception as exc:  # a model's own code failing to load
        from .base import first_line

        _wire.send_reply(sock, _error("model", f"cannot load the model ({first_line(exc)})"))
        return 0
    _wire.send_reply(
        sock, {"loaded": runner.record.model_dump(mode="json"), "input_shape": runner.input_shape(), "sandbox": applied}
    )
    _Server(runner, sock).serve()
    return 0
