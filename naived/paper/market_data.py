"""The paper exchange's market data endpoints, from the trades it has seen (Binance's spot API).

    GET /api/v3/klines, /api/v3/uiKlines   symbol, interval, startTime, endTime, limit (default
                                           500, 1-1000): `candles.Candles`' klines; timeZone
                                           only UTC (another is -1100)
    GET /api/v3/depth                      symbol, limit (default 100, 1-5000)
    GET /api/v3/ticker/24hr                symbol | symbols=[...] | every symbol; type FULL | MINI
    GET /api/v3/ticker/price, /api/v3/ticker/bookTicker   symbol | symbols=[...] | every symbol

The book is the paper book's (`book.py`): its only price is the last public trade, at which it
fills marketable orders of either side. So depth and bookTicker answer one level, bid = ask =
the last trade's price, its quantity the last trade's (with `partial_fills`, the most a
marketable order can take there); before the symbol's first trade, no level and zero prices.
`lastUpdateId` is the last trade's id. The 24 h ticker covers the 1m klines of the last 24 hours
(Binance's rolling window, to the minute); `firstId`/`lastId` are -1 (trade ids are not kept),
`prevClosePrice` the close of the minute before the window ("0" if not kept).

Futures, margin and wallet discovery (ccxt asks them while loading markets) answer empty and
well formed: the paper exchange is spot only and has no wallet.

    GET /fapi/v1/exchangeInfo, /dapi/v1/exchangeInfo   no symbols
    GET /sapi/v1/margin/allPairs, /sapi/v1/margin/isolated/allPairs   []
    GET /sapi/v1/capital/config/getall     [] (signed)

Asking for one symbol's market data (`symbol`, or `symbols`) subscribes it at the feed, as
exchangeInfo?symbol= does; asking for every symbol subscribes none.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec

from naived.core.symbols import SymbolFilters, table
from naived.paper.book import PaperBook, Rejected
from naived.paper.candles import INTERVALS, MINUTE, Candles
from naived.paper.params import Params, mandatory, optional_int, page_limit, symbol_filters
from naived.paper.shapes import RATE_LIMITS, fmt, now_ms

Reply = tuple[int, Any]
Route = tuple[Callable[[Params, int], Reply], int, bool]
ZERO = Decimal(0)
DAY_MS = 86_400_000
UTC_ZONES = ("0", "+0", "-0", "00:00", "0:00", "+0:00", "+00:00", "-0:00", "-00:00")  # klines' timeZone: UTC only
DEPTH_WEIGHTS = ((100, 5), (500, 25), (1000, 50), (5000, 250))  # limit up to -> weight


def depth_weight(params: Params) -> int:
    """GET /api/v3/depth: by `limit` (a malformed one is refused by the handler, at the least weight)."""
    try:
        limit = optional_int(params, "limit") or 100
    except Rejected:
        limit = 100
    return next((w for most, w in DEPTH_WEIGHTS if limit <= most), 250)


def symbols_weight(path: str, params: Params) -> int:
    """ticker/24hr, ticker/price, ticker/bookTicker: 2 for one symbol; for several or every one,
    4 (price, bookTicker), or for 24hr 2 up to 20 symbols, 40 up to 100, 80 beyond or for all."""
    if params.get("symbol"):
        return 2
    if path != "/api/v3/ticker/24hr":
        return 4
    if not params.get("symbols"):
        return 80
    try:
        count = len(_names(params))
    except Rejected:
        return 2  # refused by the handler
    return 2 if count <= 20 else 40 if count <= 100 else 80


def _names(params: Params) -> list[str]:
    try:
        return msgspec.json.decode(params["symbols"], type=list[str])
    except msgspec.DecodeError:
        raise Rejected(-1100, "Illegal characters found in parameter 'symbols'.") from None


class MarketData:
    """The endpoints above; `want(f)`: follow a symbol's trades (the exchange's `_want`)."""

    def __init__(self, book: PaperBook, candles: Candles, last_trade_id: Callable[[str], int],
                 want: Callable[[SymbolFilters], None]) -> None:
        self.book = book
        self.candles = candles
        self.last_trade_id = last_trade_id
        self.want = want

    def routes(self) -> dict[tuple[str, str], Route]:
        """(method, path) -> (handler, weight, signed); weights that depend on the parameters are
        `usage.weight_of`'s (depth_weight, symbols_weight)."""
        return {
            ("GET", "/api/v3/klines"): (self.klines, 2, False),
            ("GET", "/api/v3/uiKlines"): (self.klines, 2, False),
            ("GET", "/api/v3/depth"): (self.depth, 5, False),
            ("GET", "/api/v3/ticker/24hr"): (self.ticker_24hr, 2, False),
            ("GET", "/api/v3/ticker/price"): (self.ticker_price, 2, False),
            ("GET", "/api/v3/ticker/bookTicker"): (self.book_ticker, 2, False),
            ("GET", "/fapi/v1/exchangeInfo"): (lambda p, t: (200, self.futures_info(assets=True)), 1, False),
            ("GET", "/dapi/v1/exchangeInfo"): (lambda p, t: (200, self.futures_info(assets=False)), 1, False),
            ("GET", "/sapi/v1/margin/allPairs"): (lambda p, t: (200, []), 1, False),
            ("GET", "/sapi/v1/margin/isolated/allPairs"): (lambda p, t: (200, []), 10, False),
            ("GET", "/sapi/v1/capital/config/getall"): (lambda p, t: (200, []), 10, True),
        }

    def _one(self, params: Params) -> SymbolFilters:
        f = symbol_filters(mandatory(params, "symbol"))
        self.want(f)  # a bot about to trade it: follow its trades from now on
        return f

    def _asked(self, params: Params) -> tuple[list[SymbolFilters], bool]:
        """The symbols asked for, and whether one (an object) rather than a list is answered."""
        if params.get("symbol"):
            return [self._one(params)], True
        if params.get("symbols"):
            chosen = [symbol_filters(name) for name in _names(params)]
            for f in chosen:
                self.want(f)
            return chosen, False
        return [table()[name] for name in sorted(table())], False

    def klines(self, params: Params, received_ns: int) -> Reply:
        f = symbol_filters(mandatory(params, "symbol"))
        interval = mandatory(params, "interval")
        if interval not in INTERVALS:
            raise Rejected(-1120, "Invalid interval.")
        if params.get("timeZone", "0") not in UTC_ZONES:  # klines in another zone need bars this exchange does not keep
            raise Rejected(-1100, "Illegal characters found in parameter 'timeZone'; this paper exchange answers UTC only.")
        self.want(f)
        limit = page_limit(params)
        start, end = optional_int(params, "startTime"), optional_int(params, "endTime")
        return 200, self.candles.klines(f.symbol, interval, start, end, limit)

    def _level(self, symbol: str) -> tuple[Decimal, Decimal] | None:
        """The book's one level: the last trade's price (the book's) and quantity."""
        price, last = self.book.last_price(symbol), self.candles.last_trade(symbol)
        if price is None:
            return None
        return price, last[1] if last is not None else ZERO

    def depth(self, params: Params, received_ns: int) -> Reply:
        f = self._one(params)
        limit = optional_int(params, "limit") or 100
        if not 1 <= limit <= 5000:
            raise Rejected(-1100, "Illegal characters found in parameter 'limit'; legal range is '1-5000'.")
        level = self._level(f.symbol)
        side = [[fmt(level[0]), fmt(level[1])]] if level is not None else []
        return 200, {"lastUpdateId": self.last_trade_id(f.symbol), "bids": side, "asks": list(side)}

    def _book_ticker(self, f: SymbolFilters) -> dict[str, Any]:
        price, qty = self._level(f.symbol) or (ZERO, ZERO)
        return {"symbol": f.symbol, "bidPrice": fmt(price), "bidQty": fmt(qty), "askPrice": fmt(price), "askQty": fmt(qty)}

    def book_ticker(self, params: Params, received_ns: int) -> Reply:
        chosen, one = self._asked(params)
        answers = [self._book_ticker(f) for f in chosen]
        return 200, answers[0] if one else answers

    def ticker_price(self, params: Params, received_ns: int) -> Reply:
        chosen, one = self._asked(params)
        answers = [{"symbol": f.symbol, "price": fmt(self.book.last_price(f.symbol) or ZERO)} for f in chosen]
        return 200, answers[0] if one else answers

    def ticker_24hr(self, params: Params, received_ns: int) -> Reply:
        kind = params.get("type") or "FULL"
        if kind not in ("FULL", "MINI"):
            raise Rejected(-1100, "Illegal characters found in parameter 'type'; legal range is 'FULL, MINI'.")
        chosen, one = self._asked(params)
        now = now_ms()
        answers = [self._day(f, now, kind == "MINI") for f in chosen]
        return 200, answers[0] if one else answers

    def _day(self, f: SymbolFilters, now: int, mini: bool) -> dict[str, Any]:
        """One symbol's 24 h rolling window statistics (Binance's FULL or MINI ticker)."""
        start = now - DAY_MS
        window = self.candles.window(f.symbol, start - start % MINUTE, now)
        level = self._level(f.symbol)
        last_price, last_qty = level or (ZERO, ZERO)
        if window is None:
            opened = high = low = volume = quote = ZERO
            count, previous = 0, None
        else:
            bar, previous = window
            opened, high, low, volume, quote, count = bar.open, bar.high, bar.low, bar.volume, bar.quote, bar.trades
        answer: dict[str, Any] = {"symbol": f.symbol}
        if not mini:
            change = last_price - opened if count else ZERO
            answer |= {
                "priceChange": fmt(change),
                "priceChangePercent": format((change * 100 / opened).quantize(Decimal("0.001")), "f") if count else "0.000",
                "weightedAvgPrice": fmt(quote / volume if volume else ZERO),
                "prevClosePrice": fmt(previous or ZERO),
            }
        answer |= {"lastPrice": fmt(last_price)}
        if not mini:
            answer |= {"lastQty": fmt(last_qty), "bidPrice": fmt(last_price), "bidQty": fmt(last_qty),
                       "askPrice": fmt(last_price), "askQty": fmt(last_qty)}
        return answer | {"openPrice": fmt(opened), "highPrice": fmt(high), "lowPrice": fmt(low), "volume": fmt(volume),
                         "quoteVolume": fmt(quote), "openTime": start, "closeTime": now, "firstId": -1, "lastId": -1,
                         "count": count}

    @staticmethod
    def futures_info(assets: bool) -> dict[str, Any]:
        """fapi/dapi exchangeInfo with no symbol: the paper exchange trades spot only."""
        info: dict[str, Any] = {"timezone": "UTC", "serverTime": now_ms(), "rateLimits": RATE_LIMITS,
                                "exchangeFilters": [], "symbols": []}
        return info | ({"assets": []} if assets else {})
