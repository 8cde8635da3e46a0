"""The one supervision primitive, used by the root, the symbol supervisors and the leaders.

Children are data (OTP's child spec): a key, a process title, the function the
forked child runs, a restart type. The supervising process puts each child's
pidfd into the same poll loop as its sockets, so it learns of a death at once,
reaps it here with `waitpid`, and asks `on_exit` what the restart rule and the
restart intensity allow.

A child is forked without exec: a restart costs a `fork()`, not a Python start.
"""

from __future__ import annotations

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
from typing import Any, Literal

import setproctitle

from naived.config import Supervision
from naived.log import rename_process_logs

log = logging.getLogger(__name__)

Restart = Literal["permanent", "transient", "temporary"]
Decision = Literal["restart", "forget", "give_up"]

EXIT_GAVE_UP = 3  # a supervisor's exit status when a child exceeded its restart intensity

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class ChildSpec:
    key: str  # unique within one supervisor; restart history is kept per key
    title: str  # process title, e.g. "trader XRPUSDT/0"
    run: Callable[[], int]  # runs in the forked child; its return value is the exit status
    restart: Restart = "permanent"  # permanent: always; transient: after abnormal exits; temporary: never
    new_process_group: bool = False


@dataclass(frozen=True)
class ExitStatus:
    code: int | None  # exit status, or None when killed by a signal
    signal: int | None

    @property
    def normal(self) -> bool:
        return self.code == 0

    def __str__(self) -> str:
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        return f"exit status {self.code}"


@dataclass
class Child:
    spec: ChildSpec
    pid: int
    pidfd: int
    started_at: float  # wall clock, for status
    restarts: int = 0


@dataclass
class Supervisor:
    name: str
    limits: Supervision
    poller: Any = None  # a zmq.Poller of the supervising loop: pidfds are (un)registered here
    children: dict[str, Child] = field(default_factory=dict)  # by key
    _by_fd: dict[int, Child] = field(default_factory=dict)
    _restart_times: dict[str, deque[float]] = field(default_factory=dict)
    _restarts: dict[str, int] = field(default_factory=dict)

    def start(self, spec: ChildSpec) -> Child:
        """Fork a child running `spec.run`; returns in the parent only."""
        parent = os.getpid()
        # Freeze the parent's objects so a collection in the child does not touch
        # (and so copy) every inherited page, nor finalise inherited sockets.
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            _run_child(spec, parent)
        gc.unfreeze()
        pidfd = os.pidfd_open(pid)
        child = Child(spec, pid, pidfd, time.time(), self._restarts.get(spec.key, 0))
        self.children[spec.key] = child
        self._by_fd[pidfd] = child
        if self.poller is not None:
            self.poller.register(pidfd, select.POLLIN)
        log.info("%s: started %s pid %d", self.name, spec.title, pid)
        return child

    def exited(self, fd: object) -> bool:
        """Is this polled item the pidfd of one of our children, and has that child exited?

        Re-checked rather than trusted: within one batch of poll events a reaped
        child's pidfd number may already belong to a newly started child.
        """
        return fd in self._by_fd and bool(select.select([fd], [], [], 0)[0])

    def reap(self, pidfd: int) -> tuple[Child, ExitStatus]:
        child = self._by_fd.pop(pidfd)
        if self.poller is not None:
            self.poller.unregister(pidfd)
        os.close(pidfd)
        if self.children.get(child.spec.key) is child:
            del self.children[child.spec.key]
        _, status = os.waitpid(child.pid, 0)
        if os.WIFSIGNALED(status):
            result = ExitStatus(None, os.WTERMSIG(status))
        else:
            result = ExitStatus(os.waitstatus_to_exitcode(status), None)
        if child.spec.new_process_group:
            _kill_group(child.pid)  # one_for_all below this child: nothing of its group survives it
        log.info("%s: %s pid %d %s", self.name, child.spec.title, child.pid, result)
        return child, result

    def on_exit(self, child: Child, status: ExitStatus, count: bool | None = None) -> Decision:
        """Apply the restart type and OTP's restart intensity to an exit.

        `count` says whether this exit counts against the intensity (default:
        abnormal exits only, so a trader finishing cycles never trips it).
        """
        spec = child.spec
        if spec.restart == "temporary" or (spec.restart == "transient" and status.normal):
            return "forget"
        if count if count is not None else not status.normal:
            now = time.monotonic()
            times = self._restart_times.setdefault(spec.key, deque())
            times.append(now)
            while times and now - times[0] > self.limits.period_seconds:
                times.popleft()
            if len(times) > self.limits.max_restarts:
                log.error(
                    "%s: %s restarted more than %d times in %gs, giving up",
                    self.name, spec.title, self.limits.max_restarts, self.limits.period_seconds,
                )
                return "give_up"
            self._restarts[spec.key] = self._restarts.get(spec.key, 0) + 1
        return "restart"

    def restarts(self, key: str) -> int:
        return self._restarts.get(key, 0)

    def forget_history(self, key: str) -> None:
        self._restart_times.pop(key, None)
        self._restarts.pop(key, None)

    def stop(self, key: str, timeout: float | None = None) -> None:
        child = self.children.get(key)
        if child is not None:
            self._stop([child], timeout)

    def stop_all(self, timeout: float | None = None, keep: frozenset[str] = frozenset()) -> None:
        """Stop every child (but those in `keep`) at once, so the timeouts overlap."""
        self._stop([c for k, c in self.children.items() if k not in keep], timeout)

    def _stop(self, children: list[Child], timeout: float | None) -> None:
        """SIGTERM, wait up to the timeout, then SIGKILL; every child is reaped before returning."""
        if not children:
            return
        timeout = self.limits.stop_timeout_seconds if timeout is None else timeout
        for child in children:
            _signal(child.pid, signal.SIGTERM)
        waiting = {child.pidfd: child for child in children}
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        killed = False
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0 and not killed:
                for child in waiting.values():
                    log.warning("%s: %s pid %d did not stop in %gs, killing it", self.name, child.spec.title, child.pid, timeout)
                    _signal(child.pid, signal.SIGKILL)
                killed = True
            for fd, _ in poller.poll(None if killed else left * 1000):
                poller.unregister(fd)
                self.reap(fd)
                del waiting[fd]


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


def _run_child(spec: ChildSpec, parent: int) -> None:
    """In the forked child: become a clean process of our own, run, and never return."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        if spec.new_process_group:
            os.setpgid(0, 0)
        # Die with the parent; if it already died between fork() and here, prctl comes too late.
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
        # The parent's descriptors (its ZeroMQ context, pidfds, databases) are not ours.
        _close_fds_from(3)
        setproctitle.setproctitle(f"naive: {spec.title}")
        rename_process_logs(spec.title)
        code = spec.run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if isinstance(exc.code, str):
            log.error("%s", exc.code)  # the one-line reason (a forked child has no interpreter to print it)
    except BaseException:
        log.exception("%s crashed", spec.title)
        code = 1
    finally:
        os._exit(code)


def _close_fds_from(low: int) -> None:
    """Close every descriptor >= low. close_range(2) is one syscall; os.closerange loops over
    every possible descriptor (0.66 ms for 20000 here, on the restart path)."""
    close_range = getattr(_libc, "close_range", None)
    if close_range is not None and close_range(low, 0xFFFFFFFF, 0) == 0:
        return
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= low:
            try:
                os.close(fd)
            except OSError:
                pass  # the descriptor of the listing itself, already gone


class SignalQueue:
    """Signals are queued, never handled inside the handler (gunicorn's arbiter does the same).

    The handler only appends; the wake-up fd makes the poll loop return so the
    loop handles the queue in order, at a safe point.
    """

    def __init__(self, *signals: int) -> None:
        self.pending: list[int] = []
        self._read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._write = write
        for sig in signals:
            signal.signal(sig, self._handle)

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
