"""The symbol supervisor: the book's `Naive.SymbolSupervisor`, strategy one_for_all.

Its only child is the leader, which runs in a process group of its own with its
traders: when the leader dies the whole group is killed (the traders also die
with their parent through PR_SET_PDEATHSIG), and a new leader resumes every
trader from the durable store. The leader is significant: when it ends
normally (the symbol was shut down), so does this supervisor.

Restarts (the definition is supervisor.py's): this supervisor counts its leader's. A restarted
supervisor goes on from the count the root last heard from the leader; `start_id` names this
start of the symbol, and the leader keeps its traders' counts in its store under it, so they
outlive the leader too.

Signals from the root are passed down: SIGUSR1 (shutdown-trading) and SIGHUP
(reload). A shutdown is remembered, so a leader restarted later starts in
shutdown mode too.
"""

from __future__ import annotations

import logging
import os
import signal

from naived.core import validate
from naived.core.config import Config, reload_config
from naived.core.symbols import SymbolFilters
from naived.tree import leader
from naived.tree.supervisor import EXIT_LEASE_LOST, Child, ChildSpec, Decision, Exit, ExitStatus, Kind, Role, Supervisor

log = logging.getLogger(__name__)


class SymbolSupervisor(Role):
    def __init__(self, config: Config, symbol: str, shutting_down: bool, filters: SymbolFilters | None,
                 start_id: str = "", leader_restarts: int = 0, lease_token: int | None = None) -> None:
        self.config = config
        self.lease_token = lease_token  # the symbol's lease in a cluster (PostgreSQL store): fences the leader's writes
        self.filters = filters  # the exchange's, as the root knew them: the leader needs no worker for them
        self.symbol = symbol
        self.shutting_down = shutting_down
        self.start_id = start_id
        self.supervisor = Supervisor(f"supervisor {symbol}", config.naived.supervision, strategy="one_for_all")
        self.supervisor.carry("leader", leader_restarts)

    def leader_spec(self) -> ChildSpec:
        # Read at fork time, not now: a restarted leader gets the config and mode of that moment.
        return ChildSpec(
            key="leader",
            title=f"leader {self.symbol}",
            run=lambda: leader.run(self.config, self.symbol, self.shutting_down, self.filters, self.start_id,
                                   self.supervisor.restarts("leader"), lease_token=self.lease_token),
            restart="transient",  # exit 0 = the symbol was shut down: nothing to restart
            significant=True,
            new_process_group=True,
            kind=Kind.LEADER,
        )

    def on_exit(self, child: Child, status: ExitStatus) -> Decision | None:
        if status.code == EXIT_LEASE_LOST:
            # Another host holds the symbol now: a restarted leader would only be fenced again.
            raise Exit(status.words or f"{self.symbol}: the lease was lost", EXIT_LEASE_LOST)
        return None

    def _tell_leader(self, sig: int) -> None:
        child = self.supervisor.children.get("leader")
        if child is not None:
            os.kill(child.pid, sig)

    def shutdown(self) -> None:
        self.shutting_down = True
        log.info("%s: shutdown-trading: passing it to the leader", self.symbol)
        self._tell_leader(signal.SIGUSR1)

    def reload(self) -> None:
        # The file is read again here (the root's copy cannot cross the fork): checked the same way.
        new = reload_config(self.config, lambda new: validate.symbol_problem(new, self.symbol, self.filters))
        if new is not None:  # refused: logged once, the leader is not told
            self.config = new
            self._tell_leader(signal.SIGHUP)

    def run(self) -> int:
        self.supervisor.start(self.leader_spec())
        return self.supervisor.run(self)


def run(config: Config, symbol: str, shutting_down: bool = False, filters: SymbolFilters | None = None,
        start_id: str = "", leader_restarts: int = 0, lease_token: int | None = None) -> int:
    """Entry point in the forked child."""
    return SymbolSupervisor(config, symbol, shutting_down, filters, start_id, leader_restarts, lease_token).run()
