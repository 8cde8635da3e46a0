"""The market-feed boundary (naived/market/gate.py): what a trader or the paper exchange acts on."""

from __future__ import annotations

import logging
from decimal import Decimal

import msgspec
import pytest
import zmq

from naived.core.config import ConfigError, parse_config
from naived.core.messages import Order, Settings, TradeEvent, TraderState, encode_trade, trade_topic
from naived.market.gate import BAND, DECODE, FRAMES, PRICE, QUANTITY, SYMBOL, TOPIC, WARMUP, MarketGate, positive_decimal
from naived.tree.trader import Trader

BAND_10 = Decimal("0.1")
SETTINGS = Settings("TUSDT", 1, "100", "0.01", "0.5", "0.01", "0.0001", "1", "1", "5", "T", "USDT")


def frames(symbol: str = "TUSDT", price: str = "0.1", qty: str = "100", trade_id: int = 1, **fields: object) -> list[bytes]:
    return encode_trade(TradeEvent("trade", 1, symbol, trade_id, price, qty, 1, False, **fields))


def raw(topic: bytes, payload: object) -> list[bytes]:
    return [topic, msgspec.msgpack.encode(payload)]


def event_dict(**changes: object) -> dict[str, object]:
    return {"e": "trade", "E": 1, "s": "TUSDT", "t": 1, "p": "0.1", "q": "100", "T": 1, "m": False, **changes}


def warm(gate: MarketGate, price: str = "0.1", n: int = 5) -> None:
    for i in range(n):
        gate.check(frames(price=price, trade_id=i))


@pytest.fixture
def gate() -> MarketGate:
    g = MarketGate("TUSDT", BAND_10, "TUSDT/0")
    warm(g)
    return g


def test_a_valid_trade_passes(gate: MarketGate) -> None:
    event = gate.check(frames(price="0.10002", trade_id=9))
    assert isinstance(event, TradeEvent) and (event.s, event.p, event.t) == ("TUSDT", "0.10002", 9)
    assert gate.dropped == {}


def test_a_prefix_neighbour_is_not_the_symbol(gate: MarketGate) -> None:
    # ZeroMQ delivers TRADE_EVENTS:TUSDTRY to a TRADE_EVENTS:TUSDT subscription: a market ~1000x dearer
    assert trade_topic("TUSDTRY").startswith(trade_topic("TUSDT"))
    assert gate.check(frames("TUSDTRY", price="100.1")) == TOPIC
    # the right topic, another symbol inside: as wrong
    assert gate.check([trade_topic("TUSDT"), frames("TUSDTRY", price="100.1")[1]]) == SYMBOL
    assert gate.dropped == {TOPIC: 1, SYMBOL: 1}


@pytest.mark.parametrize("message", [
    [trade_topic("TUSDT")],  # one frame
    [*frames(), b""],  # three
])
def test_frame_count(gate: MarketGate, message: list[bytes]) -> None:
    assert gate.check(message) == FRAMES


@pytest.mark.parametrize("payload", [
    b"\xc1",  # never valid msgpack
    b"not msgpack at all",
    msgspec.msgpack.encode(event_dict(p=0.1)),  # a float price
    msgspec.msgpack.encode(event_dict(q=float("nan"))),
    msgspec.msgpack.encode({"e": "trade"}),  # fields missing
    msgspec.msgpack.encode([1, 2, 3]),
])
def test_undecodable(gate: MarketGate, payload: bytes) -> None:
    assert gate.check([trade_topic("TUSDT"), payload]) == DECODE


@pytest.mark.parametrize("bad", ["NaN", "nan", "Infinity", "-inf", "-1", "-0.1", "0", "0.000", "1e-3", "1E+2", " 0.1", "0.1 ",
                                 "1_0", "", "0x10", "1" * 21, "0." + "1" * 21])
def test_price_and_quantity_must_be_plain_positive_decimals(gate: MarketGate, bad: str) -> None:
    assert gate.check(raw(trade_topic("TUSDT"), event_dict(p=bad))) == PRICE
    assert gate.check(raw(trade_topic("TUSDT"), event_dict(q=bad))) == QUANTITY
    assert positive_decimal(bad) is None


def test_positive_decimal() -> None:
    assert positive_decimal("0.10000000") == Decimal("0.1")
    assert positive_decimal("100") == Decimal(100)
    assert positive_decimal(Decimal("1")) is None  # only strings, as on the wire


def test_a_price_out_of_the_band_is_dropped(gate: MarketGate) -> None:
    # the case: 0.001 on a 0.5 market would buy 55,555 at 0.0009
    assert gate.check(frames(price="0.001")) == BAND
    assert gate.check(frames(price="0.111")) == BAND  # 11 % up
    assert gate.check(frames(price="0.089")) == BAND  # 11 % down
    assert isinstance(gate.check(frames(price="0.109")), TradeEvent)  # within 10 %
    assert isinstance(gate.check(frames(price="0.091")), TradeEvent)
    assert gate.dropped == {BAND: 3}


def test_two_wild_prices_in_a_row_do_not_move_the_reference(gate: MarketGate) -> None:
    assert [gate.check(frames(price="100")) for _ in range(2)] == [BAND, BAND]
    assert isinstance(gate.check(frames(price="0.1")), TradeEvent)


def test_the_first_frame_a_fresh_trader_sees_is_never_acted_on() -> None:
    gate = MarketGate("TUSDT", BAND_10, "TUSDT/0")
    assert gate.check(frames(price="100.1")) == WARMUP  # wild, and first: nothing to compare it with
    # nothing is acted on until five prices are known; the wild one is then outvoted
    assert [gate.check(frames(price="0.1")) for _ in range(3)] == [WARMUP] * 3
    assert isinstance(gate.check(frames(price="0.1")), TradeEvent)
    assert gate.check(frames(price="100.1")) == BAND
    assert gate.dropped == {BAND: 1}  # warming up is not dropping


def test_a_sustained_move_is_followed() -> None:
    gate = MarketGate("TUSDT", BAND_10, "TUSDT/0")
    warm(gate, "0.1")
    # the market really moves 50 %: a median of 5 follows once 3 trades agree
    verdicts = [gate.check(frames(price="0.15")) for _ in range(3)]
    assert verdicts[:2] == [BAND, BAND] and isinstance(verdicts[2], TradeEvent)
    assert isinstance(gate.check(frames(price="0.151")), TradeEvent)
    assert gate.check(frames(price="0.1")) == BAND  # the old level is now the outlier


def test_the_paper_exchange_acts_from_the_first_trade() -> None:
    gate = MarketGate("TUSDT", BAND_10, "paper feed TUSDT", confirm=1)
    assert isinstance(gate.check(frames(price="0.1")), TradeEvent)


def test_a_trader_that_subscribes_again_keeps_its_recent_prices(gate: MarketGate) -> None:
    """A trader unsubscribes from trades while its buy rests and the account stream is up, and
    subscribes again when the stream goes down. Its gate keeps the prices it knew (as the
    in-process backtest's gates, which see every trade): whether it acts on the next trade does
    not depend on when the account stream was up."""
    ctx = zmq.Context()
    trader = Trader.__new__(Trader)  # the subscription's bookkeeping only: no leader, no exchange
    trader.symbol, trader.gate, trader.rebuy_possible = "TUSDT", gate, False
    trader.sub = ctx.socket(zmq.SUB)
    trader.sub.setsockopt(zmq.LINGER, 0)
    try:
        order = Order("nv-0-1B", "BUY", "0.1", "100", "NEW", 7, "0")
        trader.state = TraderState("TUSDT", 0, 1, SETTINGS, status="buying", buy_order=order)
        trader.trades_on, trader.stream_up = True, True
        trader.follow_trades()
        assert not trader.trades_on  # the buy rests and the stream pushes its fills
        trader.stream_up = False
        trader.follow_trades()
        assert trader.trades_on  # the stream went down: trades again, for the REST checks
        assert isinstance(gate.check(frames(price="0.1")), TradeEvent)  # not WARMUP
    finally:
        trader.sub.close()
        ctx.term()


def test_drops_are_logged_at_a_bounded_rate(gate: MarketGate, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="naived.market.gate"):
        for _ in range(100):
            gate.check([b"junk"])
    assert len(caplog.records) == 1  # the first drop; the rest wait for the summary
    assert "TUSDT/0" in caplog.text and "frames" in caplog.text
    gate.log.flush(now=gate.log.next_line)
    assert len(caplog.records) == 2 and "TUSDT/0: 99 more market frames dropped (frames 99)" in caplog.records[1].getMessage()
    assert gate.dropped == {FRAMES: 100}


def test_price_band_setting() -> None:
    config = parse_config(b'[trading.defaults]\nprice_band = "0.05"\n[trading.symbols.TUSDT]\nprice_band = "0.2"\n')
    assert config.trading.for_symbol("XRPUSDT").price_band == Decimal("0.05")
    assert config.trading.for_symbol("TUSDT").price_band == Decimal("0.2")
    assert parse_config(b"").trading.defaults.price_band == Decimal("0.1")
    for bad in ('"0"', '"1"', '"-0.1"', '"NaN"'):
        with pytest.raises(ConfigError, match="price_band"):
            parse_config(f"[trading.defaults]\nprice_band = {bad}\n".encode())
    with pytest.raises(ConfigError, match="trading.symbols.TUSDT.price_band"):
        parse_config(b'[trading.symbols.TUSDT]\nprice_band = "2"\n')
