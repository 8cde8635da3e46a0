"""The rules of the tree, in one place: the supervising loop every level of naived runs.

Root, symbol supervisor and leader are each a `Supervisor` plus a `Role`. The
supervisor owns the loop; the role plugs in handlers for its sockets and hooks
for its children's exits. What the loop does, at every level:

- One `poll()` over the role's sockets, every child's pidfd and the signal
  queue. A death is learned at once and reaped here with `waitpid`; no SIGCHLD
  handler, no polling sleep.
- Children are data (OTP's child spec): key, title, the function the forked
  child runs, restart type (permanent, transient, temporary), significant or not.
- On an exit: the role may decide (a finished cycle, a stopped symbol);
  otherwise the restart type does. Exit status 3 means "I gave up" and is
  escalated at every level: the supervisor stops its children and exits 3
  itself, unless its role handles the escalation (the root marks the symbol
  failed and keeps serving the others).
- Restart intensity as OTP counts it: more than `max_restarts` counted
  restarts in `period_seconds` within one supervisor means it gives up
  (`scope="child"` counts per child instead: the root, so one bad symbol never
  takes the others with it). The strategy is declared: one_for_one restarts
  the child that died; one_for_all stops the others and restarts them all.
- A significant child (OTP's auto_shutdown) that ends for good ends its
  supervisor with exit 0: a symbol supervisor whose leader shut down normally.
- Signals go to named handlers (gunicorn's arbiter queues them the same way):
  TERM/INT stop (children first), HUP reloads, USR1 shuts down gracefully.
  Nothing else stops a supervisor: every handler is guarded, an exception in
  one is logged and the loop goes on. Only `Exit` ends the loop on purpose.
- Every child leaves its last words (its SystemExit message or its crash) in a
  pipe the parent reads when it reaps it: reasons travel up the tree with the
  exit status, and no supervisor opens another role's files to learn them.

A child is forked without exec: a restart costs a `fork()`, not a Python start.
"""

from __future__ import annotations

import _signal as _csignal  # the C module under `signal` (see _HANDLED_NUMBERS)
import ctypes
import gc
import logging
import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import setproctitle
import zmq

from naived.core.config import Supervision
from naived.ops.log import rename_process_logs

log = logging.getLogger(__name__)

Restart = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all"]
Scope = Literal["supervisor", "child"]
Decision = Literal["restart", "restart_uncounted", "forget", "give_up"]

EXIT_GAVE_UP = 3  # a process's exit status when it gave up: its supervisor escalates, never retries
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


class Exit(Exception):
    """Raised by a role's handler to end its supervisor on purpose: stop the children, say why,
    exit with `code` (0 = done; 1 = crash, the level above restarts us; 3 = give up, it does not)."""

    def __init__(self, message: str, code: int = EXIT_GAVE_UP) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ChildSpec:
    key: str  # unique within one supervisor
    title: str  # process title, e.g. "trader XRPUSDT/0"
    run: Callable[[], int]  # runs in the forked child (with the parent's memory as at fork); returns the exit status
    restart: Restart = "permanent"  # permanent: always; transient: after abnormal exits; temporary: never
    significant: bool = False  # its normal end ends the supervisor (exit 0)
    new_process_group: bool = False  # the child and its descendants are killed together when it dies
    supervises: bool = False  # it runs a Supervisor: signals stay blocked until its queue takes them
    keep_fds: tuple[int, ...] = ()  # inherited descriptors the child keeps (a listening socket)


@dataclass(frozen=True)
class ExitStatus:
    code: int | None  # exit status, or None when killed by a signal
    signal: int | None
    words: str = ""  # the child's last words, if it left any

    @property
    def normal(self) -> bool:
        return self.code == 0

    def __str__(self) -> str:
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        return f"exit status {self.code}"

    def reason(self) -> str:
        return f"{self}: {self.words}" if self.words else str(self)


@dataclass
class Child:
    spec: ChildSpec
    pid: int
    pidfd: int
    words_fd: int
    started_at: float  # wall clock, for status
    restarts: int = 0
    stop_deadline: float | None = None  # monotonic; set once asked to stop: it is not restarted


class Role:
    """What one level of the tree plugs into the loop. Every hook is optional and guarded."""

    def on_exit(self, child: Child, status: ExitStatus) -> Decision | None:
        """Decide for an exit, or None for the restart type's rule."""
        return None

    def on_give_up(self, child: Child, status: ExitStatus, reason: str) -> bool:
        """A child exceeded the restart intensity or gave up; True = handled here, keep running."""
        return False

    def on_started(self, child: Child) -> None:
        """A child was (re)started by the loop."""

    def reload(self) -> None:
        """SIGHUP."""

    def shutdown(self) -> None:
        """SIGUSR1: finish gracefully."""

    def tick(self) -> None:
        """Once per turn of the loop, after its events."""

    def next_tick(self) -> float | None:
        """Monotonic time the loop must turn by (a watchdog, a deadline), or None."""
        return None

    def before_stop(self) -> None:
        """The supervisor is about to stop its children and exit (stop some first, say goodbye)."""

    def on_stop(self) -> None:
        """The supervisor is exiting; its children are already stopped."""


@dataclass
class Supervisor:
    name: str
    limits: Supervision
    strategy: Strategy = "one_for_one"
    scope: Scope = "supervisor"
    children: dict[str, Child] = field(default_factory=dict)  # by key; a child being stopped is not here
    specs: dict[str, ChildSpec] = field(default_factory=dict)  # by key, in start order: one_for_all restarts them all
    poller: zmq.Poller = field(default_factory=zmq.Poller)
    # Every child's pidfd sits in one epoll set, itself one item of `poller`: a turn of the loop
    # costs the same with 3 children or 1,340 (zmq.Poller builds its item array on every poll).
    pidfds: select.epoll = field(default_factory=select.epoll)
    _by_fd: dict[int, Child] = field(default_factory=dict)
    _handlers: dict[Any, Callable[[], None]] = field(default_factory=dict)
    _restart_times: dict[str, deque[float]] = field(default_factory=dict)
    _restarts: dict[str, int] = field(default_factory=dict)
    signals: SignalQueue | None = None

    # --- children ----------------------------------------------------------------------

    def start(self, spec: ChildSpec) -> Child:
        """Fork a child running `spec.run`; returns in the parent only."""
        parent = os.getpid()
        words_read, words_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        # Freeze the parent's objects so a collection in the child does not touch (and so copy)
        # every inherited page, nor finalise inherited sockets.
        gc.freeze()
        mask = _csignal.pthread_sigmask(_csignal.SIG_BLOCK, _HANDLED_NUMBERS)
        pid = os.fork()
        if pid == 0:
            _run_child(spec, parent, words_write)
        _csignal.pthread_sigmask(_csignal.SIG_SETMASK, mask)
        gc.unfreeze()
        os.close(words_write)
        pidfd = os.pidfd_open(pid)
        child = Child(spec, pid, pidfd, words_read, time.time(), self._restarts.get(spec.key, 0))
        self.children[spec.key] = child
        self.specs[spec.key] = spec
        self._by_fd[pidfd] = child
        self.pidfds.register(pidfd, select.EPOLLIN)
        log.info("%s: started %s pid %d", self.name, spec.title, pid)
        return child

    def stop(self, key: str) -> None:
        """Ask one child to stop (SIGTERM; SIGKILL at its deadline) without waiting: the loop
        reaps it. It is not restarted, and its key is free at once for a new child."""
        child = self.children.pop(key, None)
        self.specs.pop(key, None)
        if child is not None:
            child.stop_deadline = time.monotonic() + self.limits.stop_timeout_seconds
            _signal(child.pid, signal.SIGTERM)

    def stopping(self, key: str) -> bool:
        return any(c.spec.key == key and c.stop_deadline is not None for c in self._by_fd.values())

    def stop_all(self, keep: frozenset[str] = frozenset()) -> None:
        """Stop every child (but those in `keep`) and wait for them: SIGTERM at once so the
        timeouts overlap, SIGKILL at the deadline. For exits of the supervisor itself."""
        waiting = {fd: c for fd, c in self._by_fd.items() if c.spec.key not in keep or c.stop_deadline is not None}
        if not waiting:
            return
        deadline = time.monotonic() + self.limits.stop_timeout_seconds
        for child in waiting.values():
            self.specs.pop(child.spec.key, None)
            if self.children.get(child.spec.key) is child:
                del self.children[child.spec.key]
            if child.stop_deadline is None:
                child.stop_deadline = deadline
                _signal(child.pid, signal.SIGTERM)
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        while waiting:
            self._kill_overdue()
            left = min(c.stop_deadline or deadline for c in waiting.values()) - time.monotonic()
            for fd, _ in poller.poll(None if left == float("inf") else max(0.0, left) * 1000 + 1):
                poller.unregister(fd)
                self.reap(fd)
                del waiting[fd]

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for child in self._by_fd.values():
            if child.stop_deadline is not None and now >= child.stop_deadline:
                log.warning("%s: %s pid %d did not stop in %gs, killing it", self.name, child.spec.title, child.pid,
                            self.limits.stop_timeout_seconds)
                _signal(child.pid, signal.SIGKILL)
                child.stop_deadline = float("inf")  # killed: wait for its pidfd, no second kill

    def exited(self, fd: object) -> bool:
        """Is this polled item the pidfd of one of our children, and has that child exited?

        Re-checked rather than trusted: within one batch of poll events a reaped
        child's pidfd number may already belong to a newly started child.
        """
        return fd in self._by_fd and os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def reap(self, pidfd: int) -> tuple[Child, ExitStatus]:
        child = self._by_fd.pop(pidfd)
        self.pidfds.unregister(pidfd)
        os.close(pidfd)
        if self.children.get(child.spec.key) is child:
            del self.children[child.spec.key]
        _, raw = os.waitpid(child.pid, 0)
        words = _read_words(child.words_fd)
        if os.WIFSIGNALED(raw):
            status = ExitStatus(None, os.WTERMSIG(raw), words)
        else:
            status = ExitStatus(os.waitstatus_to_exitcode(raw), None, words)
        if child.spec.new_process_group:
            _kill_group(child.pid)  # nothing of its group survives it
        log.info("%s: %s pid %d %s", self.name, child.spec.title, child.pid, status.reason())
        return child, status

    def restarts(self, key: str) -> int:
        return self._restarts.get(key, 0)

    def forget_history(self, key: str) -> None:
        self._restart_times.pop(key, None)
        self._restarts.pop(key, None)

    def _intensity_exceeded(self, key: str) -> bool:
        """Count a restart; True when it is one too many (OTP's MaxR in MaxT)."""
        now = time.monotonic()
        times = self._restart_times.setdefault(key if self.scope == "child" else "", deque())
        times.append(now)
        while times and now - times[0] > self.limits.period_seconds:
            times.popleft()
        return len(times) > self.limits.max_restarts

    # --- the loop ----------------------------------------------------------------------

    def watch(self, item: Any, handler: Callable[[], None]) -> None:
        """Call `handler` (guarded) whenever `item` (a zmq socket or a file descriptor) is readable."""
        self._handlers[item] = handler
        self.poller.register(item, zmq.POLLIN)

    def unwatch(self, item: Any) -> None:
        if self._handlers.pop(item, None) is not None:
            self.poller.unregister(item)

    def run(self, role: Role) -> int:
        """The loop. Returns the exit status of this supervising process."""
        if self.signals is None:
            self.signals = SignalQueue(*HANDLED)
        self.poller.register(self.signals.fd, zmq.POLLIN)
        self.poller.register(self.pidfds.fileno(), zmq.POLLIN)
        try:
            while True:
                for item, _ in self.poller.poll(self._timeout_ms(role)):
                    if item == self.signals.fd:
                        for sig in self.signals.drain():
                            if self._on_signal(sig, role):
                                return self._exit(role, 0)
                    elif item == self.pidfds.fileno():
                        for pidfd, _ in self.pidfds.poll(0):
                            if self.exited(pidfd) and (code := self._on_child_exit(pidfd, role)) is not None:
                                return self._exit(role, code)
                    elif item in self._handlers:
                        self._guarded(self._handlers[item], f"handler of {item!r}")
                self._kill_overdue()
                self._guarded(role.tick, "tick")
        except Exit as exc:
            log.log(logging.INFO if exc.code == 0 else logging.ERROR, "%s: %s", self.name, exc)
            if exc.code:
                last_words(str(exc))
            return self._exit(role, exc.code)

    def _timeout_ms(self, role: Role) -> int | None:
        deadlines = [c.stop_deadline for c in self._by_fd.values() if c.stop_deadline not in (None, float("inf"))]
        tick = role.next_tick()
        if tick is not None:
            deadlines.append(tick)
        if not deadlines:
            return None
        return max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)  # type: ignore[type-var]

    def _guarded(self, handler: Callable[[], Any], what: str) -> Any:
        try:
            return handler()
        except Exit:
            raise
        except Exception:
            log.exception("%s: %s failed; carrying on", self.name, what)
            return None

    def _on_signal(self, sig: int, role: Role) -> bool:
        """True when the supervisor must stop."""
        name = signal.Signals(sig).name
        if sig in (signal.SIGTERM, signal.SIGINT):
            log.info("%s: %s: stopping %d children", self.name, name, len(self._by_fd))
            return True
        if sig == signal.SIGHUP:
            self._guarded(role.reload, "reload")
        elif sig == signal.SIGUSR1:
            self._guarded(role.shutdown, "shutdown")
        return False

    def _on_child_exit(self, pidfd: int, role: Role) -> int | None:
        """Reap, decide, act. Returns this supervisor's exit status when it must end, else None."""
        child, status = self.reap(pidfd)
        spec = child.spec
        if child.stop_deadline is not None:
            self._guarded(lambda: role.on_exit(child, status), f"exit of {spec.title}")
            return None  # stopped on purpose: nothing to decide
        decision = self._guarded(lambda: role.on_exit(child, status), f"exit of {spec.title}") or self._rule(spec, status)
        if decision == "restart" and self._intensity_exceeded(spec.key):
            log.error("%s: more than %d restarts in %gs, giving up", self.name, self.limits.max_restarts,
                      self.limits.period_seconds)
            decision = "give_up"
        if decision == "restart":
            self._restarts[spec.key] = self._restarts.get(spec.key, 0) + 1
        if decision == "give_up":
            if status.code == EXIT_GAVE_UP and status.words:
                reason = status.words  # escalated from below: the reason travels up as it is
            else:
                verb = "gave up" if status.code == EXIT_GAVE_UP else "kept failing"
                reason = f"{spec.title} {verb} ({status.reason()})"
            self.specs.pop(spec.key, None)
            if self._guarded(lambda: role.on_give_up(child, status, reason), f"give-up of {spec.title}"):
                return None
            log.error("%s: %s", self.name, reason)
            last_words(reason)
            return EXIT_GAVE_UP
        if decision == "forget":
            self.specs.pop(spec.key, None)
            if spec.significant:
                log.info("%s: %s ended, and with it this supervisor", self.name, spec.title)
                return 0
            return None
        self._restart(spec, role)
        return None

    @staticmethod
    def _rule(spec: ChildSpec, status: ExitStatus) -> Decision:
        if status.code == EXIT_GAVE_UP:
            return "give_up"
        if spec.restart == "temporary" or (spec.restart == "transient" and status.normal):
            return "forget"
        return "restart"

    def _restart(self, spec: ChildSpec, role: Role) -> None:
        specs = [spec]
        if self.strategy == "one_for_all":
            self.specs[spec.key] = spec
            specs = list(self.specs.values())
            self.stop_all()  # the others die with the one that died, then all start again in order
        for s in specs:
            child = self.start(s)
            self._guarded(lambda: role.on_started(child), f"start of {s.title}")

    def _exit(self, role: Role, code: int) -> int:
        self._guarded(role.before_stop, "before stop")
        self.stop_all()
        self._guarded(role.on_stop, "stop")
        return code


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


def _read_words(fd: int) -> str:
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


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_child(spec: ChildSpec, parent: int, words_fd: int) -> None:
    """In the forked child: become a clean process of our own, run, and never return."""
    global _last_words_fd
    _last_words_fd = words_fd
    code = 1
    try:
        for sig in (*_HANDLED_NUMBERS, _csignal.SIGCHLD):
            _csignal.signal(sig, _csignal.SIG_DFL)
        _csignal.set_wakeup_fd(-1)
        if spec.new_process_group:
            os.setpgid(0, 0)
        # Die with the parent; if it already died between fork() and here, prctl comes too late.
        die_with_parent()
        if os.getppid() != parent:
            os._exit(1)
        # The parent's descriptors (its ZeroMQ context, pidfds, databases) are not ours; the
        # tree's own (its state directory's lock) are.
        _close_fds_except({0, 1, 2, words_fd, *spec.keep_fds, *_tree_fds})
        setproctitle.setproctitle(f"naive: {spec.title}")
        rename_process_logs(spec.title)
        if not spec.supervises:  # a supervisor's SignalQueue unblocks them once it handles them
            _csignal.pthread_sigmask(_csignal.SIG_UNBLOCK, _HANDLED_NUMBERS)
        code = spec.run()
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        else:
            last_words(str(exc.code))
            log.error("%s: %s", spec.title, exc.code)
            code = 1
    except BaseException as exc:
        log.exception("%s crashed", spec.title)
        last_words(f"{type(exc).__name__}: {exc}")
        code = 1
    finally:
        os._exit(code)


def _close_fds_except(keep: set[int]) -> None:
    """Close every descriptor not in `keep`. close_range(2) is one syscall per gap; os.closerange
    loops over every possible descriptor (0.66 ms for 20000 here, on the restart path)."""
    low = 0
    for fd in sorted(keep) + [0xFFFFFFFF + 1]:
        if fd > low:
            if _close_range is None or _close_range(low, fd - 1, 0) != 0:
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
