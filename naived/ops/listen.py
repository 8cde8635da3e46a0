"""A listening TCP socket, bound before whoever serves on it starts.

naived's root binds the paper exchange's ports before it says READY (a port in use is one line
at start, not a restart loop; the child inherits the sockets across fork); the standalone paper
exchange binds its user data stream's port the same way. `free_ports` is for the tools that
write a configuration for daemons they start (the demo, the backtest through the tree, tests).
"""

from __future__ import annotations

import socket


class CannotListen(Exception):
    """One line for the user: the address, what it was for, why not, and the setting to change."""


def listen(host: str, port: int, what: str, key: str) -> socket.socket:
    """`host:port` bound and listening (IPv6 when `host` has a colon). `what` and `key` name the
    socket's use and its setting in the CannotListen message."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart right after a kill -9
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot listen on {host}:{port} for {what}: {exc.strerror} (set {key})") from None
    return sock


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports on `host` that were free a moment ago (all held while they are
    chosen, so no two are the same)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()
