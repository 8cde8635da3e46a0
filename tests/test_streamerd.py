"""streamerd end to end: the real `streamerd start` in its own process group,
a fake Binance websocket server, and ZeroMQ SUB clients in the test process.
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import requests
import zmq
from fake_binance import FakeBinance, trade_json
from harness import die_with_test
from recorded import BTC_TAPE, ETH_TAPE

from naived.core.messages import TradeEvent, decode_trade
from streamerd.publisher import Demand, symbol_of_subscription


class Streamerd:
    """`streamerd start ...` as a subprocess in its own process group, logs in a file."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> None:
        """`env`: extra environment; `prefix`: a launcher that ends by exec'ing the command
        (so `proc.pid` is streamerd's pid, as systemd's main pid is)."""
        self.endpoint = f"ipc://{tmp}/trades.sock"
        self.log_path = tmp / "streamerd.log"
        with open(self.log_path, "wb") as log:  # streamerd keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "streamerd.cli", "start", "--endpoint", self.endpoint, *args],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                preexec_fn=die_with_test, env={**_env(), **(env or {})},
            )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 10.0, occurrences: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < occurrences:
            assert self.proc.poll() is None, f"streamerd exited {self.proc.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"no {text!r} in the log:\n{self.log()}"
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NAIVE_CONFIG", None)  # embedded defaults plus flags, whatever the caller's shell says
    env.pop("JOURNAL_STREAM", None)
    return env


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def start_streamerd(tmp_path: Path) -> Iterator:
    started: list[Streamerd] = []

    def start(*args: str, **kwargs: Any) -> Streamerd:
        run_dir = tmp_path / f"s{len(started)}"
        run_dir.mkdir()
        daemon = Streamerd(run_dir, *args, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def fake() -> Iterator[FakeBinance]:
    with FakeBinance() as server:
        yield server


def subscriber(ctx: zmq.Context, endpoint: str, *symbols: str) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)  # keep everything: the tests count every trade
    sub.connect(endpoint)
    for symbol in symbols:
        sub.subscribe(f"TRADE_EVENTS:{symbol}".encode())
    return sub


def receive(sub: zmq.Socket, count: int, timeout: float = 10.0) -> list[TradeEvent]:
    """Exactly `count` trades (fails at the deadline), checking each topic matches its symbol."""
    events: list[TradeEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        left = deadline - time.monotonic()
        assert left > 0 and sub.poll(int(left * 1000)), f"got {len(events)} of {count} trades"
        topic, payload = sub.recv_multipart()
        event = decode_trade(payload)
        assert topic == f"TRADE_EVENTS:{event.s}".encode()
        events.append(event)
    return events


def assert_quiet(sub: zmq.Socket, ms: int = 200) -> None:
    """No extra message arrives (duplicates would show up here)."""
    assert not sub.poll(ms), f"unexpected extra message: {sub.recv_multipart()}"


# --- binance source against the fake server ------------------------------------


def test_trades_in_order_across_a_forced_reconnect(ctx, fake, start_streamerd):
    daemon = start_streamerd("--source", "binance", "--binance-url", fake.url, "--grace-seconds", "0.5")
    sub = subscriber(ctx, daemon.endpoint, "XRPUSDT")
    first = fake.wait_for_subscription("xrpusdt@trade", timeout=10)
    fake.push_trades("XRPUSDT", range(1, 51), price="0.51230000")
    assert [e.t for e in receive(sub, 50)] == list(range(1, 51))

    fake.ping(b"are-you-there", first)
    fake.wait_until(lambda: b"are-you-there" in first.pongs, 5, "a pong with the ping's payload")

    fake.cut(first)
    second = fake.wait_for_subscription("xrpusdt@trade", timeout=10, exclude=[first])
    fake.push_trades("XRPUSDT", range(51, 101), price="0.51240000")
    events = receive(sub, 50)
    assert [e.t for e in events] == list(range(51, 101))
    assert {e.p for e in events} == {"0.51240000"} and events[0].s == "XRPUSDT"
    assert_quiet(sub)
    assert second.number > first.number
    assert daemon.stop() == 0
    assert "gaps=0" in daemon.log() and "connection 1: lost" in daemon.log()


def test_demand_follows_subscribers_and_a_killed_subscriber_unsubscribes(ctx, fake, start_streamerd, tmp_path):
    grace = 0.5
    daemon = start_streamerd("--source", "binance", "--binance-url", fake.url, "--grace-seconds", str(grace))
    code = (
        "import sys, zmq; s = zmq.Context().socket(zmq.SUB); s.connect(sys.argv[1]);"
        "s.subscribe(b'TRADE_EVENTS:ADAUSDT'); print('ready', flush=True); s.recv()"
    )
    child = subprocess.Popen([sys.executable, "-c", code, daemon.endpoint], stdout=subprocess.PIPE,
                             start_new_session=True)
    try:
        assert child.stdout.readline() == b"ready\n"
        conn = fake.wait_for_subscription("adausdt@trade", timeout=10)
        os.killpg(child.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        child.wait(5)
        fake.wait_for_unsubscribe("adausdt@trade", timeout=10)
        assert time.monotonic() - killed_at >= grace
        assert "adausdt@trade" not in conn.streams
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(5)

    # A subscriber coming back within the grace cancels the stop: no second UNSUBSCRIBE.
    sub = subscriber(ctx, daemon.endpoint, "ADAUSDT")
    fake.wait_until(lambda: "adausdt@trade" in conn.streams, 10, "re-SUBSCRIBE")
    sub.close()
    daemon.wait_log("ADAUSDT: last subscriber left", occurrences=2)
    sub = subscriber(ctx, daemon.endpoint, "ADAUSDT")
    daemon.wait_log("subscriber back within the grace period")
    time.sleep(grace * 2)  # not synchronisation: proving that nothing happens during this window
    assert sum(1 for _, m in fake.requests if m.get("method") == "UNSUBSCRIBE") == 1
    assert daemon.stop() == 0


def test_trades_without_a_positive_price_or_quantity_are_refused(ctx, fake, start_streamerd):
    """Issue 20: a NaN, negative or zero price or quantity is never published (every consumer
    checks again, naived/market/gate.py); counted in `refused`."""
    daemon = start_streamerd("--source", "binance", "--binance-url", fake.url)
    sub = subscriber(ctx, daemon.endpoint, "BTCUSDT")
    fake.wait_for_subscription("btcusdt@trade", timeout=10)
    fake.push_trades("BTCUSDT", range(100, 105))
    for trade_id, fields in enumerate([{"price": "NaN"}, {"price": "-1.0"}, {"price": "0.00000000"}, {"price": "Infinity"},
                                       {"qty": "nan"}, {"qty": "-0.1"}, {"qty": "0"}], start=105):
        fake.push_trade("BTCUSDT", trade_id, **fields)
    fake.push_trades("BTCUSDT", range(112, 115))
    assert [e.t for e in receive(sub, 8)] == [*range(100, 105), *range(112, 115)]
    assert daemon.stop() == 0
    assert "refused=7" in daemon.log() and "events_out=8" in daemon.log()


def test_malformed_frames_are_counted_and_skipped(ctx, fake, start_streamerd):
    daemon = start_streamerd("--source", "binance", "--binance-url", fake.url)
    sub = subscriber(ctx, daemon.endpoint, "BTCUSDT")
    fake.wait_for_subscription("btcusdt@trade", timeout=10)
    fake.push_trades("BTCUSDT", range(100, 110))
    fake.send_raw("this is not json {")
    fake.send_raw('{"stream":"btcusdt@trade","data":{"e":"trade","s":"BTCUSDT"}}')  # fields missing
    fake.send_raw('{"e":"somethingNew"}')
    fake.send_raw(b'{"stream":"btcusdt@trade","data":{"e":"\xff\xfe"}}')  # invalid UTF-8 in a text frame
    fake.push_trades("BTCUSDT", range(110, 120))
    assert [e.t for e in receive(sub, 20)] == list(range(100, 120))
    assert daemon.stop() == 0
    assert "malformed=4" in daemon.log() and "events_out=20" in daemon.log()
    assert "lost" not in daemon.log()  # the connection survived every bad frame


def test_server_shutdown_is_handed_over_without_a_gap(ctx, fake, start_streamerd):
    daemon = start_streamerd("--source", "binance", "--binance-url", fake.url)
    sub = subscriber(ctx, daemon.endpoint, "ETHUSDT")
    old = fake.wait_for_subscription("ethusdt@trade", timeout=10)
    fake.push_trades("ETHUSDT", range(1, 21))
    fake.server_shutdown(old)
    new = fake.wait_for_subscription("ethusdt@trade", timeout=10, exclude=[old])
    assert not old.closed  # the successor opened first
    fake.push_trades("ETHUSDT", range(21, 41))  # both connections carry these
    fake.wait_for_close(old, timeout=10)  # streamerd drops the old one once the new one caught up
    assert old.closed_by_client
    fake.push_trades("ETHUSDT", range(41, 61))
    assert [e.t for e in receive(sub, 60)] == list(range(1, 61))
    assert_quiet(sub)
    assert new.number == 2
    assert daemon.stop() == 0
    assert "gaps=0" in daemon.log()


# --- replay ----------------------------------------------------------------------


def test_replay_of_a_real_tape_yields_every_trade_once(ctx, start_streamerd):
    daemon = start_streamerd("--source", "replay", "--replay-file", str(BTC_TAPE), "--speed", "0")
    sub = subscriber(ctx, daemon.endpoint, "BTCUSDT")
    events = receive(sub, 2927, timeout=20)
    ids = [e.t for e in events]
    assert ids == list(range(3735695795, 3735698722))  # every id once, in order (samples/README.md)
    assert events[0].p == "61563.99000000"  # decimal strings untouched
    daemon.wait_log("replay finished: 2927 trades")
    assert_quiet(sub)
    assert daemon.proc.poll() is None  # idles after the replay so subscribers stay connected
    assert daemon.stop() == 0


def test_csv_replay_handles_ms_and_us_timestamps(ctx, start_streamerd, tmp_path):
    ms_file = tmp_path / "XRPUSDT-trades-2024-12-31.csv"
    ms_file.write_text(
        "1001,0.51230000,100.00000000,51.23000000,1735689599000,True,True\n"
        "1002,0.51240000,10.00000000,5.12400000,1735689599500,False,True\n"
    )
    us_file = tmp_path / "XRPUSDT-trades-2025-01-01.csv.gz"
    with gzip.open(us_file, "wt") as f:
        f.write("1003,0.51250000,20.00000000,10.25000000,1735689600000123,true,true\n")
        f.write("1004,0.51260000,30.00000000,15.37800000,1735689600200456,false,true\n")
    daemon = start_streamerd("--source", "replay", "--replay-file", str(us_file), "--replay-file", str(ms_file),
                             "--speed", "10")
    sub = subscriber(ctx, daemon.endpoint, "XRPUSDT")
    started = time.monotonic()
    events = receive(sub, 4)
    elapsed = time.monotonic() - started
    assert [e.t for e in events] == [1001, 1002, 1003, 1004]  # merged by time across files
    assert [e.T for e in events] == [1735689599000, 1735689599500, 1735689600000, 1735689600200]
    assert [e.m for e in events] == [True, False, True, False]
    assert events[0].p == "0.51230000" and events[0].q == "100.00000000"
    assert 0.1 <= elapsed < 5  # 1.2 s of market at x10
    daemon.wait_log("replay finished: 4 trades")
    assert daemon.stop() == 0


# --- simulate --------------------------------------------------------------------


def _first_simulated(ctx, start_streamerd, seed: int) -> list[tuple]:
    daemon = start_streamerd("--source", "simulate", "--seed", str(seed), "--rate", "500")
    sub = subscriber(ctx, daemon.endpoint, "XRPUSDT")
    events = receive(sub, 20)
    daemon.wait_log("SIMULATED XRPUSDT")
    assert daemon.stop() == 0
    sub.close()
    return [(e.t, e.p, e.q, e.m) for e in events]


def test_simulate_is_seeded_and_binance_shaped(ctx, start_streamerd):
    first = _first_simulated(ctx, start_streamerd, 7)
    assert first == _first_simulated(ctx, start_streamerd, 7)
    assert first != _first_simulated(ctx, start_streamerd, 8)
    ids = [t for t, *_ in first]
    assert ids == list(range(ids[0], ids[0] + 20))
    for _, price, qty, _ in first:
        assert price.count(".") == 1 and len(price.split(".")[1]) == 8
        assert (float(price) * 10_000) % 1 < 1e-6  # XRPUSDT tick 0.0001
        assert float(qty) >= 1


# --- systemd: readiness and watchdog ---------------------------------------------

# As systemd starts a Type=notify service: WATCHDOG_PID is the main pid, known only once
# the process exists, so a shell sets it to its own pid and execs streamerd in its place.
AS_MAIN_PID = ("sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh")


class NotifySocket:
    """The test's end of $NOTIFY_SOCKET: one datagram per sd_notify call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def next(self, timeout: float) -> tuple[list[str], float]:
        """The next datagram's fields and when it arrived (monotonic); fails at the deadline."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no sd_notify datagram within {timeout}s") from None
        return data.decode().split("\n"), time.monotonic()

    def pings(self, count: int, timeout: float) -> list[float]:
        """Arrival times of the next `count` WATCHDOG=1, each within `timeout` of the one before."""
        times = []
        while len(times) < count:
            fields, at = self.next(timeout)
            if "WATCHDOG=1" in fields:
                times.append(at)
        return times


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.sock.close()


def _metrics_config(tmp_path: Path, port: int) -> str:
    path = tmp_path / "metrics.toml"
    path.write_text(f"[streamer]\nmetrics_port = {port}\n")
    return str(path)


def test_watchdog_pings_come_from_the_main_loop(start_streamerd, notify_socket, tmp_path, free_tcp_port):
    # WatchdogSec=0.2 s: a ping is due every 0.1 s (half the interval, as sd_watchdog_enabled(3) advises).
    daemon = start_streamerd(
        "--source", "simulate", "--symbols", "XRPUSDT", "--config", _metrics_config(tmp_path, free_tcp_port),
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000"}, prefix=AS_MAIN_PID,
    )
    fields, _ = notify_socket.next(15)
    assert fields[0] == "READY=1", fields
    steady = notify_socket.pings(10, timeout=0.6)
    assert steady[-1] - steady[0] < 3.0, "pings too slow for a 0.2 s watchdog"

    # A metrics client that connects and sends nothing used to hold the main loop (and so stop
    # the pings) for a second per read; since issue 20 no client can hold it: the pings keep their
    # pace. (That lever was this test's way to show the pings come from the loop; none is left.)
    with socket.create_connection(("127.0.0.1", free_tcp_port)):
        notify_socket.pings(5, timeout=0.6)
    assert daemon.stop() == 0
    assert any("STOPPING=1" in notify_socket.next(5)[0] for _ in range(20))


def test_watchdog_meant_for_another_pid_is_not_pinged(start_streamerd, notify_socket):
    daemon = start_streamerd(
        "--source", "simulate", "--symbols", "XRPUSDT",
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"},
    )
    fields, _ = notify_socket.next(15)
    assert fields[0] == "READY=1", fields
    with pytest.raises(AssertionError, match="no sd_notify datagram"):
        notify_socket.next(1.0)  # not synchronisation: five ping intervals in which nothing may come
    assert daemon.stop() == 0


# --- command line and pure units -------------------------------------------------


def test_config_error_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[streamer]\nsource = 'carrier-pigeon'\n")
    result = subprocess.run([sys.executable, "-m", "streamerd.cli", "start", "--config", str(bad)],
                            capture_output=True, text=True, timeout=20, env=_env())
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "streamer.source" in result.stderr


def test_demand_grace_and_prefix_subscriptions():
    demand = Demand(always=frozenset({"BTCUSDT"}), grace_seconds=30)
    assert demand.wanted == {"BTCUSDT"}
    assert demand.apply([(True, b"TRADE_EVENTS:XRPUSDT")], now=0)
    assert not demand.apply([(False, b"TRADE_EVENTS:XRPUSDT")], now=1)  # in grace: still wanted
    assert demand.next_deadline() == 31
    assert not demand.apply([(True, b"TRADE_EVENTS:XRPUSDT")], now=20)  # back in time
    assert not demand.apply([(False, b"TRADE_EVENTS:XRPUSDT")], now=25)
    assert not demand.expire(now=54)
    assert demand.expire(now=55) and demand.wanted == {"BTCUSDT"}
    assert not demand.apply([(False, b"TRADE_EVENTS:BTCUSDT")], now=60)  # configured: streams always
    assert symbol_of_subscription(b"") is None
    assert symbol_of_subscription(b"TRADE_EVENTS:") is None
    assert symbol_of_subscription(b"TRADE_EVENTS:xrpusdt") is None  # would never match a topic
    assert symbol_of_subscription(b"TRADE_EVENTS:ADAUSDT") == "ADAUSDT"


def _trade(symbol: str, trade_id: int) -> TradeEvent:
    return TradeEvent(e="trade", E=1, s=symbol, t=trade_id, p="1.0", q="1.0", T=1, m=False)


def test_handover_holds_successor_trades_until_the_old_connection_fills_the_gap():
    from streamerd.binance import BinanceSource, Connection
    from streamerd.publisher import Stats

    out: list[int] = []
    source = BinanceSource(lambda e, raw=None: out.append(e.t), Stats(), "ws://unused")
    source.wanted = {"XRPUSDT", "ADAUSDT"}
    old, new = Connection(1), Connection(2)
    old.sent = new.sent = {"xrpusdt@trade", "adausdt@trade"}
    old.successor, new.predecessor = new, old
    source.conns = [old, new]
    source._on_trade(old, _trade("XRPUSDT", 10))
    source._on_trade(new, _trade("XRPUSDT", 12))  # ahead of the old one: held, not a gap
    source._on_trade(new, _trade("XRPUSDT", 13))
    assert out == [10]
    source._on_trade(old, _trade("XRPUSDT", 11))  # fills it: the held ones follow
    assert out == [10, 11, 12, 13]
    source._on_trade(old, _trade("XRPUSDT", 12))  # late duplicate
    source._on_trade(new, _trade("ADAUSDT", 5))  # first sight of a symbol: nothing to wait for
    source._on_trade(new, _trade("ADAUSDT", 6))  # contiguous from the successor: caught up
    source._on_trade(new, _trade("XRPUSDT", 14))
    assert out == [10, 11, 12, 13, 5, 6, 14]
    assert source.stats.duplicates == 1 and source.stats.gaps == 0
    assert old not in source.conns  # every symbol caught up: the old connection is closed
    source._on_trade(new, _trade("XRPUSDT", 17))  # a real gap now: published and counted
    assert out[-1] == 17 and source.stats.gaps == 1 and source.stats.missing == 2


def test_more_than_1024_streams_open_another_connection():
    from streamerd.binance import MAX_STREAMS, BinanceSource
    from streamerd.publisher import Stats

    source = BinanceSource(lambda e, raw=None: None, Stats(), "ws://unused")
    symbols = {f"S{i:04d}USDT" for i in range(1500)}
    source.set_wanted(symbols)
    assert [len(c.streams) for c in source.conns] == [MAX_STREAMS, 1500 - MAX_STREAMS]
    source.set_wanted(set(sorted(symbols)[:10]))
    assert [len(c.streams) for c in source.conns] == [10, 0]
    source.set_wanted(symbols)  # the free room is reused before a third connection is opened
    assert len(source.conns) == 2 and sum(len(c.streams) for c in source.conns) == 1500


# --- recording ---------------------------------------------------------------------

# A file-size limit on streamerd alone: its writes past it fail with EFBIG, as on a full disk.
FSIZE_LIMIT = (sys.executable, "-c",
               "import os, resource, sys; n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n));"
               " os.execv(sys.argv[2], sys.argv[2:])")


def _record_config(tmp_path: Path, record_dir: Path, **keys: Any) -> str:
    path = tmp_path / "record.toml"
    lines = [f"record_dir = {str(record_dir)!r}", *(f"{k} = {v!r}" for k, v in keys.items())]
    path.write_text("[streamer]\n" + "\n".join(lines) + "\n")
    return str(path)


def _metric(port: int, name: str) -> float | None:
    """A sample without labels from streamerd's metrics; None while nothing answers yet."""
    http = requests.Session()
    http.trust_env = False  # never a proxy for loopback
    try:
        text = http.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.ConnectionError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _wait_metric(port: int, name: str, ok: Any, timeout: float = 15.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = _metric(port, name)
        if value is not None and ok(value):
            return value
        assert time.monotonic() < deadline, f"{name} = {value}"
        time.sleep(0.05)


def _stopped_counter(daemon: Streamerd, name: str) -> int:
    """A counter from the recorder's last log line (`recorder stopped: recorded=N ...`)."""
    line = next(line for line in daemon.log().splitlines() if "recorder stopped:" in line)
    return int(line.split(f" {name}=")[1].split()[0])


def _replay_everything(ctx, start_streamerd, files: list[Path], *symbols: str) -> list[TradeEvent]:
    """Every trade a replay of `files` publishes, in order (the count read from its log)."""
    args = [arg for f in files for arg in ("--replay-file", str(f))]
    daemon = start_streamerd("--source", "replay", *args, "--speed", "0")
    sub = everything_subscriber(ctx, daemon.endpoint, *symbols)
    daemon.wait_log("replay finished", timeout=30)
    count = int(daemon.log().split("replay finished: ")[1].split()[0])
    events = receive(sub, count, timeout=30)
    assert_quiet(sub)
    assert daemon.stop() == 0
    sub.close()
    return events


def everything_subscriber(ctx: zmq.Context, endpoint: str, *symbols: str) -> zmq.Socket:
    """Subscribed to every topic before its symbols start the stream, so nothing is missed."""
    sub = subscriber(ctx, endpoint)
    sub.subscribe(b"TRADE_EVENTS:")  # names no symbol: demand comes from the next ones
    for symbol in symbols:
        sub.subscribe(f"TRADE_EVENTS:{symbol}".encode())
    return sub


def _tape_lines(path: Path) -> list[bytes]:
    """The trade frames of a tape, as written (receive times dropped)."""
    with gzip.open(path) as f:
        return [line.split(b" ", 1)[1].rstrip(b"\n") for line in f if b'@trade"' in line]


def _today() -> str:
    return time.strftime("%Y%m%d", time.gmtime())


def test_a_recorded_replay_replays_identically_with_the_frames_as_received(ctx, start_streamerd, tmp_path):
    tapes = [BTC_TAPE, ETH_TAPE]
    record_dir = tmp_path / "rec"
    args = [arg for t in tapes for arg in ("--replay-file", str(t))]
    daemon = start_streamerd("--source", "replay", *args, "--speed", "0", "--record-dir", str(record_dir))
    sub = everything_subscriber(ctx, daemon.endpoint, "BTCUSDT")
    published = receive(sub, 2927 + 2810, timeout=30)
    daemon.wait_log("replay finished: 5737 trades")
    assert daemon.stop() == 0
    assert _stopped_counter(daemon, "recorded") == 5737 and _stopped_counter(daemon, "dropped") == 0

    recorded = sorted(record_dir.iterdir())
    assert [p.name for p in recorded] == [f"btcusdt_{_today()}.gz", f"ethusdt_{_today()}.gz"]
    for tape, recording in zip(tapes, recorded, strict=True):
        assert _tape_lines(recording) == _tape_lines(tape)  # byte for byte, as Binance sent them
    with gzip.open(recorded[0]) as f:
        stamps = [int(line.split(b" ", 1)[0]) for line in f]
    assert all(a < b for a, b in itertools.pairwise(stamps))

    assert _replay_everything(ctx, start_streamerd, recorded, "BTCUSDT") == published  # same trades, same order


def test_a_recorded_simulation_replays_identically(ctx, start_streamerd, tmp_path):
    record_dir = tmp_path / "rec"
    daemon = start_streamerd("--source", "simulate", "--rate", "1000", "--record-dir", str(record_dir))
    sub = everything_subscriber(ctx, daemon.endpoint, "XRPUSDT", "ADAUSDT")
    received = receive(sub, 400)
    assert daemon.stop() == 0
    recorded = _stopped_counter(daemon, "recorded")
    assert recorded >= 400 and f"events_out={recorded} " in daemon.log()

    files = sorted(record_dir.iterdir())
    assert [p.name for p in files] == [f"adausdt_{_today()}.gz", f"xrpusdt_{_today()}.gz"]
    shape = re.compile(rb'^\d{19} \{"stream":"xrpusdt@trade","data":\{"e":"trade","E":\d+,"s":"XRPUSDT","t":\d+,'
                       rb'"p":"\d+\.\d{8}","q":"\d+\.\d{8}","T":\d+,"m":(true|false),"M":true\}\}\n$')
    with gzip.open(files[1]) as f:
        assert all(shape.match(line) for line in f)  # Binance's field order, no b/a

    replayed = _replay_everything(ctx, start_streamerd, files, "XRPUSDT")
    assert len(replayed) == recorded
    assert replayed[: len(received)] == received


def test_tapes_merge_by_ns_not_by_us(ctx, start_streamerd, tmp_path):
    # Two trades within the same µs, in two files: only their ns tell the publish order.
    frames = {name: trade_json(name.upper(), 1, time_ms=1723161600000) for name in ("xrpusdt", "adausdt")}
    for name, stamp in (("xrpusdt", 1723161600000000700), ("adausdt", 1723161600000000300)):
        with gzip.open(tmp_path / f"{name}_20240809.gz", "wt") as f:
            f.write(f"{stamp} {frames[name]}\n")
    files = [tmp_path / "xrpusdt_20240809.gz", tmp_path / "adausdt_20240809.gz"]
    assert [e.s for e in _replay_everything(ctx, start_streamerd, files, "XRPUSDT")] == ["ADAUSDT", "XRPUSDT"]


def test_binance_frames_are_recorded_as_sent(ctx, fake, start_streamerd, tmp_path):
    record_dir = tmp_path / "rec"
    daemon = start_streamerd("--source", "binance", "--binance-url", fake.url, "--record-dir", str(record_dir))
    sub = subscriber(ctx, daemon.endpoint, "XRPUSDT")
    fake.wait_for_subscription("xrpusdt@trade", timeout=10)
    frames = [trade_json("XRPUSDT", i, price="0.51230000") for i in range(1, 21)]
    frames[3] = frames[3].replace(',"data":', ', "data": ')  # whitespace a re-encoding would lose
    for frame in frames:
        fake.send_raw(frame)
    assert [e.t for e in receive(sub, 20)] == list(range(1, 21))
    assert daemon.stop() == 0
    assert _tape_lines(record_dir / f"xrpusdt_{_today()}.gz") == [f.encode() for f in frames]


def test_kill_9_leaves_a_readable_recording_and_a_restart_never_appends_to_it(ctx, start_streamerd, tmp_path,
                                                                                free_tcp_port):
    record_dir = tmp_path / "rec"
    config = _record_config(tmp_path, record_dir, metrics_port=free_tcp_port)
    daemon = start_streamerd("--source", "simulate", "--symbols", "XRPUSDT", "--rate", "2000", "--config", config)
    flushed = _wait_metric(free_tcp_port, "naive_streamer_record_recorded_total", lambda v: v >= 2000)
    daemon.kill()
    first = record_dir / f"xrpusdt_{_today()}.gz"
    size = first.stat().st_size

    again = start_streamerd("--source", "simulate", "--symbols", "XRPUSDT", "--config", config)
    again.wait_log("opened")
    assert again.stop() == 0
    second = record_dir / f"xrpusdt_{_today()}.1.gz"
    assert second.exists() and first.stat().st_size == size  # a new part, the cut file untouched

    replay = start_streamerd("--source", "replay", "--replay-file", str(first), "--speed", "0")
    sub = subscriber(ctx, replay.endpoint, "XRPUSDT")
    replay.wait_log("replay finished", timeout=30)
    count = int(replay.log().split("replay finished: ")[1].split()[0])
    assert count >= flushed
    ids = [e.t for e in receive(sub, count, timeout=30)]
    assert ids == list(range(ids[0], ids[0] + count))
    assert replay.stop() == 0
    assert "cut short while recording" in replay.log() and re.search(r" truncated=1\b", replay.log())
    assert "malformed=0 " in replay.log()


def test_a_full_disk_stops_the_recorder_and_publishing_goes_on(ctx, start_streamerd, tmp_path, free_tcp_port):
    record_dir = tmp_path / "rec"
    config = _record_config(tmp_path, record_dir, metrics_port=free_tcp_port)
    # ~30 kB/s of gzip: the first flush fits under the limit, a later write does not
    daemon = start_streamerd("--source", "simulate", "--symbols", "XRPUSDT", "--rate", "2000", "--config", config,
                             prefix=(*FSIZE_LIMIT, "60000"))
    daemon.wait_log("recording stopped, publishing goes on:", timeout=20)
    [error] = [line for line in daemon.log().splitlines() if "recording stopped" in line]
    assert "ERROR" in error and "File too large" in error
    assert _metric(free_tcp_port, "naive_streamer_record_errors_total") == 1
    assert _metric(free_tcp_port, "naive_streamer_recording") == 0
    flushed = _metric(free_tcp_port, "naive_streamer_record_recorded_total")
    assert flushed and flushed > 0

    sub = subscriber(ctx, daemon.endpoint, "XRPUSDT")  # publishing goes on
    ids = [e.t for e in receive(sub, 1000)]
    assert ids == list(range(ids[0], ids[0] + 1000))
    assert daemon.stop() == 0

    # What reached the disk stays readable, up to the failed write.
    replayed = _replay_everything(ctx, start_streamerd, [record_dir / f"xrpusdt_{_today()}.gz"], "XRPUSDT")
    assert len(replayed) >= flushed
    assert [e.t for e in replayed] == list(range(replayed[0].t, replayed[0].t + len(replayed)))


def test_an_unusable_record_dir_is_one_error_line_and_publishing_goes_on(ctx, start_streamerd, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    daemon = start_streamerd("--source", "simulate", "--rate", "500", "--record-dir", str(blocker / "rec"))
    sub = subscriber(ctx, daemon.endpoint, "XRPUSDT")
    assert len(receive(sub, 50)) == 50
    assert daemon.stop() == 0
    [error] = [line for line in daemon.log().splitlines() if "recording stopped" in line]
    assert "Not a directory" in error and str(blocker) in error


def test_the_budget_deletes_the_oldest_days_first_then_stops_recording(ctx, start_streamerd, tmp_path):
    record_dir = tmp_path / "rec"
    record_dir.mkdir()
    old = ["btcusdt_20240101.gz", "ethusdt_20240101.gz", "btcusdt_20240102.gz"]
    for name in reversed(old):  # written newest first: the order comes from the names
        (record_dir / name).write_bytes(os.urandom(100_000))
    (record_dir / "notes.txt").write_bytes(b"x" * 500_000)  # not a recording: not counted, not touched
    config = _record_config(tmp_path, record_dir, record_budget_mb=0.25)
    daemon = start_streamerd("--source", "simulate", "--symbols", "XRPUSDT", "--rate", "5000", "--config", config)
    daemon.wait_log("recording stopped", timeout=30)
    lines = daemon.log().splitlines()
    deleted = [line.split("deleted ")[1].split()[0] for line in lines if "over the 0.25 MB budget, deleted" in line]
    assert deleted == [str(record_dir / name) for name in old]
    [error] = [line for line in lines if "recording stopped" in line]
    assert "exceed record_budget_mb" in error
    assert sorted(p.name for p in record_dir.iterdir()) == ["notes.txt", f"xrpusdt_{_today()}.gz"]
    sub = subscriber(ctx, daemon.endpoint, "XRPUSDT")
    assert len(receive(sub, 100)) == 100
    assert daemon.stop() == 0
    assert _stopped_counter(daemon, "deleted") == 3 and _stopped_counter(daemon, "errors") == 1


def test_files_rotate_at_utc_midnight_of_the_receive_time(tmp_path):
    from streamerd.recorder import Recorder

    midnight = 1723161600 * 10**9  # 2024-08-09T00:00:00Z
    times = iter([midnight - 2, midnight - 2, midnight - 1, midnight, midnight + 5])  # a repeat, then across
    recorder = Recorder(tmp_path, 10**9, frozenset({"XRPUSDT"}), clock=lambda: next(times))
    recorder.start()
    for trade_id in range(1, 6):
        recorder.record(_trade("XRPUSDT", trade_id))
        recorder.record(_trade("ADAUSDT", trade_id))  # not in record_symbols
    recorder.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["xrpusdt_20240808.gz", "xrpusdt_20240809.gz"]

    def stamps_and_ids(name: str) -> list[tuple[int, int]]:
        with gzip.open(tmp_path / name) as f:
            return [(int(s), msgspec.json.decode(j)["data"]["t"]) for s, j in (line.split(b" ", 1) for line in f)]

    assert stamps_and_ids("xrpusdt_20240808.gz") == [(midnight - 2, 1), (midnight - 1, 2)]  # repeat made unique
    assert stamps_and_ids("xrpusdt_20240809.gz") == [(midnight, 3), (midnight + 1, 4), (midnight + 5, 5)]
    assert recorder.stats.recorded == 5 and recorder.stats.errors == 0
