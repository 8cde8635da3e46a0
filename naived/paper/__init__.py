"""The paper exchange: Binance's spot REST API and user data stream on loopback, as its own process.

`server` speaks HTTP (routing, Binance's checks, JSON shapes, faults) and runs the
process; `book` keeps orders, fills and balances (matching, SQLite); `userstream` serves
the account's user data stream (listen keys, executionReport, outboundAccountPosition). `run` is the
process's entry point, for naived's root and for `naived paper-exchange`.
"""

from naived.paper.server import run

__all__ = ["run"]
