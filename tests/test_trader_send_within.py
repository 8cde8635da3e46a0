"""A trader signs an order only soon after its leader stored the state that allows it (trader.SEND_WITHIN).

On a cluster a paused trader (SIGSTOP, a frozen VM) can wake after its host lost the symbol's lease
and an adopter looked the intent up, found nothing and placed it: the paused one's send would place
it a second time (a client order id is unique only while the first is open). So a send that comes
too late stores the state again first, through the leader (whose write the lease fences), and only
then signs. The Trader here is real, in this process, with its leader and exchange client replaced
by recorders."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
from test_strategy import settings

from naived.core.config import parse_config
from naived.core.messages import Intent, Order, StateUpdated, TraderState
from naived.exchange import binance as exchange
from naived.tree import trader as trader_module

INTENT = Intent("nvq7x2k9-3-17B", "BUY", "0.5000", "20")


class Recorder:
    """The trader's leader link and exchange client in one: what happened, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.used_weight = 0

    def call(self, message: msgspec.Struct) -> None:  # LeaderLink.call
        assert isinstance(message, StateUpdated)
        self.events.append("stored")

    def new_order(self, symbol: str, side: str, price: str, quantity: str, client_order_id: str,
                  not_after: float | None = None) -> Order:
        assert not_after is not None, "an order sent with no deadline"
        if time.monotonic() > not_after:  # as BinanceClient does, before it signs
            self.events.append("stale")
            assert self.events.count("stale") < 3, "sent again and again without storing the state first"
            raise exchange.Stale("late")
        self.events.append("sent")
        return Order(client_order_id, side, price, quantity, "NEW", 1)


@contextlib.contextmanager
def a_trader(tmp_path: Path) -> Iterator[tuple[trader_module.Trader, Recorder]]:
    config = parse_config(f'[paths]\nruntime_dir = "{tmp_path}"\nstate_dir = "{tmp_path / "state"}"\n'.encode())
    state = TraderState(symbol="XRPUSDT", trader_id=3, cycle=17, id_prefix="nvq7x2k9", settings=settings(),
                        status="buying", intent=INTENT)
    t = trader_module.Trader(config, state)
    recorder = Recorder()
    t.leader, t.client = recorder, recorder  # type: ignore[assignment]  # recorders in place of the sockets
    try:
        yield t, recorder
    finally:
        t.ctx.destroy(linger=0)


def test_a_send_soon_after_the_state_was_stored_goes_out_at_once(tmp_path: Path) -> None:
    with a_trader(tmp_path) as (t, recorder):
        t.store_again()
        t.send_order(INTENT)
    assert recorder.events == ["stored", "sent"]


def test_a_send_after_a_pause_stores_the_state_again_first(tmp_path: Path) -> None:
    with a_trader(tmp_path) as (t, recorder):
        t.store_again()
        t.stored_at -= trader_module.SEND_WITHIN + 5  # as if paused for 5 s after the store
        t.send_order(INTENT)
    assert recorder.events == ["stored", "stale", "stored", "sent"]


def test_an_adopter_waits_for_a_predecessors_late_send_too(tmp_path: Path) -> None:
    """A predecessor may sign up to SEND_WITHIN after its last store, then recvWindow, the
    exchange's own timeout and the clock margin: the window the adopter waits before it places an
    intent that was sent and is not at the exchange."""
    with a_trader(tmp_path) as (t, _):
        sent = msgspec.structs.replace(INTENT, sent_at=time.time())
        deadline = trader_module.settle_deadline(t.started, None, sent, t.window)
    # the defaults: recvWindow 5 s, the exchange's own timeout 10 s
    assert deadline - t.started >= trader_module.SEND_WITHIN + 5.0 + 10.0 + trader_module.CLOCK_MARGIN
