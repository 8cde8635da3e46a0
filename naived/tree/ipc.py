"""ZeroMQ request/reply plumbing shared by the root, the leaders, their workers and naivectl."""

from __future__ import annotations

import os
from typing import Any

import msgspec
import zmq

from naived.core.config import ipc_path
from naived.core.messages import Ack, encode

REPORT_TIMEOUT_MS = 5000  # a worker whose report is not taken by then exits 1 (its supervisor decides)
_ack_decoder = msgspec.msgpack.Decoder(Ack)


def bind_rep(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    return bind(ctx, zmq.REP, endpoint)


def bind(ctx: zmq.Context[zmq.Socket[bytes]], kind: int, endpoint: str, max_message_bytes: int = -1,
         options: tuple[tuple[int, int], ...] = ()) -> zmq.Socket[bytes]:
    """Bind a socket; an ipc path left behind by a killed predecessor is replaced (mode 0600).
    `max_message_bytes` (ZMQ_MAXMSGSIZE): a peer sending a larger frame is disconnected by libzmq.
    `options`: more socket options, set before the bind (a high-water mark applies to the pipes made after it)."""
    socket = ctx.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    for option, value in options:
        socket.setsockopt(option, value)
    _remove_file(endpoint)
    socket.bind(endpoint)
    if (path := ipc_path(endpoint)) is not None:
        os.chmod(path, 0o600)
    return socket


def close_bound(socket: zmq.Socket[bytes], endpoint: str) -> None:
    """Close a socket this process bound and remove its ipc path, on a clean exit: a stopped tree
    leaves no socket file behind (a killed process leaves it; its successor's `bind` replaces it)."""
    socket.close()
    _remove_file(endpoint)


def _remove_file(endpoint: str) -> None:
    path = ipc_path(endpoint)
    if path is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass




def request(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, message: msgspec.Struct, decoder: msgspec.msgpack.Decoder[Any],
    timeout_ms: int,
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
        reply: object = decoder.decode(socket.recv())
        return reply
    finally:
        socket.close()


class Unanswered(SystemExit):
    """A report nobody took in time. Uncaught in a worker it ends the worker (exit status 1) with
    the reason as its last words; then the worker's restart type decides."""


def report(endpoint: str, message: msgspec.Struct, timeout_ms: int = REPORT_TIMEOUT_MS) -> None:
    """From a forked worker: one message up to the process that waits for it (its supervisor's
    socket, or a leader's for the root's reconcile), returning once that process has handled it.

    The one worker channel: a REQ socket on a context of the worker's own (a child never uses its
    parent's ZeroMQ context or sockets), one msgpack frame, an `Ack` once handled. A request and
    its ack rather than a PUSH, because the worker is short-lived and its exit is what its
    supervisor reacts to: with the ack, an exit 0 means the answer was handed over and handled
    (no grace period for an answer still in flight when the worker is reaped), and a supervisor
    that did not take it (restarting, hung) makes the worker fail, loudly, instead of the answer
    vanishing with the worker's socket. It is also what the leader's REP socket already speaks."""
    ctx = zmq.Context()
    try:
        if request(ctx, endpoint, message, _ack_decoder, timeout_ms) is None:
            raise Unanswered(f"{endpoint} did not take {type(message).__name__} within {timeout_ms / 1000:g}s")
    finally:
        ctx.term()
