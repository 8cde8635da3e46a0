"""The market-feed boundary: every trade frame is checked here before anything acts on it.

Whoever consumes `[b"TRADE_EVENTS:<SYMBOL>", msgpack(TradeEvent)]` (a trader, the paper
exchange's feed thread) passes the raw frames to a `MarketGate` for its symbol and acts only on
the `TradeEvent` it returns. The gate never raises: a frame that fails a check is dropped,
counted by reason (`DROP_REASONS`) and logged at a bounded rate (`naived.ops.ratelog`).

Why each check:
- ZeroMQ subscriptions are prefixes: `TRADE_EVENTS:TUSDT` also delivers `TRADE_EVENTS:TUSDTRY`,
  a market 1000 times dearer. The topic must be the symbol's exact topic, and the event must name
  the same symbol.
- msgpack that does not decode to a `TradeEvent` (junk, a float where Binance sends a decimal
  string) must not raise into the loop.
- Prices and quantities are Binance's plain decimal strings; `Decimal` would also take "NaN",
  "-1", "1e999999" or "1_0", which break or mislead every computation after it.
- A structurally valid price can still be wild (a bug upstream, a bad tick): the band. The
  reference is the median of the last `REFERENCE_TRADES` valid prices, the frame's own
  included, so one wild price never moves it; a price farther than `band` (a fraction) from it
  is dropped. A trader acts on nothing until it has seen `REFERENCE_TRADES` prices (`confirm`),
  so even the first frame a fresh trader sees cannot lead to an order on its own. A genuine move
  is followed once it holds for the majority of the window (3 trades of 5), and the window
  keeps moving, so the market is never lost for long.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from decimal import Decimal

import msgspec

from naived.core.messages import TradeEvent, trade_topic
from naived.ops.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

# Drop reasons, in the order the checks run (metrics label `reason`).
FRAMES, TOPIC, DECODE, SYMBOL, PRICE, QUANTITY, BAND = "frames", "topic", "decode", "symbol", "price", "quantity", "band"
DROP_REASONS = (FRAMES, TOPIC, DECODE, SYMBOL, PRICE, QUANTITY, BAND)
# Not a drop: a valid frame seen before the gate knows enough recent prices to judge it.
WARMUP = "warmup"

REFERENCE_TRADES = 5  # the band's reference is the median of this many recent valid prices
# A trade frame is ~100 bytes; a SUB socket disconnects a publisher that sends a larger frame
# than this (ZMQ_MAXMSGSIZE) instead of buffering it.
MAX_MARKET_FRAME = 64 * 1024
DROP_LOG_SECONDS = 10.0  # after the first drop is logged, at most one summary line per this
# Binance sends plain decimals ("0.10000000"); bounded, so no exponent can overflow a later
# Decimal operation and no megabyte of digits is parsed.
_DECIMAL = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?")
_decoder = msgspec.msgpack.Decoder(TradeEvent)


def plain_decimal(text: object) -> Decimal | None:
    """`text` as a Decimal if it is a plain decimal string >= 0 (as Binance writes amounts), else None."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        return None
    return Decimal(text)


def positive_decimal(text: object) -> Decimal | None:
    """`text` as a Decimal if it is a plain decimal string > 0 (as Binance writes them), else None."""
    value = plain_decimal(text)
    return value if value is not None and value > 0 else None


def read_trade(frames: list[bytes], topic: bytes, symbol: str) -> TradeEvent | str:
    """The structural checks of one message for `symbol`: its event, or the reason to drop it."""
    if len(frames) != 2:
        return FRAMES
    if frames[0] != topic:
        return TOPIC
    try:
        event = _decoder.decode(frames[1])
    except msgspec.DecodeError:  # ValidationError is one: a float price, a missing field
        return DECODE
    if event.s != symbol:
        return SYMBOL
    if positive_decimal(event.p) is None:
        return PRICE
    if positive_decimal(event.q) is None:
        return QUANTITY
    return event


class MarketGate:
    """The one check of trade frames for one symbol: `check(frames)` gives the event to act on,
    or the reason it is not acted on (a drop reason, counted in `dropped`, or `WARMUP`)."""

    def __init__(self, symbol: str, band: Decimal, who: str, confirm: int = REFERENCE_TRADES) -> None:
        """`band`: the largest fraction a price may lie from the reference; `confirm`: how many
        valid prices must be known before any is acted on (1: act from the first)."""
        self.symbol = symbol
        self.topic = trade_topic(symbol)
        self.band = band
        self.confirm = confirm
        self.recent: deque[Decimal] = deque(maxlen=REFERENCE_TRADES)
        self.dropped: dict[str, int] = {}
        self.last: TradeEvent | None = None  # the latest trade that passed the checks (warm-up included)
        self.log = RateLimitedLog(log, who, "market frames dropped", DROP_LOG_SECONDS)

    def reference(self) -> Decimal | None:
        """The median of the recent valid prices (the upper one of an even count)."""
        if not self.recent:
            return None
        return sorted(self.recent)[len(self.recent) // 2]

    def check(self, frames: list[bytes]) -> TradeEvent | str:
        try:
            verdict = read_trade(frames, self.topic, self.symbol)
            if isinstance(verdict, TradeEvent):
                event = verdict
                verdict = self.judge(event)
                if verdict is event or verdict == WARMUP:
                    self.last = event
        except Exception:  # a check that fails is a bug here, never a reason to crash the consumer
            log.exception("%s: checking a market frame failed", self.log.who)
            verdict = DECODE
        if isinstance(verdict, str) and verdict != WARMUP:
            self.dropped[verdict] = self.dropped.get(verdict, 0) + 1
            self.log.warning(verdict, "dropped a market frame (%s: %s)", verdict, _describe(frames))
        return verdict

    def judge(self, event: TradeEvent) -> TradeEvent | str:
        """The band alone, for an event already read (`read_trade`): the event, `BAND` or
        `WARMUP`. Not counted: `check` counts; the in-process backtest calls this directly."""
        price = Decimal(event.p)
        self.recent.append(price)
        if len(self.recent) < self.confirm:
            return WARMUP
        reference = self.reference()
        assert reference is not None
        if abs(price - reference) > self.band * reference:
            return BAND
        return event


def _describe(frames: list[bytes]) -> str:
    """Enough of a dropped message to recognise it in a log line, and never more."""
    head = frames[0][:40] if frames else b""
    if len(frames) == 2:
        return f"{len(frames)} frames, topic {head!r}, payload {frames[1][:60]!r}"
    return f"{len(frames)} frames, first {head!r}"
