"""The paper exchange in the backtest's own process: Binance's order calls as `BinanceClient`
makes them, answered by the paper exchange's request handlers over an in-memory book."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from naived.core.config import Config
from naived.core.messages import Fill, Order
from naived.core.symbols import SymbolFilters, quote_assets
from naived.exchange import binance as exchange
from naived.paper.book import Fees, PaperBook, Rejected
from naived.paper.exchange import PaperExchange


class _NoFeed:
    """PaperExchange's trade feed: the backtest hands trades to the book itself."""

    def __init__(self) -> None:
        self.after_trade: Callable[[SymbolFilters], None] | None = None

    def want(self, symbol: str) -> None:
        pass

    def market(self) -> dict[str, dict[str, Any]]:
        return {}

    def dropped(self) -> dict[str, dict[str, int]]:
        return {}


class InProcessExchange:
    """`BinanceClient`'s order calls, answered by the paper exchange's request handlers in this
    process: the same parameters, checks, matching, commission and JSON, decoded by the
    client's own decoders. A refusal becomes the client's `BinanceError` / `UnknownOrder`."""

    def __init__(self, config: Config, clock: Callable[[], int]) -> None:
        paper = config.paper
        self.clock = clock
        fees = Fees(paper.maker_commission, paper.taker_commission, paper.commission_in_bnb)
        self.book = PaperBook(Path(":memory:"), paper.starting_balances(quote_assets()), fees=fees,
                              fill_on_touch=paper.fill_on_touch, partial_fills=paper.partial_fills, clock=clock)
        self.app = PaperExchange(config, self.book, _NoFeed())

    def _call(self, handler: Callable[[dict[str, str], int], tuple[int, Any]], params: dict[str, str]) -> bytes:
        try:
            _, body = handler(params, self.clock() * 1_000_000)
        except Rejected as exc:
            kind = exchange.UnknownOrder if exc.code == exchange.UNKNOWN_ORDER else exchange.BinanceError
            raise kind(exc.code, exc.msg, exc.status) from None
        return msgspec.json.encode(body)

    def new_order(self, symbol: str, side: str, price: str, quantity: str, client_order_id: str) -> Order:
        params = {"symbol": symbol, "side": side, "type": "LIMIT", "timeInForce": "GTC", "quantity": quantity,
                  "price": price, "newClientOrderId": client_order_id, "newOrderRespType": "FULL"}
        return exchange._order(exchange._order_decoder.decode(self._call(self.app.new_order, params)))

    def get_order(self, symbol: str, client_order_id: str) -> Order:
        params = {"symbol": symbol, "origClientOrderId": client_order_id}
        return exchange._order(exchange._order_decoder.decode(self._call(self.app.get_order, params)))

    def my_trades(self, symbol: str, order_id: int) -> list[Fill]:
        params = {"symbol": symbol, "orderId": str(order_id), "fromId": "0", "limit": str(exchange.MY_TRADES_LIMIT)}
        page = exchange._trades_decoder.decode(self._call(self.app.my_trades, params))
        return [Fill(t.price, t.qty, t.commission, t.commissionAsset, t.id) for t in page if t.orderId == order_id]
