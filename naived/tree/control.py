"""The root's control server: the frames of one message in, one request decoded and handed to
the root, one reply out.

`naivectl` (and anything else that reaches the socket) talks to a ROUTER on
`ipc://<runtime_dir>/naived.sock` (mode 0600). Every message gets an answer, whatever its frames
hold: a REQ client's `[identity, "", body]` or a DEALER's `[identity, body]` with one frame of a
msgpack `ControlRequest`; more frames, undecodable bytes or a request the root refuses get an
`Error` with one human line. This is a trust boundary (docs/architecture.md, issue 20): libzmq
drops a frame over 64 KiB (`ZMQ_MAXMSGSIZE`) with its sender, a long message is read
`CONTROL_FRAMES_PER_TURN` frames per turn of the loop, and every refusal is counted
(`naive_control_refused_total`) and logged at a bounded rate. A ROUTER, not a REP: the reply to
a request a worker answers (`history`) can wait without blocking the loop or the other clients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
import zmq

from naived.core.messages import ControlRequest, Error, control_request_decoder, encode
from naived.ops.ratelog import RateLimitedLog
from naived.tree.ipc import bind

log = logging.getLogger(__name__)

# Control requests are a few dozen bytes: a larger frame is dropped by libzmq, which disconnects
# its sender, before it costs the root any memory or time.
CONTROL_MAX_BYTES = 64 * 1024
CONTROL_FRAMES = 4  # a request is [identity, "", body]: a fourth frame already makes it malformed
CONTROL_FRAMES_PER_TURN = 8192  # ~3 ms of the loop

# The root's handling of one request: the reply, or None when it answers later (`reply`). A
# ValueError is the client's mistake, answered with its message.
Handler = Callable[[ControlRequest, list[bytes]], msgspec.Struct | None]


class ControlServer:
    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, handle: Handler) -> None:
        self.socket = bind(ctx, zmq.ROUTER, endpoint, max_message_bytes=CONTROL_MAX_BYTES)
        self.handle = handle
        self.refused = 0  # malformed control requests answered with an Error
        self._skipping = False  # discarding the rest of a message with too many frames
        self._log = RateLimitedLog(log, "control", "requests refused")

    def on_readable(self) -> None:
        """One message (or a part of a long one) off the socket, answered now or by the handler later."""
        frames = self._frames()
        if frames is None:
            return  # still discarding the frames of a message too long to be a request
        # A REQ client's message is [identity, b"", body]; anything else is refused, not fatal.
        if frames[1:2] == [b""]:
            envelope, body = frames[:2], frames[2:]
        else:  # a DEALER or raw client: no delimiter
            envelope, body = frames[:1], frames[1:]
        if len(body) != 1:
            self.refused += 1
            self._log.warning("frames", "refused a request of %s frames", f"{len(body)}+" if self._skipping else len(body))
            self.reply(envelope, Error(f"bad request: expected one frame, got {len(body)}{'+' if self._skipping else ''}"))
            return
        try:
            req = control_request_decoder.decode(body[0])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.refused += 1
            self._log.warning("malformed", "refused a malformed request: %s", exc)
            self.reply(envelope, Error(f"bad request: {exc}"))
            return
        try:
            reply = self.handle(req, envelope)
        except ValueError as exc:
            reply = Error(str(exc))
        except Exception as exc:  # a bug in one request is its Error, not the root's end
            log.exception("control: %s failed", type(req).__name__)
            reply = Error(f"naived could not handle {type(req).__name__}: {exc}")
        if reply is not None:
            self.reply(envelope, reply)

    def _frames(self) -> list[bytes] | None:
        """The next message's first CONTROL_FRAMES frames, or None while the rest of a longer one is
        discarded, CONTROL_FRAMES_PER_TURN at a time: a message of a million empty frames (each
        within MAXMSGSIZE) would otherwise hold the loop for a second in recv_multipart."""
        frames: list[bytes] = []
        for _ in range(CONTROL_FRAMES_PER_TURN):
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return None
            more = self.socket.getsockopt(zmq.RCVMORE)
            if self._skipping:
                self._skipping = bool(more)
                continue
            frames.append(frame)
            if not more:
                return frames
            if len(frames) == CONTROL_FRAMES:
                self._skipping = True  # refused now (it has too many frames); the rest is dropped in later turns
                return frames
        return None

    def reply(self, envelope: list[bytes], reply: msgspec.Struct) -> None:
        """Answer the client `envelope` names (now, or once a worker has the answer)."""
        try:
            self.socket.send_multipart([*envelope, encode(reply)], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the client went away: its loss
            log.info("control: reply not delivered: %s", exc)
