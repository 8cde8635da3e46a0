"""The web observer's end of the push: the tree's status from the root, as it changes (SUB).

The root publishes each changed status (JSON, at most every 0.25 s) on its XPUB at
`config.observer_endpoint`, and once more whenever a subscriber joins, so this process has the
current status as soon as it (re)connects. Only the latest matters: the socket keeps one status
(CONFLATE), never a queue of stale ones behind a busy server.
"""

from __future__ import annotations

from collections.abc import Callable

import zmq
import zmq.asyncio

MAX_STATUS_BYTES = 64 * 1024 * 1024  # far above any tree's status; a larger frame is not the root's


class StatusFeed:
    """A SUB socket on a zmq context of this process's own (never one inherited across fork)."""

    def __init__(self, endpoint: str, on_status: Callable[[bytes], None]) -> None:
        self.ctx = zmq.asyncio.Context()
        self.socket = self.ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.CONFLATE, 1)  # before connect: the pipe keeps the latest status only
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_STATUS_BYTES)
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.socket.connect(endpoint)
        self.on_status = on_status

    async def run(self) -> None:
        while True:
            self.on_status(await self.socket.recv())

    def close(self) -> None:
        self.socket.close()
        self.ctx.term()
