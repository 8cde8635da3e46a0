"""Run a command under a unit file's seccomp settings, applied the way systemd applies them.

    python tests/sandbox.py systemd/streamerd.service -- streamerd start ...

Reads `RestrictAddressFamilies=`, `MemoryDenyWriteExecute=` and `SystemCallFilter=` from
the unit and installs seccomp filters (libseccomp, as systemd does) before exec'ing the command:

- address families: `socket()` with a family not listed fails with EAFNOSUPPORT (systemd
  filters `socket()` only, not `socketpair()`);
- write-or-execute: `mmap()` asking for writable and executable memory, `mprotect()` and
  `pkey_mprotect()` adding execute, `shmat()` with SHM_EXEC fail with EPERM;
- system calls: anything outside the allowed sets kills the process with SIGSYS (systemd's
  default when `SystemCallErrorNumber=` is unset); `~`-prefixed lines deny, later lines win.

The syscall groups (`@system-service`, ...) come from this machine's `systemd-analyze
syscall-filter`, i.e. its systemd version's definition. This is not a systemd: no user,
namespaces, capabilities or mounts, only the seccomp filters. Run as root, it also allows
the chown calls (see `apply`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
AF_MAX = 64  # above every family the kernel knows; anything from here up is refused too


def SCMP_ACT_ERRNO(code: int) -> int:  # noqa: N802 - libseccomp's macro name
    return 0x00050000 | (code & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def unit_settings(unit: Path, key: str) -> list[str]:
    """Every value of `key=` in the unit's [Service] section, in order (keys accumulate)."""
    values, section = [], None
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and line.partition("=")[0].strip() == key:
            values.append(line.partition("=")[2].strip())
    return values


def allowed_families(unit: Path) -> set[int] | None:
    """The allow-list of `RestrictAddressFamilies=` as numbers; None when the unit sets none."""
    values = unit_settings(unit, "RestrictAddressFamilies")
    if not values:
        return None
    families: set[int] = set()
    for value in values:
        if value.startswith("~") or value == "none":
            raise SystemExit(f"sandbox: only an allow-list is supported, not {value!r}")
        families |= {int(getattr(socket, name)) for name in value.split()}
    return families


@cache
def syscall_groups() -> dict[str, list[str]]:
    """`systemd-analyze syscall-filter`: group → its entries (syscalls and @groups)."""
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif not line.startswith(" "):
            current = None  # "# Unlisted system calls" and the like
        elif current is not None and not line.strip().startswith("#") and line.strip():
            current.append(line.strip())
    return groups


def expand(names: list[str]) -> set[str]:
    result: set[str] = set()
    for name in names:
        result |= expand(syscall_groups()[name]) if name.startswith("@") else {name}
    return result


def allowed_syscalls(unit: Path) -> set[str] | None:
    """`SystemCallFilter=` lines folded as systemd folds them; None when the unit sets none.

    The first line decides the mode; in allow mode a `~` line removes its calls again.
    """
    values = unit_settings(unit, "SystemCallFilter")
    if not values:
        return None
    if values[0].startswith("~"):
        raise SystemExit("sandbox: a deny-list first SystemCallFilter= is not supported")
    allowed: set[str] = set()
    for value in values:
        if value.startswith("~"):
            allowed -= expand(value[1:].split())
        else:
            allowed |= expand(value.split())
    return allowed


def _lib() -> ctypes.CDLL:
    path = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    lib = ctypes.CDLL(path, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")


def _load(lib: ctypes.CDLL, default: int, rules: list[tuple[int, int, list[ArgCmp]]]) -> None:
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        for action, nr, conditions in rules:
            array = (ArgCmp * len(conditions))(*conditions)
            _check(lib.seccomp_rule_add_array(ctx, action, nr, len(conditions), array), f"rule for syscall {nr}")
        _check(lib.seccomp_load(ctx), "seccomp_load")  # also sets no_new_privs, as NoNewPrivileges= does
    finally:
        lib.seccomp_release(ctx)


def apply(unit: Path) -> None:
    """Install the unit's filters on this process; they survive exec and cover every thread."""
    lib = _lib()
    nr = lib.seccomp_syscall_resolve_name
    refusals: list[tuple[int, int, list[ArgCmp]]] = []
    families = allowed_families(unit)
    if families is not None:
        no_family = SCMP_ACT_ERRNO(errno.EAFNOSUPPORT)
        refusals += [(no_family, nr(b"socket"), [ArgCmp(0, SCMP_CMP_EQ, n, 0)]) for n in range(AF_MAX) if n not in families]
        refusals.append((no_family, nr(b"socket"), [ArgCmp(0, SCMP_CMP_GE, AF_MAX, 0)]))
    if unit_settings(unit, "MemoryDenyWriteExecute")[-1:] == ["yes"]:
        eperm, wx = SCMP_ACT_ERRNO(errno.EPERM), PROT_WRITE | PROT_EXEC
        refusals.append((eperm, nr(b"mmap"), [ArgCmp(2, SCMP_CMP_MASKED_EQ, wx, wx)]))
        refusals += [(eperm, nr(name), [ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC)])
                     for name in (b"mprotect", b"pkey_mprotect")]
        refusals.append((eperm, nr(b"shmat"), [ArgCmp(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)]))
    if refusals:
        _load(lib, SCMP_ACT_ALLOW, refusals)
    syscalls = allowed_syscalls(unit)
    if syscalls is not None and os.geteuid() == 0:
        # The units run as User=naive; these tests may run as root, and SQLite running as
        # root fchown()s every journal/WAL file it creates to the database's owner, which it
        # never does for any other user. Dropping to another uid is not possible here (the
        # interpreter may live under /root), so the chown calls stay allowed for root only.
        syscalls |= expand(["@chown"])
    if syscalls is not None:
        numbers = {lib.seccomp_syscall_resolve_name(name.encode()) for name in syscalls}
        numbers.discard(-1)  # __NR_SCMP_ERROR: a call this architecture does not have
        # Filters stack: the kernel takes the strictest answer, so a socket() or mmap()
        # refused above stays refused although the call itself is allowed here.
        _load(lib, SCMP_ACT_KILL_PROCESS, [(SCMP_ACT_ALLOW, nr, []) for nr in sorted(numbers)])


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: sandbox.py UNIT_FILE -- COMMAND [ARG...]")
    apply(Path(argv[0]))
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
