"""What a symbol's store is, whichever backend keeps it: the contract the leader writes to.

Two backends satisfy it: SQLite, one file per symbol on this host (naived/store/sqlite.py, the
default), and PostgreSQL, shared by every host, each write fenced by the symbol's lease
(naived/store/postgres.py). mypy checks that both do (each module's `_satisfies`).
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Protocol

import msgspec

from naived.core.messages import TraderState

ID_ALPHABET = string.ascii_lowercase + string.digits  # Binance allows [.A-Z:/a-z0-9_-] in client order ids


class Fenced(Exception):
    """A write refused because this store no longer holds the symbol's lease with its token (the
    PostgreSQL store: another host trades the symbol now); its transaction was rolled back. The
    message is one line: symbol, our token, the lease now. Here, not in postgres.py, so that the
    leader can tell it apart without importing psycopg (a SQLite store never raises it)."""


FEES = "fees"  # meta key: the finished cycles' commissions by asset, a JSON object of decimal strings


def add_fees(total: dict[str, str], more: dict[str, str]) -> dict[str, str]:
    """Commissions by asset, summed exactly (Decimal)."""
    summed = dict(total)
    for asset, amount in more.items():
        summed[asset] = format(Decimal(summed.get(asset, "0")) + Decimal(amount), "f")
    return summed


def fees_by_asset(kept: str | None, finished: Callable[[], Iterable[TraderState]]) -> dict[str, str]:
    """The finished cycles' commissions by asset: as the store keeps them (`kept`, its FEES meta), or,
    in a store from before it kept them, summed from its cycles (read whole, until its next finished
    cycle writes them)."""
    if kept is not None:
        return msgspec.json.decode(kept, type=dict[str, str])
    total: dict[str, str] = {}
    for state in finished():
        if state.result is not None:
            total = add_fees(total, state.result.fees)
    return total


def new_id_prefix() -> str:
    """A fresh client order id prefix: `nv` and 6 random characters (36^6 ≈ 2·10^9)."""
    return "nv" + "".join(secrets.choice(ID_ALPHABET) for _ in range(6))


class SymbolStore(Protocol):
    """A symbol's durable memory: each trader's last state, finished cycles, cycle numbers, counters."""

    def close(self) -> None: ...

    def traders(self) -> dict[int, TraderState]:
        """Every trader's last state (finished cycles are not among them)."""
        ...

    def save(self, state: TraderState, counts: dict[str, int] | None = None) -> None:
        """Store a trader's state and bump counters, in one transaction."""
        ...

    def bump(self, key: str, n: int = 1) -> None: ...

    def counter(self, key: str) -> int: ...

    def finish(self, state: TraderState) -> None:
        """Record a finished cycle, forget the trader's state and add its result to the books and the
        fees, in one transaction; a cycle recorded again is not counted twice."""
        ...

    def books(self) -> dict[str, str]: ...

    def fees(self) -> dict[str, str]:
        """The finished cycles' commissions by asset (decimal strings), kept with `books`."""
        ...

    def finished_cycles(self) -> list[TraderState]: ...

    def cycles_finished(self) -> int: ...

    def next_cycle(self) -> int: ...

    def next_cycles(self, n: int) -> list[int]:
        """`n` cycle numbers never handed out before for this symbol, durable before they are returned."""
        ...

    def id_prefix(self, record: Callable[[str], None] | None = None) -> str:
        """The symbol's client order id prefix, made once, durably; `record` sees a new one first."""
        ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str | None) -> None: ...
