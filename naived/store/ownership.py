"""One owner per state directory: the single-host lease.

Two trees on one state directory would autostart the same symbols from the same stores and
send the same client order ids twice. So `naived start` takes the state directory before
anything else touches it, and a second naived on it refuses to start, naming the holder.

The interface is a lease (`Ownership`: acquire, holder, release) so that the multi-host store
(issue 23: a PostgreSQL row with an owner, an expiry and a fencing token) can be another
implementation of it. The single-host one is `StateDirLock`:

- `<state_dir>/naived.lock`: an exclusive `flock` held for the tree's whole lifetime. The kernel
  drops it when the last descriptor of its open file description closes, so a `kill -9` leaves
  no stale lock. The file's text names the holder (pid, host, token, since), for people and for
  `naivectl`; the flock, not the text, says whether it is held.
- Every process of the tree keeps the root's descriptor (process.inherit_in_tree): the lock is
  released only when the last process of the tree is gone, not when the root is. A root killed
  with -9 takes its children with it (PR_SET_PDEATHSIG, level by level, in milliseconds), but
  until the last trader has died it may still be sending an order; a new root must not start
  trading the same store meanwhile. A new root that finds the lock held by a dead root waits
  (`DEAD_TREE_WAIT`) for those remains to die instead of refusing.
- `<state_dir>/naived.token`: a counter that only grows, one step per acquisition, replaced
  atomically and fsynced before the tree starts. It is the fencing token the cluster lease will
  carry; here it names the tree in the log.

Children never call `release()` or `flock(LOCK_UN)` on the inherited descriptor: it is one open
file description shared by the whole tree, and unlocking it would unlock it for every process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Protocol

import msgspec

LOCK_NAME = "naived.lock"
TOKEN_NAME = "naived.token"
DEAD_TREE_WAIT = 10.0  # seconds a new root waits for the processes of a dead root's tree to die
_POLL = 0.02


class Holder(msgspec.Struct, frozen=True):
    """Who holds (or last held) the state directory, as the lock file says."""

    pid: int
    host: str
    token: int
    since: float  # wall clock of the acquisition


class Held(Exception):
    """Another tree holds the state directory: one line for the user."""

    def __init__(self, message: str, holder: Holder | None) -> None:
        super().__init__(message)
        self.holder = holder


class Ownership(Protocol):
    """A lease on the state a tree trades from. `acquire` returns this holder (with its token)
    or raises `Held`; `holder` tells who holds it now (None: nobody); `release` gives it up."""

    def acquire(self) -> Holder: ...

    def holder(self) -> Holder | None: ...

    def release(self) -> None: ...


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Holder).decode


class StateDirLock:
    """The single-host `Ownership`: an flock on `<state_dir>/naived.lock` (module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_NAME
        self.token_path = state_dir / TOKEN_NAME
        self.fd: int | None = None  # ours while we hold it; every process of the tree keeps it

    # --- the holder's side ----------------------------------------------------------------

    def acquire(self, wait_for_dead_tree: float = DEAD_TREE_WAIT) -> Holder:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_CLOEXEC: a program some process of the tree may exec does not hold the tree's lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + wait_for_dead_tree
            while not _try_lock(fd, fcntl.LOCK_EX):
                recorded = _read(fd)
                # A live holder (or one on another host, which we cannot check): refuse at once.
                # A dead root's children still hold it for a moment: wait for them, bounded.
                # (A reader's momentary shared lock, naivectl's probe, also lands here: it passes.)
                if recorded is not None and _alive(recorded, self.path) or time.monotonic() >= deadline:
                    raise Held(self._held_message(recorded), recorded)
                time.sleep(_POLL)
            token = self._next_token()
            me = Holder(os.getpid(), socket.gethostname(), token, time.time())
            text = _encode(me) + b"\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
        except BaseException:
            os.close(fd)  # drops the lock if we took it
            raise
        self.fd = fd
        return me

    def release(self) -> None:
        """Only the root, at its very end (the exit would release it anyway)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _next_token(self) -> int:
        """The previous acquisition's token + 1, durable before the tree starts (fsync, rename,
        fsync of the directory): a power cut cannot make it go back."""
        try:
            previous = int(self.token_path.read_text().strip() or "0")
        except FileNotFoundError:
            previous = 0
        except ValueError as exc:  # never start again from 0 over a counter we cannot read
            raise Held(f"{self.token_path} is unreadable ({exc}); restore it or write a number above the last "
                       "token in the log, then start again", None) from None
        token = previous + 1
        tmp = self.token_path.with_name(f"{TOKEN_NAME}.tmp")
        with open(tmp, "w") as f:
            f.write(f"{token}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.token_path)
        dir_fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return token

    def _held_message(self, recorded: Holder | None) -> str:
        if recorded is None:
            return f"{self.state_dir} is held by another process (lock file {self.path}); not starting a second naived"
        if _alive(recorded, self.path):
            return (f"{self.state_dir} is held by naived pid {recorded.pid} on {recorded.host} since "
                    f"{_when(recorded.since)} (lock file {self.path}); not starting a second naived on it")
        others = processes_holding(self.path)
        return (f"{self.state_dir} is still held by processes of naived pid {recorded.pid}, which is gone: "
                f"pids {' '.join(map(str, others)) or '?'} (lock file {self.path}); they did not die within "
                f"{DEAD_TREE_WAIT:g}s; not starting a second naived")

    # --- anyone's view --------------------------------------------------------------------

    def holder(self) -> Holder | None:
        """Who holds the state directory now; None when nobody does. Creates nothing (naivectl
        calls this). A holder whose lock file names nobody readable is `Holder(0, "?", 0, 0)`."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            # A shared lock for an instant: granted only when no tree holds the exclusive one.
            if _try_lock(fd, fcntl.LOCK_SH):
                return None
            return _read(fd) or Holder(0, "?", 0, 0.0)
        finally:
            os.close(fd)  # drops the shared lock if we took it


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _read(fd: int) -> Holder | None:
    try:
        return _decode(os.pread(fd, 4096, 0).strip())
    except (msgspec.DecodeError, msgspec.ValidationError, OSError):
        return None  # empty (a holder between open and write) or not ours


def _alive(holder: Holder, lock_path: Path) -> bool:
    """The recorded holder still runs and holds the lock file open (not a reused pid). Another
    host's process cannot be checked from here: assumed alive."""
    if holder.host != socket.gethostname():
        return True
    if holder.pid <= 0:
        return False
    return _holds_open(holder.pid, lock_path)


def _holds_open(pid: int, path: Path, unseen: bool = True) -> bool:
    """`unseen`: the answer for a process whose descriptors we may not read (another user's)."""
    try:
        target = os.stat(path)
        names = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    except PermissionError:
        return unseen
    for name in names:
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def processes_holding(path: Path) -> list[int]:
    """PIDs (readable by us) with `path` open: what is left of a tree whose root died."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and _holds_open(int(entry), path, unseen=False):
            found.append(int(entry))
    return sorted(found)


def _when(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))
