"""The bare chain of tick to order's hops, for bench/tick_to_order.py to compare naive with.

Three minimal processes doing only what each hop of naive's chain must do, with the same
sockets and the same HTTP request:

    relay   websocket (websocket-client, as streamerd) -> msgspec decode -> msgpack -> XPUB
    ack     REP: answers every request at once (naive's leader stores the state first)
    trader  SUB -> decode -> REQ to `ack`, wait -> the order POST (naive's own BinanceClient,
            a warm keep-alive connection) with client order id `bare-<trade id>`

    python bench/bare_chain.py relay WS_URL XPUB_ENDPOINT
    python bench/bare_chain.py ack REP_ENDPOINT
    python bench/bare_chain.py trader SUB_ENDPOINT REP_ENDPOINT PAPER_URL
"""

from __future__ import annotations

import sys

import msgspec
import zmq

from naived.core.messages import StreamEnvelope, TradeEvent, decode_trade, trade_topic


def relay(ws_url: str, endpoint: str) -> None:
    import websocket

    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.bind(endpoint)
    ws = websocket.create_connection(ws_url, skip_utf8_validation=True)
    envelope = msgspec.json.Decoder(StreamEnvelope)
    trade = msgspec.json.Decoder(TradeEvent)
    encoder = msgspec.msgpack.Encoder()
    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode != websocket.ABNF.OPCODE_TEXT:
            continue
        event = trade.decode(envelope.decode(frame.data).data)
        pub.send(trade_topic(event.s), zmq.SNDMORE)
        pub.send(encoder.encode(event))


def ack(endpoint: str) -> None:
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.bind(endpoint)
    while True:
        rep.send(rep.recv())


def trader(sub_endpoint: str, rep_endpoint: str, paper_url: str) -> None:
    from naived.exchange.binance import BinanceClient
    from naived.exchange.budget import Limits, LocalBudget

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(sub_endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, trade_topic("XRPUSDT"))
    req = ctx.socket(zmq.REQ)
    req.connect(rep_endpoint)
    # the same bookkeeping as a trader's budget, with limits these ~20 orders a second never reach
    client = BinanceClient(paper_url, "paper-key", "paper-secret", budget=LocalBudget(Limits(10**9, 10**9, 10**9)))
    client.server_time()  # warm: the connection is open and the clock offset known
    while True:
        _, payload = sub.recv_multipart()
        event = decode_trade(payload)
        req.send(payload)  # the intent's round trip
        req.recv()
        client.new_order("XRPUSDT", "BUY", "0.4000", "20", f"bare-{event.t}")


if __name__ == "__main__":
    {"relay": relay, "ack": ack, "trader": trader}[sys.argv[1]](*sys.argv[2:])
