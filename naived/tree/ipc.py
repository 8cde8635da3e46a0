"""ZeroMQ request/reply plumbing shared by the root, the leaders and naivectl."""

from __future__ import annotations

import os

import msgspec
import zmq

from naived.core.messages import encode


def bind_rep(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    return bind(ctx, zmq.REP, endpoint)


def bind(ctx: zmq.Context, kind: int, endpoint: str, max_message_bytes: int = -1) -> zmq.Socket:
    """Bind a socket; an ipc path left behind by a killed predecessor is replaced (mode 0600).
    `max_message_bytes` (ZMQ_MAXMSGSIZE): a peer sending a larger frame is disconnected by libzmq."""
    socket = ctx.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    path = ipc_path(endpoint)
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    socket.bind(endpoint)
    if path is not None:
        os.chmod(path, 0o600)
    return socket


def ipc_path(endpoint: str) -> str | None:
    return endpoint.removeprefix("ipc://") if endpoint.startswith("ipc://") else None


def request(
    ctx: zmq.Context, endpoint: str, message: msgspec.Struct, decoder: msgspec.msgpack.Decoder, timeout_ms: int
) -> object | None:
    """One request on a fresh REQ socket; None when nobody answers in time.

    A fresh socket per call: a REQ whose peer vanished is stuck in its
    send/recv lock-step, and these calls are rare (status, control).
    """
    socket = ctx.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(endpoint)
        socket.send(encode(message))
        if not socket.poll(timeout_ms, zmq.POLLIN):
            return None
        return decoder.decode(socket.recv())
    finally:
        socket.close()
