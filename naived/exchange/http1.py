"""A minimal HTTP/1.1 client connection for the exchange client: one keep-alive socket.

Why not requests (which the exchange client used before): every trader is a forked
process, and CPython writes the reference count of every object its code touches, so
each page of requests/urllib3/http.client/email/cookielib objects one request runs
through is copied into each trader. Measured in a tree of 20 symbols: a trader's one
warm-up request cost 2.7 MiB of private memory through requests; and a warm order POST
took ~0.6 ms where a plain socket takes ~0.2 ms (DESIGN.md). This does the part the
client needs, with little code: a request line and headers out, a status line, headers
and a body (Content-Length, chunked, or until close) back, TLS for https.

Failure semantics are requests' with its default adapter (no retries): anything that
goes wrong on the way raises `TransportError` and the connection is dropped; the
caller cannot know whether the server acted on the request. A kept-alive connection
that the server closed while idle is noticed *before* a request is written to it (the
socket reads as closed) and replaced, as urllib3 does; nothing is ever sent twice.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - socket.create_connection encodes host names with it: import it
import select  # here, in the parent, not lazily in every forked child (~1 MiB each)
import socket
from typing import Any, overload
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 65536  # a status line and headers larger than this are not an exchange's


class TransportError(Exception):
    """No usable answer: connection refused, reset or closed, timeout, or a malformed response."""


class Headers(dict[str, str]):
    """Response headers by lower-cased name; `get`, `[]` and `in` take any case (as HTTP does)."""

    @overload  # type: ignore[override]  # a name of any case, where dict.get takes the key as it is
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class Response:
    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: Headers, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content


class Connection:
    def __init__(self, base_url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        fixed = {"Host": parts.netloc, "User-Agent": "naive", "Accept-Encoding": "identity", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._sock: socket.socket | None = None
        self._buffer = b""

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buffer = b""

    def request(self, method: str, target: str) -> Response:
        """`target` is the path and query (`/api/v3/order?...`); parameters travel in the query,
        as Binance accepts them for every method, so no request has a body."""
        head = f"{method} {self.prefix}{target} HTTP/1.1\r\n".encode("latin-1") + self._fixed
        if method in ("POST", "PUT", "DELETE"):
            head += b"Content-Length: 0\r\n"
        try:
            sock = self._usable()
            sock.sendall(head + b"\r\n")
            response, keep = self._read_response(method)
        except (OSError, ValueError, TransportError) as exc:
            self.close()
            if isinstance(exc, TransportError):
                raise
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        if not keep:
            self.close()
        return response

    def _usable(self) -> socket.socket:
        sock = self._sock
        if sock is not None and not self._buffer and _readable(sock):
            self.close()  # idle and readable = closed by the server (or junk): never write to it
            sock = None
        if sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                sock = _tls_context().wrap_socket(sock, server_hostname=self.host)
            self._sock = sock
        return sock

    def _fill(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise TransportError("the server closed the connection")
        self._buffer += chunk

    def _read_until(self, marker: bytes, limit: int) -> bytes:
        while (end := self._buffer.find(marker)) < 0:
            if len(self._buffer) > limit:
                raise TransportError("response header too large")
            self._fill()
        line, self._buffer = self._buffer[:end], self._buffer[end + len(marker):]
        return line

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _read_response(self, method: str) -> tuple[Response, bool]:
        while True:
            head = self._read_until(b"\r\n\r\n", MAX_HEADER_BYTES).decode("latin-1")
            status_line, _, rest = head.partition("\r\n")
            version, _, status_text = status_line.partition(" ")
            if not version.startswith("HTTP/1.") or not status_text[:3].isdigit():
                raise TransportError(f"not an HTTP response: {status_line[:80]!r}")
            status = int(status_text[:3])
            if status >= 200 or status == 101:
                break  # 1XX (100 Continue, 103 Early Hints) are followed by the real answer
        headers = Headers()
        for line in rest.split("\r\n") if rest else ():
            name, sep, value = line.partition(":")
            if sep:
                key = name.strip().lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        elif "content-length" in headers:
            body = self._read_exactly(int(headers["content-length"]))
        else:  # delimited by the end of the connection
            keep = False
            assert self._sock is not None
            while chunk := self._sock.recv(65536):
                self._buffer += chunk
            body, self._buffer = self._buffer, b""
        return Response(status, headers, body), keep

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self._read_until(b"\r\n", 1024).split(b";")[0].strip(), 16)
            if size == 0:
                while self._read_until(b"\r\n", MAX_HEADER_BYTES):  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            parts.append(self._read_exactly(size))
            self._read_exactly(2)  # the CRLF after each chunk


def _readable(sock: socket.socket) -> bool:
    """Without waiting (poll, not select: a descriptor above 1023 is fine)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


_context: Any = None  # ssl.SSLContext, once https is used


def _tls_context() -> Any:
    """Verified TLS (certificates and host name), with certifi's CA bundle when it is installed,
    as requests used; created on first use, in the process that uses it. `ssl` is imported only
    then: a tree on the paper exchange never maps OpenSSL into the processes it forks."""
    import ssl

    global _context
    if _context is None:
        try:
            import certifi

            _context = ssl.create_default_context(cafile=certifi.where())
        except ImportError:
            _context = ssl.create_default_context()
    return _context
