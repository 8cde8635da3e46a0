"""The paper exchange's market data: Binance's public market endpoints, from the trades it sees.

    GET /api/v3/klines, /api/v3/uiKlines   symbol, interval, startTime, endTime, limit (default
                                           500, at most 1000), timeZone: from `candles.Candles`
    GET /api/v3/depth                      symbol, limit (default 100, at most 5000)
    GET /api/v3/ticker/24hr                symbol | symbols=[...] | neither (all); type FULL | MINI
    GET /api/v3/ticker/price, /api/v3/ticker/bookTicker   symbol | symbols=[...] | neither
    GET /fapi/v1/exchangeInfo, /dapi/v1/exchangeInfo      no symbols (the paper exchange is spot only)
    GET /sapi/v1/capital/config/getall     (signed) [] : no coin or network information
    GET /sapi/v1/margin/allPairs, /sapi/v1/margin/isolated/allPairs (signed)   [] : no margin

Weights are Binance's (depth and the tickers' depend on `limit` / the number of symbols).
Asking for a symbol's market data subscribes it at the feed, as exchangeInfo?symbol= does.

What it stays (deliberate, documented differences from Binance):
- The book is the last public trade, as the paper book matches (`book.py`): depth and
  bookTicker answer one level each side, bid = ask = the last trade's price, the quantity the
  last trade's quantity (what `partial_fills` lets a marketable order take), `lastUpdateId` the
  last trade's id. Before any trade: no levels, prices and quantities "0.00000000".
- The 24 h ticker is the rolling 24 h that end at the symbol's last trade (not the clock: a
  replayed recording has its tickers), from the 1m candles, so its window is whole minutes;
  `ticker/24hr`, `ticker/price` and `bookTicker` without `symbol`/`symbols` answer the symbols
  the exchange has seen trades of (Binance: every symbol).
- Klines come only from trades the exchange saw (live, or `[paper] history_files` read at
  start): a period without them has no kline; before the history, the answer is shorter.
- With `X-MBX-TIME-UNIT: MICROSECOND`, the tickers' times are in µs but kline arrays keep theirs in ms.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec

from naived.core.symbols import SymbolFilters, table
from naived.paper.book import Rejected
from naived.paper.candles import DAY, INTERVALS, MINUTE, Candles, fmt
from naived.paper.params import Params, mandatory, optional_int, page_limit, stamp_us, symbol_filters

if TYPE_CHECKING:
    from naived.paper.exchange import PaperExchange

Reply = tuple[int, Any]
Weight = int | Callable[[Params], int]
Route = tuple[Callable[[Params, int], Reply], Weight, bool]
ZERO = "0.00000000"
TIME_ZONE_RE = re.compile(r"^([+-]?)(\d{1,2})(?::(\d{2}))?$")
DEPTH_WEIGHTS = ((100, 5), (500, 25), (1000, 50), (5000, 250))  # limit up to -> weight


def _depth_weight(params: Params) -> int:
    try:
        limit = min(int(params.get("limit") or 100), 5000)
    except ValueError:
        return 5
    return next(w for top, w in DEPTH_WEIGHTS if limit <= top)


def _symbols_count(params: Params) -> int | None:
    """How many symbols `symbols` names (None: neither `symbol` nor `symbols`, i.e. all)."""
    if params.get("symbol"):
        return 1
    if params.get("symbols"):
        return params["symbols"].count(",") + 1
    return None


def _ticker_24hr_weight(params: Params) -> int:
    count = _symbols_count(params)
    return 80 if count is None or count > 100 else 40 if count > 20 else 2


def _ticker_weight(params: Params) -> int:
    return 2 if params.get("symbol") else 4


def time_zone(params: Params) -> int:
    """`timeZone` in ms east of UTC: "8", "-1:00", "05:45"; Binance accepts [-12:00, +14:00]."""
    text = params.get("timeZone")
    if not text:
        return 0
    match = TIME_ZONE_RE.match(text)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        minutes = int(match.group(2)) * 60 + int(match.group(3) or 0)
        if int(match.group(3) or 0) < 60 and -12 * 60 <= sign * minutes <= 14 * 60:
            return sign * minutes * MINUTE
    raise Rejected(-1100, "Illegal characters found in parameter 'timeZone'; legal range is '[-12:00 to +14:00]'.")


class MarketData:
    """The market endpoints of one `PaperExchange` (its book's prices, its candles, its feed)."""

    def __init__(self, exchange: PaperExchange, candles: Candles) -> None:
        self.exchange = exchange
        self.candles = candles

    def routes(self) -> dict[tuple[str, str], Route]:
        """(method, path) -> (handler, weight, signed), for `PaperExchange.routes`."""
        empty_info = (self.futures_exchange_info, 1, False)
        return {
            ("GET", "/api/v3/klines"): (self.klines, 2, False),
            ("GET", "/api/v3/uiKlines"): (self.klines, 2, False),
            ("GET", "/api/v3/depth"): (self.depth, _depth_weight, False),
            ("GET", "/api/v3/ticker/24hr"): (self.ticker_24hr, _ticker_24hr_weight, False),
            ("GET", "/api/v3/ticker/price"): (self.ticker_price, _ticker_weight, False),
            ("GET", "/api/v3/ticker/bookTicker"): (self.book_ticker, _ticker_weight, False),
            ("GET", "/fapi/v1/exchangeInfo"): empty_info,
            ("GET", "/dapi/v1/exchangeInfo"): empty_info,
            ("GET", "/sapi/v1/capital/config/getall"): (lambda p, t: (200, []), 10, True),
            ("GET", "/sapi/v1/margin/allPairs"): (lambda p, t: (200, []), 1, False),
            ("GET", "/sapi/v1/margin/isolated/allPairs"): (lambda p, t: (200, []), 10, True),
        }

    def _symbol(self, params: Params) -> SymbolFilters:
        f = symbol_filters(mandatory(params, "symbol"))
        self.exchange._want(f)  # asked about: follow its trades from now on
        return f

    def _symbols(self, params: Params) -> list[str] | None:
        """`symbol` or `symbols` (each followed from now on); None for neither (all seen)."""
        if params.get("symbol") and params.get("symbols"):
            raise Rejected(-1128, "Combination of optional parameters invalid.")
        if params.get("symbol"):
            return [self._symbol(params).symbol]
        if "symbols" not in params:
            return None
        try:
            names = msgspec.json.decode(params["symbols"], type=list[str])
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise Rejected(-1100, "Illegal characters found in parameter 'symbols'.") from None
        if not names or any(n not in table() for n in names):
            raise Rejected(-1121, "Invalid symbol.")
        for name in names:
            self.exchange._want(table()[name])
        return names

    # --- klines --------------------------------------------------------------------------------

    def klines(self, params: Params, received_ns: int) -> Reply:
        """GET /api/v3/klines (and uiKlines, the same here: no presentation tweaks to make)."""
        f = self._symbol(params)
        interval = mandatory(params, "interval")
        if interval not in INTERVALS:
            raise Rejected(-1120, "Invalid interval.")
        start, end = optional_int(params, "startTime"), optional_int(params, "endTime")
        limit = page_limit(params)
        start_ms = stamp_us(start) // 1000 if start is not None else None
        end_ms = stamp_us(end) // 1000 if end is not None else None
        return 200, self.candles.klines(f.symbol, interval, start_ms, end_ms, limit, time_zone(params))

    # --- the book: the last trade ------------------------------------------------------------------

    def _top(self, symbol: str) -> tuple[Decimal, Decimal, int] | None:
        """(price, quantity, trade id) of the only level each side: the last trade's."""
        last = self.candles.last_trade(symbol)
        price = self.exchange.book.last_price(symbol)
        if price is None and last is not None:
            price = last.price
        if price is None:
            return None
        return price, last.qty if last else Decimal(0), last.trade_id if last else 0

    def depth(self, params: Params, received_ns: int) -> Reply:
        f = self._symbol(params)
        limit = optional_int(params, "limit")
        if limit is not None and limit < 1:
            raise Rejected(-1100, "Illegal characters found in parameter 'limit'; legal range is '1-5000'.")
        top = self._top(f.symbol)
        if top is None:
            return 200, {"lastUpdateId": 0, "bids": [], "asks": []}
        price, qty, trade_id = top
        level = [[fmt(price), fmt(qty)]]
        return 200, {"lastUpdateId": trade_id, "bids": level, "asks": list(level)}

    def _book_ticker(self, symbol: str) -> dict[str, Any]:
        top = self._top(symbol)
        price, qty = (fmt(top[0]), fmt(top[1])) if top else (ZERO, ZERO)
        return {"symbol": symbol, "bidPrice": price, "bidQty": qty, "askPrice": price, "askQty": qty}

    def _answer(self, params: Params, one: Callable[[str], dict[str, Any]]) -> Reply:
        names = self._symbols(params)
        if names is None:
            return 200, [one(s) for s in self.candles.symbols()]
        if params.get("symbol"):
            return 200, one(names[0])
        return 200, [one(s) for s in names]

    def book_ticker(self, params: Params, received_ns: int) -> Reply:
        return self._answer(params, self._book_ticker)

    def ticker_price(self, params: Params, received_ns: int) -> Reply:
        def one(symbol: str) -> dict[str, Any]:
            last = self.candles.last_trade(symbol)
            price = self.exchange.book.last_price(symbol) or (last.price if last else None)
            return {"symbol": symbol, "price": fmt(price) if price is not None else ZERO}
        return self._answer(params, one)

    # --- 24 h statistics -----------------------------------------------------------------------

    def ticker_24hr(self, params: Params, received_ns: int) -> Reply:
        kind = params.get("type") or "FULL"
        if kind not in ("FULL", "MINI"):
            raise Rejected(-1100, "Illegal characters found in parameter 'type'; legal range is 'FULL, MINI'.")
        return self._answer(params, lambda symbol: self._ticker(symbol, kind == "MINI"))

    def _ticker(self, symbol: str, mini: bool) -> dict[str, Any]:
        last = self.candles.last_trade(symbol)
        window = self.candles.window(symbol, last.time_ms, DAY) if last else None
        if last is None or window is None:
            now = self.exchange.book.clock()
            stats: dict[str, Any] = {
                "openPrice": ZERO, "highPrice": ZERO, "lowPrice": ZERO, "lastPrice": ZERO, "volume": ZERO,
                "quoteVolume": ZERO, "openTime": now - DAY, "closeTime": now, "firstId": -1, "lastId": -1, "count": 0}
            full = {"priceChange": ZERO, "priceChangePercent": "0.000", "weightedAvgPrice": ZERO,
                    "prevClosePrice": ZERO, "lastQty": ZERO}
        else:
            c = window.candle
            stats = {"openPrice": fmt(c.open), "highPrice": fmt(c.high), "lowPrice": fmt(c.low),
                     "lastPrice": fmt(c.close), "volume": fmt(c.volume), "quoteVolume": fmt(c.quote),
                     "openTime": window.open_ms, "closeTime": window.close_ms, "firstId": c.first_id,
                     "lastId": c.last_id, "count": c.trades}
            change = c.close - c.open
            full = {"priceChange": fmt(change),
                    "priceChangePercent": format((change * 100 / c.open).quantize(Decimal("0.001")), "f"),
                    "weightedAvgPrice": fmt(c.quote / c.volume) if c.volume else ZERO,
                    "prevClosePrice": fmt(window.prev_close) if window.prev_close is not None else ZERO,
                    "lastQty": fmt(last.qty)}
        if mini:
            return {"symbol": symbol, **stats}
        book = self._book_ticker(symbol)
        return {"symbol": symbol, "priceChange": full["priceChange"], "priceChangePercent": full["priceChangePercent"],
                "weightedAvgPrice": full["weightedAvgPrice"], "prevClosePrice": full["prevClosePrice"],
                "lastPrice": stats["lastPrice"], "lastQty": full["lastQty"], "bidPrice": book["bidPrice"],
                "bidQty": book["bidQty"], "askPrice": book["askPrice"], "askQty": book["askQty"],
                **{k: stats[k] for k in ("openPrice", "highPrice", "lowPrice", "volume", "quoteVolume",
                                         "openTime", "closeTime", "firstId", "lastId", "count")}}

    # --- discovery calls of clients (ccxt loads futures markets and margin pairs by default) ----------

    def futures_exchange_info(self, params: Params, received_ns: int) -> Reply:
        return 200, {"timezone": "UTC", "serverTime": self.exchange.book.clock(),
                     "rateLimits": [], "exchangeFilters": [], "assets": [], "symbols": []}

