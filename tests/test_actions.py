"""The one interpreter of the strategy's actions (`naived.core.actions`), against a scripted venue:
the intent protocol's order of records, sends and look-ups, whatever the exchange answers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from test_strategy import XRP_FILLS, filled, state, trade

from naived.core import actions, strategy
from naived.core.actions import Unsent
from naived.core.messages import Fill, Intent, Order, TraderState

PLACED = "placed"  # a scripted send that places the order


class Venue:
    """Answers from a script; every call lands in `journal` as (what, detail)."""

    def __init__(self, sends: Iterable[object] = (), finds: Iterable[Order | None] = (), orders: Iterable[Order | None] = (),
                 fills: Iterable[list[Fill]] = ()) -> None:
        self.sends, self.finds, self.orders, self.fill_pages = list(sends), list(finds), list(orders), list(fills)
        self.journal: list[tuple[str, Any]] = []
        self.clock = 100.0

    def record(self, state: TraderState) -> None:
        self.journal.append(("record", state))

    def now(self) -> float:
        self.clock += 1
        return self.clock

    def send(self, intent: Intent) -> Order | Unsent:
        self.journal.append(("send", intent))
        answer = self.sends.pop(0)
        if isinstance(answer, Exception):
            raise answer
        if answer == PLACED:
            return Order(intent.client_order_id, intent.side, intent.price, intent.quantity, "NEW", 11)
        assert isinstance(answer, (Order, Unsent))
        return answer

    def find(self, intent: Intent) -> Order | None:
        self.journal.append(("find", intent.client_order_id))
        return self.finds.pop(0)

    def back_off(self, attempt: int) -> None:
        self.journal.append(("back_off", attempt))

    def look_up(self, client_order_id: str) -> Order | None:
        self.journal.append(("look_up", client_order_id))
        return self.orders.pop(0)

    def fills(self, order: Order) -> list[Fill]:
        self.journal.append(("fills", order.client_order_id))
        return self.fill_pages.pop(0)

    def fills_lag(self, order: Order, attempt: int) -> None:
        self.journal.append(("fills_lag", attempt))

    def steps(self) -> list[str]:
        """The journal in short: `record:<status>[+intent[/sent][/unknown]]`, `send`, ..."""
        out = []
        for what, detail in self.journal:
            if what == "record":
                i = detail.intent
                out.append(f"record:{detail.status}" + ("" if i is None else "+intent" + ("/sent" if i.sent_at else "")
                                                        + ("/unknown" if i.unknown else "")))
            else:
                out.append(what)
        return out


def a_buy() -> tuple[TraderState, strategy.Action]:
    """A fresh cycle's first decision: buy 40 XRP at 0.4950."""
    return strategy.on_trade(state(), trade("0.5000"))


def test_an_intent_is_recorded_before_its_order_is_sent_and_the_order_after() -> None:
    s, action = a_buy()
    venue = Venue(sends=[PLACED])
    s, done = actions.carry_out(s, action, venue)
    assert not done and s.status == "buying" and s.intent is None and s.buy_order is not None
    assert venue.steps() == ["record:new+intent", "record:new+intent/sent", "send", "record:buying"]
    assert venue.journal[1][1].intent.sent_at == 101.0  # the venue's clock, before the send


def test_an_unknown_outcome_is_recorded_then_resolved_by_a_look_up_never_a_blind_resend() -> None:
    s, action = a_buy()
    venue = Venue(sends=[Unsent.UNKNOWN], finds=[Order("nvq7x2k9-3-17B", "BUY", "0.495", "40", "NEW", 11)])
    s, _ = actions.carry_out(s, action, venue)
    assert venue.steps() == ["record:new+intent", "record:new+intent/sent", "send", "record:new+intent/sent/unknown",
                             "back_off", "find", "record:buying"]
    assert s.buy_order is not None and s.buy_order.order_id == 11  # adopted


def test_a_send_found_missing_once_settled_is_sent_again_and_unknown_is_recorded_once() -> None:
    s, action = a_buy()
    venue = Venue(sends=[Unsent.UNKNOWN, Unsent.UNKNOWN, PLACED], finds=[None, None])
    actions.carry_out(s, action, venue)
    assert venue.steps() == [
        "record:new+intent", "record:new+intent/sent", "send", "record:new+intent/sent/unknown", "back_off",
        "find", "record:new+intent/sent/unknown", "send", "back_off",
        "find", "record:new+intent/sent/unknown", "send", "record:buying",
    ]
    assert [d for w, d in venue.journal if w == "back_off"] == [0, 1]
    sent = [d for w, d in venue.journal if w == "send"]
    assert len({i.client_order_id for i in sent}) == 1  # one id: the exchange can never hold two
    assert sent[0].sent_at < sent[1].sent_at < sent[2].sent_at  # each send recorded anew before it goes


def test_a_duplicate_id_is_looked_up_and_adopted() -> None:
    s, action = a_buy()
    venue = Venue(sends=[Unsent.AGAIN], finds=[Order("nvq7x2k9-3-17B", "BUY", "0.4950", "40", "NEW", 11)])
    actions.carry_out(s, action, venue)
    assert venue.steps() == ["record:new+intent", "record:new+intent/sent", "send", "find", "record:buying"]


def test_an_intent_whose_send_was_attempted_is_looked_up_before_any_send() -> None:
    """A restarted trader: its stored intent says a send was attempted."""
    s = strategy.intent_sending(a_buy()[0], 50.0)
    venue = Venue(sends=[PLACED], finds=[None])
    actions.carry_out(s, strategy.Place(s.intent), venue)
    assert venue.steps() == ["record:new+intent/sent", "find", "record:new+intent/sent", "send", "record:buying"]


def test_a_buy_refused_for_its_price_is_forgotten_and_a_sell_is_sent_again() -> None:
    s, action = a_buy()
    venue = Venue(sends=[Unsent.PRICE_REFUSED])
    s, done = actions.carry_out(s, action, venue)
    assert not done and s.status == "new" and s.intent is None and s.started_at is None
    assert venue.steps() == ["record:new+intent", "record:new+intent/sent", "send", "record:new"]
    # The sell's price is the cycle's: sent again, at the same price, under the same id.
    s, sell = full_cycle_to_the_sell()
    venue = Venue(sends=[Unsent.PRICE_REFUSED, PLACED], finds=[None])
    s, done = actions.carry_out(s, sell, venue)
    sent = [d for w, d in venue.journal if w == "send"]
    assert [(i.client_order_id, i.price) for i in sent] == [("nvq7x2k9-3-17S", "0.4964")] * 2
    assert venue.steps()[3] == "find" and s.sell_order is not None


def full_cycle_to_the_sell() -> tuple[TraderState, strategy.Action]:
    buy = Order("nvq7x2k9-3-17B", "BUY", "0.4950", "40", "NEW", 11)
    s, _ = strategy.placed(strategy.on_trade(state(), trade("0.5000"))[0], buy)
    return strategy.on_order(s, filled(buy, "40", "19.8", fills=XRP_FILLS))


def test_any_other_refusal_is_the_venues_to_raise() -> None:
    s, action = a_buy()
    with pytest.raises(strategy.StrategyError):
        actions.carry_out(s, action, Venue(sends=[strategy.StrategyError("refused")]))


def test_a_check_the_venue_holds_back_stops_and_an_answer_is_recorded_only_when_it_changes_something() -> None:
    s, action = a_buy()
    s, _ = actions.carry_out(s, action, Venue(sends=[PLACED]))
    check = strategy.on_trade(s, trade("0.4950"))[1]
    assert check == strategy.Check("nvq7x2k9-3-17B")
    venue = Venue(orders=[None])
    assert actions.carry_out(s, check, venue) == (s, False) and venue.steps() == ["look_up"]
    venue = Venue(orders=[s.buy_order])  # still open, as it was
    s2, done = actions.carry_out(s, check, venue)
    assert s2 == s and not done and venue.steps() == ["look_up"]
    assert s.buy_order is not None
    venue = Venue(orders=[filled(s.buy_order, "40", "19.8")], fills=[XRP_FILLS], sends=[PLACED])
    s3, done = actions.carry_out(s, check, venue)
    assert s3.status == "selling" and not done
    assert venue.steps() == ["look_up", "record:buying", "fills", "record:selling+intent", "record:selling+intent",
                             "record:selling+intent/sent", "send", "record:selling"]


def test_fills_that_lag_are_asked_for_again_and_a_finished_cycle_is_recorded() -> None:
    s, sell = full_cycle_to_the_sell()
    s, _ = actions.carry_out(s, sell, Venue(sends=[PLACED]))
    assert s.sell_order is not None
    sold = filled(s.sell_order, "39", "19.3596")
    fills = [Fill("0.4964", "39", "0.0193596", "USDT", 3)]
    venue = Venue(orders=[sold], fills=[[], fills[:0], fills])
    s, done = actions.carry_out(s, strategy.Check(sold.client_order_id), venue)
    assert done and s.status == "done" and s.result is not None
    assert venue.steps() == ["look_up", "record:selling", "fills", "fills_lag", "fills", "fills_lag", "fills",
                             "record:done", "record:done"]
    assert [d for w, d in venue.journal if w == "fills_lag"] == [0, 1]
