"""The supervising loop alone, in a process of its own (it forks and reaps real children)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, resource
    from naived.core.config import Supervision
    from naived.tree.supervisor import ChildSpec, Exit, Kind, Role, Supervisor

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range({held})]  # a root with many children has as many pidfds

    class Count(Role):
        def __init__(self):
            self.exits = []

        def on_exit(self, child, status):
            self.exits.append((child.spec.key, status.code))
            if len(self.exits) == {children}:
                raise Exit("all reaped", 0)
            return "forget"

    sup = Supervisor("test", Supervision())
    role = Count()
    for i in range({children}):
        sup.start(ChildSpec(str(i), f"child {{i}}", lambda i=i: i % 7, "temporary", kind=Kind.TRADER))
    print(sup.run(role), sorted(role.exits, key=lambda e: int(e[0])) == [(str(i), i % 7) for i in range({children})])
""")


def run(held: int, children: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT.format(held=held, children=children)],
                          capture_output=True, text=True, timeout=60)


def test_children_are_reaped_whatever_their_pidfd_numbers() -> None:
    # pidfds above 1023 cannot be select()ed: a root with ~1,000 symbols has them
    result = run(held=1100, children=50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "True"]


KINDS = textwrap.dedent("""
    import signal
    from naived.core.config import Supervision
    from naived.tree.supervisor import ChildSpec, Exit, Kind, Role, Supervisor

    def blocked():  # exit status 1 when SIGTERM is still blocked in the child, else 0
        return int(signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []))

    class Collect(Role):
        def __init__(self):
            self.codes = {}

        def on_exit(self, child, status):
            self.codes[child.spec.kind.name] = status.code
            if len(self.codes) == len(Kind):
                raise Exit("all reaped", 0)
            return "forget"

    sup = Supervisor("test", Supervision())
    for kind in Kind:
        sup.start(ChildSpec(kind.name, kind.value, blocked, "temporary", kind=kind))
    role = Collect()
    sup.run(role)
    print(" ".join(sorted(k for k, code in role.codes.items() if code == 1)))
""")


def test_a_child_of_a_supervising_kind_keeps_the_handled_signals_blocked_for_its_own_loop() -> None:
    # its SignalQueue unblocks them once it handles them (the lease keeper has one of its own); any other
    # child gets them unblocked at once
    result = subprocess.run([sys.executable, "-c", KINDS], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["LEADER", "LEASE_KEEPER", "SYMBOL_SUPERVISOR"]


# A child that ignores SIGTERM, stopped with a grace of 30 s but `by` a deadline 0.3 s away (a lease
# handed off): killed at that deadline, not at the end of the grace.
BY = textwrap.dedent("""
    import signal, time
    from naived.core.config import Supervision
    from naived.tree.supervisor import ChildSpec, Exit, Kind, Role, Supervisor

    def stubborn():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)

    class Stop(Role):
        def __init__(self):
            self.asked = None

        def next_tick(self):
            return None if self.asked else time.monotonic() + 0.2

        def tick(self):
            if self.asked is None:
                self.asked = time.monotonic()
                sup.stop("symbol", by=self.asked + 0.3)

        def on_exit(self, child, status):
            self.ended = (status.signal, time.monotonic() - self.asked)
            raise Exit("stopped", 0)

    sup = Supervisor("test", Supervision(stop_timeout_seconds={grace}))
    sup.start(ChildSpec("symbol", "symbol", stubborn, "temporary", kind=Kind.TRADER))
    role = Stop()
    sup.run(role)
    print(*role.ended)
""")


def test_a_stop_by_a_deadline_kills_at_it_whatever_the_grace() -> None:
    result = subprocess.run([sys.executable, "-c", BY.format(grace=30.0)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    sig, after = result.stdout.split()
    assert int(sig) == 9 and 0.3 <= float(after) < 1.5, result.stdout  # SIGKILL at the deadline
