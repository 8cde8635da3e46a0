"""The paper exchange as a process (the book's BinanceMock): `run(config, listener, ws_listener)` serves until SIGTERM/SIGINT.

For naived's root (a forked child, on the sockets the root bound before READY) and for
`naived paper-exchange` (alone, binding its own). It puts the parts together: the book
(`book.py`), the trade feed's thread (`feed.py`), the endpoints (`exchange.py`) behind the HTTP
server's threads (`http.py`), and the websocket thread: the user data stream (`userstream.py`) and the market
streams (`marketstream.py`) on one port.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
from contextlib import ExitStack

import zmq

from naived.core.config import Config
from naived.core.symbols import quote_assets
from naived.market.tape import TapeError
from naived.ops.listen import CannotListen, listen
from naived.paper.book import Fees, PaperBook
from naived.paper.candles import Candles, load_history
from naived.paper.exchange import PaperExchange
from naived.paper.feed import TradeFeed
from naived.paper.http import Gate, Server
from naived.paper.marketstream import MarketStreams
from naived.paper.userstream import UserStreamServer

log = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def run(config: Config, listener: socket.socket | None = None, ws_listener: socket.socket | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then return. Starts its own zmq context and threads.

    `listener`, `ws_listener`: TCP sockets already bound and listening, for the REST API and
    the user data stream (naived's root binds them before it says READY, so the ports are
    taken and answering from the start; they are inherited across fork). Without them, bind
    `paper.host:paper.port` and `paper.ws_port` (the standalone `naived paper-exchange`).
    A state file that cannot be read raises SystemExit with one line saying what to do."""
    paper = config.paper
    host = listener.getsockname()[0] if listener is not None else paper.host
    # naived's own paper exchange (a listener handed down) serves this host alone, whatever the file says.
    if not _is_loopback(host) and (listener is not None or not paper.remote_clients):
        raise SystemExit(f"paper exchange: {host!r} is not a loopback address; refusing to serve unsigned inspection endpoints")
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before any thread exists, so every thread inherits the mask and the signals
    # wait for sigtimedwait below instead of interrupting a commit half way.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with ExitStack() as cleanup:
        cleanup.callback(signal.pthread_sigmask, signal.SIG_SETMASK, previous_mask)
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = config.state_dir / "paper-exchange.sqlite"
        fees = Fees(paper.maker_commission, paper.taker_commission, paper.commission_in_bnb)
        book = PaperBook(path, paper.starting_balances(quote_assets()), fees=fees, fill_on_touch=paper.fill_on_touch,
                         partial_fills=paper.partial_fills)
        cleanup.callback(book.close)
        ctx = zmq.Context()
        cleanup.callback(ctx.term)
        candles = Candles()
        if paper.history_files:  # before any live trade: a bot's startup candles
            try:
                load_history(candles, paper.history_files)
            except TapeError as exc:
                raise SystemExit(f"paper exchange: [paper] history_files: {exc}") from None
        feed = TradeFeed(ctx, config.streamer.endpoint, book, lambda symbol: config.trading.for_symbol(symbol).price_band,
                         candles)
        app = PaperExchange(config, book, feed, candles=candles)
        if ws_listener is None:
            try:
                ws_listener = listen(paper.host, paper.ws_port, "the user data stream", "[paper] ws_port")
            except CannotListen as exc:
                raise SystemExit(f"paper exchange: {exc}") from None
        cleanup.callback(ws_listener.close)
        stream = UserStreamServer(ws_listener, paper.listen_key_seconds, paper.user_stream_connection_seconds,
                                  lambda: app.faults.stream)
        app.stream = stream
        # Binance's market streams on the same port; klines from the candles the feed builds.
        stream.market = MarketStreams(stream.loop, feed.want, kline_source=candles.current,
                                      connection_seconds=paper.user_stream_connection_seconds)
        feed.trade_listeners.append(stream.market.on_trade)
        book.listeners.append(stream.publish)
        app.gate = Gate(paper)
        server = Server((paper.host, paper.port), app.handle, app.gate, listener)
        cleanup.callback(server.server_close)
        for symbol in book.symbols_with_open_orders():
            feed.want(symbol)
        feed.start()
        cleanup.callback(feed.join)
        cleanup.callback(feed.stop)
        serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True)
        serving.start()
        cleanup.callback(server.shutdown)
        stream.start()
        cleanup.callback(stream.join, 5.0)
        cleanup.callback(stream.stop)
        log.info("paper exchange on %s:%d, user data stream on port %d (state %s, %d open orders), trades from %s",
                 *server.server_address[:2], stream.address[1], path, len(book.open_orders(None)), config.streamer.endpoint)
        while True:
            received = signal.sigtimedwait(stop_signals, 1.0)
            if received is not None:
                log.info("%s: stopping", signal.Signals(received.si_signo).name)
                return
            if not feed.is_alive() or not serving.is_alive() or not stream.is_alive():
                raise RuntimeError("paper exchange: a worker thread died; exiting so the supervisor restarts it")
