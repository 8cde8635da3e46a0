"""The user data stream's boundary (issue 20): every executionReport is checked once, in the
account stream, before it reaches a trader; what fails is dropped, counted and never raised. The
same for the balances of `outboundAccountPosition`, on their way to the root's account (issue 24)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from naived.core.config import parse_config
from naived.core.messages import (
    EXECUTION_TOPIC_PREFIX,
    ExecutionReport,
    PushedBalance,
    StreamAlive,
    execution_report_decoder,
    root_report_decoder,
)
from naived.tree.account_stream import AccountStream, report_problem

GOOD: dict[str, Any] = {
    "e": "executionReport", "E": 1700000000000, "s": "XRPUSDT", "c": "nvabc123-0-1B", "S": "BUY",
    "o": "LIMIT", "f": "GTC", "q": "100.00000000", "p": "0.50000000", "x": "TRADE", "X": "PARTIALLY_FILLED",
    "i": 7, "l": "40.00000000", "z": "40.00000000", "L": "0.50000000", "n": "0.04000000", "N": "XRP",
    "T": 1700000000001, "t": 3, "Z": "20.00000000",
}

BAD: dict[str, tuple[dict[str, Any], str]] = {
    "nan price": ({"p": "NaN"}, "amount"),
    "negative fill": ({"l": "-1"}, "amount"),
    "exponent commission": ({"n": "1e999999"}, "amount"),
    "unknown status": ({"X": "HALF_FILLED"}, "status"),
    "no symbol": ({"s": "xrp/usdt"}, "symbol"),
    "negative order id": ({"i": -5}, "order"),
    "empty client id": ({"c": ""}, "order"),
    "number for a string": ({"q": 100.0}, "decode"),
    "missing field": ({"X": None}, "decode"),
}


def event(**changes: Any) -> bytes:
    body = {**GOOD, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_a_good_report_passes_the_check() -> None:
    assert report_problem(msgspec.json.decode(event(), type=ExecutionReport)) is None


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_report_has_its_reason(case: str) -> None:
    changes, reason = BAD[case]
    try:
        report = msgspec.json.decode(event(**changes), type=ExecutionReport)
    except msgspec.DecodeError:
        assert reason == "decode"
        return
    assert report_problem(report) == reason


@contextmanager
def stream_and_root(tmp_path: Path) -> Iterator[tuple[AccountStream, zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """An account stream (not connected to any exchange), a trader's SUB of every execution report,
    and the PULL socket where the root hears its StreamAlive."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    config = parse_config(f'[paths]\nruntime_dir = "{run}"\nstate_dir = "{tmp_path / "state"}"\n'.encode())
    stream = AccountStream(config)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, EXECUTION_TOPIC_PREFIX)
    sub.connect(config.account_stream_endpoint)
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(config.reports_endpoint)
    try:
        yield stream, sub, pull
    finally:
        sub.close()
        pull.close()
        stream.pub.close()
        stream.root.close()
        ctx.term()
        stream.ctx.term()


def test_the_stream_drops_and_counts_bad_events_and_passes_the_good_ones(tmp_path: Path) -> None:
    with stream_and_root(tmp_path) as (stream, sub, pull):
        assert stream.pub.poll(5000, zmq.POLLIN), "the subscription did not arrive"
        stream.on_subscriptions()
        frames = [event(), b"{not json", b'{"e": "executionReport"}', *(event(**changes) for changes, _ in BAD.values()),
                  event(t=4, l="60.00000000", z="100.00000000", X="FILLED", Z="50.00000000")]
        for frame in frames:
            stream.on_frame(frame)  # never raises
        got = []
        while sub.poll(1000, zmq.POLLIN):
            got.append(execution_report_decoder.decode(sub.recv_multipart()[1]))
        assert [(r.t, r.X) for r in got] == [(3, "PARTIALLY_FILLED"), (4, "FILLED")]
        expected: dict[str, int] = {}
        for _, reason in BAD.values():
            expected[reason] = expected.get(reason, 0) + 1
        expected["decode"] += 2  # the junk and the event with no fields
        assert stream.dropped == expected
        stream.alive()  # the counts travel up with the liveness word, to the root's metrics
        assert pull.poll(5000, zmq.POLLIN)
        alive = root_report_decoder.decode(pull.recv())
        assert isinstance(alive, StreamAlive) and alive.dropped == expected


def position(at: int, *balances: tuple[object, object, object]) -> bytes:
    return json.dumps({"e": "outboundAccountPosition", "E": at + 1, "u": at,
                       "B": [{"a": a, "f": f, "l": locked} for a, f, locked in balances]}).encode()


def test_pushed_balances_go_up_with_the_liveness_word_and_bad_ones_are_dropped(tmp_path: Path) -> None:
    with stream_and_root(tmp_path) as (stream, _, pull):
        frames = [
            position(1000, ("USDT", "9900.00000000", "100.00000000"), ("XRP", "0.00000000", "0.00000000")),
            position(1001, ("USDT", "NaN", "0")),  # amount
            position(1002, ("USDT", "-1", "0")),  # amount
            position(1003, ("usdt", "1", "0")),  # asset
            position(1004, ("A" * 21, "1", "0")),  # asset
            position(1005, ("USDT", 5, "0")),  # decode: a number for a string
            position(1006, ("BTC", "0.5", "0"), ("ETH", "1", "0")),
            position(1007, ("XRP", "99.9", "0")),
        ]
        for frame in frames:
            stream.on_frame(frame)  # never raises
        assert stream.dropped == {"amount": 2, "asset": 2, "decode": 1}
        assert pull.poll(5000, zmq.POLLIN)  # each good push goes up at once; the socket keeps the latest
        while pull.poll(200, zmq.POLLIN):
            alive = root_report_decoder.decode(pull.recv())
        assert isinstance(alive, StreamAlive)
        assert sorted(alive.balances, key=lambda b: b.asset) == [
            PushedBalance("BTC", "0.5", "0", 1006), PushedBalance("ETH", "1", "0", 1006),
            PushedBalance("USDT", "9900.00000000", "100.00000000", 1000), PushedBalance("XRP", "99.9", "0", 1007)]
        assert alive.dropped == stream.dropped
