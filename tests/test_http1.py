"""The exchange client's HTTP/1.1 connection against a raw socket server (real sockets, a thread)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from naived.exchange.http1 import Connection, TransportError

Answer = Callable[[socket.socket, bytes], bool]  # (connection, request head) -> keep the connection open


class Server:
    """Accepts connections; answers each request head with the next scripted answer."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.heads: list[bytes] = []
        self.connections = 0
        self.closed = threading.Semaphore(0)  # released each time the server has closed a connection
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/base"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with contextlib.closing(conn):
                self._serve_one(conn)
            self.closed.release()

    def _serve_one(self, conn: socket.socket) -> None:
        data = b""
        while self.answers:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            self.heads.append(head)
            if not self.answers.pop(0)(conn, head):
                return

    def close(self) -> None:
        self.listener.close()


def reply(body: bytes, extra: bytes = b"", keep: bool = True) -> Answer:
    def answer(conn: socket.socket, head: bytes) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-MBX-USED-WEIGHT-1M: 7\r\n%s\r\n%s" % (len(body), extra, body))
        return keep
    return answer


@pytest.fixture
def serve() -> Iterator[Callable[[list[Answer]], Server]]:
    servers: list[Server] = []

    def start(answers: list[Answer]) -> Server:
        servers.append(Server(answers))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_requests_share_one_kept_alive_connection(serve) -> None:
    server = serve([reply(b'{"a":1}'), reply(b'{"b":2}')])
    http = Connection(server.url, 2.0, {"X-MBX-APIKEY": "k"})
    first = http.request("GET", "/api/v3/time")
    second = http.request("POST", "/api/v3/order?symbol=XRPUSDT")
    assert (first.status_code, first.content, second.content) == (200, b'{"a":1}', b'{"b":2}')
    assert first.headers["x-mbx-used-weight-1m"] == "7" == first.headers.get("X-MBX-USED-WEIGHT-1M")
    assert server.connections == 1
    assert server.heads[0].startswith(b"GET /base/api/v3/time HTTP/1.1\r\n") and b"\r\nX-MBX-APIKEY: k" in server.heads[0]
    assert server.heads[1].startswith(b"POST /base/api/v3/order?symbol=XRPUSDT HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 0" in server.heads[1]
    http.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_before_sending(serve) -> None:
    server = serve([reply(b"1", keep=False), reply(b"2")])
    http = Connection(server.url, 2.0)
    assert http.request("GET", "/x").content == b"1"
    assert server.closed.acquire(timeout=5)  # idle, and closed by the server (not while we send)
    assert http.request("GET", "/y").content == b"2"
    assert server.connections == 2 and len(server.heads) == 2  # each request sent exactly once


def test_chunked_and_close_delimited_bodies(serve) -> None:
    def chunked(conn: socket.socket, head: bytes) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n")
        return True

    def until_close(conn: socket.socket, head: bytes) -> bool:
        conn.sendall(b"HTTP/1.0 418 I'm a teapot\r\nRetry-After: 3\r\n\r\nbanned")
        return False

    server = serve([chunked, until_close])
    http = Connection(server.url, 2.0)
    assert http.request("GET", "/a").content == b"Wikipedia"
    teapot = http.request("GET", "/b")
    assert (teapot.status_code, teapot.content, teapot.headers["Retry-After"]) == (418, b"banned", "3")
    assert http._sock is None  # the server ends the body by closing: nothing kept


@pytest.mark.parametrize("answer, message", [
    (lambda conn, head: False, "closed the connection"),  # the request was taken in, no answer
    (lambda conn, head: conn.sendall(b"SSH-2.0-OpenSSH\r\n\r\n") or True, "not an HTTP response"),
    (lambda conn, head: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort") or False, "closed"),
])
def test_no_usable_answer_is_a_transport_error(serve, answer: Answer, message: str) -> None:
    server = serve([answer])
    http = Connection(server.url, 2.0)
    with pytest.raises(TransportError, match=message):
        http.request("POST", "/api/v3/order")
    assert http._sock is None and len(server.heads) == 1  # dropped, never sent again


def test_timeout_and_refused_connections_are_transport_errors(serve) -> None:
    server = serve([lambda conn, head: threading.Event().wait(1.0) and False])
    with pytest.raises(TransportError, match="timed out"):
        Connection(server.url, 0.2).request("GET", "/slow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(TransportError, match="ConnectionRefused"):
            Connection(f"http://127.0.0.1:{port}", 1.0).request("GET", "/")
