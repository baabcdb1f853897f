"""runners/sandbox.py: what a model's process can no longer do once it is sandboxed.

Each case runs a fresh Python process that calls `restrict` and then tries the forbidden thing,
printing what happened; the parent checks. The model processes of `check` do exactly this before
loading a model (tests/test_isolation.py runs attacking models end to end).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from prunegate.runners import sandbox

LANDLOCK = sandbox.landlock_abi()
needs_landlock = pytest.mark.skipif(LANDLOCK == 0, reason="this kernel has no Landlock")
needs_linux = pytest.mark.skipif(sys.platform != "linux", reason="Landlock and seccomp are Linux's")

PROBE = textwrap.dedent("""
    import json, os, socket, subprocess, sys
    from pathlib import Path
    from prunegate.runners import sandbox
    hidden, target = sys.argv[1], sys.argv[2]
    applied = sandbox.restrict([Path(hidden)])
    results = {"applied": applied}
    def attempt(name, fn):
        try:
            fn()
            results[name] = "allowed"
        except (OSError, RuntimeError):  # torch words a refused open as a RuntimeError
            results[name] = "denied"
    attempt("read hidden", lambda: open(hidden, "rb").read())
    attempt("read other", lambda: open(target + "/other.txt", "rb").read())
    attempt("list folder", lambda: os.listdir(target))
    attempt("create file", lambda: open(target + "/new.txt", "w").write("x"))
    attempt("append", lambda: open(target + "/other.txt", "a").write("x"))
    attempt("delete", lambda: os.unlink(target + "/other.txt"))
    attempt("make folder", lambda: os.mkdir(target + "/sub"))
    attempt("udp socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    attempt("tcp connect", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[3])), timeout=2))
    attempt("unix socketpair", lambda: socket.socketpair())
    attempt("run a program", lambda: subprocess.run(["/bin/true"], check=True))
    attempt("parent environment", lambda: open(f"/proc/{os.getppid()}/environ", "rb").read())
    attempt("own status", lambda: open("/proc/self/status", "rb").read())
    import stat
    devices = [e.path for e in os.scandir("/dev") if not e.is_symlink() and stat.S_ISBLK(e.stat().st_mode)]
    device = (devices or ["/dev/kmsg"])[0]
    results["device"] = device
    attempt("raw devices", lambda: os.close(os.open(device, os.O_RDONLY | os.O_NONBLOCK)))
    attempt("write /dev/null", lambda: open("/dev/null", "w").write("x"))
    attempt("signal the parent", lambda: os.kill(os.getppid(), 0))
    import torch
    attempt("torch.from_file", lambda: torch.from_file(hidden, False, 4, dtype=torch.uint8))
    attempt("torch.save", lambda: torch.save(torch.ones(1), target + "/t.pt"))
    results["compute"] = float((torch.ones(64, 64) @ torch.ones(64, 64)).sum())
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("sandbox")
    (folder / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
    (folder / "other.txt").write_text("readable")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(folder / "key.pem"), str(folder), str(listener.getsockname()[1])],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
    finally:
        listener.close()
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), folder


@needs_landlock
def test_the_hidden_file_cannot_be_read_but_everything_else_can(probed) -> None:
    results, _ = probed
    assert results["applied"]["files"] is True
    assert results["read hidden"] == "denied"
    assert results["torch.from_file"] == "denied"
    assert results["read other"] == "allowed"
    assert results["list folder"] == "allowed"
    assert results["own status"] == "allowed"
    assert results["compute"] == 64 * 64 * 64


@needs_landlock
def test_no_file_can_be_written_made_or_removed(probed) -> None:
    results, folder = probed
    for name in ("create file", "append", "delete", "make folder", "torch.save"):
        assert results[name] == "denied", name
    assert sorted(p.name for p in folder.iterdir()) == ["key.pem", "other.txt"]
    assert (folder / "other.txt").read_text() == "readable"
    assert results["write /dev/null"] == "allowed"  # libraries open it; it keeps nothing


@needs_landlock
def test_other_processes_and_raw_devices_are_out_of_sight(probed) -> None:
    results, _ = probed
    assert results["parent environment"] == "denied"  # where PRUNEGATE_SIGNING_KEY lives
    assert results["raw devices"] == "denied", results["device"]  # a raw disk holds every file


@needs_landlock
def test_the_network_is_closed(probed) -> None:
    results, _ = probed
    if LANDLOCK >= 4:
        assert results["tcp connect"] == "denied"
    if results["applied"]["seccomp"]:
        assert results["udp socket"] == "denied"
    assert results["unix socketpair"] == "allowed"  # the wire to prunegate


@needs_linux
def test_no_programs_and_no_signals_outside(probed) -> None:
    results, _ = probed
    if results["applied"]["seccomp"]:
        assert results["run a program"] == "denied"
    if LANDLOCK >= 6:
        assert results["signal the parent"] == "denied"


def test_readable_except_covers_every_sibling_on_the_way_and_not_the_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "key.pem").write_text("k")
    (tmp_path / "a" / "notes.txt").write_text("n")
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a" / "key.pem")
    rules = dict(sandbox.readable_except([tmp_path / "a" / "key.pem"]))
    real = Path(os.path.realpath(tmp_path))
    assert rules[str(real / "a")] == sandbox.READ_DIR  # listed, not read
    assert rules[str(real / "a" / "notes.txt")] == sandbox.READABLE
    assert rules[str(real / "b")] == sandbox.READABLE
    assert str(real / "a" / "key.pem") not in rules
    assert str(real / "link") not in rules  # a link is checked at its target
    assert rules["/"] == sandbox.READ_DIR


def test_seccomp_program_is_well_formed() -> None:
    for arch, numbers in sandbox._SYSCALLS.values():
        program = sandbox._seccomp_program(arch, numbers)
        assert len(program) < 4096
        for index, (code, jt, jf, _) in enumerate(program):
            assert index + 1 + max(jt, jf) < len(program) or code == sandbox._RET_K
        assert program[-1] == (sandbox._RET_K, 0, 0, sandbox._RET_ALLOW)
        assert set(sandbox._REFUSED) <= set(numbers)


def test_describe_says_what_is_missing() -> None:
    full = {"files": True, "tcp": True, "seccomp": True}
    assert sandbox.complete(full) and "sandboxed" in sandbox.describe(full)
    partial = {"files": True, "tcp": False, "seccomp": False}
    assert not sandbox.complete(partial)
    assert "TCP" in sandbox.describe(partial) and "seccomp" in sandbox.describe(partial)
