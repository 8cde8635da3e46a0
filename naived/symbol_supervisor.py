"""The symbol supervisor: the book's `Naive.SymbolSupervisor`, strategy one_for_all.

Its only child is the leader, which runs in a process group of its own with its
traders. When the leader dies, the whole group is killed (the traders also die
with their parent through PR_SET_PDEATHSIG) and a new leader starts, resuming
every trader from the durable store.
"""

from __future__ import annotations

import functools
import logging
import signal

import zmq

from naived import leader
from naived.config import Config
from naived.supervisor import EXIT_GAVE_UP, ChildSpec, SignalQueue, Supervisor

log = logging.getLogger(__name__)


def leader_spec(config: Config, symbol: str) -> ChildSpec:
    return ChildSpec(
        key="leader",
        title=f"leader {symbol}",
        run=functools.partial(leader.run, config, symbol),
        restart="transient",  # exit 0 = the symbol was shut down: nothing to restart
        new_process_group=True,
    )


def run(config: Config, symbol: str) -> int:
    """Entry point in the forked child."""
    signals = SignalQueue(signal.SIGTERM, signal.SIGINT)
    poller = zmq.Poller()
    poller.register(signals.fd, zmq.POLLIN)
    supervisor = Supervisor(f"supervisor {symbol}", config.naived.supervision, poller)
    supervisor.start(leader_spec(config, symbol))
    while True:
        for item, _ in poller.poll():
            if item == signals.fd and signals.drain():
                supervisor.stop_all()
                return 0
            if supervisor.exited(item):
                child, status = supervisor.reap(item)
                decision = supervisor.on_exit(child, status)
                if decision == "forget":
                    return 0
                if decision == "give_up":
                    return EXIT_GAVE_UP
                supervisor.start(leader_spec(config, symbol))
