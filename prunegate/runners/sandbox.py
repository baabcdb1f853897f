"""The operating-system sandbox of a model's process: what the model's code may not do.

A model (its TorchScript, its exported program, its arch code, a pickled module) runs in a
process of its own (runners/isolated.py). Before that process loads anything of the model, it
calls `restrict`, which, where the kernel supports it, takes away for good:

- writing any file, making or removing files, folders, links, sockets or devices (Landlock);
  reading the files named `hidden` (the signing key), while everything else stays readable, so
  torch, its libraries and the model's own files load as usual;
- TCP connections and listening sockets (Landlock, ABI 4), and sockets of any family but
  AF_UNIX, running programs, tracing other processes and io_uring (seccomp);
- signals to, and abstract sockets of, processes outside the sandbox (Landlock, ABI 6).

Linux only (Landlock: kernel 5.13+; its TCP rules 6.7+; its scopes 6.12+); elsewhere, or where
the kernel lacks them, `restrict` applies what it can and says what that was, so the report
records it. No library: the three Landlock calls and one seccomp filter through ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

# Landlock (include/uapi/linux/landlock.h); the syscall numbers are the same on every arch.
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_MAKE_AND_REMOVE = sum(1 << bit for bit in range(4, 13))  # remove dir/file, make char/dir/reg/sock/fifo/block/sym
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the rights a rule on a file may carry
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2

READABLE = EXECUTE | READ_FILE | READ_DIR
# Character devices the model's libraries open for writing: /dev/null, and the GPU drivers' nodes.
DEVICE_NODES = (
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
    "/dev/kfd",
)
DEVICE_PATTERNS = ("/dev/nvidia", "/dev/dri")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none (another OS, an old kernel, or
    Landlock not enabled at boot)."""
    if sys.platform != "linux":
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(
        ctypes.c_long(_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
    )
    return max(int(version), 0)


def _fs_rights(abi: int) -> int:
    rights = EXECUTE | WRITE_FILE | READ_FILE | READ_DIR | _MAKE_AND_REMOVE
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def readable_except(hidden: Iterable[str | Path]) -> list[tuple[str, int]]:
    """Landlock rules that make every file readable but the `hidden` ones. Landlock only grants,
    so: every directory on the way to a hidden file may be listed (READ_DIR beneath it), and
    each of its other entries is readable whole. Symbolic links are left out: access through a
    link is checked at its target, which a rule of its own covers (or, for a hidden file, not)."""
    hidden_paths = {os.path.realpath(p) for p in hidden}
    if not hidden_paths:
        return [("/", READABLE)]
    on_the_way = {"/"}
    for path in hidden_paths:
        parent = os.path.dirname(path)
        while parent not in on_the_way:
            on_the_way.add(parent)
            parent = os.path.dirname(parent)
    rules = [(folder, READ_DIR) for folder in sorted(on_the_way)]
    for folder in sorted(on_the_way):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            full = os.path.join(folder, entry.name)
            if full in on_the_way or full in hidden_paths or entry.is_symlink():
                continue
            rules.append((full, READABLE))
    return rules


def _device_rules(abi: int) -> list[tuple[str, int]]:
    rights = READ_FILE | WRITE_FILE | (IOCTL_DEV if abi >= 5 else 0)
    found = [node for node in DEVICE_NODES if os.path.exists(node)]
    for pattern in DEVICE_PATTERNS:
        folder, stem = os.path.split(pattern)
        try:
            found += [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(stem)]
        except OSError:
            pass
    return [(node, rights) for node in sorted(set(found))]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _landlock(abi: int, rules: list[tuple[str, int]]) -> dict:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    handled = _fs_rights(abi)
    attr = _RulesetAttr(
        handled,
        (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
        (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(
        ctypes.c_long(_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)
    )
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset: " + os.strerror(ctypes.get_errno()))
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # gone since it was listed
            try:
                if not os.path.isdir(path):
                    rights &= _FILE_ONLY
                beneath = _PathBeneathAttr(rights & handled, fd)
                if (
                    libc.syscall(
                        ctypes.c_long(_ADD_RULE),
                        ctypes.c_int(ruleset),
                        ctypes.c_int(_RULE_PATH_BENEATH),
                        ctypes.byref(beneath),
                        ctypes.c_uint32(0),
                    )
                    < 0
                ):
                    code = ctypes.get_errno()
                    if code not in (errno.EINVAL, errno.EBADFD):  # a file system Landlock cannot tag
                        raise OSError(code, f"landlock_add_rule {path}: {os.strerror(code)}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(ctypes.c_long(_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self: " + os.strerror(ctypes.get_errno()))
    finally:
        os.close(ruleset)
    return {"files": True, "tcp": abi >= 4, "signals": abi >= 6}


# seccomp. What a model's process may not call: sockets of any family but AF_UNIX (EACCES);
# programs, tracing and other processes' memory, io_uring (its requests bypass seccomp), kernel
# modules and kexec, BPF and perf, mounts and namespaces (EPERM); clone3, whose flags a filter
# cannot read (ENOSYS: the C library falls back to clone, whose namespace flags are refused).
_REFUSED = (
    "execve",
    "execveat",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "setns",
    "unshare",
    "keyctl",
    "add_key",
    "request_key",
    "reboot",
    "swapon",
    "swapoff",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "fsopen",
    "fsmount",
    "move_mount",
    "open_tree",
    "fsconfig",
    "fspick",
    "mount_setattr",
)
# (audit arch, syscall numbers) per machine (asm/unistd_64.h; asm-generic/unistd.h for aarch64).
_SYSCALLS = {
    "x86_64": (
        0xC000003E,
        {
            "socket": 41,
            "clone": 56,
            "clone3": 435,
            "execve": 59,
            "execveat": 322,
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            "kexec_load": 246,
            "kexec_file_load": 320,
            "bpf": 321,
            "perf_event_open": 298,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "chroot": 161,
            "setns": 308,
            "unshare": 272,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "reboot": 169,
            "swapon": 167,
            "swapoff": 168,
            "userfaultfd": 323,
            "open_by_handle_at": 304,
            "name_to_handle_at": 303,
            "fsopen": 430,
            "fsmount": 432,
            "move_mount": 429,
            "open_tree": 428,
            "fsconfig": 431,
            "fspick": 433,
            "mount_setattr": 442,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "socket": 198,
            "clone": 220,
            "clone3": 435,
            "execve": 221,
            "execveat": 281,
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            "kexec_load": 104,
            "kexec_file_load": 294,
            "bpf": 280,
            "perf_event_open": 241,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "chroot": 51,
            "setns": 268,
            "unshare": 97,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "reboot": 142,
            "swapon": 224,
            "swapoff": 225,
            "userfaultfd": 282,
            "open_by_handle_at": 265,
            "name_to_handle_at": 264,
            "fsopen": 430,
            "fsmount": 432,
            "move_mount": 429,
            "open_tree": 428,
            "fsconfig": 431,
            "fspick": 433,
            "mount_setattr": 442,
        },
    ),
}
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_X32_BIT = 0x40000000
_AF_UNIX = 1
# clone flags that make new namespaces (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME)
_CLONE_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80


def _seccomp_program(arch: int, numbers: dict[str, int]) -> list[tuple[int, int, int, int]]:
    """A classic BPF filter over seccomp_data {nr @0, arch @4, ip @8, args[6] @16}: another arch
    (or x32) -> EPERM for everything; then the rules above; the rest allowed."""
    deny = _RET_ERRNO | errno.EPERM
    program = [
        (_LD_W_ABS, 0, 0, 4),  # arch
        (_JEQ_K, 1, 0, arch),
        (_RET_K, 0, 0, deny),
        (_LD_W_ABS, 0, 0, 0),  # nr
        (_JGE_K, 0, 1, _X32_BIT),
        (_RET_K, 0, 0, deny),
    ]
    for name in _REFUSED:
        program += [(_JEQ_K, 0, 1, numbers[name]), (_RET_K, 0, 0, deny)]
    program += [(_JEQ_K, 0, 1, numbers["clone3"]), (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    program += [
        (_JEQ_K, 0, 3, numbers["clone"]),
        (_LD_W_ABS, 0, 0, 16),  # args[0]: the flags (low 32 bits, little-endian)
        (_JSET_K, 0, 1, _CLONE_NAMESPACES),
        (_RET_K, 0, 0, deny),
        (_LD_W_ABS, 0, 0, 0),  # nr again
        (_JEQ_K, 0, 3, numbers["socket"]),
        (_LD_W_ABS, 0, 0, 16),  # args[0]: the address family
        (_JEQ_K, 1, 0, _AF_UNIX),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EACCES),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]
    return program


def _seccomp() -> bool:
    machine = platform.machine()
    if sys.platform != "linux" or machine not in _SYSCALLS or sys.byteorder != "little":
        return False
    arch, numbers = _SYSCALLS[machine]
    program = _seccomp_program(arch, numbers)
    packed = b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
    filters = ctypes.create_string_buffer(packed, len(packed))

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = _Prog(len(program), ctypes.cast(filters, ctypes.c_void_p))
    libc = _libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0


_PR_CAPBSET_DROP, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 24, 47, 4
_CAPABILITY_V3 = 0x20080522


def _drop_capabilities() -> bool:
    """Give up every capability (a process of root keeps root's files, not root's powers: no
    raw devices, no other users' files, no kernel modules)."""
    if sys.platform != "linux":
        return False
    libc = _libc()
    for capability in range(64):
        libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0)  # fails past the last one: ignored
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_V3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable, twice (64 bits): all zero
    machine_call = {"x86_64": 126, "aarch64": 91}.get(platform.machine())
    if machine_call is None:
        return False
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(ctypes.c_long(machine_call), header, data) == 0


def _other_processes() -> list[str]:
    """/proc's other processes (their memory maps, environment, open files) and the kernel's
    memory image: not a model's business."""
    own = str(os.getpid())
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    return [f"/proc/{name}" for name in entries if name.isdigit() and name != own] + ["/proc/kcore"]


SCRATCH = READABLE | WRITE_FILE | _MAKE_AND_REMOVE | TRUNCATE


def restrict(hidden: Iterable[Path] = (), scratch: Path | None = None) -> dict:
    """Sandbox this process for good (see the module's text). Returns what was applied, for the
    report: {"landlock_abi", "files", "tcp", "signals", "seccomp", "capabilities"} — False where
    the kernel or the platform could not; "error" when a call failed. `scratch`: the one folder
    the process may write in (its own temporary folder, which prunegate removes afterwards)."""
    applied: dict = {
        "landlock_abi": 0,
        "files": False,
        "tcp": False,
        "signals": False,
        "seccomp": False,
        "capabilities": False,
    }
    abi = landlock_abi()
    applied["landlock_abi"] = abi
    if abi > 0:
        # Devices are not files to read (a raw disk holds every file, key included): only the
        # nodes libraries need are allowed, read-write.
        unseen: list[str | Path] = [*hidden, "/dev", *_other_processes()]
        try:
            writable = [(os.path.realpath(scratch), SCRATCH)] if scratch is not None else []
            applied.update(_landlock(abi, readable_except(unseen) + _device_rules(abi) + writable))
        except OSError as exc:
            applied["error"] = str(exc)
    applied["capabilities"] = _drop_capabilities()
    try:
        applied["seccomp"] = _seccomp()
    except OSError as exc:
        applied["error"] = str(exc)
    return applied


def complete(applied: dict) -> bool:
    """Whether every restriction took effect (runtime.isolation: strict asks for that)."""
    return all(applied.get(name) for name in ("files", "tcp", "seccomp"))


def describe(applied: dict) -> str:
    """One line for the console: what the sandbox holds back, or what it could not."""
    if complete(applied):
        return "sandboxed: no file writes, no network, no key file, no programs"
    missing = [
        what
        for name, what in (
            ("files", "file writes and key reads (Landlock)"),
            ("tcp", "TCP (Landlock ABI 4)"),
            ("seccomp", "sockets and programs (seccomp)"),
        )
        if not applied.get(name)
    ]
    return "not sandboxed against " + ", ".join(missing)


def set_parent_death_signal() -> None:
    """Die with the parent (Linux): a model process never outlives the run."""
    if sys.platform == "linux":
        _libc().prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL


def make_undumpable() -> None:
    """Keep other processes of this user (a model's among them) from reading this process's
    memory and environment (/proc/<pid>/mem, environ; ptrace): PR_SET_DUMPABLE 0 (Linux)."""
    if sys.platform == "linux":
        _libc().prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
