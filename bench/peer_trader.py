"""The "trader" that bench/recovery.py has supervisord and a fork+exec parent keep alive.

A fair peer for naive's forked trader: a fresh Python process that imports the
same modules (naived.trader and everything it pulls in), builds the same exchange
client, connects a SUB (subscribed to its symbol's trades) and a REQ like a trader
does, says `TraderHello` on the REQ and waits for the ack, then idles on its SUB.
The benchmark's REP socket timestamps the hello: that is "ready".

    python bench/peer_trader.py SUB_ENDPOINT HELLO_ENDPOINT
"""

from __future__ import annotations

import os
import sys

import zmq

from naived.core.config import Config
from naived.core.messages import TraderHello, encode, trade_topic
from naived.exchange import binance as exchange  # noqa: F401 - the imports are the point: a trader's start-up cost
from naived.tree import trader  # noqa: F401 - the imports are the point: a trader's start-up cost


def main() -> None:
    sub_endpoint, hello_endpoint = sys.argv[1], sys.argv[2]
    config = Config()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(sub_endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, trade_topic("XRPUSDT"))
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(hello_endpoint)
    client = exchange.client_for(config)  # noqa: F841 - a trader builds one before its hello too
    req.send(encode(TraderHello(0, os.getpid())))
    req.recv()
    while True:
        if sub.poll(1000, zmq.POLLIN):
            sub.recv_multipart()


if __name__ == "__main__":
    main()
