"""The rules of the tree, in one place: the supervising loop every level of naived runs.

Root, symbol supervisor and leader are each a `Supervisor` plus a `Role`. The
supervisor owns the loop; the role plugs in handlers for its sockets and hooks
for its children's exits. What the loop does, at every level:

- One `poll()` over the role's sockets, every child's pidfd and the signal
  queue. A death is learned at once and reaped here with `waitpid`; no SIGCHLD
  handler, no polling sleep.
- Children are data (OTP's child spec): key, title, kind, the function the
  forked child runs, restart type (permanent, transient, temporary),
  significant or not. A role dispatches on a child's kind, not on its key.
- On an exit: the role may decide (a finished cycle, a stopped symbol);
  otherwise the restart type does. Exit status 3 means "I gave up" and is
  escalated at every level: the supervisor stops its children and exits 3
  itself, unless its role handles the escalation (the root marks the symbol
  failed and keeps serving the others).
- A restart, the one definition every level counts, shows and logs (`_on_child_exit`): the
  supervisor starting a child again after that child exited without being asked to (a crash,
  a kill, a nonzero exit, its own failure). Starting a child (a symbol's start, a fresh trader
  after a finished cycle, the children a restarted parent starts again) is not one; nor is an
  exit on request. Each child's count is kept by the supervisor that restarts it; a parent
  restarted hands its children's counts to its successor (`carry`), so they never reset
  while the daemon runs. One log line per restart: child, new PID, restart number, why.
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
How a child becomes a clean process of its own (signal masks, death with its
parent, descriptors, last words) is `process.py`'s; this module keeps the policy.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import select
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import zmq

from naived.core.config import Supervision
from naived.tree.process import (
    HANDLED,
    SignalQueue,
    fork_child,
    kill_group,
    last_words,
    read_words,
    send_signal,
)

log = logging.getLogger(__name__)

Restart = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all"]
Scope = Literal["supervisor", "child"]
Decision = Literal["restart", "restart_uncounted", "forget", "give_up"]

EXIT_GAVE_UP = 3  # a process's exit status when it gave up: its supervisor escalates, never retries
# A leader whose store refused a write as fenced (PostgreSQL store: another host holds the symbol's lease now):
# its symbol supervisor ends with it, unrestarted, and the root waits for the lease keeper's word.
EXIT_LEASE_LOST = 4


class Exit(Exception):
    """Raised by a role's handler to end its supervisor on purpose: stop the children, say why,
    exit with `code` (0 = done; 1 = crash, the level above restarts us; 3 = give up, it does not)."""

    def __init__(self, message: str, code: int = EXIT_GAVE_UP) -> None:
        super().__init__(message)
        self.code = code


class Kind(enum.Enum):
    """What a child is. A role decides what one of its children's exits means by its kind (a
    finished cycle, a shut-down symbol, a worker's answer), never by its key; and whether the
    child runs a supervising loop of its own follows from it."""

    PAPER_EXCHANGE = "paper exchange"
    ACCOUNT_STREAM = "account stream"
    SYMBOL_SUPERVISOR = "symbol supervisor"
    LEADER = "leader"
    TRADER = "trader"
    FILTERS = "filters worker"  # the exchange's filters: every symbol's (the root's) or one's (a leader's)
    RECONCILE = "reconcile worker"  # the open orders at the exchange
    HISTORY = "history worker"  # a symbol's finished cycles, read from its store for a client
    LEASE_KEEPER = "lease keeper"  # this host's leases in a cluster (PostgreSQL store)
    TRADING_SET = "trading-set worker"  # writes a start/stop/shutdown into the shared trading set
    WEB = "web observer"  # the read-only page of the tree and its JSON API ([web])

    @property
    def supervises(self) -> bool:
        """It takes its signals through a SignalQueue (its Supervisor's, or the lease keeper's own): they stay
        blocked from the fork until the queue takes them, so an early signal is queued, not fatal."""
        return self in (Kind.SYMBOL_SUPERVISOR, Kind.LEADER, Kind.LEASE_KEEPER)


@dataclass(frozen=True)
class ChildSpec:
    key: str  # unique within one supervisor
    title: str  # process title, e.g. "trader XRPUSDT/0"
    run: Callable[[], int]  # runs in the forked child (with the parent's memory as at fork); returns the exit status
    restart: Restart = "permanent"  # permanent: always; transient: after abnormal exits; temporary: never
    significant: bool = False  # its normal end ends the supervisor (exit 0)
    new_process_group: bool = False  # the child and its descendants are killed together when it dies
    keep_fds: tuple[int, ...] = ()  # inherited descriptors the child keeps (a listening socket)
    kind: Kind = field(kw_only=True)


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

    def start(self, spec: ChildSpec, restarted_after: tuple[Child, ExitStatus] | None = None) -> Child:
        """Fork a child running `spec.run`; returns in the parent only. `restarted_after`: this
        start is a restart (counted already), of the child that exited so."""
        pid, words_fd = fork_child(spec.title, spec.run, spec.new_process_group, spec.kind.supervises, spec.keep_fds)
        pidfd = os.pidfd_open(pid)
        child = Child(spec, pid, pidfd, words_fd, time.time(), self._restarts.get(spec.key, 0))
        self.children[spec.key] = child
        self.specs[spec.key] = spec
        self._by_fd[pidfd] = child
        self.pidfds.register(pidfd, select.EPOLLIN)
        if restarted_after is None:
            log.info("%s: started %s pid %d", self.name, spec.title, pid)
        else:
            old, status = restarted_after
            log.warning("%s: restarted %s as pid %d, restart %d (pid %d %s)", self.name, spec.title, pid, child.restarts,
                        old.pid, status.reason())
        return child

    def stop(self, key: str, kill: bool = False, by: float | None = None) -> None:
        """Ask one child to stop (SIGTERM; SIGKILL at its deadline) without waiting: the loop
        reaps it. It is not restarted, and its key is free at once for a new child. `kill`:
        SIGKILL at once (a lease past its deadline: no grace that could outlast the lease). `by`:
        a monotonic time the grace ends at if that comes sooner (a lease handed off: the grace ends
        with the lease)."""
        child = self.children.pop(key, None)
        self.specs.pop(key, None)
        if child is not None:
            grace_ends = time.monotonic() + self.limits.stop_timeout_seconds
            child.stop_deadline = grace_ends if by is None else min(grace_ends, by)
            send_signal(child.pid, signal.SIGKILL if kill else signal.SIGTERM)

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
                send_signal(child.pid, signal.SIGTERM)
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
                send_signal(child.pid, signal.SIGKILL)
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
        words = read_words(child.words_fd)
        if os.WIFSIGNALED(raw):
            status = ExitStatus(None, os.WTERMSIG(raw), words)
        else:
            status = ExitStatus(os.waitstatus_to_exitcode(raw), None, words)
        if child.spec.new_process_group:
            kill_group(child.pid)  # nothing of its group survives it
        log.info("%s: %s pid %d %s", self.name, child.spec.title, child.pid, status.reason())
        return child, status

    def of_kind(self, kind: Kind) -> list[Child]:
        """The running children of one kind (one being stopped is not running)."""
        return [c for c in self.children.values() if c.spec.kind is kind]

    def restarts(self, key: str) -> int:
        """The child's restarts (see the module's definition) since it was first started."""
        return self._restarts.get(key, 0)

    def carry(self, key: str, restarts: int) -> None:
        """Take over a child's count from the process that kept it before us (a restarted parent's
        predecessor): it goes on from there instead of from 0. Not a restart itself."""
        if restarts > 0:
            self._restarts[key] = restarts

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
        return max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)

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
        if decision == "restart":  # the one place a restart is counted: an exit nobody asked for, started again
            self._restarts[spec.key] = self._restarts.get(spec.key, 0) + 1
        if decision == "give_up":
            if status.code == EXIT_GAVE_UP and status.words:
                reason = status.words  # escalated from below: the reason travels up as it is
            elif status.code == EXIT_GAVE_UP:
                reason = f"{spec.title} gave up ({status.reason()})"
            else:  # how hard it was tried, before the child's own words (which may be cut short)
                n = self.restarts(spec.key)
                reason = f"{spec.title} kept failing after {n} restart{'' if n == 1 else 's'} ({status.reason()})"
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
        # "restart_uncounted" (a trader's finished cycle): a fresh start under the same key, not a restart
        self._restart(spec, role, (child, status) if decision == "restart" else None)
        return None

    @staticmethod
    def _rule(spec: ChildSpec, status: ExitStatus) -> Decision:
        if status.code == EXIT_GAVE_UP:
            return "give_up"
        if spec.restart == "temporary" or (spec.restart == "transient" and status.normal):
            return "forget"
        return "restart"

    def _restart(self, spec: ChildSpec, role: Role, exited: tuple[Child, ExitStatus] | None) -> None:
        specs = [spec]
        if self.strategy == "one_for_all":
            self.specs[spec.key] = spec
            specs = list(self.specs.values())
            self.stop_all()  # the others die with the one that died, then all start again in order (not restarts)
        for s in specs:
            child = self.start(s, exited if s is spec else None)
            self._guarded(functools.partial(role.on_started, child), f"start of {s.title}")

    def _exit(self, role: Role, code: int) -> int:
        self._guarded(role.before_stop, "before stop")
        self.stop_all()
        self._guarded(role.on_stop, "stop")
        return code
