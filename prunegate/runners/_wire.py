"""The wire between prunegate and a model's process: framed messages over a Unix socket, and
tensors in shared memory.

prunegate -> model: pickled tuples (the model's process trusts prunegate). Model -> prunegate:
JSON only, of bounded size, parsed strictly: nothing the model's process sends can run code in
prunegate's. Tensors never travel in messages: inputs and outputs lie in shared memory files
(memfd) that prunegate makes and passes as file descriptors; the input file is sealed against
writes by anyone but prunegate's own mapping.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import socket
import struct
import tempfile

_HEADER = struct.Struct("!IB")  # payload length, number of file descriptors
MAX_REPLY = 1 << 20  # a model's process never needs more for one message
MAX_FDS = 4

# fcntl(2) sealing (Linux 5.1+ for FUTURE_WRITE): no new writable mappings, no writes, no resizing.
_F_ADD_SEALS, _F_SEAL_SEAL, _F_SEAL_SHRINK, _F_SEAL_GROW, _F_SEAL_FUTURE_WRITE = 1033, 1, 2, 4, 16


class WireClosed(EOFError):
    """The other side is gone."""


def send(sock: socket.socket, payload: bytes, fds: tuple[int, ...] = ()) -> None:
    data = _HEADER.pack(len(payload), len(fds)) + payload
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    chunks, left = [], count
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise WireClosed("the connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket, limit: int) -> tuple[bytes, list[int]]:
    """One message: (payload, file descriptors). Refuses a payload over `limit` bytes."""
    header, fds, _, _ = socket.recv_fds(sock, _HEADER.size, MAX_FDS)
    if not header:
        raise WireClosed("the connection closed")
    if len(header) < _HEADER.size:
        header += _recv_exactly(sock, _HEADER.size - len(header))
    length, count = _HEADER.unpack(header)
    if length > limit or count != len(fds):
        for fd in fds:
            os.close(fd)
        raise ValueError(f"a message of {length} bytes with {len(fds)} of {count} descriptors")
    return _recv_exactly(sock, length), fds


def send_command(sock: socket.socket, *command: object, fds: tuple[int, ...] = ()) -> None:
    send(sock, pickle.dumps(command), fds)


def receive_command(sock: socket.socket) -> tuple[tuple, list[int]]:
    payload, fds = receive(sock, 1 << 30)
    return pickle.loads(payload), fds


def hang_up(sock: socket.socket) -> None:
    """Ask the other side to end ("close"), whether or not it still listens, and close the socket."""
    try:
        send_command(sock, "close")
    except OSError:
        pass
    sock.close()


def send_reply(sock: socket.socket, reply: dict) -> None:
    send(sock, json.dumps(reply, allow_nan=False).encode())


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def receive_reply(sock: socket.socket) -> dict:
    """A model process's reply: a JSON object, strictly parsed (ValueError otherwise)."""
    payload, fds = receive(sock, MAX_REPLY)
    for fd in fds:  # a model's process has no business sending descriptors
        os.close(fd)
    try:
        reply = json.loads(payload, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(reply, dict) or fds:
        raise ValueError("not a JSON object" if not fds else "it sent file descriptors")
    return reply


class SharedBuffer:
    """`size` bytes of shared memory, mapped read-write here, passed to other processes as a file
    descriptor. `seal` (for inputs) makes every other mapping read-only."""

    def __init__(self, size: int, name: str, *, seal: bool = False):
        self.size = max(int(size), 1)
        self.fd = _anonymous_file(name)
        os.ftruncate(self.fd, self.size)
        self.map = mmap.mmap(self.fd, self.size)
        if seal:
            _seal(self.fd)  # (kernels without F_SEAL_FUTURE_WRITE, before 5.1, lack Landlock too)

    def close(self) -> None:
        try:
            self.map.close()
        except BufferError:  # a tensor still views it; the mapping goes with the last view
            pass
        os.close(self.fd)


def _anonymous_file(name: str) -> int:
    """A file with no name on disk: memfd on Linux, an unlinked temporary file elsewhere."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        return memfd(name, os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 2))
    handle = tempfile.TemporaryFile(prefix=f"{name}-")
    fd = os.dup(handle.fileno())
    handle.close()
    return fd


def _seal(fd: int) -> None:
    import fcntl

    try:
        fcntl.fcntl(fd, _F_ADD_SEALS, _F_SEAL_FUTURE_WRITE | _F_SEAL_SHRINK | _F_SEAL_GROW | _F_SEAL_SEAL)
    except OSError:
        pass


def map_received(fd: int, size: int, *, writable: bool) -> mmap.mmap:
    """Map a buffer prunegate passed (then close the descriptor: the mapping keeps the memory)."""
    try:
        return mmap.mmap(fd, size, prot=mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
    finally:
        os.close(fd)
