"""The web observer as a process: `run(config, listener)` serves until SIGTERM or SIGINT.

A permanent child of the root (restarted like the account stream), forked on the listening socket
the root bound before READY. It builds everything of its own after the fork: the asyncio loop, the
zmq context of its SUB socket (`feed.py`), the server (`server.py`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Any

from websockets.asyncio.server import serve

from naived.core.config import Config, is_loopback
from naived.web import server
from naived.web.feed import StatusFeed

log = logging.getLogger(__name__)


def run(config: Config, listener: socket.socket) -> int:
    return asyncio.run(_serve(config, listener))


async def _serve(config: Config, listener: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Inherited by every accepted connection: what a client leaves unread stays bounded in the kernel too.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server.SEND_BUFFER)
    observer = server.Observer(server.load_static(), is_loopback(config.web.host))
    feed = StatusFeed(config.observer_endpoint, observer.on_status)
    # The library's own lines (one per plain HTTP answer, which it calls a rejected handshake) would
    # let any client write the log; refusals are logged by the Observer, at a bounded rate.
    quiet = logging.getLogger("naived.web.websockets")
    quiet.setLevel(logging.CRITICAL)
    try:
        async with serve(observer.serve, sock=listener, process_request=observer.process_request,
                         process_response=observer.process_response, server_header=None, logger=quiet, compression=None,
                         open_timeout=server.OPEN_SECONDS, max_size=server.MAX_MESSAGE_BYTES, max_queue=4,
                         ping_interval=server.PING_INTERVAL, ping_timeout=server.PING_TIMEOUT,
                         write_limit=server.WRITE_LIMIT, close_timeout=2):
            host, port = listener.getsockname()[:2]
            log.info("web observer: serving http://%s:%d/ (status from %s)", f"[{host}]" if ":" in host else host, port,
                     config.observer_endpoint)
            stopped: asyncio.Task[Any] = asyncio.create_task(stop.wait())
            tasks: set[asyncio.Task[Any]] = {asyncio.create_task(feed.run()), asyncio.create_task(observer.catch_up()), stopped}
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            for task in done - {stopped}:
                task.result()  # a task that ended on its own failed: raised here, the process crashes and is restarted
    finally:
        feed.close()
    return 0
