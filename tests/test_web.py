"""The web observer (naived/web/) on a real tree: the page and its files, the JSON API as TreeStatus,
the websocket that pushes each change, its limits and safe headers, a port in use, and the switch
that turns it off. The status reaches the page by the root's push (root.py `publish_status`); a
client that never reads must delay neither the others nor the root.

The page in a real browser is tests/browser.py's (headless Chromium)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
import requests
import zmq
from harness import BIN, RESTING, Tree, running_tree, wait_for
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request
from websockets.sync.client import ClientConnection, connect

from naived.core.config import parse_config
from naived.core.messages import StatusRequest, TreeStatus, control_reply_decoder
from naived.ops.listen import free_ports
from naived.tree import root as tree_root
from naived.tree.ipc import request as zmq_request
from naived.web import server

SAFE_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ONE_SYMBOL = RESTING + '\n[naived]\nautostart = ["BTCUSDT"]\n'
# Four symbols, two traders each that follow the market (a rebuy is possible while fewer than
# `chunks` run), each telling its leader every second: the status changes as often as the root
# pushes it (4 times a second), so clients that never read fill their buffers within seconds.
LIVELY = """
[trading.defaults]
chunks = 4
initial_traders = 2
buy_down_interval = "0.5"   # the buys rest far below the market

[naived]
autostart = ["BTCUSDT", "ETHUSDT", "XRPUSDT", "ADAUSDT"]
"""
STALLED = 50
STALL_BYTES = 200_000  # pushed to a reading client while the stalled ones are open: about twice what each can hold


def http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def ws_url(tree: Tree) -> str:
    return tree.web_url.replace("http://", "ws://") + "/api/v1/live"


def live(tree: Tree, origin: str | None = None) -> ClientConnection:
    return connect(ws_url(tree), origin=origin, proxy=None, compression=None, max_size=None, open_timeout=5)  # type: ignore[arg-type]


def opens(tree: Tree) -> bool:
    with live(tree):
        return True


def first_status(tree: Tree) -> dict[str, Any]:
    """The API's status once the root's first push arrived (503 until then)."""
    session = http()
    answer = wait_for("the web observer's first status",
                      lambda: (r := session.get(f"{tree.web_url}/api/v1/status", timeout=2)).status_code == 200 and r)
    return json.loads(answer.content)


def assert_safe(headers: Any, what: str) -> None:
    for name, value in SAFE_HEADERS.items():
        assert headers.get(name) == value, f"{what}: {name} is {headers.get(name)!r}"
    assert not [h for h in headers if h.lower().startswith("access-control-")], f"{what}: CORS headers"


def statuses(ws: ClientConnection, until: Callable[[dict[str, Any]], bool], timeout: float) -> tuple[dict[str, Any], int]:
    """Read pushed statuses until one satisfies `until`; returns it and the bytes read meanwhile."""
    deadline = time.monotonic() + timeout
    seen = 0
    while (left := deadline - time.monotonic()) > 0:
        try:
            raw = ws.recv(timeout=left)
        except TimeoutError:
            break
        seen += len(raw)
        message = json.loads(raw)
        assert message["type"] == "status" and isinstance(message["now"], float)
        if until(message["status"]):
            return message["status"], seen
    raise AssertionError(f"no pushed status as expected within {timeout}s")


def trader(status: dict[str, Any], symbol: str, trader_id: int) -> dict[str, Any] | None:
    for sym in status["symbols"]:
        if sym["symbol"] == symbol and sym["leader"]:
            return next((t for t in sym["leader"]["traders"] if t["trader_id"] == trader_id), None)
    return None


def stalled_client(port: int) -> socket.socket:
    """A websocket that is opened and then never read: a small receive window, the handshake's answer
    read, nothing after it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: its window stays small
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /api/v1/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    sock.settimeout(5)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: not one byte of the first status is taken with it
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def status_latencies(tree: Tree, count: int) -> list[float]:
    """The root's answer to StatusRequest on its control socket, as naivectl asks it, in seconds."""
    ctx = zmq.Context()
    endpoint = f"ipc://{tree.dir / 'run' / 'naived.sock'}"
    times = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            reply = zmq_request(ctx, endpoint, StatusRequest(), control_reply_decoder, 5000)
            times.append(time.perf_counter() - started)
            assert isinstance(reply, TreeStatus)
            time.sleep(0.05)
    finally:
        ctx.term()
    return times


def naivectl_latencies(tree: Tree, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        assert tree.ctl("status").returncode == 0
        times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    return (f"p50 {statistics.median(ordered) * 1000:.1f} ms, p90 {ordered[int(len(ordered) * 0.9) - 1] * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms")


@contextmanager
def web_tree(directory: Path, config: str) -> Iterator[Tree]:
    with running_tree(directory, config, web="") as tree:
        yield tree


def test_the_page_its_files_and_the_json_api(short_tmp: Path) -> None:
    with web_tree(short_tmp, ONE_SYMBOL) as tree:
        session = http()
        wait_for("BTCUSDT's leader", lambda: trader(first_status(tree), "BTCUSDT", 0))
        answer = session.get(f"{tree.web_url}/api/v1/status", timeout=5)
        assert answer.headers["Content-Type"] == "application/json" and answer.headers["Cache-Control"] == "no-store"
        assert_safe(answer.headers, "/api/v1/status")
        # The TreeStatus naivectl prints, field for field (its schema: msgspec decodes it strictly)
        status = msgspec.json.decode(answer.content, type=TreeStatus)
        assert status.web is not None and status.web.pid and status.web.restarts == 0
        shown = json.loads(tree.ctl("status", "--json").stdout)
        assert set(json.loads(answer.content)) == set(shown) and json.loads(answer.content)["type"] == "TreeStatus"
        assert (status.pid, [s.symbol for s in status.symbols]) == (shown["pid"], ["BTCUSDT"])
        assert shown["web"]["pid"] == status.web.pid

        page = session.get(f"{tree.web_url}/", timeout=5)
        assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert_safe(page.headers, "/")
        assert "<script" not in re.sub(r'<script src="[^"]+" defer></script>', "", page.text)  # no inline script (CSP)
        referenced = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert {"/static/app.js", "/static/style.css", "/static/favicon.svg"} <= set(referenced)
        for path in referenced:
            got = session.get(f"{tree.web_url}{path}", timeout=5)
            assert got.status_code == 200 and got.content == (server.STATIC / path.removeprefix("/static/")).read_bytes()
            assert_safe(got.headers, path)
        assert session.get(f"{tree.web_url}/static/app.js", timeout=5).headers["Content-Type"].startswith("text/javascript")

        missing = session.get(f"{tree.web_url}/static/nothing.js", timeout=5)
        assert missing.status_code == 404 and missing.json() == {"error": "no such page: /static/nothing.js"}
        assert_safe(missing.headers, "404")
        for outside in ("/static/../main.py", "/static/%2e%2e/main.py", "/naived/web/main.py"):
            got = session.get(f"{tree.web_url}{outside}", timeout=5)
            assert got.status_code == 404, outside
        for method in ("POST", "PUT", "DELETE"):
            got = session.request(method, f"{tree.web_url}/api/v1/status", timeout=5)
            assert got.status_code == 405 and got.headers["Allow"] == "GET", method
            assert_safe(got.headers, method)
        # DNS rebinding: a page of another name that resolves to 127.0.0.1 is not served
        rebound = session.get(f"{tree.web_url}/api/v1/status", headers={"Host": f"evil.example:{tree.web_port}"}, timeout=5)
        assert rebound.status_code == 403
        assert session.get(f"{tree.web_url}/", headers={"Host": f"localhost:{tree.web_port}"}, timeout=5).status_code == 200

        # The websocket: same origin (or none, a script) only
        with live(tree, origin=tree.web_url) as ws:
            assert_safe(ws.response.headers, "the websocket's 101")
            pushed, _ = statuses(ws, lambda s: True, 5)
            msgspec.convert(pushed, TreeStatus)
        with live(tree) as ws:
            statuses(ws, lambda s: True, 5)
        for foreign in ("http://evil.example", f"http://127.0.0.1:{tree.web_port + 1}", "null"):
            with pytest.raises(InvalidStatus) as refused:
                live(tree, origin=foreign)
            assert refused.value.response.status_code == 403, foreign
            assert_safe(refused.value.response.headers, f"origin {foreign}")

        # At most MAX_CONNECTIONS websockets; the next is refused, and one closed makes room
        with ExitStack() as stack:
            clients = [stack.enter_context(live(tree)) for _ in range(server.MAX_CONNECTIONS)]
            with pytest.raises(InvalidStatus) as refused:
                live(tree)
            assert refused.value.response.status_code == 503
            clients[0].close()
            wait_for("room for one more", lambda: opens(tree), timeout=5)

        # Killed, the web child is restarted and has the status at once (the root pushes it to a new subscriber)
        os.kill(status.web.pid, signal.SIGKILL)
        again = wait_for("the web observer restarted", lambda: (w := tree.status()["web"])["restarts"] == 1 and w["pid"] and w)
        restarted = msgspec.json.decode(wait_for("its status", lambda: (
            r := session.get(f"{tree.web_url}/api/v1/status", timeout=2)).status_code == 200 and r.content, timeout=5),
            type=TreeStatus)
        assert restarted.web is not None and restarted.web.pid == again["pid"]


def test_a_killed_trader_is_pushed_within_2s_while_50_clients_never_read(short_tmp: Path) -> None:
    with web_tree(short_tmp, LIVELY) as tree:
        for symbol in ("BTCUSDT", "ETHUSDT", "XRPUSDT", "ADAUSDT"):
            wait_for(f"{symbol}'s two traders", lambda s=symbol: len(tree.traders(s)) == 2)
        with live(tree, origin=tree.web_url) as ws:
            statuses(ws, lambda s: True, 5)
            alone, ctl_alone = status_latencies(tree, 40), naivectl_latencies(tree, 5)
            web = psutil.Process(tree.status()["web"]["pid"])
            rss_before = web.memory_info().rss
            with ExitStack() as stack:
                for _ in range(STALLED):
                    stack.callback(stalled_client(tree.web_port).close)
                # Pushed to this reader after the stalled ones joined: enough to fill each of theirs many times
                started = time.monotonic()
                received = 0
                while received < STALL_BYTES:
                    _, got = statuses(ws, lambda s: True, 5)
                    received += got
                filled = time.monotonic() - started
                grown = web.memory_info().rss - rss_before
                stalled, ctl_stalled = status_latencies(tree, 40), naivectl_latencies(tree, 5)

                before = trader(json.loads(ws.recv(timeout=5))["status"], "BTCUSDT", 0)
                assert before is not None and before["pid"] and before["restarts"] == 0
                killed = time.monotonic()
                os.kill(before["pid"], signal.SIGKILL)
                after, _ = statuses(ws, lambda s: (t := trader(s, "BTCUSDT", 0)) is not None and t["pid"] not in (
                    None, before["pid"]) and t["restarts"] == 1, 2.0)
                shown = time.monotonic() - killed
        print(f"\nroot status latency (StatusRequest on the control socket, 40 each): "
              f"no web client {summary(alone)}; {STALLED} stalled clients {summary(stalled)}")
        print(f"naivectl status (a process each, 5 each): no web client {summary(ctl_alone)}; "
              f"{STALLED} stalled clients {summary(ctl_stalled)}")
        print(f"{received} bytes pushed to a reader in {filled:.1f}s while {STALLED} clients never read; "
              f"trader BTCUSDT/0 kill -9 -> new pid {after and trader(after, 'BTCUSDT', 0)['pid']} shown in {shown:.2f}s; "
              f"the web child grew {grown / 1024:.0f} KiB meanwhile")
        assert statistics.median(stalled) < 0.5  # loose: the root never waits for the web child
        # Each stalled client holds at most WRITE_LIMIT and a status in the web child (~1.5 MiB for 50
        # here); writing every status to them regardless would hold all it was pushed (~6 MiB)
        assert grown < 4 * 1024 * 1024


def test_a_web_port_in_use_stops_naived_start_in_one_line(short_tmp: Path) -> None:
    tree = Tree(short_tmp, RESTING, web="")
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", tree.web_port))
    squatter.listen(1)
    try:
        result = subprocess.run([str(BIN / "naived"), "start", "--config", str(tree.config_path)],
                                capture_output=True, text=True, timeout=30, env=tree.env())
    finally:
        squatter.close()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{tree.web_port} for the web observer: Address already in use (set [web] port)" \
        in lines[0]


def test_web_enabled_false_serves_nothing(short_tmp: Path) -> None:
    with running_tree(short_tmp, ONE_SYMBOL) as tree:  # Tree's default: [web] enabled = false
        status = tree.status()
        assert status["web"] is None
        with pytest.raises(requests.ConnectionError):
            http().get(f"{tree.web_url}/", timeout=2)
        assert not (short_tmp / "run" / "observer.sock").exists()
        assert "web observer" not in tree.log("naived")


def test_the_api_answers_503_until_the_first_status() -> None:
    observer = server.Observer(server.load_static(), loopback=True)
    ask = Request("/api/v1/status", Headers({"Host": "127.0.0.1:8470"}))
    waiting = observer.process_request(None, ask)  # type: ignore[arg-type]
    assert waiting is not None and waiting.status_code == 503
    assert json.loads(waiting.body) == {"error": "no status from naived yet; try again in a moment"}
    observer.on_status(b'{"type":"TreeStatus"}')
    served = observer.process_request(None, ask)  # type: ignore[arg-type]
    assert served is not None and (served.status_code, served.body) == (200, b'{"type":"TreeStatus"}')


def test_the_root_pushes_a_changed_status_at_most_every_quarter_second_and_at_once_to_a_newcomer(short_tmp: Path) -> None:
    """The root's side alone, in this process (nothing forked): what its loop's tick does."""
    paper, ws, web = free_ports(3)
    config = parse_config(f'[paths]\nruntime_dir = "{short_tmp}/run"\nstate_dir = "{short_tmp}/state"\n'
                          f'[paper]\nport = {paper}\nws_port = {ws}\n[web]\nport = {web}\n'.encode())
    root = tree_root.Root(config)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        start = time.monotonic()
        root.publish_status(start)  # before any observer: sent to nobody
        assert msgspec.json.decode(root.published, type=TreeStatus).pid == os.getpid()
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(config.observer_endpoint)
        # Its subscription reaches the root's loop (the XPUB is readable), which sends the status
        # at the turn's tick, unchanged as it is, instead of at the next change.
        assert root.observer is not None and root.observer.poll(5000)
        root.on_observer()
        assert root.next_tick() is not None and root.next_tick() <= time.monotonic()
        root.publish_status(time.monotonic())
        assert sub.poll(5000) and sub.recv() == root.published
        # A change within 0.25 s of the last push waits for the loop to turn at its deadline.
        root.symbols["BTCUSDT"] = tree_root.SymbolEntry("failed", "a reason")
        now = time.monotonic()
        root.publish_status(now)
        assert not sub.poll(100)
        due = root.next_tick()
        assert due is not None and now < due <= now + tree_root.OBSERVE_SECONDS
        root.publish_status(due)
        assert sub.poll(5000)
        pushed = msgspec.json.decode(sub.recv(), type=TreeStatus)
        assert [(s.symbol, s.state, s.error) for s in pushed.symbols] == [("BTCUSDT", "failed", "a reason")]
        # Unchanged: encoded again, not sent again
        root.publish_status(due + 1)
        assert not sub.poll(100) and root.publish_at is None
    finally:
        sub.close()
        ctx.term()
        root.on_stop()
        assert root.web_listener is not None
        root.web_listener.close()
