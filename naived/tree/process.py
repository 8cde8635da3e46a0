"""Fork plumbing: how a child of the tree becomes a process of its own, and what it leaves behind.

The supervising loop (`supervisor.py`) decides when a child starts and what its exit means; this
module does the system work around `fork()` without `exec`:

- `fork_child`: gc frozen and the handled signals blocked across `fork()`; in the child, signal
  handlers reset, a process group if asked, death with the parent (PR_SET_PDEATHSIG), every
  inherited descriptor closed but stdio, the tree's own and the ones it keeps (close_range),
  process title and log name; the child always ends with `os._exit`.
- Last words: a pipe per child; what the child says before it exits (`last_words`, its
  SystemExit message, its crash) is read by the parent when it reaps it (`read_words`).
- `SignalQueue`: signals queued by their handlers and handled by the loop at a safe point.
- `merge_identical_pages` (KSM) and `inherit_in_tree` (the state directory's lock), inherited by
  every process forked later.

A forked child copies every page its code writes (CPython's reference counts), so the path it
runs here is kept short: C-level signal calls, ctypes functions resolved in the parent.
"""

from __future__ import annotations

# The C module under `signal` (see _HANDLED_NUMBERS). type: ignore: typeshed has no stub for the private `_signal`
# (its functions are `signal`'s, without the enum wrapping that importing them from `signal` would bring back).
import _signal as _csignal  # type: ignore[import-not-found]
import ctypes
import gc
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import setproctitle

from naived.ops.log import rename_process_logs

log = logging.getLogger(__name__)

WORDS_MAX = 1000  # bytes of last words kept: one line for status and logs

# Signals a supervising process handles; blocked across fork so a child cannot be killed by one
# in the instant before it installs its own handlers (they stay pending until then).
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)

_PR_SET_PDEATHSIG = 1
_PR_SET_MEMORY_MERGE = 67  # Linux >= 6.4
KSM_RUN = Path("/sys/kernel/mm/ksm/run")
_libc = ctypes.CDLL(None, use_errno=True)
# Resolved here, in the parent, once: ctypes builds a function object on first use, and a forked
# child that did it would allocate (and so copy pages) for nothing.
_prctl = _libc.prctl
_close_range = getattr(_libc, "close_range", None)
# The fork path calls `_csignal` (the C module under `signal`) directly: `signal`'s wrappers map
# every number to its enum member, enum code that each forked child would run and so copy
# (~0.3 MiB private per process with the above, measured in a child of the root).
_HANDLED_NUMBERS = tuple(int(s) for s in HANDLED)
_last_words_fd = -1  # in a forked child: the write end of its last-words pipe
# Descriptors every descendant keeps (inherit_in_tree); fork copies this set with the numbers.
_tree_fds: set[int] = set()


def fork_child(title: str, run: Callable[[], int], new_process_group: bool, supervises: bool,
               keep_fds: tuple[int, ...]) -> tuple[int, int]:
    """Fork a child that runs `run` and exits with its status; returns (pid, the read end of its
    last-words pipe) in the parent only. `supervises`: it runs a supervising loop, whose
    SignalQueue unblocks the handled signals once it handles them."""
    parent = os.getpid()
    words_read, words_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    # Freeze the parent's objects so a collection in the child does not touch (and so copy)
    # every inherited page, nor finalise inherited sockets.
    gc.freeze()
    mask = _csignal.pthread_sigmask(_csignal.SIG_BLOCK, _HANDLED_NUMBERS)
    pid = os.fork()
    if pid == 0:
        _run_child(title, run, new_process_group, supervises, keep_fds, parent, words_write)
    _csignal.pthread_sigmask(_csignal.SIG_SETMASK, mask)
    gc.unfreeze()
    os.close(words_write)
    return pid, words_read


def _run_child(title: str, run: Callable[[], int], new_process_group: bool, supervises: bool,
               keep_fds: tuple[int, ...], parent: int, words_fd: int) -> None:
    """In the forked child: become a clean process of our own, run, and never return."""
    global _last_words_fd
    _last_words_fd = words_fd
    code = 1
    try:
        for sig in (*_HANDLED_NUMBERS, _csignal.SIGCHLD):
            _csignal.signal(sig, _csignal.SIG_DFL)
        _csignal.set_wakeup_fd(-1)
        if new_process_group:
            os.setpgid(0, 0)
        # Die with the parent; if it already died between fork() and here, prctl comes too late.
        die_with_parent()
        if os.getppid() != parent:
            os._exit(1)
        # The parent's descriptors (its ZeroMQ context, pidfds, databases) are not ours; the
        # tree's own (its state directory's lock) are.
        _close_fds_except({0, 1, 2, words_fd, *keep_fds, *_tree_fds})
        setproctitle.setproctitle(f"naive: {title}")
        rename_process_logs(title)
        if not supervises:  # a supervisor's SignalQueue unblocks them once it handles them
            _csignal.pthread_sigmask(_csignal.SIG_UNBLOCK, _HANDLED_NUMBERS)
        code = run()
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        else:
            last_words(str(exc.code))
            log.error("%s: %s", title, exc.code)
            code = 1
    except BaseException as exc:
        log.exception("%s crashed", title)
        last_words(f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        os._exit(code)


def _close_fds_except(keep: set[int]) -> None:
    """Close every descriptor not in `keep`. close_range(2) is one syscall per gap; os.closerange
    loops over every possible descriptor (0.66 ms for 20000 here, on the restart path)."""
    low = 0
    for fd in sorted(keep) + [0xFFFFFFFF + 1]:
        if fd > low and (_close_range is None or _close_range(low, fd - 1, 0) != 0):
            _close_slowly(low, fd - 1)
        low = fd + 1


def _close_slowly(low: int, high: int) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if low <= fd <= high:
            try:
                os.close(fd)
            except OSError:
                pass  # the descriptor of the listing itself, already gone


def inherit_in_tree(fd: int) -> None:
    """Every process forked from here on, at every level, keeps `fd` open: the state directory's
    lock (naived/store/ownership.py) is then held until the tree's last process is gone, not only while
    the root lives. A child must never unlock or close it: the lock is the whole tree's."""
    _tree_fds.add(fd)


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG(SIGKILL) for this process: it dies when the thread that forked it does.
    Forked children get it in `_run_child`; tools that start whole daemons (the demo, a backtest
    through the tree, the tests) pass it as `preexec_fn`, so a tool killed with -9 leaves none."""
    _prctl(_PR_SET_PDEATHSIG, _csignal.SIGKILL, 0, 0, 0)


def merge_identical_pages() -> str:
    """Offer this process's memory, and so every child it forks later, to the kernel's samepage
    merging (KSM, `PR_SET_MEMORY_MERGE`); returns one line saying what it did, for the log.

    Why: a forked CPython copies every inherited page it writes, and its siblings write the same
    pages the same way (reference counts, the same bytecode specialised alike, the same objects
    allocated), so thousands of traders hold thousands of identical copies (docs/benchmarks.md).
    KSM merges them back. Since Linux 6.4 a whole process opts in with one call, inherited by the
    children it forks (before, only `madvise` per mapping). The host decides whether KSM runs at
    all (`/sys/kernel/mm/ksm/run`); its scanner's CPU is the price, measured in docs/benchmarks.md."""
    if _prctl(_PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
        return f"memory merge: the kernel refused it ({os.strerror(ctypes.get_errno())}; Linux >= 6.4 with KSM needed)"
    try:
        running = KSM_RUN.read_text().strip() == "1"
    except OSError:
        running = False
    if running:
        return "memory merge: on (the host's KSM is running)"
    return f"memory merge: offered, but the host's KSM is not running ({KSM_RUN} is not 1): nothing is merged"


def last_words(message: str) -> None:
    """In a forked child: tell the parent why we are about to exit (one line, kept short)."""
    if _last_words_fd < 0 or not message:
        return
    line = " ".join(message.split())[:WORDS_MAX].encode(errors="replace") + b"\n"
    try:
        os.write(_last_words_fd, line)
    except OSError:
        pass  # the pipe is full or gone: the exit status still says enough


def read_words(fd: int) -> str:
    """In the parent, once the child is gone: the last line it left in its pipe; closes `fd`."""
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    lines = b"".join(chunks).decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


def send_signal(pid: int, sig: int) -> None:
    """A signal to a child that may already be gone (its pid is not reused before we reap it)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class SignalQueue:
    """Signals are queued, never handled inside the handler (gunicorn's arbiter does the same).

    The handler only appends; the wake-up fd makes the poll loop return so the
    loop handles the queue in order, at a safe point. Installing the queue
    unblocks its signals: any that arrived since the fork are delivered now.
    """

    def __init__(self, *signals: int) -> None:
        self.pending: list[int] = []
        self._read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._write = write
        for sig in signals:
            _csignal.signal(int(sig), self._handle)  # not signal.signal: see _HANDLED_NUMBERS
        _csignal.pthread_sigmask(_csignal.SIG_UNBLOCK, [int(s) for s in signals])

    def _handle(self, signum: int, frame: object) -> None:
        self.pending.append(signum)

    @property
    def fd(self) -> int:
        return self._read

    def drain(self) -> list[int]:
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass
        pending, self.pending = self.pending, []
        return pending
