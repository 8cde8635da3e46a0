"""The market feed as a hostile peer, on a real tree (naived + paper exchange). The test binds the
market endpoint itself, in streamerd's place, and publishes what it likes: a neighbour symbol
whose topic shares the traded one's prefix, and a Hypothesis-drawn mix of valid and malformed
frames. The traders and the paper exchange must drop and count every bad frame, never restart,
and never order (or fill) at a price outside the band."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import requests
import zmq
from harness import Tree, free_port, wait_for
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from naived.core.messages import TradeEvent, decode_trade, encode_trade, trade_topic
from naived.market.gate import BAND, DECODE, FRAMES, PRICE, QUANTITY, SYMBOL, TOPIC

SYMBOL_, NEIGHBOUR = "TUSDT", "TUSDTRY"  # TRADE_EVENTS:TUSDT is a prefix of TRADE_EVENTS:TUSDTRY
MARKET = Decimal("0.1")  # TUSDT, with TUSDTRY ~1000 times dearer


class Feed:
    """streamerd's stand-in: an XPUB on the tree's market endpoint that sees every subscription."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.pub.setsockopt(zmq.SNDHWM, 0)  # the test counts every frame: none may be dropped here
        self.pub.bind(endpoint)
        self.next_id = 1

    def wait_subscribers(self, symbol: str, count: int) -> None:
        """Until `count` subscriptions to the symbol's topic arrived (one per trader)."""
        wanted, seen, deadline = b"\x01" + trade_topic(symbol), 0, time.monotonic() + 20
        while seen < count:
            assert time.monotonic() < deadline, f"{seen} of {count} subscriptions to {symbol}"
            if self.pub.poll(100):
                seen += self.pub.recv() == wanted

    def trade(self, symbol: str, price: str, qty: str = "1000") -> list[bytes]:
        now = int(time.time() * 1000)
        self.next_id += 1
        return encode_trade(TradeEvent("trade", now, symbol, self.next_id, price, qty, now, False))

    def send(self, frames: list[bytes]) -> None:
        self.pub.send_multipart(frames)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@contextmanager
def tree_on_own_feed(tmp_path: Path, trading: str) -> Iterator[tuple[Tree, Feed, int]]:
    """naived (with its paper exchange) on a market endpoint the test publishes on; no streamerd."""
    metrics_port = free_port()
    endpoint = f"ipc://{tmp_path / 'market.sock'}"
    feed = Feed(endpoint)
    tree = Tree(tmp_path, f"[naived]\nmetrics_port = {metrics_port}\n\n{trading}", market_endpoint=endpoint)
    try:
        tree.start_naived()
        yield tree, feed, metrics_port
    finally:
        tree.stop()
        feed.close()


def dropped_metrics(port: int, symbol: str) -> dict[str, int]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    pattern = re.compile(rf'^naive_market_frames_dropped_total\{{reason="(\w+)",symbol="{symbol}"\}} (\d+)$', re.M)
    return {reason: int(n) for reason, n in pattern.findall(text)}


def paper_dropped(tree: Tree) -> dict[str, int]:
    """The paper exchange's drops, by reason, whatever symbol they came on."""
    total: dict[str, int] = {}
    for counts in tree.http.get(f"{tree.paper_url}/paper/feed", timeout=5).json()["dropped"].values():
        for reason, n in counts.items():
            total[reason] = total.get(reason, 0) + n
    return total


def in_band(order: dict[str, Any], band: Decimal = Decimal("0.1")) -> bool:
    return abs(Decimal(order["price"]) - MARKET) <= band * MARKET


def test_a_trader_never_takes_a_prefix_neighbours_trades(tmp_path: Path) -> None:
    """Issue 20, item 1: TUSDTRY (~100) streamed next to TUSDT (~0.1) while TUSDT is traded: the
    traders bought at 100.1. Now every TUSDTRY frame is dropped (`topic`) and counted, and a wild
    first TUSDT price is not acted on either."""
    with tree_on_own_feed(tmp_path, "") as (tree, feed, metrics_port):
        assert tree.ctl("start-trading", SYMBOL_).returncode == 0
        wait_for("both traders ready", lambda: len([t for t in tree.traders(SYMBOL_).values() if t["ready_at"]]) == 2)
        feed.wait_subscribers(SYMBOL_, 2)  # the traders' (chunks = 2), or one and the paper exchange's
        for i in range(20):  # the neighbour first: a trader acting on it would buy at ~100
            feed.send(feed.trade(NEIGHBOUR, f"100.{i:02d}"))
        # then a wild TUSDT price, the first of its symbol the fresh traders see: outvoted, never acted on
        feed.send(feed.trade(SYMBOL_, "100.1"))

        def bought() -> bool:
            feed.send(feed.trade(SYMBOL_, "0.1"))
            return len(tree.paper_orders(SYMBOL_)) == 2

        wait_for("both traders to buy TUSDT", bought)
        orders = tree.paper_orders(SYMBOL_)
        assert all(in_band(o) for o in orders), orders
        assert tree.paper_orders(NEIGHBOUR) == []
        # every one counted, as a topic drop: by each trader subscribed when it was sent
        wait_for("the traders to count the topic drops", lambda: (d := dropped_metrics(metrics_port, SYMBOL_)).keys() == {TOPIC}
                 and d[TOPIC] >= 20)
        assert all(t["restarts"] == 0 for t in tree.traders(SYMBOL_).values())


# --- the hostile feed -------------------------------------------------------------------------

VALID_PRICES = [f"0.100{i:02d}" for i in range(0, 41)]  # 0.10000-0.10040: above the buy, below any sell
NOT_POSITIVE_DECIMALS = ["NaN", "nan", "Infinity", "-inf", "-1", "-0.1", "0", "0.00000", "1e-3", " 0.1", "1_0", ""]


def event_map(**changes: object) -> dict[str, object]:
    now = int(time.time() * 1000)
    return {"e": "trade", "E": now, "s": SYMBOL_, "t": 1, "p": "0.1", "q": "100", "T": now, "m": False, **changes}


def decodes(payload: bytes) -> bool:
    try:
        decode_trade(payload)
        return True
    except msgspec.DecodeError:
        return False


topic = trade_topic(SYMBOL_)
# (reason the trader must count, or None for a valid in-band trade; the frames)
valid = st.sampled_from(VALID_PRICES).map(lambda p: (None, ("trade", p)))
bad = st.one_of(
    st.just((FRAMES, [topic])),
    st.binary(max_size=40).map(lambda b: (FRAMES, [topic, msgspec.msgpack.encode(event_map()), b])),
    st.just((TOPIC, ("neighbour",))),
    st.binary(max_size=64).filter(lambda b: not decodes(b)).map(lambda b: (DECODE, [topic, b])),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: (DECODE, [topic, msgspec.msgpack.encode(event_map(p=f))])),
    st.floats(allow_nan=True).map(lambda f: (DECODE, [topic, msgspec.msgpack.encode(event_map(q=f))])),
    st.just((SYMBOL, [topic, msgspec.msgpack.encode(event_map(s=NEIGHBOUR, p="100.1"))])),
    st.sampled_from(NOT_POSITIVE_DECIMALS).map(lambda v: (PRICE, [topic, msgspec.msgpack.encode(event_map(p=v))])),
    st.sampled_from(NOT_POSITIVE_DECIMALS).map(lambda v: (QUANTITY, [topic, msgspec.msgpack.encode(event_map(q=v))])),
    # out of the 10 % band, both ways, by up to 1000 times
    st.one_of(st.integers(1, 880), st.integers(1120, 1_000_000)).map(
        lambda permille: (BAND, ("trade", str(MARKET * permille / 1000)))),
)
example = st.lists(st.one_of(valid, bad), min_size=1, max_size=30)

HOSTILE = f"""
[trading.symbols.{SYMBOL_}]
chunks = 2
initial_traders = 1   # one trader, which follows trades while its buy rests (a rebuy stays possible)
"""


def test_a_hostile_feed_is_dropped_counted_and_never_traded_on(tmp_path: Path) -> None:
    with tree_on_own_feed(tmp_path, HOSTILE) as (tree, feed, metrics_port):
        assert tree.ctl("start-trading", SYMBOL_).returncode == 0
        feed.wait_subscribers(SYMBOL_, 1)

        def warm() -> bool:  # five valid prices before the trader acts; the paper exchange subscribes once it has the order
            feed.send(feed.trade(SYMBOL_, "0.1"))
            return bool(tree.paper_orders(SYMBOL_))

        wait_for("the trader to buy", warm)

        def paper_warm() -> bool:  # its window full too (it acts from the first trade, but judges by 5)
            feed.send(feed.trade(SYMBOL_, "0.1"))
            seen = tree.http.get(f"{tree.paper_url}/paper/market", timeout=5).json().get(SYMBOL_, {})
            return seen.get("trades", 0) >= 5 and seen["lastTradeId"] == feed.next_id

        wait_for("the paper exchange to know the market", paper_warm)
        (trader,) = tree.traders(SYMBOL_).values()
        expected: dict[str, int] = {}

        # No shrinking: the counts accumulate in one running tree, so a smaller replay proves
        # nothing, and each failing try would wait out its deadline.
        @settings(max_examples=15, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(example)
        def hostile(items: list[tuple[str | None, Any]]) -> None:
            for reason, frames in items:
                if frames == ("neighbour",):
                    frames = feed.trade(NEIGHBOUR, "100.1")
                elif frames[0] == "trade":
                    frames = feed.trade(SYMBOL_, frames[1])
                feed.send(frames)
                if reason is not None:
                    expected[reason] = expected.get(reason, 0) + 1
                if reason == BAND:  # never more than 2 wild prices among the last 5: each one stays an outlier
                    for _ in range(2):
                        feed.send(feed.trade(SYMBOL_, "0.1"))
            wait_for(f"the root's metrics to count {expected}", lambda: dropped_metrics(metrics_port, SYMBOL_) == expected,
                     timeout=10)
            wait_for(f"the paper exchange to count {expected}", lambda: paper_dropped(tree) == expected, timeout=10)
            (now,) = tree.traders(SYMBOL_).values()
            assert (now["pid"], now["restarts"]) == (trader["pid"], 0)

        hostile()
        orders = tree.paper_orders()
        assert len(orders) == 1 and all(o["symbol"] == SYMBOL_ and in_band(o) for o in orders), orders
        assert orders[0]["status"] == "NEW"  # no wild price filled it either (the buy rests below every valid one)
        sym = tree.symbol(SYMBOL_)
        assert sym["state"] == "running" and sym["supervisor"]["restarts"] == 0 and sym["leader"]["pid"]
        status = tree.ctl("status").stdout
        assert "market frames dropped: " in status, status
