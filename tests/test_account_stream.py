"""The account-stream process under a real naived: the paper exchange's user data stream -> ZeroMQ.

A test-owned SUB socket listens where the traders do; orders are placed on the paper exchange
directly (the ids a trader would use), so what arrives is what the stream pushed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from harness import Tree, running_tree, wait_for

from naived.core.messages import (
    STREAM_STATUS_TOPIC,
    ExecutionReport,
    StreamStatus,
    execution_report_decoder,
    stream_status_decoder,
    trader_execution_topic,
)
from naived.exchange.binance import BinanceClient

FAST = """
[account_stream]
heartbeat_seconds = 0.2
keepalive_seconds = 0.5
reconnect_max_seconds = 0.5
"""


class Listener:
    """A SUB on the account-stream's endpoint, like a trader's."""

    def __init__(self, tree: Tree, *topics: bytes) -> None:
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(f"ipc://{tree.dir / 'run' / 'account-stream.sock'}")
        self.own = set(topics)  # a trader's own topic: the status is said to it alone there, and its reports
        for topic in (STREAM_STATUS_TOPIC, *topics):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)

    def next(self, timeout: float = 10.0) -> tuple[bytes, StreamStatus | ExecutionReport]:
        assert self.sub.poll(int(timeout * 1000)), f"nothing from the account stream in {timeout}s"
        topic, payload = self.sub.recv_multipart()
        if topic == STREAM_STATUS_TOPIC or topic in self.own:
            return topic, stream_status_decoder.decode(payload)
        return topic, execution_report_decoder.decode(payload)

    def status(self, timeout: float = 10.0, up: bool | None = None) -> StreamStatus:
        """The next status (the next with this `up`, if given), within one overall deadline."""
        deadline = time.monotonic() + timeout
        while True:
            _, message = self.next(max(0.0, deadline - time.monotonic()))
            if isinstance(message, StreamStatus) and (up is None or message.up == up):
                return message

    def report(self, timeout: float = 10.0) -> tuple[bytes, ExecutionReport]:
        deadline = time.monotonic() + timeout
        while True:
            topic, message = self.next(max(0.0, deadline - time.monotonic()))
            if isinstance(message, ExecutionReport):
                return topic, message

    def close(self) -> None:
        self.sub.close()
        self.ctx.term()


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    with running_tree(tmp_path, FAST, paper="listen_key_seconds = 1.5\nbalances = { USDT = \"10000\", XRP = \"100\" }") as t:
        yield t


def client(tree: Tree) -> BinanceClient:
    return BinanceClient(tree.paper_url, "paper-key", "paper-secret")


def up_session(listener: Listener, not_in: frozenset[str] = frozenset()) -> str:
    def fresh() -> str | None:
        s = listener.status()
        return s.session if s.up and s.session not in not_in else None

    return wait_for("an up session of the account stream", fresh)


def test_each_trader_gets_exactly_its_own_reports_and_keys_stay_secret(tree: Tree) -> None:
    mine = Listener(tree, trader_execution_topic("nvtest1", 1))
    first = up_session(mine)
    c = client(tree)
    c.new_order("XRPUSDT", "BUY", "0.3", "20", "nvtest1-10-1B")  # trader 10: not trader 1's
    c.new_order("XRPUSDT", "BUY", "0.3", "20", "nvtest1-1-7B")
    topic, report = mine.report()
    assert topic == b"EXECUTION_REPORT:nvtest1-1-7B"
    assert (report.client_order_id, report.x, report.X, report.S, report.p, report.q) == (
        "nvtest1-1-7B", "NEW", "NEW", "BUY", "0.30000000", "20.00000000")
    c.cancel_order("XRPUSDT", "nvtest1-1-7B")
    topic, cancel = mine.report()
    # A cancel names the cancel request in `c`: it is routed by the order's own id (`C`).
    assert topic == b"EXECUTION_REPORT:nvtest1-1-7B" and cancel.x == "CANCELED" and cancel.c != "nvtest1-1-7B"
    # The key outlives several validities only through the keep-alives, and an idle trader is never
    # woken meanwhile: 4 s (20 heartbeats, over 2 validities) without a message, then a trader that
    # subscribes now is told, alone, that the first session is still up.
    key = tree.http.post(f"{tree.paper_url}/api/v3/userDataStream", headers={"X-MBX-APIKEY": "paper-key"}).json()["listenKey"]
    assert not mine.sub.poll(4000), "an idle subscriber was woken"
    other = Listener(tree, trader_execution_topic("nvtest1", 2))
    topic, status = other.next()
    assert topic == b"EXECUTION_REPORT:nvtest1-2-" and status == StreamStatus(first, True)
    assert not mine.sub.poll(200)  # said to the new subscriber only
    other.close()
    for name in ("naived", "streamerd"):
        assert key not in tree.log(name)
    for pid in [tree.status()["account_stream"]["pid"]]:
        assert key not in Path(f"/proc/{pid}/cmdline").read_text()
    mine.close()


def test_a_deleted_key_is_replaced_and_a_killed_stream_restarts(tree: Tree) -> None:
    listener = Listener(tree, trader_execution_topic("nvtest2", 0))
    first = up_session(listener)
    key = tree.http.post(f"{tree.paper_url}/api/v3/userDataStream", headers={"X-MBX-APIKEY": "paper-key"}).json()["listenKey"]
    assert tree.http.delete(f"{tree.paper_url}/api/v3/userDataStream", params={"listenKey": key},
                            headers={"X-MBX-APIKEY": "paper-key"}).status_code == 200
    down = listener.status(timeout=5, up=False)
    assert down.session == first  # the lost connection is said at once
    second = up_session(listener, {first})
    client(tree).new_order("XRPUSDT", "BUY", "0.3", "20", "nvtest2-0-1B")
    assert listener.report()[1].client_order_id == "nvtest2-0-1B"

    pid = tree.status()["account_stream"]["pid"]
    os.kill(pid, signal.SIGKILL)
    third = up_session(listener, {first, second})
    assert not third.startswith(f"{pid}.")
    assert tree.status()["account_stream"]["restarts"] == 1
    client(tree).new_order("XRPUSDT", "BUY", "0.3", "20", "nvtest2-0-2B")
    assert listener.report()[1].client_order_id == "nvtest2-0-2B"
    listener.close()


def test_rollover_opens_a_new_session_without_going_down(tmp_path: Path) -> None:
    with running_tree(tmp_path, FAST + "rollover_seconds = 1.0\n") as tree:
        listener = Listener(tree)
        first = up_session(listener)
        sessions = [first]
        while len(sessions) < 3:
            status = listener.status()
            assert status.up, "the stream went down during a rollover"
            if status.session != sessions[-1]:
                sessions.append(status.session)
        assert tree.status()["account_stream"]["restarts"] == 0
        listener.close()


def test_a_hung_stream_is_killed_by_the_root_and_its_successor_says_a_new_session(tree: Tree) -> None:
    listener = Listener(tree, trader_execution_topic("nvtest3", 0))
    first = up_session(listener)
    pid = tree.status()["account_stream"]["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive, connected, silent: as if it hung
    # heartbeat 0.2 s: killed within about 0.4 s; the successor's status reaches this subscriber
    # when its subscription reconnects, on its own topic
    second = up_session(listener, {first})
    assert not second.startswith(f"{pid}.")
    assert "account stream: silent past its word; killing pid" in tree.log("naived")
    client(tree).new_order("XRPUSDT", "BUY", "0.3", "20", "nvtest3-0-1B")
    assert listener.report()[1].client_order_id == "nvtest3-0-1B"
    listener.close()
