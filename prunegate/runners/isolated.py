"""Each model in a sandboxed process of its own (runtime.isolation: auto | strict | off).

The model under test is untrusted: its TorchScript, exported program, arch code or pickle could
read the signing key, write files, print a fake verdict or patch prunegate in memory. So it never
runs in prunegate's process. `IsolatedRunner` has the `Zygote` (runners/zygote.py: one process
with a scrubbed environment — no signing key, no tokens — that has imported torch) fork a model
process (runners/host.py) with no terminal and a list of files it may not read (the key); that
process sandboxes itself before it loads the model (runners/sandbox.py).
`IsolatedRunner` is then an ordinary Runner: every call puts the batch in one shared, sealed
input buffer that all model processes read, and takes the logits from the model's own output
buffer. What a model's process says is parsed as JSON and checked; the facts that pin the model
(its path, sha256, external data, arch, the pickle opt-in) are prunegate's own, never the
process's word.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from prunegate.errors import DeviceError, ModelError
from prunegate.report.schema import Isolation, ModelRecord

from . import _wire
from .base import (
    PRUNING_SAFETENSORS,
    PRUNING_STATE_DICT,
    SAFETENSORS,
    STATE_DICT,
    ModelFile,
    model_record,
    needs_arch,
)
from .host import LoadRequest

# The environment a model's process gets: what torch, CUDA, ONNX Runtime and Python need, never
# a name that looks like a secret (CI tokens, cloud credentials, the signing key).
ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONHOME",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "LD_LIBRARY_PATH",
        "CUDA_VISIBLE_DEVICES",
        "SYSTEMROOT",
    }
)
ENV_PREFIXES = (
    "LC_",
    "CUDA_",
    "CUDNN_",
    "NVIDIA_",
    "OMP_",
    "MKL_",
    "KMP_",
    "OPENBLAS_",
    "GOMP_",
    "TORCH_",
    "PYTORCH_",
    "ORT_",
    "HIP_",
    "ROCM_",
    "HSA_",
)
SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSPHRASE", "CREDENTIAL", "AUTH", "COOKIE", "SESSION")
# Files of other tools' secrets a model may not read either, when they exist.
SECRET_FILES = (
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".netrc",
    ".git-credentials",
    ".pypirc",
    ".docker/config.json",
    ".kube/config",
    ".config/gh",
    ".config/gcloud",
)
STDERR_LINES = 40  # of a model process's standard error, kept to explain a crash
log = logging.getLogger("prunegate.runners")


def model_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the models' processes: what libraries need, no secret (see ENV_NAMES)."""
    environ = dict(os.environ if environ is None else environ)
    kept = {
        name: value
        for name, value in environ.items()
        if (name in ENV_NAMES or name.startswith(ENV_PREFIXES))
        and not any(word in name.upper() for word in SECRET_WORDS)
    }
    # The model's process imports what this one can: prunegate (a source checkout's too), and the
    # modules of the user's arch or pickled classes wherever this process found them.
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [package_root, *(p for p in sys.path if p and os.path.isdir(p))]
    kept["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    kept["PYTHONUNBUFFERED"] = "1"
    return kept


def hidden_files(key_files: Iterable[Path] = ()) -> tuple[str, ...]:
    """The files no model may read: the signing key, and other tools' secrets in the home folder."""
    home = Path.home()
    found = [Path(k) for k in key_files] + [home / name for name in SECRET_FILES if (home / name).exists()]
    return tuple(sorted({os.path.realpath(p) for p in found}))


class InputArena:
    """The one shared input buffer of a run: each batch is written once and read by every model
    process (the dense model and each pruned one get the same bytes). Sealed: only this mapping
    can write it."""

    def __init__(self) -> None:
        self.buffer: _wire.SharedBuffer | None = None
        self.generation = 0
        self._last: torch.Tensor | None = None
        self._last_version = -1

    def put(self, x: torch.Tensor) -> tuple[tuple[int, ...], bool]:
        """Write `x` (float32, on the CPU) unless it is already there: (its shape, whether it is
        laid out channels-last). The layout travels with it, so a model sees the same memory
        layout as in prunegate's process and computes the same bits."""
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if not (x is self._last and x._version == self._last_version):
            size = x.numel() * 4
            if self.buffer is None or size > self.buffer.size:
                if self.buffer is not None:
                    self.buffer.close()
                self.buffer = _wire.SharedBuffer(max(size, 1 << 16), "prunegate-input", seal=True)
                self.generation += 1
            target = torch.frombuffer(self.buffer.map, dtype=torch.float32, count=x.numel())
            target.copy_((x.permute(0, 2, 3, 1) if channels_last else x).detach().reshape(-1))
            self._last, self._last_version = x, x._version
        return tuple(x.shape), channels_last

    def close(self) -> None:
        if self.buffer is not None:
            self.buffer.close()
            self.buffer = None
        self._last = None


class IsolatedRunner:
    """A Runner whose model lives in a sandboxed process of its own (see the module's text).
    `start` launches the process; `finish_loading` waits until the model is loaded and checked."""

    record: ModelRecord  # set by finish_loading

    def __init__(
        self, request: LoadRequest, file: ModelFile, arena: InputArena, gather: Callable[[dict], list] | None = None
    ):
        """`file`: prunegate's own facts about the model file, its format as sniffed (torch-save:
        a state dict or a pickle, as the model's process finds)."""
        self.request, self.file, self.device, self.arena = request, file, request.options.device, arena
        self.gather = gather
        self.sandbox: dict = {}
        self._shape: list | None = None
        self._generation = 0
        self._output: _wire.SharedBuffer | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        # Its own temporary folder (libraries write scratch files), removed when it ends.
        self.scratch = tempfile.mkdtemp(prefix="prunegate-model-")
        request = dataclasses.replace(request, scratch=self.scratch)
        self.request = request
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_read, err_write = os.pipe()
        try:
            self.zygote = Zygote.shared()
            self.pid = self.zygote.spawn(theirs.fileno(), err_write, {**model_environment(), "TMPDIR": self.scratch})
        except BaseException:
            ours.close()
            os.close(err_read)
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        finally:
            theirs.close()
            os.close(err_write)
        self.sock = ours
        self._stderr_file = os.fdopen(err_read, "rb")
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        _wire.send_command(self.sock, "load", request)

    def _drain(self) -> None:
        """Keep the last lines of the model process's standard error (to explain a crash); with
        --debug, log them too."""
        for raw in iter(self._stderr_file.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()[:300]
            self._stderr.append(line)
            log.debug("model process of %s: %r", self.request.field, line)

    # -- talking to the process ---------------------------------------------------------------

    def _died(self) -> ModelError:
        code = self.zygote.status(self.pid, timeout=10)
        if code is None:  # its socket closed, yet it runs: end it
            self._kill()
            code = self.zygote.status(self.pid, timeout=10)
        self._drainer.join(timeout=5)  # its last words
        how = "it did not end" if code is None else f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        last = next((line for line in reversed(self._stderr) if line.strip()), "")
        return ModelError(
            f"the model's process ended unexpectedly ({how}){': ' + last if last else ''}",
            file=self.file.path,
            field=self.request.field,
        )

    def _reply(self) -> dict:
        try:
            reply = _wire.receive_reply(self.sock)
        except (_wire.WireClosed, ConnectionError):
            raise self._died() from None
        except ValueError as exc:
            self.close()
            raise ModelError(
                f"the model's process sent a malformed reply ({exc})", file=self.file.path, field=self.request.field
            ) from None
        error = reply.get("error")
        if error is not None:
            raise self._error(error)
        return reply

    def _error(self, error: object) -> Exception:
        if not isinstance(error, dict):
            return ModelError("the model's process failed", file=self.file.path, field=self.request.field)
        message = str(error.get("message") or "failed")[:500]
        field = error.get("field") if isinstance(error.get("field"), str) else self.request.field
        file = error.get("file") if isinstance(error.get("file"), str) else self.file.path
        kind = DeviceError if error.get("kind") == "device" else ModelError
        return kind(message, file=file, field=field)

    def _command(self, *command: object, fds: tuple[int, ...] = ()) -> None:
        try:
            _wire.send_command(self.sock, *command, fds=fds)
        except OSError:
            raise self._died() from None

    # -- loading ------------------------------------------------------------------------------

    def finish_loading(self) -> IsolatedRunner:
        """Wait until the model's process has loaded the model; its record joins prunegate's own
        facts about the file (path, sha256, arch, pickle opt-in, external data) with the process's
        word on how it runs, and how the process was sandboxed."""
        while True:
            reply = self._reply()
            if "measured" in reply:
                self._command("gathered", self._gathered(reply["measured"]))
                continue
            break
        try:
            loaded = ModelRecord.model_validate(reply.get("loaded"))
            shape = reply.get("input_shape")
            if shape is not None and not (isinstance(shape, list) and all(isinstance(d, (int, str)) for d in shape)):
                raise ValueError("input_shape")
            sandbox = reply.get("sandbox")
            if not isinstance(sandbox, dict):
                raise ValueError("sandbox")
            isolation = Isolation(process=True, **{k: sandbox.get(k) for k in ISOLATION_FIELDS})
        except ValueError as exc:
            self.close()
            raise ModelError(
                f"the model's process described the model wrongly ({str(exc).splitlines()[0]})",
                file=self.file.path,
                field=self.request.field,
            ) from None
        pinned = self.file
        if pinned.format == "torch-save" and loaded.format in (STATE_DICT, PRUNING_STATE_DICT, "pickle"):
            file = dataclasses.replace(pinned, format=loaded.format)
        elif pinned.format == "safetensors" and loaded.format in (SAFETENSORS, PRUNING_SAFETENSORS):
            file = dataclasses.replace(pinned, format=loaded.format)
        elif loaded.format == pinned.format and not needs_arch(pinned.format):
            file = pinned
        else:
            self.close()
            raise ModelError(
                f"the model's process loaded it as {loaded.format!r}, which its file is not",
                file=self.file.path,
                field=self.request.field,
            )
        self.record = model_record(
            file,
            parameters=loaded.parameters,
            nonzero_parameters=min(loaded.nonzero_parameters, loaded.parameters),
            backend=loaded.backend,
            device=loaded.device,
            provider=loaded.provider,
            providers=loaded.providers,
            fixed_batch=loaded.fixed_batch,
            precision=loaded.precision or "fp32",
            channels_last=loaded.channels_last,
            backend_choice=loaded.backend_choice,
            isolation=isolation,
            quantisation=loaded.quantisation,
            output=loaded.output,
        )
        self._shape = shape
        self.sandbox = sandbox
        return self

    def _gathered(self, measured: object) -> list:
        if not (isinstance(measured, dict) and set(measured) == {"reason", "seconds", "batch"}):
            raise ModelError(
                "the model's process sent a malformed timing", file=self.file.path, field=self.request.field
            )
        return self.gather(measured) if self.gather else [measured]

    # -- the Runner protocol ------------------------------------------------------------------

    def input_shape(self) -> list | None:
        return self._shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape, channels_last = self.arena.put(x.to("cpu", torch.float32))
        buffer = self.arena.buffer
        assert buffer is not None
        if self._generation != self.arena.generation:
            self._command("input", buffer.size, fds=(buffer.fd,))
            self._generation = self.arena.generation
        self._command("run", shape, channels_last)
        reply = self._reply()
        out_shape = self._shape_of(reply)
        count = math.prod(out_shape)
        if not reply.get("written"):
            if self._output is not None:
                self._output.close()
            self._output = _wire.SharedBuffer(max(count * 4, 1 << 16), "prunegate-output")
            self._command("output", self._output.size, fds=(self._output.fd,))
            reply = self._reply()
            if self._shape_of(reply) != out_shape or not reply.get("written"):
                raise ModelError(
                    "the model's process did not deliver its output", file=self.file.path, field=self.request.field
                )
        assert self._output is not None
        out = torch.frombuffer(self._output.map, dtype=torch.float32, count=count).view(out_shape).clone()
        return out.to(self.device)

    MAX_OUTPUT = 1 << 31  # bytes: far beyond any real model's output for one batch

    def _shape_of(self, reply: dict) -> tuple[int, ...]:
        shape = reply.get("shape")
        if (
            not (
                isinstance(shape, list)
                and len(shape) <= 8
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape)
            )
            or math.prod(shape) * 4 > self.MAX_OUTPUT
        ):
            raise ModelError(
                f"the model's process sent an impossible output shape {str(shape)[:80]}",
                file=self.file.path,
                field=self.request.field,
            )
        return tuple(shape)

    def close(self) -> None:
        _wire.hang_up(self.sock)
        if self.zygote.status(self.pid, timeout=5) is None:
            self._kill()
            self.zygote.status(self.pid, timeout=5)
        self._drainer.join(timeout=5)
        self._stderr_file.close()
        if self._output is not None:
            self._output.close()
            self._output = None
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Zygote:
    """The pristine process that forks model processes (runners/zygote.py): started once, on
    first use, for this process's life (the tests share it; a run's models share it), restarted
    if it is gone. It has the models' environment, never a key, and never runs a model."""

    _shared: Zygote | None = None

    def __init__(self) -> None:
        if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
            raise DeviceError(
                "running models in processes of their own needs Linux or macOS; on this system set "
                "runtime.isolation: off (the report records it, and is never signed)",
                field="runtime.isolation",
            )
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prunegate.runners.zygote", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=model_environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise DeviceError(f"cannot start a process for the models ({exc.strerror})") from None
        finally:
            theirs.close()
        self.sock = ours
        self.pid = os.getpid()  # a fork of this process (a data loader's worker) has none of its own

    @classmethod
    def shared(cls) -> Zygote:
        if cls._shared is None or cls._shared.process.poll() is not None or cls._shared.pid != os.getpid():
            cls._shared = cls()
            atexit.register(cls._shared.close)
        return cls._shared

    def _ask(self, *command: object, fds: tuple[int, ...] = ()) -> dict:
        try:
            _wire.send_command(self.sock, *command, fds=fds)
            return _wire.receive_reply(self.sock)
        except (OSError, EOFError, ValueError) as exc:
            Zygote._shared = None
            raise DeviceError(f"the process that starts the models' processes failed ({exc})") from None

    def spawn(self, channel: int, stderr: int, environment: dict[str, str]) -> int:
        """A new model process on `channel` (its socket), writing its errors to `stderr`: its pid."""
        reply = self._ask("spawn", environment, os.getcwd(), fds=(channel, stderr))
        pid = reply.get("pid")
        if not isinstance(pid, int):
            raise DeviceError("the process that starts the models' processes failed")
        return pid

    def status(self, pid: int, timeout: float) -> int | None:
        """The model process's exit status (-N: signal N) once it has ended, within `timeout` s."""
        try:
            status = self._ask("status", pid, timeout).get("status")
        except DeviceError:
            return -signal.SIGKILL  # gone with the zygote
        return status if isinstance(status, int) else None

    def close(self) -> None:
        _wire.hang_up(self.sock)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


ISOLATION_FIELDS = ("landlock_abi", "files", "tcp", "signals", "seccomp", "capabilities")
