"""Carrying out the strategy's actions: what `Place`, `Check`, `FetchFills` and `Finish` mean,
written once for the daemon's trader (`naived.tree.trader`) and the backtest
(`naived.backtest.traders`).

The strategy decides; `carry_out` does what it decided against a `Venue`, the one thing that
differs between the two: the trader's venue is a Binance client (retries, rate limits, the
settle window of a send whose outcome is unknown) and its leader (a state is durable once the
leader acked it); the backtest's is the paper exchange in the same process, where nothing is
in flight and nothing is stored.

The intent protocol, in the order it happens (docs/architecture.md, "Order intents"): the
intent is recorded before its order exists; each send is recorded before it is made
(`sent_at`); a send whose outcome is unknown is recorded (`unknown`) and resolved by looking
the order up, never by sending blindly; an intent whose send was attempted is looked up before
it is sent again, and the order found is adopted.
"""

from __future__ import annotations

import enum
from typing import Protocol

from naived.core import strategy
from naived.core.messages import Fill, Intent, Order, TraderState


class Unsent(enum.Enum):
    """Why `Venue.send` has no order to show."""

    UNKNOWN = "outcome unknown"  # the request may still execute: resolved by looking it up
    AGAIN = "send again"  # nothing placed, or the id is already there (a duplicate): look up, then send
    PRICE_REFUSED = "refused for its price"  # PERCENT_PRICE_BY_SIDE: nothing placed, passes when the market moves


class Venue(Protocol):
    """Where the actions are carried out: the exchange as the process reaches it, and where the
    trader's state is kept."""

    def record(self, state: TraderState) -> None:
        """The trader's state from now on; where there is a store, durable when this returns
        (what a restarted trader resumes)."""

    def now(self) -> float:
        """Wall-clock seconds, for `Intent.sent_at` (the backtest: the tape's time)."""

    def send(self, intent: Intent) -> Order | Unsent:
        """Send the intent's order, once, waiting out refusals that place nothing and pass (a rate
        limit; a price refusal: for as long as the venue waits before the next attempt). Any other
        refusal raises."""

    def find(self, intent: Intent) -> Order | None:
        """The order of an intent whose send was attempted; None once the exchange definitely has
        none (no request for it can still execute)."""

    def back_off(self, attempt: int) -> None:
        """Wait before looking up a send whose outcome was unknown (attempt 0, 1, ... of this intent)."""

    def look_up(self, client_order_id: str) -> Order | None:
        """One of our orders as the exchange has it; None: not now (the venue asks again later)."""

    def fills(self, order: Order) -> list[Fill]:
        """The trades of a final order, with their commissions."""

    def fills_lag(self, order: Order, attempt: int) -> None:
        """The order's trades do not add up to what it executed yet (the trade list may lag the
        order's status): wait before asking again (attempt 0, 1, ...), or raise."""


def carry_out(state: TraderState, action: strategy.Action, venue: Venue) -> tuple[TraderState, bool]:
    """Carry out actions until there is nothing to do: the last state, and True when the cycle
    is over (its result recorded; the trader exits 0)."""
    while action is not None:
        match action:
            case strategy.Place():
                state, order = _place(state, venue)
                if order is None:
                    return state, False  # a buy refused for its price: a later trade decides the next
                state, action = strategy.placed(state, order)
                venue.record(state)
            case strategy.Check(client_order_id):
                order = venue.look_up(client_order_id)
                if order is None:
                    return state, False
                state, action = answer(state, order, venue)
            case strategy.FetchFills(order):
                attempt = 0
                while True:
                    state, action = strategy.fills_learned(state, order, venue.fills(order))
                    if not (isinstance(action, strategy.FetchFills) and action.order == order):
                        break
                    venue.fills_lag(order, attempt)
                    attempt += 1
                venue.record(state)
            case strategy.Finish():
                venue.record(state)  # the result is stored before the exit says "done"
                return state, True
    return state, False


def answer(state: TraderState, order: Order, venue: Venue) -> tuple[TraderState, strategy.Action]:
    """What the exchange says about one of our orders, decided (`strategy.on_order`) and recorded
    when it changes anything (an order still open as it was is not stored again)."""
    new, action = strategy.on_order(state, order)
    if new != state:
        venue.record(new)
    return new, action


def _place(state: TraderState, venue: Venue) -> tuple[TraderState, Order | None]:
    """The state's intent placed exactly once, whatever fails on the way: the order (sent now or
    adopted), or None when a buy was refused for its price (the intent is then forgotten)."""
    venue.record(state)  # the intent is recorded before its order exists
    unknowns = 0
    while True:
        intent = state.intent
        assert intent is not None
        if intent.sent_at is not None:  # a send was attempted (here or by a predecessor)
            found = venue.find(intent)
            if found is not None:
                return state, found
        # Recorded before the send: a successor then knows a request may be out there.
        state = strategy.intent_sending(state, venue.now())
        venue.record(state)
        sending = state.intent
        assert sending is not None  # intent_sending keeps the intent, stamped with its send time
        sent = venue.send(sending)
        if isinstance(sent, Order):
            return state, sent
        if sent is Unsent.UNKNOWN:
            # The exchange may or may not have the order, now or later: record that, then ask.
            if not intent.unknown:
                state = strategy.intent_unknown(state)
                venue.record(state)
            venue.back_off(unknowns)
            unknowns += 1
        elif sent is Unsent.PRICE_REFUSED and intent.side == "BUY":
            # Its price came from a trade far from the market's average: the next buy comes from
            # a later trade (the venue holds buys back meanwhile).
            state = strategy.buy_refused(state)
            venue.record(state)
            return state, None
        # Otherwise nothing was placed, or the order is there already (a duplicate): look it up,
        # then send again. A sell refused for its price is sent again at the same price: it is
        # the cycle's, what the cycle holds must be sold, and the band follows the market.
