"""streamerd end to end: the real `streamerd start` in its own process group,
a fake Binance websocket server, and ZeroMQ SUB clients in the test process.
"""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq

from naived.messages import TradeEvent, decode_trade
from streamerd.publisher import Demand, symbol_of_subscription
from fake_binance import FakeBinance

TAPES = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance-spot-tapes"


class Streamerd:
    """`streamerd start ...` as a subprocess in its own process group, logs in a file."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> None:
        """`env`: extra environment; `prefix`: a launcher that ends by exec'ing the command
        (so `proc.pid` is streamerd's pid, as systemd's main pid is)."""
        self.endpoint = f"ipc://{tmp}/trades.sock"
        self.log_path = tmp / "streamerd.log"
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "streamerd.cli", "start", "--endpoint", self.endpoint, *args],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"), start_new_session=True,
            env={**_env(), **(env or {})},
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
    tape = TAPES / "btcusdt_20240808.gz"
    if not tape.exists():
        pytest.skip(f"recorded tapes not available at {TAPES}")
    daemon = start_streamerd("--source", "replay", "--replay-file", str(tape), "--speed", "0")
    sub = subscriber(ctx, daemon.endpoint, "BTCUSDT")
    events = receive(sub, 9757, timeout=20)
    ids = [e.t for e in events]
    assert ids == list(range(3735683259, 3735693016))  # every id once, in order
    assert events[0].p == "61837.63000000" or "." in events[0].p  # decimal strings untouched
    daemon.wait_log("replay finished: 9757 trades")
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

    # Hold the main loop: a metrics client that connects and sends nothing keeps `serve()`
    # in its 1 s read timeout. Pings sent by anything but the loop would keep coming.
    with socket.create_connection(("127.0.0.1", free_tcp_port)):
        held = notify_socket.pings(3, timeout=5)
    gaps = [b - a for a, b in zip([steady[-1], *held], held)]
    assert max(gaps) > 0.7, f"pings kept coming while the main loop was held: gaps {gaps}"

    notify_socket.pings(5, timeout=0.6)  # and they resume at the watchdog's pace
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
