"""No slow or hostile client of any listener holds the tree (issue 20, items 3 and 6).

One real tree (streamerd + naived + its paper exchange) serves every test here. Each test
points slow clients at one listener (root's metrics, streamerd's metrics, the control
socket, the paper exchange's REST API and its user data stream) and meanwhile measures the
round trip of `naivectl status`'s request to the root (the same call on a fresh REQ socket,
without the Python start-up of the command). The issue asks for that explicitly: under
100 ms while they trickle. The latencies are printed (`pytest -s`) with and without them.
"""

from __future__ import annotations

import itertools
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psutil
import pytest
import requests
import zmq
from harness import Tree, free_port, running_tree, wait_for
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from naived.core.config import load_config
from naived.core.messages import StatusRequest, TreeStatus, control_reply_decoder, encode
from naived.ops.metrics import MetricsEndpoint
from naived.paper import userstream
from naived.tree.ipc import request

LATENCY_BOUND = 0.100  # seconds: the bound for `naivectl status` while slow clients trickle
REQUEST_SECONDS = 2.0  # the paper exchange's request deadline in this tree
PAPER_MAX_CONNECTIONS = 24


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    directory = tmp_path_factory.mktemp("slow-clients")
    naived_port, streamer_port = free_port(), free_port()
    with running_tree(directory, f"[naived]\nmetrics_port = {naived_port}\n",
                      streamer=f"metrics_port = {streamer_port}",
                      paper=f"max_connections = {PAPER_MAX_CONNECTIONS}\nrequest_seconds = {REQUEST_SECONDS}") as t:
        t.naived_metrics = naived_port
        t.streamer_metrics = streamer_port
        t.control = load_config(str(t.config_path)).control_endpoint
        wait_for("the paper exchange", lambda: t.http.get(f"{t.paper_url}/api/v3/ping", timeout=2).ok)
        yield t


# --- measuring the root ------------------------------------------------------------------------


class StatusLatency(threading.Thread):
    """Asks the root for its status every 20 ms on a fresh REQ socket, as naivectl does, and
    keeps each round trip (a request unanswered within 1 s counts as 1 s)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.samples: list[float] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        try:
            while not self.stopped.is_set():
                started = time.monotonic()
                reply = request(ctx, self.endpoint, StatusRequest(), control_reply_decoder, 1000)
                elapsed = time.monotonic() - started
                self.samples.append(elapsed if isinstance(reply, TreeStatus) else max(elapsed, 1.0))
                self.stopped.wait(0.02)  # the pace of the samples, not a wait for an event
        finally:
            ctx.term()

    def summary(self) -> tuple[float, float, float]:
        ordered = sorted(self.samples)
        return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))], ordered[-1]


@contextmanager
def status_latency(tree: Tree, what: str) -> Iterator[StatusLatency]:
    sampler = StatusLatency(tree.control)
    sampler.start()
    try:
        yield sampler
    finally:  # printed whatever happened: the numbers of a failing run are the interesting ones
        sampler.stopped.set()
        sampler.join(5)
        if sampler.samples:
            median, p95, worst = sampler.summary()
            print(f"\nstatus latency {what}: {len(sampler.samples)} samples, median {median * 1000:.1f} ms, "
                  f"p95 {p95 * 1000:.1f} ms, max {worst * 1000:.1f} ms")


def assert_quick(sampler: StatusLatency) -> None:
    median, p95, worst = sampler.summary()
    assert len(sampler.samples) >= 20, sampler.samples
    # The 95th percentile within the bound, and no sample past five times it: the machine running
    # the tests is shared, and a scheduling hiccup of the test's own threads is not the root's.
    assert p95 < LATENCY_BOUND, f"median {median:.3f}s p95 {p95:.3f}s max {worst:.3f}s"
    assert worst < 5 * LATENCY_BOUND, f"median {median:.3f}s p95 {p95:.3f}s max {worst:.3f}s"


def baseline(tree: Tree, seconds: float = 1.5) -> None:
    deadline = time.monotonic() + seconds
    with status_latency(tree, "without slow clients") as sampler:
        wait_for("baseline samples", lambda: time.monotonic() >= deadline and len(sampler.samples) >= 20, timeout=seconds + 10)
    assert_quick(sampler)


# --- slow clients ------------------------------------------------------------------------------


class Trickler(threading.Thread):
    """Sends `data` one byte every `interval` seconds on its own connection, and notes when the
    server closed it (or the whole of `data` was sent)."""

    def __init__(self, port: int, data: bytes, interval: float = 0.3, path: str | None = None) -> None:
        super().__init__(daemon=True)
        family = socket.AF_UNIX if path else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.connect(path or ("127.0.0.1", port))
        self.data, self.interval = data, interval
        self.closed_at: float | None = None
        self.started_at = time.monotonic()
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            for i in range(len(self.data)):
                self.sock.send(self.data[i:i + 1])
                if self.stopped.wait(self.interval):
                    return
                if _closed(self.sock):
                    break
        except OSError:
            pass
        self.closed_at = time.monotonic()

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        self.sock.close()


def _closed(sock: socket.socket) -> bool:
    """Has the peer closed (or reset) this connection? Never waits (a socket with a timeout would
    wait for it even with MSG_DONTWAIT: Python polls before it reads)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        if sock.fileno() >= 0:
            sock.settimeout(timeout)


def _peek(sock: socket.socket) -> bytes:
    """What the peer sent so far, left unread; never waits."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(65536, socket.MSG_PEEK)
    except OSError:
        return b""
    finally:
        sock.settimeout(timeout)


def connections(port: int, count: int, first: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if first:
            s.sendall(first)
        socks.append(s)
    return socks


def closed_by_server(socks: list[socket.socket]) -> int:
    return sum(1 for s in socks if _closed(s))


@contextmanager
def cleanup() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def scrape(port: int) -> str:
    http = requests.Session()
    http.trust_env = False
    return http.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text


def dropped(text: str, reason: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'naive_metrics_dropped_total{{reason="{reason}"}} '):
            return float(line.split()[-1])
    return 0.0


# --- the tests -------------------------------------------------------------------------------


def test_root_metrics_slow_clients_never_hold_the_root(tree: Tree) -> None:
    port = tree.naived_metrics
    baseline(tree)
    with cleanup() as stack, status_latency(tree, "while root metrics clients trickle") as sampler:
        # More idle clients than the endpoint keeps: the oldest are dropped for the newest, the rest at their deadline
        idle = connections(port, 24)
        stack.callback(lambda: [s.close() for s in idle])
        tricklers = [Trickler(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" * 20, 0.3) for _ in range(3)]
        for t in tricklers:
            stack.callback(t.stop)
            t.start()
        # A client that asks and never reads its answer (a small receive buffer: the response stays in the root's)
        mute = socket.socket()
        mute.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        mute.connect(("127.0.0.1", port))
        mute.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        stack.callback(mute.close)
        # Every trickler is dropped at its deadline (2 s from accept), whatever it still sends
        wait_for("the trickling metrics clients dropped", lambda: all(t.closed_at for t in tricklers), timeout=6)
        assert all(t.closed_at - t.started_at < 4 for t in tricklers if t.closed_at)
        text = scrape(port)  # a scrape is answered meanwhile
        assert "naive_up 1" in text
        wait_for("the idle ones dropped too", lambda: closed_by_server(idle) == len(idle), timeout=6)
        # Silent clients alone (nothing else wakes the endpoint): dropped at their deadline all the same
        silent = connections(port, 4)
        stack.callback(lambda: [s.close() for s in silent])
        wait_for("the silent ones dropped at their deadline", lambda: closed_by_server(silent) == len(silent), timeout=6)
    assert_quick(sampler)
    text = scrape(port)
    assert dropped(text, "timeout") >= 3 and dropped(text, "too_many") >= 8, text[-600:]


def test_streamerd_publishes_while_its_metrics_clients_trickle(tree: Tree) -> None:
    port = tree.streamer_metrics
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(load_config(str(tree.config_path)).streamer.endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"TRADE_EVENTS:XRPUSDT")
    arrivals: list[float] = []
    try:
        wait_for("trades from streamerd", lambda: sub.poll(100) and sub.recv_multipart(), timeout=15)
        with cleanup() as stack, status_latency(tree, "while streamerd metrics clients trickle") as sampler:
            tricklers = [Trickler(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" * 20, 0.3) for _ in range(3)]
            for t in tricklers:
                stack.callback(t.stop)
                t.start()
            idle = connections(port, 24)
            stack.callback(lambda: [s.close() for s in idle])
            end = time.monotonic() + 3.0
            while time.monotonic() < end:  # ~50 trades a second (simulate_rate) all the while
                if sub.poll(100):
                    sub.recv_multipart()
                    arrivals.append(time.monotonic())
            wait_for("the trickling clients dropped", lambda: all(t.closed_at for t in tricklers), timeout=6)
            wait_for("the silent ones dropped too (at their deadline)", lambda: closed_by_server(idle) == len(idle), timeout=6)
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        print(f"\nstreamerd: {len(arrivals)} trades in 3 s while clients trickled; longest gap {max(gaps) * 1000:.0f} ms")
        assert len(arrivals) > 30 and max(gaps) < 0.5, (len(arrivals), max(gaps, default=None))
        assert_quick(sampler)
        text = scrape(port)
        assert dropped(text, "timeout") >= 3 and dropped(text, "too_many") >= 8, text[-600:]
    finally:
        sub.close()
        ctx.term()


def test_control_socket_stalled_and_oversized_clients(tree: Tree) -> None:
    endpoint = tree.control
    path = endpoint.removeprefix("ipc://")
    baseline(tree)
    ctx = zmq.Context()
    with cleanup() as stack, status_latency(tree, "while control clients stall and send oversized frames") as sampler:
        # Raw clients that connect and stall half way through ZeroMQ's greeting
        stalled = [Trickler(0, b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f", 0.5, path=path) for _ in range(10)]
        for t in stalled:
            stack.callback(t.stop)
            t.start()
        # A frame far larger than any request: libzmq drops it (and its sender) before the root sees it
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        stack.callback(big.close)
        big.connect(endpoint)
        big.send(b"\x81" * (1 << 20))
        assert not big.poll(1000), "an oversized control frame was read and answered"
        # A burst of malformed requests: each answered with an error, none fatal, logged at a bounded rate
        junk = ctx.socket(zmq.DEALER)
        junk.setsockopt(zmq.LINGER, 0)
        stack.callback(junk.close)
        junk.connect(endpoint)
        for _ in range(200):
            junk.send(b"\xc1junk")
        answers = []
        wait_for("the burst answered", lambda: (junk.poll(100) and answers.append(junk.recv())) or len(answers) == 200,
                 timeout=10)
    assert_quick(sampler)
    # A message of a million empty frames, each within the size limit. ZeroMQ has no limit on the
    # number of frames, and a ROUTER hands out a message's frames in order before any other
    # client's: the root reads them 1024 per turn of its loop (a recv_multipart took its loop a
    # second), refuses the message, and the socket serves the next request as usual.
    many = ctx.socket(zmq.DEALER)
    many.setsockopt(zmq.LINGER, 0)
    many.setsockopt(zmq.SNDHWM, 0)
    try:
        many.connect(endpoint)
        for _ in range(1_000_000 - 1):
            many.send(b"", zmq.SNDMORE)
        many.send(b"")
        assert many.poll(10_000), "a message of many frames went unanswered"
        reply = control_reply_decoder.decode(many.recv_multipart()[-1])
        assert "expected one frame" in getattr(reply, "message", str(reply))
        asked = time.monotonic()
        many.send_multipart([b"", encode(StatusRequest())])  # behind the rest of the frames
        assert many.poll(10_000)
        assert isinstance(control_reply_decoder.decode(many.recv_multipart()[-1]), TreeStatus)
        print(f"control: a status request behind a million frames answered in {time.monotonic() - asked:.2f} s")
    finally:
        many.close()
        ctx.term()
    text = scrape(tree.naived_metrics)
    assert any(line.startswith("naive_control_refused_total ") and float(line.split()[-1]) >= 1
               for line in text.splitlines()), text[:400]


def fresh_get(url: str) -> requests.Response:
    """On a new connection: a kept-alive one may have been closed as the longest idle by these tests."""
    with requests.Session() as http:
        http.trust_env = False
        return http.get(url, timeout=2)


def paper_usage(tree: Tree) -> dict[str, Any]:
    return fresh_get(f"{tree.paper_url}/paper/usage").json()


def paper_threads(tree: Tree) -> int:
    return psutil.Process(tree.status()["paper_exchange"]["pid"]).num_threads()


def test_paper_rest_slow_idle_and_huge_requests(tree: Tree) -> None:
    port = tree.paper_port
    baseline(tree)
    with cleanup() as stack, status_latency(tree, "while paper REST clients trickle") as sampler:
        # A request trickled one byte every 0.2 s: closed at its deadline from its first byte
        trickler = Trickler(port, b"GET /api/v3/ping HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 200 + b"\r\n\r\n", 0.2)
        stack.callback(trickler.stop)
        trickler.start()
        # Twice as many idle connections as the exchange serves at once: never one thread each
        idle = connections(port, 2 * PAPER_MAX_CONNECTIONS)
        stack.callback(lambda: [s.close() for s in idle])
        wait_for("the longest idle closed for the newest", lambda: closed_by_server(idle) >= PAPER_MAX_CONNECTIONS // 2,
                 timeout=5)
        assert fresh_get(f"{tree.paper_url}/api/v3/ping").ok  # a new client is served meanwhile
        threads = paper_threads(tree)
        assert threads <= PAPER_MAX_CONNECTIONS + 8, f"{threads} threads for {len(idle)} idle connections"
        # A body announced far larger than any request: 413 at once, the body never read
        huge = socket.create_connection(("127.0.0.1", port), timeout=3)
        stack.callback(huge.close)
        huge.sendall(b"POST /api/v3/order HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n\r\n" + b"a" * 65536)
        assert huge.recv(4096).startswith(b"HTTP/1.1 413"), "a 300 MB body was not refused"
        # A head larger than any request: 431
        head = socket.create_connection(("127.0.0.1", port), timeout=3)
        stack.callback(head.close)
        head.sendall(b"GET /api/v3/ping HTTP/1.1\r\n" + b"X-Big: " + b"z" * 8000 + b"\r\n"
                     + b"X-More: " + b"z" * 9000 + b"\r\n\r\n")
        assert head.recv(4096).startswith(b"HTTP/1.1 431"), "a 17 KiB head was not refused"
        wait_for("the trickled request closed", lambda: trickler.closed_at, timeout=REQUEST_SECONDS + 4)
        assert trickler.closed_at - trickler.started_at < REQUEST_SECONDS + 2
    assert_quick(sampler)
    usage = paper_usage(tree)["dropped"]
    assert usage["timeout"] >= 1 and usage["evicted"] >= PAPER_MAX_CONNECTIONS // 2, usage
    assert usage["body_too_large"] >= 1 and usage["head_too_large"] >= 1, usage
    assert fresh_get(f"{tree.paper_url}/api/v3/ping").ok


def test_paper_rest_refuses_past_the_cap_when_no_connection_is_idle(tree: Tree) -> None:
    port = tree.paper_port
    with cleanup() as stack, status_latency(tree, "while paper REST requests hold every slot") as sampler:
        # Requests begun and not finished (a head without its end): busy, not idle, so none is evicted
        busy = connections(port, PAPER_MAX_CONNECTIONS + 4, first=b"GET /api/v3/ping HTTP/1.1\r\n")
        stack.callback(lambda: [s.close() for s in busy])
        # (the tree's own kept-alive connections may still be idle: each is closed for a newcomer first)
        wait_for("newcomers refused with 503 at once", lambda: sum(1 for s in busy if _peek(s).startswith(b"HTTP/1.1 503")) >= 2,
                 timeout=REQUEST_SECONDS * 0.75)  # before any held request's deadline could free a slot
        wait_for("the held requests closed at their deadline",
                 lambda: all(_closed(s) or _peek(s).startswith(b"HTTP/1.1 503") for s in busy),
                 timeout=REQUEST_SECONDS + 5)
    assert_quick(sampler)
    assert paper_usage(tree)["dropped"]["too_many"] >= 2
    assert fresh_get(f"{tree.paper_url}/api/v3/ping").ok


def listen_key(tree: Tree) -> str:
    reply = requests.post(f"{tree.paper_url}/api/v3/userDataStream", headers={"X-MBX-APIKEY": "paper-key"}, timeout=2)
    return reply.json()["listenKey"]


def test_user_data_stream_idle_trickling_oversized_and_too_many(tree: Tree) -> None:
    port = tree.paper_ws_port
    baseline(tree)
    with cleanup() as stack, status_latency(tree, "while user data stream clients trickle") as sampler:
        idle = connections(port, 10)  # connected, no handshake at all
        idle_since = time.monotonic()
        stack.callback(lambda: [s.close() for s in idle])
        trickler = Trickler(port, b"GET /ws/" + b"k" * 60 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 0.3)
        stack.callback(trickler.stop)
        trickler.start()
        url = f"ws://127.0.0.1:{port}/ws/{listen_key(tree)}"
        # A message larger than any client sends: closed with 1009
        ws = stack.enter_context(ws_connect(url, open_timeout=5))
        ws.send("x" * 10_000)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        # Connections past the cap are refused (the tree's own account stream holds one)
        opened, refused = [], None
        for _ in range(userstream.MAX_CONNECTIONS + 1):
            try:
                opened.append(stack.enter_context(ws_connect(url, open_timeout=5)))
            except InvalidStatus as exc:
                refused = exc.response.status_code
                break
        assert refused == 503 and len(opened) <= userstream.MAX_CONNECTIONS, (refused, len(opened))
        # No handshake within OPEN_SECONDS (5 s; websockets' default is 10): closed
        wait_for("the idle and trickling handshakes closed", lambda: closed_by_server(idle) == len(idle) and trickler.closed_at,
                 timeout=max(0.1, idle_since + userstream.OPEN_SECONDS + 2.5 - time.monotonic()))
    assert_quick(sampler)
    stream = paper_usage(tree)["stream_dropped"]
    assert stream["handshake_timeout"] >= 11 and stream["too_many"] >= 1 and stream["message_too_large"] >= 1, stream
    # The tree's own stream connection is untouched by all this
    assert tree.status()["account_stream"]["restarts"] == 0


def test_the_metrics_endpoint_drops_a_client_that_never_reads_a_large_response() -> None:
    """The endpoint alone: a response larger than the socket buffers (1,340 symbols' metrics run
    to megabytes) to a client that never reads. `serve` returns at once with the rest kept, and
    the client is dropped at its deadline."""
    big = "x" * (8 << 20) + "\n"
    endpoint = MetricsEndpoint(0, lambda: big, deadline_seconds=0.5)
    client = socket.create_connection(("127.0.0.1", endpoint.port))
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")

        def answering() -> bool:
            endpoint.serve()
            return any(c.response is not None for c in endpoint._clients.values())

        wait_for("the request read and the answer begun", answering, timeout=5)
        wait_for("the client that does not read dropped", lambda: endpoint.tick(time.monotonic()) or not endpoint._clients,
                 timeout=5)
        assert endpoint.dropped["timeout"] == 1
    finally:
        client.close()
        endpoint.close()
