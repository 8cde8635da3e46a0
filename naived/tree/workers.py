"""The short-lived workers of the tree: what a supervising process needs but must not do itself.

A supervising process (the root, a leader) never talks to the exchange and never opens a store
that is not its own: a worker child does, dies in its place if that fails, and hands its answer
up on the one worker channel (`ipc.report`: acked, so a worker that exits 0 has delivered).

- `fetch_filters`: the exchange's filters, every TRADING symbol's for the root (its
  `exchange-info` worker, hourly) or one symbol's for a leader the root had none for.
- `reconcile_all` (the root's, every `reconcile_seconds`): the account's open orders in one
  call and its balances in another, to the root (what `naivectl account` and the web observer
  show, or why they could not be read); each leader whose traders wait on an order no longer
  listed is told, and the orders with an install prefix that no trader owns go to the root (orphans).
- `reconcile_symbol` (a leader's, once per (re)start): the symbol's open orders, for the drift check.
- `read_history`: a symbol's finished cycles, read-only, for `naivectl history`.
- `write_trading_set` (PostgreSQL only): a symbol's mode in the trading set every host shares,
  written for the root's start-trading, stop-trading and shutdown-trading.

Stores are read on the backend `[store]` names (naived/store/backend.py).
"""

from __future__ import annotations

import logging
import time

from naived.core.config import Config
from naived.core.messages import (
    AccountRead,
    Balance,
    Error,
    ExchangeFilters,
    ExchangeWaiting,
    FiltersFetched,
    History,
    Ok,
    OpenOrder,
    OpenOrdersFetched,
    OrphanOrder,
    OrphansFound,
    TraderState,
    WorkerReply,
)
from naived.core.symbols import filters_from_exchange_info, trading_filters
from naived.exchange import binance as exchange
from naived.store.backend import Backend, PgBackend, backend
from naived.tree.ipc import Unanswered, report
from naived.tree.process import last_words
from naived.tree.supervisor import EXIT_GAVE_UP

log = logging.getLogger(__name__)

FILTERS_DEADLINE = 30.0  # a filters fetch retries this long, then fails (its supervisor decides)
TELL_LEADER_MS = 2000  # the root's reconcile waits this long per leader; one that is restarting is told next time


def fetch_filters(config: Config, symbol: str | None = None) -> int:
    """The exchange's filters, from one exchangeInfo call. Without a symbol (the root's
    `exchange-info` worker): every TRADING symbol's, to the root. With one (a leader's `filters`
    worker, when the root had none for it): that symbol's, to its leader, which also hears why
    while the exchange does not answer; a symbol the exchange does not list gives up (exit 3)."""
    client = exchange.client_for(config)
    if symbol is None:
        info = exchange.patiently(client.exchange_info, FILTERS_DEADLINE, "exchangeInfo of every symbol", final=lambda exc: False)
        report(config.workers_endpoint, ExchangeFilters(trading_filters(info)))
        return 0
    leader = config.leader_endpoint(symbol)
    try:
        info = exchange.patiently(lambda: client.exchange_info(symbol), FILTERS_DEADLINE, f"{symbol}: exchangeInfo",
                                  final=lambda exc: exc.code == -1121,  # Invalid symbol.
                                  on_failure=lambda reason: report(leader, ExchangeWaiting(reason)))
        filters = filters_from_exchange_info(info, symbol)
    except exchange.BinanceError as exc:
        last_words(f"{symbol} is not listed on the exchange ({exc.msg})")
        return EXIT_GAVE_UP
    except KeyError:
        last_words(f"{symbol} is not listed on the exchange")
        return EXIT_GAVE_UP
    report(leader, FiltersFetched(filters))
    return 0


EXCHANGE_FAILURES = (exchange.BinanceError, exchange.OutcomeUnknown, exchange.RateLimited, OSError)


def reconcile_symbol(config: Config, symbol: str) -> int:
    """A leader's: the exchange's open orders of its symbol, for the leader to compare. One the
    exchange or the host's budget does not answer is a line in the log, and the next round asks
    again (a hundred symbols restarting at once spend the host's read budget: no tracebacks)."""
    try:
        open_orders = exchange.client_for(config).open_orders(symbol)
    except EXCHANGE_FAILURES as exc:
        log.warning("reconcile %s: the exchange did not list its open orders (%s); next time", symbol, _failure(exc))
        return 1
    report(config.leader_endpoint(symbol), OpenOrdersFetched([o.client_order_id for o in open_orders]))
    return 0


def reconcile_all(config: Config, known: dict[str, tuple[str, set[str]]], owned: set[str], reporting: frozenset[str]) -> int:
    """The root's: the account's open orders (one call) and balances (another), to the root; each
    leader whose traders wait on an order no longer listed is handed that symbol's list, which it
    checks against its own state. The orders with an install prefix that no trader owns go to the
    root (`find_orphans`)."""
    asked_at = time.time()
    client = exchange.client_for(config)
    try:
        orders = client.all_open_orders()
    except EXCHANGE_FAILURES as exc:
        log.warning("reconcile: the exchange did not list the open orders (%s: %s); next time", type(exc).__name__, exc)
        _report_account(config, AccountRead(asked_at, error=f"open orders not read: {_failure(exc)}"))
        return 1
    _report_account(config, read_account(client, asked_at, orders))
    listed: dict[str, list[str]] = {}
    for order in orders:
        listed.setdefault(order.symbol, []).append(order.clientOrderId)
    stores = backend(config, "reconcile")
    try:
        report(config.workers_endpoint, OrphansFound(find_orphans(stores, orders, owned, reporting)))
    except stores.errors as exc:
        log.warning("reconcile: cannot read %s (%s): orphan orders are not looked for", stores.registry, _one_line(exc))
    except Unanswered as exc:  # the leaders are told all the same
        log.warning("reconcile: %s", exc)
    finally:
        stores.close()
    for symbol, (prefix, ours) in known.items():
        at_exchange = listed.get(symbol, [])
        if not ours - {cid for cid in at_exchange if cid.startswith(f"{prefix}-")}:
            continue  # nothing missing: the leader is not woken
        try:
            report(config.leader_endpoint(symbol), OpenOrdersFetched(at_exchange, asked_at), TELL_LEADER_MS)
        except Unanswered:
            log.warning("%s: reconcile: the leader did not answer", symbol)
    return 0


def read_account(client: exchange.BinanceClient, asked_at: float, orders: list[exchange.Listed]) -> AccountRead:
    """The account as the root shows it: the open orders just listed and the balances, read now
    (through the host's rate budget, like every request); a failure is said, never raised."""
    listed = [OpenOrder(o.symbol, o.clientOrderId, o.side, o.price, o.origQty, o.executedQty, o.status, o.time)
              for o in orders]
    try:
        balances = [Balance(asset, free, locked) for asset, free, locked in client.balances()]
    except EXCHANGE_FAILURES as exc:
        log.warning("reconcile: the exchange did not give the balances (%s: %s); next time", type(exc).__name__, exc)
        return AccountRead(asked_at, open_orders=listed, error=f"balances not read: {_failure(exc)}")
    return AccountRead(asked_at, balances, listed)


def _report_account(config: Config, read: AccountRead) -> None:
    try:
        report(config.workers_endpoint, read)
    except Unanswered as exc:  # the orphans and the leaders are looked at all the same
        log.warning("reconcile: %s", exc)


def _failure(exc: Exception) -> str:
    """One line for a person: what the exchange said, or that it did not answer."""
    if isinstance(exc, exchange.OutcomeUnknown):
        return f"the exchange did not answer: {exc}"
    if isinstance(exc, OSError):
        return f"the exchange cannot be reached: {_one_line(exc) or type(exc).__name__}"
    return str(exc)  # the exchange's refusal, a 429/418, or the host's own rate budget


def find_orphans(stores: Backend, orders: list[exchange.Listed], owned: set[str], reporting: frozenset[str]) -> list[OrphanOrder]:
    """The open orders whose prefix this install minted (the registry: naived/store/sqlite.py, or the
    shared one) that no trader owns: not a running trader's (`owned`, as the root knew them), nor
    named by a trader state kept in the store of a symbol that is not running here (stopped, or
    traded by another host: adopted at its next start). A SQLite store that is gone, moved aside
    or unreadable owns nothing. Raises one of `stores.errors`."""
    prefixes = stores.recorded_prefixes()
    stored: dict[str, set[str]] = {}
    found = []
    for order in orders:
        cid = order.clientOrderId
        minted_for = prefixes.get(cid.split("-", 1)[0])
        if minted_for is None or cid in owned:
            continue
        if minted_for not in reporting:
            if minted_for not in stored:
                stored[minted_for] = {cid for state in stores.stored_states(minted_for) for cid in named_ids(state)}
            if cid in stored[minted_for]:
                continue
        found.append(OrphanOrder(order.symbol, cid, order.side, order.price, order.origQty, order.executedQty, minted_for))
    return found


def named_ids(state: TraderState) -> list[str]:
    """Client order ids a trader's state owns: its orders, its earlier sells, its intent."""
    orders = [state.buy_order, state.sell_order, *state.sells]
    return [o.client_order_id for o in orders if o is not None] + ([state.intent.client_order_id] if state.intent else [])


def read_history(config: Config, symbol: str, request_id: int) -> int:
    """A symbol's finished cycles, read-only, to the root (which answers the client with them). On
    PostgreSQL the root cannot look for a file: a symbol the database has no record of is said so
    here. A store that fails ends the worker (the root answers with its last words)."""
    stores = backend(config, f"history {symbol}")
    try:
        cycles = stores.history(symbol)
    finally:
        stores.close()
    answer = Error(f"{symbol} has never traded here") if cycles is None else History(symbol, cycles)
    report(config.workers_endpoint, WorkerReply(request_id, answer))
    return 0


def write_trading_set(config: Config, symbol: str, mode: str | None, request_id: int, answer: str) -> int:
    """PostgreSQL: record `symbol`'s mode ("running", "shutting-down"; None: removed) in the trading
    set every host shares, then hand the root `answer` for the client (Ok), or why it could not
    (Error, one line, exit 1): the root's loop never waits on the database. As on one host: a
    start of a symbol in the set is "already trading", a stop or shutdown of one not in it an error."""
    stores = backend(config, "trading set")
    if not isinstance(stores, PgBackend):
        raise ValueError("the trading set is a file of the root's on SQLite (naived/store/trading_set.py)")
    try:
        changed = stores.set_trading(symbol, mode)
    except stores.errors as exc:
        reason = f"cannot record {symbol} in the shared trading set: {_one_line(exc)}"
        log.error("%s", reason)
        report(config.workers_endpoint, WorkerReply(request_id, Error(reason)))
        last_words(reason)
        return 1
    finally:
        stores.close()
    if changed:
        reply: Ok | Error = Ok(answer)
    else:
        reply = Ok(f"{symbol} is already trading") if mode == "running" else Error(f"{symbol} is not trading")
    report(config.workers_endpoint, WorkerReply(request_id, reply))
    return 0


def _one_line(exc: Exception) -> str:
    """PostgreSQL's errors may span lines (DETAIL, HINT); none holds a password (connect hides it)."""
    return " ".join(str(exc).split())
