"""The user data stream's boundary (issue 20): every executionReport is checked once, in the
account stream, before it reaches a trader; what fails is dropped, counted and never raised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from naived.core.config import parse_config
from naived.core.messages import (
    EXECUTION_TOPIC_PREFIX,
    ExecutionReport,
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


def test_the_stream_drops_and_counts_bad_events_and_passes_the_good_ones(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    config = parse_config(f'[paths]\nruntime_dir = "{run}"\nstate_dir = "{tmp_path / "state"}"\n'.encode())
    stream = AccountStream(config)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, EXECUTION_TOPIC_PREFIX)
    sub.connect(config.account_stream_endpoint)
    pull = ctx.socket(zmq.PULL)  # where the root hears StreamAlive
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(config.reports_endpoint)
    try:
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
    finally:
        sub.close()
        pull.close()
        stream.pub.close()
        stream.root.close()
        ctx.term()
        stream.ctx.term()
