"""The tree's metrics: what the root knows of the tree, in Prometheus's text format.

Rendered on each scrape of the root's metrics port (naived/ops/metrics.py serves it) from the
status the root would answer `naivectl status` with: the leaders' figures are those they last
pushed (their counters live in their stores, bumped in the same transaction as the state that
caused them), so a scrape reads no file but the host's shared rate budget.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal

from naived.core.config import Config
from naived.core.messages import LeaderStatus, TreeStatus
from naived.exchange import budget as rate_budget
from naived.ops.metrics import Metrics

log = logging.getLogger(__name__)

# One sample per process line of `naivectl status`, with the same number (a restart as
# naived/tree/supervisor.py defines it: a start-trading or a new naived starts from 0).
RESTARTS, RESTARTS_HELP = "naive_restarts_total", "restarts of each process of the tree since its start"


def render(config: Config, tree: TreeStatus, control_refused: int, account_events_dropped: dict[str, int]) -> str:
    """The Prometheus text of the tree as the root knows it: its status (each leader's as last
    pushed), the refusals counted at its boundaries and the host's rate budget."""
    m = Metrics()
    m.add("naive_up", "gauge", "1 while naived answers", 1)
    m.add("naive_control_refused_total", "counter", "control requests refused as malformed (answered with an error)",
          control_refused)
    for reason, n in sorted(account_events_dropped.items()):
        m.add("naive_account_events_dropped_total", "counter", "user data stream events dropped at the account stream's check",
              n, reason=reason)
    if tree.paper_exchange is not None:
        m.add(RESTARTS, "counter", RESTARTS_HELP, tree.paper_exchange.restarts, level="paper_exchange", symbol="")
    if tree.account_stream is not None:
        m.add(RESTARTS, "counter", RESTARTS_HELP, tree.account_stream.restarts, level="account_stream", symbol="")
    for sym in tree.symbols:
        m.add("naive_symbol_state", "gauge", "1 for the state each symbol is in", 1, symbol=sym.symbol, state=sym.state)
        m.add(RESTARTS, "counter", RESTARTS_HELP, sym.supervisor.restarts, level="symbol_supervisor", symbol=sym.symbol)
        if sym.leader is not None:
            _leader_metrics(m, sym.symbol, sym.leader)
    weight = max((sym.leader.used_weight for sym in tree.symbols if sym.leader is not None), default=0)
    m.add("naive_exchange_used_weight", "gauge", "X-MBX-USED-WEIGHT-1M last seen by a trader", weight)
    orphans = dict.fromkeys((s.symbol for s in tree.symbols), 0)
    for order in tree.orphans:
        orphans[order.symbol] = orphans.get(order.symbol, 0) + 1
    for symbol, n in sorted(orphans.items()):
        m.add("naive_orphan_orders", "gauge", "open orders with this install's id prefix that no trader owns", n, symbol=symbol)
    _budget_metrics(m, config)
    return m.render()


def _leader_metrics(m: Metrics, symbol: str, leader: LeaderStatus) -> None:
    """One symbol's figures, as its leader last pushed them."""
    c = leader.counters
    m.add(RESTARTS, "counter", RESTARTS_HELP, leader.restarts, level="leader", symbol=symbol)
    for t in leader.traders:
        m.add(RESTARTS, "counter", RESTARTS_HELP, t.restarts, level="trader", symbol=symbol, trader=str(t.trader_id))
    by_status: dict[str, int] = {}
    for t in leader.traders:
        cycle: str = t.state.status if t.state else "new"
        by_status[cycle] = by_status.get(cycle, 0) + 1
    for cycle, n in sorted(by_status.items()):
        m.add("naive_traders", "gauge", "traders by the state of their cycle", n, symbol=symbol, status=cycle)
    m.add("naive_orders_placed_total", "counter", "orders placed", c.get("orders_placed", 0), symbol=symbol)
    m.add("naive_orders_filled_total", "counter", "orders filled", c.get("orders_filled", 0), symbol=symbol)
    m.add("naive_intents_unknown_total", "counter", "order placements whose outcome was unknown",
          c.get("intents_unknown", 0), symbol=symbol)
    pending = sum(1 for t in leader.traders if t.state and t.state.intent and t.state.intent.unknown)
    m.add("naive_intents_unknown", "gauge", "unknown outcomes not yet resolved", pending, symbol=symbol)
    m.add("naive_order_drift", "gauge", "orders the exchange and the traders disagree on, at the leader's start",
          c.get("drift", 0), symbol=symbol)
    m.add("naive_cycles_finished_total", "counter", "cycles finished", leader.cycles_finished, symbol=symbol)
    for reason, n in sorted(leader.market_dropped.items()):
        m.add("naive_market_frames_dropped_total", "counter",
              "market frames the traders dropped (naived/market/gate.py), by reason", n, symbol=symbol, reason=reason)
    # Decimal strings from the store, summed once per finished cycle (quote asset of the symbol).
    m.add("naive_fees_quote_total", "counter", "fees paid by finished cycles, valued in the quote asset",
          Decimal(leader.books.get("fees_quote", "0")), symbol=symbol)
    m.add("naive_realised_pnl_quote", "gauge", "realised profit and loss of finished cycles, in the quote asset",
          Decimal(leader.books.get("pnl_quote", "0")), symbol=symbol)


def _budget_metrics(m: Metrics, config: Config) -> None:
    """The host's shared rate budget, read without blocking; a missing or bad file only
    leaves these gauges out (the traders' own opening of it says what is wrong)."""
    try:
        b = rate_budget.snapshot(config.budget_path)
    except Exception as exc:  # never let a metrics scrape take the root down
        log.warning("rate budget unreadable: %s", exc)
        return
    if b is None:
        return
    limits = config.exchange
    m.add("naive_budget_weight_used", "gauge",
          "request weight of this minute, host-wide: Binance's figure plus what was sent since, or our count", b.weight)
    m.add("naive_budget_weight_header", "gauge", "largest X-MBX-USED-WEIGHT-1M seen this minute by any process", b.weight_header)
    m.add("naive_budget_weight_limit", "gauge", "[exchange] weight_budget_per_minute (Binance: 6000 per IP)",
          limits.weight_budget_per_minute)
    m.add("naive_budget_orders_10s", "gauge", "orders placed in this 10 s window, host-wide", b.orders)
    m.add("naive_budget_orders_day", "gauge", "orders placed today (UTC), host-wide", max(b.orders_day, b.orders_day_header))
    remaining = b.ban_remaining(time.monotonic_ns())
    m.add("naive_budget_banned_seconds", "gauge", "seconds until a 429/418 Retry-After has passed; nothing is sent before",
          round(remaining, 3))
    m.add("naive_budget_ban_status", "gauge", "418 (banned) or 429 while the host holds its requests for it, else 0",
          b.ban_status if remaining > 0 else 0)
    m.add("naive_budget_limited_total", "counter", "429/418 answers seen by any process", b.limited_total)
    m.add("naive_budget_held_total", "counter", "requests the host's budget held back (never sent)", b.held_total)
