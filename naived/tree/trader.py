"""The trader process: one cycle of the naive strategy for one symbol.

A thin shell around `strategy`: it subscribes to the symbol's trade events,
feeds them to the strategy, and carries out what it decides. Every state change
goes to the leader, and the trader waits for the ack (the book's
`GenServer.call`): what the leader acked is what a restarted trader resumes.

Orders follow the intent protocol: the intent (with its deterministic client
order id) is acked by the leader *before* the order is sent, so a trader that
restarts with an intent looks the order up instead of placing it twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
import zmq

from naived.core import actions, cycles, strategy
from naived.core.config import Config
from naived.core.messages import (
    STREAM_STATUS_TOPIC,
    ExecutionReport,
    Fill,
    Intent,
    MarketReport,
    Order,
    RebuyTriggered,
    StateUpdated,
    StreamStatus,
    TradeEvent,
    TraderFailed,
    TraderHello,
    TraderState,
    check_topic,
    encode,
    execution_report_decoder,
    leader_reply_decoder,
    stream_status_decoder,
    trade_topic,
    trader_execution_topic,
)
from naived.exchange import binance as exchange
from naived.market.gate import MAX_MARKET_FRAME, MarketGate
from naived.tree.process import last_words

log = logging.getLogger(__name__)
T = TypeVar("T")

LEADER_TIMEOUT_MS = 2000
# At most one order query per this many seconds while the price sits on our order; longer while
# the host's rate budget is tight (`Budget.recheck_interval`).
CHECK_INTERVAL = 0.05
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0
# Binance refuses a timestamp 1 s or more ahead of its clock, so the clock of any request it
# took in was less than 1 s ahead of the server's: at most 1 s of validity beyond recvWindow.
CLOCK_MARGIN = 1.0
# An order is signed at most this long after the leader stored the state that allows it (the
# intent and its send time, stored through the lease's fence on a cluster). A trader paused past
# it (SIGSTOP, a frozen VM) stores its state again first: on a host that lost the symbol's lease
# that write is refused and nothing is sent, so a paused process never places an order after its
# adopter has looked the intent up and placed it (a client order id is unique only while open).
SEND_WITHIN = 1.0
# After an order refused for its price (PERCENT_PRICE_BY_SIDE), the next attempt waits this long,
# doubling up to the maximum: a feed far from the market never makes a trader hammer the exchange.
PRICE_REFUSAL_WAIT = 1.0
PRICE_REFUSAL_WAIT_MAX = 60.0


def price_refused(exc: exchange.BinanceError) -> bool:
    """-1013 "Filter failure: PERCENT_PRICE_BY_SIDE" (or the older PERCENT_PRICE): refused before
    the matching engine for being too far from the market's average price. It passes when the
    market or the order's price moves, unlike the other filters (tick, lot, notional), which the
    same settings would break again."""
    return exc.code == -1013 and exc.msg.startswith("Filter failure: PERCENT_PRICE")
# The leader hears what a trader saw of the market (drops, last trade) at most this often (one REQ round trip each).
MARKET_REPORT_SECONDS = 1.0


def settle_deadline(started: float, last_unknown_send: float | None, intent: Intent, window: float) -> float:
    """Monotonic time after which "no order with this client order id" is definite: no request
    for it that could still execute is in flight. 0 when none was ever sent.

    A send from this process with an unknown outcome bounds it from the moment that send
    returned (its timestamp was taken before). A predecessor's send (the intent says one was
    attempted: `sent_at`) happened before this process started, at an unknown moment after
    `sent_at` was stored, so it counts from `started`: conservative, and a monotonic clock needs
    no trust in the wall clock across a restart.
    """
    deadline = started + window if intent.sent_at is not None else 0.0
    if last_unknown_send is not None:
        deadline = max(deadline, last_unknown_send + window)
    return deadline


def backoff(attempt: int) -> float:
    """The wait before retry `attempt` (0, 1, ...): from BACKOFF_FIRST, doubling, at most BACKOFF_MAX."""
    return min(BACKOFF_FIRST * 2.0 ** min(attempt, 16), BACKOFF_MAX)


def _level(refusal: exchange.RateLimited) -> int:
    return logging.DEBUG if isinstance(refusal, exchange.OverBudget) else logging.WARNING


class LeaderLink:
    """REQ to the leader. RELAXED + CORRELATE: a lost reply is resent, a stale one ignored."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.socket = ctx.socket(zmq.REQ)
        self.socket.setsockopt(zmq.REQ_RELAXED, 1)
        self.socket.setsockopt(zmq.REQ_CORRELATE, 1)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def call(self, message: msgspec.Struct) -> None:
        payload = encode(message)
        while True:
            self.socket.send(payload)
            if self.socket.poll(LEADER_TIMEOUT_MS, zmq.POLLIN):
                leader_reply_decoder.decode(self.socket.recv())
                return
            log.warning("no ack from the leader in %d ms, resending", LEADER_TIMEOUT_MS)


class Trader:
    def __init__(self, config: Config, state: TraderState) -> None:
        self.state = state
        self.acked: TraderState | None = None  # the last state the leader acked
        self.symbol = state.symbol
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.MAXMSGSIZE, MAX_MARKET_FRAME)
        self.sub.connect(config.streamer.endpoint)
        self.sub.setsockopt(zmq.SUBSCRIBE, trade_topic(self.symbol))
        self.trades_on = True
        # Pushed fills: the account stream's reports of this trader's orders, its status (said to
        # everyone when it changes, and to this trader alone, on this trader's own topic, whenever
        # this subscription reaches a new account-stream process: no periodic wake-ups), and the
        # leader's requests to look an order up (its reconcile found it no longer open).
        self.reports = self.ctx.socket(zmq.SUB)
        self.reports.setsockopt(zmq.LINGER, 0)
        self.reports.connect(config.account_stream_endpoint)
        self.reports.connect(config.leader_pub_endpoint(self.symbol))
        self.own_topic = trader_execution_topic(state.id_prefix, state.trader_id)
        for topic in (self.own_topic, STREAM_STATUS_TOPIC, check_topic(state.trader_id)):
            self.reports.setsockopt(zmq.SUBSCRIBE, topic)
        self.stream_session: str | None = None  # the account stream's connection last heard of
        self.stream_up = False
        self.fallback_every = config.account_stream.fallback_check_seconds
        self.next_fallback = 0.0  # monotonic: the next REST check while the stream is not up
        self.pushed: dict[str, dict[int, Fill]] = {}  # client order id -> its pushed fills by trade id
        trading = config.trading.merged(state.symbol)  # the cycle's budget is in its own settings
        # Every trade frame is checked here before the strategy sees it (naived/market/gate.py).
        self.gate = MarketGate(self.symbol, trading.price_band, f"{self.symbol}/{state.trader_id}")
        self.market_told: tuple[dict[str, int], TradeEvent | None, bool] = ({}, None, True)  # last acked report
        self.next_market_report = 0.0  # monotonic
        # The leader starts another trader on a rebuy only while fewer than `chunks` run.
        self.rebuy_possible = cycles.rebuy_possible(trading)
        self.leader = LeaderLink(self.ctx, config.leader_endpoint(self.symbol))
        self.client = _take_prepared() or exchange.client_for(config)
        # How long a sent order request may still execute: recvWindow, then the exchange's
        # processing timeout, plus the clock margin Binance's timestamp rule allows; and for a
        # predecessor's, the SEND_WITHIN it may have waited before it signed.
        self.window = (config.exchange.recv_window_ms / 1000 + config.exchange.backend_timeout_seconds + CLOCK_MARGIN
                       + SEND_WITHIN)
        # A predecessor cannot have signed anything later than SEND_WITHIN after its last stored
        # state, which was before this process was forked (on this host: it died first; on a
        # cluster: its lease expired before ours was granted).
        self.started = time.monotonic()
        self.stored_at = 0.0  # monotonic, before the leader's last ack: the state then stored allows a send until + SEND_WITHIN
        self.last_unknown_send: float | None = None  # monotonic, after a send of unknown outcome returned
        self.last_check = 0.0
        self.recheck: str | None = None  # an order to query again once the poll goes quiet
        self.refusal_wait = PRICE_REFUSAL_WAIT  # the next wait after an order refused for its price
        self.buys_held_until = 0.0  # monotonic: no new buy before this (the last one was refused for its price)

    # --- talking to the leader ---------------------------------------------------

    def report(self) -> None:
        if self.state is self.acked:
            return  # already stored
        self.store_again()

    def store_again(self) -> None:
        """Have the leader store the state (again: a fresh proof, on a cluster, that the lease holds)."""
        asked = time.monotonic()
        self.leader.call(StateUpdated(self.state, self.client.used_weight))
        self.acked, self.stored_at = self.state, asked

    # --- talking to the exchange ---------------------------------------------------

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Retry transient failures (unknown outcome, rate limit, connection) of a read."""
        delay = 0.05
        while True:
            try:
                return call()
            except exchange.RateLimited as exc:
                # The budget holding a read back is pacing, not news: hundreds of traders do it.
                log.log(_level(exc), "%s: %s, waiting", what, exc)
                time.sleep(exc.retry_after)
            except exchange.OutcomeUnknown as exc:  # every transport failure arrives as this
                log.warning("%s: %s, retrying in %.2fs", what, type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    def lookup(self, intent: Intent) -> Order | None:
        """The order behind an intent, or None only when the exchange definitely has none."""

        def get() -> Order | None:
            try:
                return self.client.get_order(self.symbol, intent.client_order_id)
            except exchange.UnknownOrder:
                return None

        return self._retrying(f"look up {intent.client_order_id}", get)

    def lookup_settled(self, intent: Intent) -> Order | None:
        """The order behind an intent, or None once no request for it can still execute.

        "No such order" is definite only for requests the exchange has already decided: one in
        flight, or taken in and still in the matching engine (-1007, 5XX, no answer), may still
        be accepted, and a second placement would then be a duplicate (Binance refuses a
        repeated client order id only while the first is open)."""
        found = self.lookup(intent)
        wait = settle_deadline(self.started, self.last_unknown_send, intent, self.window) - time.monotonic()
        if found is None and wait > 0:
            log.info(
                "%s/%d: %s not at the exchange; asking again in %.1fs, when no request in flight can still execute",
                self.symbol, self.state.trader_id, intent.client_order_id, wait,
            )
            time.sleep(wait)
            found = self.lookup(intent)
        return found

    # --- the venue the actions are carried out at (naived.core.actions) ----------------

    def record(self, state: TraderState) -> None:
        self.state = state
        self.report()

    def now(self) -> float:
        return time.time()

    def find(self, intent: Intent) -> Order | None:
        found = self.lookup_settled(intent)
        if found is not None:
            log.info("%s/%d: adopted %s %s: %s",
                     self.symbol, self.state.trader_id, intent.side, intent.client_order_id, found.status)
            self.refusal_wait = PRICE_REFUSAL_WAIT
        return found

    def send(self, intent: Intent) -> Order | actions.Unsent:
        try:
            order = self.send_order(intent)
        except exchange.OutcomeUnknown as exc:  # every transport failure arrives as this
            self.last_unknown_send = time.monotonic()
            log.warning("%s/%d: place %s: outcome unknown (%s)", self.symbol, self.state.trader_id, intent.client_order_id, exc)
            return actions.Unsent.UNKNOWN
        except exchange.BinanceError as exc:
            if exc.code == -2010 and "Duplicate" in exc.msg:
                return actions.Unsent.AGAIN  # it is there: the look-up before the next send adopts it
            if not price_refused(exc):
                raise
            wait = self.next_refusal_wait()
            if intent.side == "BUY":
                self.buys_held_until = time.monotonic() + wait
                log.warning("%s/%d: buy %s at %s refused (%s); the next buy from a trade in %.0fs", self.symbol,
                            self.state.trader_id, intent.client_order_id, intent.price, exc.msg, wait)
            else:
                log.warning("%s/%d: sell %s at %s refused (%s); placing it again in %.0fs", self.symbol,
                            self.state.trader_id, intent.client_order_id, intent.price, exc.msg, wait)
                time.sleep(wait)
            return actions.Unsent.PRICE_REFUSED
        log.info("%s/%d: placed %s %s %s @ %s",
                 self.symbol, self.state.trader_id, intent.side, intent.client_order_id, intent.quantity, intent.price)
        self.refusal_wait = PRICE_REFUSAL_WAIT
        return order

    def back_off(self, attempt: int) -> None:
        time.sleep(backoff(attempt))

    def look_up(self, client_order_id: str) -> Order | None:
        """A check a trade asked for: at most one per `CHECK_INTERVAL` (longer while the host's
        rate budget is tight); a check held back is made once the poll goes quiet."""
        if time.monotonic() - self.last_check < self.client.budget.recheck_interval(CHECK_INTERVAL):
            self.recheck = client_order_id
            return None
        return self.ask(client_order_id)

    def fills(self, order: Order) -> list[Fill]:
        order_id = order.order_id
        assert order_id is not None
        return self._retrying(f"trades of {order.client_order_id}", lambda: self.client.my_trades(self.symbol, order_id))

    def fills_lag(self, order: Order, attempt: int) -> None:
        log.info("%s/%d: trades of %s do not add up to %s yet, asking again",
                 self.symbol, self.state.trader_id, order.client_order_id, order.executed_qty)
        time.sleep(backoff(attempt))

    def next_refusal_wait(self) -> float:
        wait, self.refusal_wait = self.refusal_wait, min(self.refusal_wait * 2, PRICE_REFUSAL_WAIT_MAX)
        return wait

    def send_order(self, intent: Intent) -> Order:
        """Send the order, waiting out refusals: a 429/418, or the host's budget, refuses before
        the matching engine, so nothing was placed and the same send is safe after the wait."""
        while True:
            try:
                return self.client.new_order(self.symbol, intent.side, intent.price, intent.quantity, intent.client_order_id,
                                             not_after=self.stored_at + SEND_WITHIN)
            except exchange.Stale:
                log.info("%s/%d: place %s: %.1fs since the state was stored (paused?), storing it again first",
                         self.symbol, self.state.trader_id, intent.client_order_id, time.monotonic() - self.stored_at)
                self.store_again()
            except exchange.RateLimited as exc:
                log.log(_level(exc), "%s/%d: place %s: %s, waiting",
                        self.symbol, self.state.trader_id, intent.client_order_id, exc)
                time.sleep(exc.retry_after)

    def ask(self, client_order_id: str, follow_up: bool = True) -> Order | None:
        """Query one of our orders (None: an older leg, replaced since the check was planned). The
        paper exchange sees the same trade we just saw and may not have filled on it yet:
        `follow_up` asks once more when the stream goes quiet."""
        if client_order_id not in {o.client_order_id for o in (self.state.buy_order, self.state.sell_order) if o}:
            self.recheck = None
            return None
        self.last_check = time.monotonic()
        order = self._retrying(f"check {client_order_id}", lambda: self.client.get_order(self.symbol, client_order_id))
        self.recheck = client_order_id if follow_up and order.status not in strategy.FINAL else None
        return order

    def check_now(self, client_order_id: str) -> bool:
        """Ask about one of our orders at once and act on the answer (a new account-stream
        session, the leader's reconcile, a held-back check); True when the cycle is over."""
        order = self.ask(client_order_id, follow_up=False)
        if order is None:
            return False
        self.state, action = actions.answer(self.state, order, self)
        return self.act(action)

    def warm_up(self) -> None:
        """Open the exchange connection and learn its clock before the first trade, so the
        first order does not pay for a TCP handshake and a server-time request."""
        try:
            self.client.server_time()
        except Exception as exc:  # the first order will retry whatever failed here
            log.warning("exchange warm-up failed: %s", exc)

    # --- the cycle -------------------------------------------------------------------

    def act(self, action: strategy.Action) -> bool:
        """Carry out actions until there is nothing to do; True when the cycle is over."""
        self.state, done = actions.carry_out(self.state, action, self)
        if done:
            r = self.state.result
            log.info(
                "%s/%d: cycle %d finished: bought %s, sold %s, fees %s (%s in quote), pnl %s, dust %s%s",
                self.symbol, self.state.trader_id, self.state.cycle, r and r.bought, r and r.sold,
                r and r.fees, r and r.fees_quote, r and r.pnl, r and r.dust, f" ({r.note})" if r and r.note else "",
            )
        return done

    def resume(self) -> bool:
        """On (re)start: settle the pending intent, then ask about open orders."""
        state = self.state
        if state.status == "done":
            return True
        if state.intent is not None:
            return self.act(strategy.Place(state.intent))
        open_order = state.sell_order or state.buy_order
        if open_order is not None:
            return self.act(strategy.Check(open_order.client_order_id))
        return False

    # --- pushed fills ---------------------------------------------------------------

    def live(self) -> bool:
        """Is the account stream known to be up? It says so when that changes; a process of it
        that hangs is killed by the root's watchdog, and its successor says it anew."""
        return self.stream_up

    def look_up_open(self, why: str) -> bool:
        """Ask the exchange about the order waited on; True when the cycle is over."""
        order = strategy.open_order(self.state)
        if order is None:
            return False
        log.info("%s/%d: asking about %s: %s", self.symbol, self.state.trader_id, order.client_order_id, why)
        return self.check_now(order.client_order_id)

    def on_stream_status(self, status: StreamStatus) -> bool:
        was_live = self.live()
        if not status.up:
            self.stream_up = False
            if not was_live:
                self.next_fallback = time.monotonic()  # what was pushed just before may be lost
                return False
            log.info("%s/%d: the account stream is down; asking the exchange every %gs", self.symbol,
                     self.state.trader_id, self.fallback_every)
            # What was pushed just before may be lost: ask now, before a reconnect's news in the
            # same drain could make the look-up look like a new session's.
            self.next_fallback = time.monotonic() + self.fallback_every
            return self.look_up_open("the account stream is not up")
        new_session = status.session != self.stream_session
        self.stream_session, self.stream_up = status.session, True
        # Reports between two sessions (or before this trader's subscription took effect) may be
        # lost: one look-up covers them; from here on, every change is pushed.
        return new_session and self.look_up_open(f"account stream session {status.session}")

    def on_reports(self) -> bool:
        """Drain the reports socket; True when the cycle is over."""
        while self.reports.poll(0, zmq.POLLIN):
            topic, payload = self.reports.recv_multipart()
            if topic in (STREAM_STATUS_TOPIC, self.own_topic):  # a report's topic is longer: its order id
                done = self.on_stream_status(stream_status_decoder.decode(payload))
            elif topic == check_topic(self.state.trader_id):
                done = self.look_up_open("the leader's reconcile found it no longer open")
            else:
                done = self.on_report(execution_report_decoder.decode(payload))
            if done:
                return True
        return False

    def on_report(self, report: ExecutionReport) -> bool:
        order = strategy.order_from_report(report)
        fill = strategy.fill_from_report(report)
        fills = self.pushed.setdefault(order.client_order_id, {})
        if fill is not None:
            fills[fill.trade_id] = fill
        previous = self.state
        self.state, action = strategy.on_report(self.state, order, list(fills.values()))
        if self.state is previous:
            return False
        log.info("%s/%d: pushed: %s %s (%s executed)", self.symbol, self.state.trader_id, order.client_order_id,
                 order.status, order.executed_qty)
        self.report()
        return self.act(action)

    def follow_trades(self) -> None:
        """Subscribe to trades only while something needs them (see `strategy.wants_trades`)."""
        want = strategy.wants_trades(self.state, self.rebuy_possible, self.live())
        if want != self.trades_on:
            self.sub.setsockopt(zmq.SUBSCRIBE if want else zmq.UNSUBSCRIBE, trade_topic(self.symbol))
            # The gate keeps the prices it knew across the gap: its decisions do not depend on
            # when the account stream was up, and a move during the gap is followed once it holds
            # for 3 trades of 5 (the median), as any move is.
            self.trades_on = want
            log.info("%s/%d: %s", self.symbol, self.state.trader_id,
                     "following trades" if want else "waiting for pushes only, trades unsubscribed")

    def timeout_ms(self) -> int | None:
        now = time.monotonic()
        deadlines = []
        if self.recheck:
            deadlines.append(now + self.client.budget.recheck_interval(CHECK_INTERVAL))
        if strategy.open_order(self.state) is not None and not self.live():
            deadlines.append(self.next_fallback)
        if self.market_seen() != self.market_told:
            deadlines.append(self.next_market_report)
        if (summary := self.gate.log.deadline()) is not None:
            deadlines.append(summary)
        if not deadlines:
            return None
        return max(0, int((min(deadlines) - now) * 1000) + 1)

    def market_seen(self) -> tuple[dict[str, int], TradeEvent | None, bool]:
        return self.gate.dropped, self.gate.last, self.trades_on

    def report_market(self, now: float | None = None) -> None:
        """Tell the leader what this trader saw of the market (drops, last trade, following), at
        most every MARKET_REPORT_SECONDS (`now` None: at once, on the way out); and log the drops'
        summary when it is due."""
        self.gate.log.flush()
        seen = self.market_seen()
        if seen == self.market_told or (now is not None and now < self.next_market_report):
            return
        dropped, last_trade, following = seen
        self.leader.call(MarketReport(self.state.trader_id, os.getpid(), dict(dropped), last_trade, following))
        self.market_told = (dict(dropped), last_trade, following)
        self.next_market_report = time.monotonic() + MARKET_REPORT_SECONDS

    def on_timers(self) -> bool:
        self.report_market(time.monotonic())
        if self.live() or strategy.open_order(self.state) is None:
            return False
        if time.monotonic() >= self.next_fallback:
            self.next_fallback = time.monotonic() + self.fallback_every
            return self.look_up_open("the account stream is not up")
        return False

    def run(self) -> int:
        code = self.trade()
        if code == 0:
            self.report_market()  # a finished cycle's last counts, before the leader reaps it
        return code

    def trade(self) -> int:
        s = self.state
        # Hello first: the leader counts this trader ready from it; the log line can wait.
        self.leader.call(TraderHello(s.trader_id, os.getpid()))
        log.info(
            "trader %s/%d cycle %d started (%s%s)",
            s.symbol, s.trader_id, s.cycle, s.status, ", with a pending intent" if s.intent else "",
        )
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.reports, zmq.POLLIN)
        try:
            if self.resume():
                return 0
            if self.state.status == "new":
                self.warm_up()
            self.next_fallback = time.monotonic() + self.fallback_every  # resume() has just asked
            while True:
                self.follow_trades()
                # Idle traders sleep until a trade, a push or a deadline: hundreds of them cost no CPU.
                ready = dict(poller.poll(self.timeout_ms()))
                if self.reports in ready and self.on_reports():
                    return 0
                if self.on_timers():
                    return 0
                if self.sub not in ready:
                    if self.recheck and not ready and self.check_now(self.recheck):
                        return 0
                    continue
                event = self.gate.check(self.sub.recv_multipart())
                if not self.trades_on or not isinstance(event, TradeEvent):
                    continue  # queued before the unsubscribe, or dropped (counted) by the gate
                if self.state.status == "new" and time.monotonic() < self.buys_held_until:
                    continue  # its last buy was refused for its price: not one per trade
                if strategy.rebuy_due(self.state, event):
                    self.state = msgspec.structs.replace(self.state, rebuy_notified=True)
                    self.report()
                    self.leader.call(RebuyTriggered(self.state.trader_id))
                self.state, action = strategy.on_trade(self.state, event)
                if isinstance(action, strategy.Check) and self.live():
                    continue  # the stream pushes whatever the exchange does with it
                if self.act(action):
                    return 0
        except (strategy.StrategyError, exchange.BinanceError) as exc:
            log.error("%s/%d: %s", s.symbol, s.trader_id, exc)
            last_words(str(exc))
            self.leader.call(TraderFailed(s.trader_id, str(exc)))
            return 2


_prepared: exchange.BinanceClient | None = None


def prepare(config: Config) -> None:
    """In the root, before it forks anything: build the traders' exchange client once and never
    use it (no connection, no request). Every trader inherits it and takes it instead of
    building its own, which ran URL parsing, HMAC and header set-up code in every forked trader
    and copied the pages it touched (measured: 0.2 MiB private per trader).
    The exchange settings it is built from only change with a restart of naived."""
    global _prepared
    _prepared = exchange.client_for(config)


def _take_prepared() -> exchange.BinanceClient | None:
    """The inherited, never-used client, once per process (a second Trader builds its own)."""
    global _prepared
    client, _prepared = _prepared, None
    return client


def run(config: Config, state: TraderState) -> int:
    """Entry point in the forked child."""
    return Trader(config, state).run()
