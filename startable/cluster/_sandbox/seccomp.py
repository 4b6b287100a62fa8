"""A seccomp-bpf filter for the child: system calls refused by the kernel, for good.

A filter is kept across `fork` and `execve` and cannot be removed, so every
program the service starts is held to it too; it needs `no_new_privs` (set
before it is installed). What it refuses fails with `EACCES`
(`PermissionError` in Python), as Landlock's refusals do:

* without `network`: creating any socket but a Unix stream or seqpacket one
  (`socket` and `socketpair` on `AF_INET`, `AF_INET6`, `AF_PACKET`,
  `AF_NETLINK`..., or Unix datagrams, which can be sent to any named
  socket); `connect`, `bind` and `listen` on any socket, Unix ones too. The
  Unix sockets the child already holds (its port to the controller, its data
  plane) and socket pairs (which trio and asyncio use to wake themselves up)
  keep working;
* without `write` grants: every change of a file's mode, owner, times,
  extended attributes or inode flags (`chmod`, `chown`, `utime(n)s`,
  `setxattr`, `removexattr`, the `FS_IOC_SETFLAGS` and `FS_IOC_FSSETXATTR`
  ioctls, `file_setattr`), by path or by descriptor: Landlock does not cover
  these calls, and a filter cannot read the path a call names, so it can
  refuse them only all at once;
* whenever a filter is installed: io_uring, whose operations (sockets,
  extended attributes) would not pass through the filter.

The filter first checks the architecture the call was made with: a call
through another system call table (32-bit `int 0x80` on x86-64, the x32 ABI,
AArch32 on arm64) kills the process, as its numbers would mean other calls.
Only x86-64 and arm64 (little-endian, 64-bit interpreters) have tables here;
elsewhere, and on a kernel without seccomp filters, no filter is installed,
and `apply` reports none.
"""

from __future__ import annotations

import ctypes
import platform
import struct
import sys
from collections.abc import Mapping
from typing import Final, TypeAlias

import attrs

_PR_SET_SECCOMP: Final = 22
_SECCOMP_MODE_FILTER: Final = 2

_RET_KILL_PROCESS: Final = 0x8000_0000
_RET_ERRNO: Final = 0x0005_0000
_RET_ALLOW: Final = 0x7FFF_0000
_EACCES: Final = 13

# BPF instructions (class | size | mode, or class | op | source).
_LOAD_WORD: Final = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JUMP_EQUAL: Final = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JUMP_AT_LEAST: Final = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_AND: Final = 0x54  # BPF_ALU | BPF_AND | BPF_K
_RETURN: Final = 0x06  # BPF_RET | BPF_K

# Offsets in struct seccomp_data: nr, arch, instruction_pointer, args[6]; the
# low half of a 64-bit argument comes first on the little-endian machines here.
_NR: Final = 0
_ARCH: Final = 4


def _argument(index: int) -> int:
    return 16 + 8 * index


_AF_UNIX: Final = 1
_SOCK_STREAM: Final = 1
_SOCK_SEQPACKET: Final = 5
_SOCK_TYPE_MASK: Final = 0xF  # the rest of socket(2)'s type is SOCK_NONBLOCK, SOCK_CLOEXEC
#: FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS (chattr), FS_IOC_FSSETXATTR (xfs_io chattr).
_SET_FLAGS_IOCTLS: Final = (0x4008_6602, 0x4004_6602, 0x401C_5820)

_METADATA: Final = (
    "chmod",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "chown",
    "lchown",
    "fchown",
    "fchownat",
    "utime",
    "utimes",
    "futimesat",
    "utimensat",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "setxattrat",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    "removexattrat",
    "file_setattr",
)
_SOCKET_LINKS: Final = ("connect", "bind", "listen")
_IO_URING: Final = ("io_uring_setup", "io_uring_enter", "io_uring_register")

# Calls added to every table at once since Linux 5.1 share their numbers.
_COMMON: Final = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "fchmodat2": 452,
    "setxattrat": 463,
    "removexattrat": 466,
    "file_setattr": 469,
}


@attrs.frozen
class _Table:
    audit_arch: int
    numbers: Mapping[str, int]
    #: Numbers at or above this are another ABI sharing the architecture (x32).
    foreign_from: int | None = None


_TABLES: Final = {
    "x86_64": _Table(
        audit_arch=0xC000_003E,
        foreign_from=0x4000_0000,
        numbers={
            **_COMMON,
            "ioctl": 16,
            "socket": 41,
            "connect": 42,
            "bind": 49,
            "listen": 50,
            "socketpair": 53,
            "chmod": 90,
            "fchmod": 91,
            "chown": 92,
            "fchown": 93,
            "lchown": 94,
            "utime": 132,
            "setxattr": 188,
            "lsetxattr": 189,
            "fsetxattr": 190,
            "removexattr": 197,
            "lremovexattr": 198,
            "fremovexattr": 199,
            "utimes": 235,
            "fchownat": 260,
            "futimesat": 261,
            "fchmodat": 268,
            "utimensat": 280,
            "seccomp": 317,
        },
    ),
    "aarch64": _Table(  # the generic table: no chmod, chown, utime(s) by path
        audit_arch=0xC000_00B7,
        numbers={
            **_COMMON,
            "setxattr": 5,
            "lsetxattr": 6,
            "fsetxattr": 7,
            "removexattr": 14,
            "lremovexattr": 15,
            "fremovexattr": 16,
            "ioctl": 29,
            "fchmod": 52,
            "fchmodat": 53,
            "fchownat": 54,
            "fchown": 55,
            "utimensat": 88,
            "socket": 198,
            "socketpair": 199,
            "bind": 200,
            "listen": 201,
            "connect": 203,
            "seccomp": 277,
        },
    ),
}


def _table() -> _Table | None:
    """The system call table this interpreter calls through, if one is known here."""
    if not sys.platform.startswith("linux") or sys.byteorder != "little":
        return None
    if struct.calcsize("P") != 8:  # a 32-bit interpreter on a 64-bit kernel
        return None
    return _TABLES.get(platform.machine())


_SECCOMP_GET_ACTION_AVAIL: Final = 2


def _kernel_has_filters(table: _Table) -> bool:
    """Whether the kernel knows the two verdicts the filter returns (Linux 4.14+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for action in (_RET_ERRNO, _RET_KILL_PROCESS):
        verdict = ctypes.c_uint32(action)
        number = table.numbers["seccomp"]
        if libc.syscall(number, _SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(verdict)):
            return False  # ENOSYS: no seccomp; EINVAL: no filters; EOPNOTSUPP: not that one
    return True


class _Instruction(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


Target: TypeAlias = str | None  # a label to jump to, or None: the next instruction


@attrs.define
class _Assembler:
    """Straight-line classic BPF with forward jumps to named labels."""

    code: list[tuple[int, Target, Target, int]] = attrs.field(factory=list)
    labels: dict[str, int] = attrs.field(factory=dict)

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def load(self, offset: int) -> None:
        self.code.append((_LOAD_WORD, None, None, offset))

    def mask(self, value: int) -> None:
        self.code.append((_AND, None, None, value))

    def jump_if(
        self, value: int, then: Target, otherwise: Target = None, *, op: int = _JUMP_EQUAL
    ) -> None:
        self.code.append((op, then, otherwise, value))

    def ret(self, value: int) -> None:
        self.code.append((_RETURN, None, None, value))

    def assemble(self) -> ctypes.Array[_Instruction]:
        program = (_Instruction * len(self.code))()
        for at, (code, then, otherwise, k) in enumerate(self.code):
            offsets = []
            for target in (then, otherwise):
                offset = 0 if target is None else self.labels[target] - at - 1
                if not 0 <= offset <= 255:
                    raise ValueError(f"seccomp: jump to {target} out of reach at {at}")
                offsets.append(offset)
            program[at] = _Instruction(code, offsets[0], offsets[1], k)
        return program


def _build(table: _Table, *, network: bool, write: bool) -> _Assembler:
    numbers = table.numbers
    refused = [*_IO_URING]
    if not network:
        refused += _SOCKET_LINKS
    if not write:
        refused += _METADATA
    bpf = _Assembler()
    bpf.load(_ARCH)
    bpf.jump_if(table.audit_arch, None, "kill")
    bpf.load(_NR)
    if table.foreign_from is not None:
        bpf.jump_if(table.foreign_from, "kill", op=_JUMP_AT_LEAST)
    for name in refused:
        if name in numbers:  # the generic table has no chmod(2), for one
            bpf.jump_if(numbers[name], "deny")
    if not network:
        bpf.jump_if(numbers["socket"], "socket")
        bpf.jump_if(numbers["socketpair"], "socket")
    if not write:
        bpf.jump_if(numbers["ioctl"], "ioctl")
    bpf.ret(_RET_ALLOW)
    if not network:
        bpf.label("socket")  # socket(family, type, protocol), socketpair(family, type, ...)
        bpf.load(_argument(0))
        bpf.jump_if(_AF_UNIX, None, "deny")
        bpf.load(_argument(1))
        bpf.mask(_SOCK_TYPE_MASK)
        bpf.jump_if(_SOCK_STREAM, "allow")
        bpf.jump_if(_SOCK_SEQPACKET, "allow", "deny")
    if not write:
        bpf.label("ioctl")  # ioctl(fd, request, ...): request is an unsigned int
        bpf.load(_argument(1))
        for request in _SET_FLAGS_IOCTLS:
            bpf.jump_if(request, "deny")
    bpf.label("allow")  # every jump goes forward: the verdicts come last
    bpf.ret(_RET_ALLOW)
    bpf.label("deny")
    bpf.ret(_RET_ERRNO | _EACCES)
    bpf.label("kill")
    bpf.ret(_RET_KILL_PROCESS)
    return bpf


def available() -> bool:
    """Whether a filter can be installed here: a known table and a kernel with filters."""
    table = _table()
    return table is not None and _kernel_has_filters(table)


def install(*, network: bool, write: bool) -> str | None:
    """Install the filter that `network` and `write` call for; say what it refuses.

    Returns None when there is nothing to refuse (both granted), no table for
    this machine, or a kernel without seccomp filters (or older than 4.14).
    `no_new_privs` must be set already.

    Raises:
        OSError: if the kernel refuses the filter (no seccomp, or no
            `no_new_privs`).
    """
    table = _table()
    if table is None or (network and write) or not _kernel_has_filters(table):
        return None
    instructions = _build(table, network=network, write=write).assemble()
    program = _Program(len(instructions), instructions)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    refused = ["io_uring"]
    if not network:
        refused.insert(0, "sockets but Unix stream ones, connect, bind, listen")
    if not write:
        refused.insert(0, "file mode, owner, times and attributes")
    return "seccomp: " + "; ".join(refused)
