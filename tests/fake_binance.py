"""A fake Binance spot market-data websocket server for tests and benchmarks.

A real server on 127.0.0.1 (stdlib sockets, one thread per connection) speaking
the combined-stream protocol: `/stream?streams=a@trade/b@trade`, run-time
`SUBSCRIBE`/`UNSUBSCRIBE` answered with `{"result":null,"id":N}`, trades wrapped
as `{"stream":..,"data":{..}}`, optional periodic pings. Tests script it:

    with FakeBinance() as fake:
        ... start streamerd with --binance-url fake.url ...
        fake.wait_for_subscription("xrpusdt@trade", timeout=5)
        fake.push_trade("XRPUSDT", 1)
        fake.cut()               # drop every connection without a close frame
        fake.server_shutdown()   # Binance's {"e":"serverShutdown"} on the stream
        fake.send_raw("garbage") # any text frame
        fake.burst("XRPUSDT", range(1, 101), cut_after=50)  # the stream is cut mid-burst

It also serves Binance's REST "Old trade lookup", `GET /api/v3/historicalTrades?symbol=&fromId=
&limit=` at `fake.rest_url`, from every trade it made (pushed, or made while no client was
connected), with Binance's answer format and `X-MBX-USED-WEIGHT-1M`; `rest_status = 429` (with
`Retry-After`) or 403 makes it refuse, as Binance does.

Everything the clients sent is recorded (`requests`, `Conn.pongs`, `rest_requests`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterable
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websocket import ABNF

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(payload: bytes | str, opcode: int = ABNF.OPCODE_TEXT) -> bytes:
    """An unmasked (server-to-client) frame."""
    data = payload.encode() if isinstance(payload, str) else payload
    return ABNF(1, 0, 0, 0, opcode, 0, data).format()


def trade_data(symbol: str, trade_id: int, price: str = "1.00000000", qty: str = "1.00000000",
               time_ms: int | None = None, buyer_maker: bool = False) -> dict[str, Any]:
    """A trade event's `data` as Binance's stream sends it (no `b`/`a` since 2024)."""
    now = int(time.time() * 1000) if time_ms is None else time_ms
    return {"e": "trade", "E": now, "s": symbol.upper(), "t": trade_id, "p": price, "q": qty,
            "T": now, "m": buyer_maker, "M": True}


def trade_json(symbol: str, trade_id: int, **fields: Any) -> str:
    """A combined-stream trade message as Binance sends it."""
    data = trade_data(symbol, trade_id, **fields)
    return json.dumps({"stream": f"{symbol.lower()}@trade", "data": data}, separators=(",", ":"))


def _frame_of(data: dict[str, Any]) -> bytes:
    stream = f"{data['s'].lower()}@trade"
    return server_frame(json.dumps({"stream": stream, "data": data}, separators=(",", ":")))


class Conn:
    """One client connection, as the server sees it."""

    def __init__(self, number: int, sock: socket.socket, streams: set[str]) -> None:
        self.number = number
        self.sock = sock
        self.streams = streams
        self.pongs: list[bytes] = []
        self.closed = False
        self.closed_by_client = False
        self.send_lock = threading.Lock()

    def send(self, data: bytes) -> bool:
        try:
            with self.send_lock:
                self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    def cut(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class FakeBinance:
    def __init__(self, ping_interval: float | None = None) -> None:
        self.ping_interval = ping_interval
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}"
        self.conns: list[Conn] = []
        self.requests: list[tuple[int, dict[str, Any]]] = []  # (connection number, message)
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.trades: dict[str, dict[int, dict[str, Any]]] = {}  # symbol -> id -> data: what REST knows
        self.rest_status = 200
        self.rest_requests: list[dict[str, str]] = []  # the query of every historicalTrades request
        self._rest = ThreadingHTTPServer(("127.0.0.1", 0), _rest_handler(self))
        self._rest.daemon_threads = True
        self.rest_url = f"http://127.0.0.1:{self._rest.server_address[1]}"

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> FakeBinance:
        self._spawn(self._accept_loop)
        self._spawn(self._rest.serve_forever, 0.05)
        if self.ping_interval:
            self._spawn(self._ping_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        except OSError:
            pass
        self._listener.close()
        self._rest.shutdown()
        self._rest.server_close()
        for conn in self.open_conns():
            conn.cut()
        for thread in self._threads:
            thread.join(timeout=2)

    def __enter__(self) -> FakeBinance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    # --- scripting -----------------------------------------------------------------

    def open_conns(self) -> list[Conn]:
        with self._cond:
            return [c for c in self.conns if not c.closed]

    def push_trade(self, symbol: str, trade_id: int, **fields: Any) -> int:
        """Send one trade to every open connection subscribed to it; returns how many got it."""
        return self.push_raw_trades(symbol, [server_frame(trade_json(symbol, trade_id, **fields))])

    def push_trades(self, symbol: str, ids: Iterable[int], **fields: Any) -> int:
        frames = [_frame_of(data) for data in self.make_trades(symbol, ids, **fields)]
        return self.push_raw_trades(symbol, frames)

    def make_trades(self, symbol: str, ids: Iterable[int], **fields: Any) -> list[dict[str, Any]]:
        """Trades the market made (REST will know them), not sent to anyone."""
        made = [trade_data(symbol, t, **fields) for t in ids]
        with self._cond:
            self.trades.setdefault(symbol.upper(), {}).update((d["t"], d) for d in made)
        return made

    def burst(self, symbol: str, ids: Iterable[int], cut_after: int, **fields: Any) -> None:
        """A burst of trades whose stream is cut (no close frame) after `cut_after` of them were
        sent: the rest are made all the same, and only REST has them."""
        made = self.make_trades(symbol, ids, **fields)
        self.push_raw_trades(symbol, [_frame_of(d) for d in made[:cut_after]])
        self.cut()

    def push_raw_trades(self, symbol: str, frames: list[bytes]) -> int:
        """Pre-built frames in one write per connection (benchmarks build them ahead)."""
        stream, blob, sent = f"{symbol.lower()}@trade", b"".join(frames), 0
        for conn in self.open_conns():
            if stream in conn.streams and conn.send(blob):
                sent += 1
        return sent

    def send_raw(self, text: str | bytes, conn: Conn | None = None) -> None:
        """Any text frame (malformed JSON, unexpected events) to one or every connection."""
        for c in [conn] if conn else self.open_conns():
            c.send(server_frame(text))

    def server_shutdown(self, conn: Conn | None = None) -> None:
        self.send_raw(json.dumps({"e": "serverShutdown", "E": int(time.time() * 1000)}), conn)

    def ping(self, payload: bytes = b"ping", conn: Conn | None = None) -> None:
        for c in [conn] if conn else self.open_conns():
            c.send(server_frame(payload, ABNF.OPCODE_PING))

    def cut(self, conn: Conn | None = None) -> None:
        """Drop connections abruptly (no close frame), like a network failure."""
        for c in [conn] if conn else self.open_conns():
            c.cut()
        with self._cond:
            self._cond.notify_all()

    # --- waiting (poll with a deadline, never a bare sleep) ------------------------

    def wait_until(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fake binance: timed out waiting for {what}")
                self._cond.wait(min(left, 0.05))

    def wait_for_subscription(self, stream: str, timeout: float = 5.0, exclude: Iterable[Conn] = ()) -> Conn:
        """The open connection carrying `stream` (not one of `exclude`)."""
        skip = set(map(id, exclude))

        def find() -> Conn | None:
            return next((c for c in self.conns if not c.closed and stream in c.streams and id(c) not in skip), None)

        return self.wait_until(find, timeout, f"a subscription to {stream}")

    def wait_for_unsubscribe(self, stream: str, timeout: float = 5.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((m for _, m in self.requests if m.get("method") == "UNSUBSCRIBE" and stream in m.get("params", [])), None)

        return self.wait_until(find, timeout, f"UNSUBSCRIBE {stream}")

    def wait_for_close(self, conn: Conn, timeout: float = 5.0) -> None:
        self.wait_until(lambda: conn.closed, timeout, f"connection {conn.number} to close")

    # --- server internals ----------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._serve, sock)

    def _handshake(self, sock: socket.socket) -> set[str] | None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            request += chunk
        head = request.split(b"\r\n\r\n")[0].decode()
        lines = head.split("\r\n")
        target = lines[0].split(" ")[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        url = urlsplit(target)
        if url.path != "/stream" or "sec-websocket-key" not in headers:
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return None
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + _GUID).encode()).digest()).decode()
        sock.sendall(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        streams = parse_qs(url.query).get("streams", [""])[0]
        return {s for s in streams.split("/") if s}

    def _serve(self, sock: socket.socket) -> None:
        try:
            streams = self._handshake(sock)
        except OSError:
            streams = None
        if streams is None:
            sock.close()
            return
        with self._cond:
            conn = Conn(len(self.conns) + 1, sock, streams)
            self.conns.append(conn)
            self._cond.notify_all()
        try:
            while not conn.closed:
                opcode, payload = _read_frame(sock)
                if opcode == ABNF.OPCODE_TEXT:
                    self._on_request(conn, json.loads(payload))
                elif opcode == ABNF.OPCODE_PONG:
                    with self._cond:
                        conn.pongs.append(payload)
                        self._cond.notify_all()
                elif opcode == ABNF.OPCODE_PING:
                    conn.send(server_frame(payload, ABNF.OPCODE_PONG))
                elif opcode == ABNF.OPCODE_CLOSE:
                    conn.closed_by_client = True
                    conn.send(server_frame(payload[:2], ABNF.OPCODE_CLOSE))
                    break
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            conn.cut()
            with self._cond:
                self._cond.notify_all()

    def _on_request(self, conn: Conn, message: dict[str, Any]) -> None:
        with self._cond:
            self.requests.append((conn.number, message))
            method, params = message.get("method"), message.get("params", [])
            if method == "SUBSCRIBE":
                conn.streams |= set(params)
            elif method == "UNSUBSCRIBE":
                conn.streams -= set(params)
            self._cond.notify_all()
        conn.send(server_frame(json.dumps({"result": None, "id": message.get("id")})))

    def _ping_loop(self) -> None:
        while not self._stopping.wait(self.ping_interval):
            self.ping(str(int(time.time() * 1000)).encode())


def _rest_handler(fake: FakeBinance) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Binance

        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path != "/api/v3/historicalTrades":
                return self._answer(404, {"code": -1100, "msg": "not found"})
            with fake._cond:
                fake.rest_requests.append(query)
                fake._cond.notify_all()
                status = fake.rest_status
                known = dict(fake.trades.get(query.get("symbol", ""), {}))
            if status == 429:
                return self._answer(429, {"code": -1003, "msg": "Too much request weight used"}, {"Retry-After": "60"})
            if status != 200:
                return self._answer(status, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."})
            start, limit = int(query.get("fromId", "0")), min(1000, int(query.get("limit", "500")))
            page = [known[i] for i in sorted(known) if i >= start][:limit]
            self._answer(200, [{"id": d["t"], "price": d["p"], "qty": d["q"],
                                "quoteQty": str(Decimal(d["p"]) * Decimal(d["q"])), "time": d["T"],
                                "isBuyerMaker": d["m"], "isBestMatch": d["M"]} for d in page])

        def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-MBX-USED-WEIGHT-1M", str(25 * len(fake.rest_requests)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass  # quiet: the tests read rest_requests

    return Handler


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def _read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One client frame (clients always mask); fragments are not used by websocket-client."""
    first, second = _recv_exact(sock, 2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(_recv_exact(sock, 2), "big")
    elif length == 127:
        length = int.from_bytes(_recv_exact(sock, 8), "big")
    mask = _recv_exact(sock, 4) if second & 0x80 else b""
    payload = _recv_exact(sock, length)
    if mask:
        payload = ABNF.mask(mask, payload)
    return first & 0x0F, payload
