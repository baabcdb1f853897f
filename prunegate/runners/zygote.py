"""The model processes' parent: `python -m prunegate.runners.zygote FD`.

Importing torch takes seconds and hundreds of megabytes; a fresh interpreter per model would pay
that each time. So prunegate starts this one process per run (per test session, in the tests),
which imports torch and the loaders once, never loads a model and never sees a key, and forks a
model process (runners/host.py) on request. Each fork starts from this clean state, shares its
memory pages until it writes them, and sandboxes itself before it loads its model.

Requests (from prunegate, pickled; replies JSON): ("spawn", environment, cwd) with the model
process's socket and standard error as descriptors -> {"pid"}; ("status", pid, timeout) ->
{"status": exit code, -signal, or None while it runs}.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from . import _wire, sandbox

_ended: dict[int, int] = {}  # pid -> exit status (negative: the signal that ended it)


def _reap(signum: int, frame: object) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _ended[pid] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _child(sock: socket.socket, channel: int, stderr: int, environment: dict, cwd: str) -> None:
    """In the fork: become the model process. Never returns."""
    code = 1
    try:
        sock.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        sandbox.set_parent_death_signal()
        os.dup2(stderr, 2)
        os.close(stderr)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        os.environ.clear()
        os.environ.update(environment)
        os.chdir(cwd)
        from .host import main

        code = main([str(channel)])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _status(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while pid not in _ended and time.monotonic() < deadline:
        time.sleep(0.01)
        _reap(0, None)
    return _ended.get(pid)


def main(argv: list[str] | None = None) -> int:
    """The zygote: import torch and the loaders once, then fork a model process on each request."""
    args = sys.argv[1:] if argv is None else argv
    sandbox.set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is prunegate's to handle
    sock = socket.socket(fileno=int(args[0]))
    # What every model process needs, imported once here (no model code runs in this process).
    # prunegate.kinds brings prunegate.data and with it torchvision (and torch._dynamo, which
    # torchvision.ops imports): ~3 s that each model process paid again before it could load;
    # onnx (ml_dtypes' tables: ~1 s) serves backend auto's export and an .onnx file's checks.
    # None of these starts a thread beyond the one numpy's BLAS starts with torch (onnxruntime's
    # import does start one: each model process imports onnxruntime itself, in 0.05 s).
    import onnx as onnx_package  # noqa: F401
    import torch  # noqa: F401

    from prunegate import kinds  # noqa: F401

    from . import host, onnx  # noqa: F401
    from . import torch as torch_runner  # noqa: F401

    signal.signal(signal.SIGCHLD, _reap)
    while True:
        try:
            command, fds = _wire.receive_command(sock)
        except (_wire.WireClosed, ConnectionError):
            return 0
        if command[0] == "spawn":
            channel, stderr = fds
            pid = os.fork()
            if pid == 0:
                _child(sock, channel, stderr, command[1], command[2])
            os.close(channel)
            os.close(stderr)
            _wire.send_reply(sock, {"pid": pid})
        elif command[0] == "status":
            _wire.send_reply(sock, {"status": _status(int(command[1]), float(command[2]))})
        elif command[0] == "close":
            return 0


if __name__ == "__main__":
    sys.exit(main())
