"""Binance spot REST client: the one way traders, leaders and the root talk to an exchange.

The same client talks to the paper exchange, Binance's testnet and Binance. What it
guarantees to callers:

- Every answer is definite or says it is not. `BinanceError` (and `UnknownOrder`)
  means the exchange answered "no"; `OutcomeUnknown` means no usable answer came
  back (timeout, dropped connection, 5XX), so an order may or may not exist and
  the caller must look it up by client order id before placing it again.
- `RateLimited` carries Binance's `Retry-After`. Until it has passed the client
  refuses to send anything (raising `RateLimited` again without touching the
  network): after a 418 that is what keeps the IP ban from growing, after a 429
  it is what keeps a 429 from becoming a 418. With a `SharedBudget` (what
  `client_for` builds) that holds for every process of the host at once: Binance
  counts per IP.
- `OverBudget` (a `RateLimited`, not banned) means the host's own budget held
  the request back before it was sent: the minute's weight (Binance's header, or
  our count of what the host sent) would pass its share, or the order counts
  would. Reads give way first (see `naived.exchange.budget`).
- Timestamps follow the server's clock: the offset is fetched on first use and
  again whenever Binance says -1021 (outside recvWindow); the request is then
  retried once. -1021 is a rejection before matching, so even an order retry is safe.
- Secrets stay out of logs, exception messages and reprs: the API secret only
  lives inside an HMAC object, the API key inside the session's headers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

import msgspec

from naived.core.config import Config
from naived.core.credentials import credentials
from naived.core.messages import Fill, Order
from naived.exchange import budget as rate_budget
from naived.exchange import http1

log = logging.getLogger(__name__)

UNKNOWN_ORDER = -2013
UNKNOWN_LISTEN_KEY = -1125  # "This listenKey does not exist."
INVALID_TIMESTAMP = -1021
# errors.md: -1006 UNEXPECTED_RESP and -1007 TIMEOUT say "execution status unknown", whatever the
# HTTP status that carries them.
EXECUTION_UNKNOWN = (-1006, -1007)


class BinanceError(Exception):
    """The exchange refused the request: `{"code": -2010, "msg": "..."}`."""

    def __init__(self, code: int, msg: str, http_status: int = 400) -> None:
        super().__init__(f"Binance error {code}: {msg}")
        self.code = code
        self.msg = msg
        self.http_status = http_status


class UnknownOrder(BinanceError):
    """-2013 "Order does not exist.": a definite answer, the order is not there."""


class OutcomeUnknown(Exception):
    """No usable answer (timeout, dropped connection, 5XX). For an order placement or a
    cancel the effect is unknown: look the order up, never assume it failed."""


class Stale(Exception):
    """Not sent: the request's `not_after` (monotonic) had passed when it was about to be signed.
    Nothing reached the exchange; the caller renews what entitles it to send, then sends again."""


class RateLimited(Exception):
    """429 (slow down) or 418 (IP banned). Nothing is sent before `retry_after` seconds."""

    def __init__(self, retry_after: float, banned: bool, kind: str = "") -> None:
        kind = kind or ("banned (418)" if banned else "rate limited (429)")
        super().__init__(f"{kind}, retry after {retry_after:.1f}s")
        self.retry_after = retry_after
        self.banned = banned


class OverBudget(RateLimited):
    """Held back by the host's own rate budget; nothing was sent. Safe to send again later."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after, False, "over the host's rate budget")


# Request weight per endpoint (rest-api.md, each endpoint's "Weight"), for the host's own count:
# what the next request costs is known before Binance's header says what it cost.
WEIGHTS = {
    ("GET", "/api/v3/ping"): 1,
    ("GET", "/api/v3/time"): 1,
    ("GET", "/api/v3/exchangeInfo"): 20,
    ("POST", "/api/v3/order"): 1,
    ("GET", "/api/v3/order"): 4,
    ("DELETE", "/api/v3/order"): 1,
    ("GET", "/api/v3/openOrders"): 6,  # with a symbol; 80 without (see `request_weight`)
    ("GET", "/api/v3/myTrades"): 20,  # 5 with orderId
    ("GET", "/api/v3/account"): 20,
}


def request_weight(method: str, path: str, params: dict[str, str]) -> int:
    if path == "/api/v3/openOrders" and method == "GET" and "symbol" not in params:
        return 80
    if path == "/api/v3/myTrades" and "orderId" in params:
        return 5
    return WEIGHTS.get((method, path), 20)  # an endpoint not listed: assume a heavy one


def request_kind(method: str, path: str) -> str:
    """Orders and cancels come before reads when the budget is tight."""
    if path == "/api/v3/order" and method == "POST":
        return "order"
    if path == "/api/v3/order" and method == "DELETE":
        return "cancel"
    return "read"


def signature(secret: str, payload: str) -> str:
    """HMAC-SHA256 of the exact query string, hex: Binance's SIGNED endpoint scheme."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


# Only the fields the bot reads; msgspec skips the rest of Binance's order JSON.
class _FillBody(msgspec.Struct):
    """`fills[]` of a FULL order answer."""

    price: str
    qty: str
    commission: str
    commissionAsset: str
    tradeId: int = 0


class _OrderBody(msgspec.Struct):
    clientOrderId: str
    side: Literal["BUY", "SELL"]  # anything else is refused at decoding, as a malformed answer
    price: str
    origQty: str
    status: str
    orderId: int
    executedQty: str
    cummulativeQuoteQty: str = "0"
    origClientOrderId: str | None = None  # DELETE answers carry the cancel's own id in clientOrderId
    updateTime: int | None = None  # GET answers
    transactTime: int | None = None  # POST and DELETE answers
    fills: list[_FillBody] | None = None  # FULL answers only


class _TradeBody(msgspec.Struct):
    """One entry of GET /api/v3/myTrades."""

    id: int
    orderId: int
    price: str
    qty: str
    commission: str
    commissionAsset: str


class _ListenKey(msgspec.Struct):
    listenKey: str


class _ErrorBody(msgspec.Struct):
    code: int
    msg: str


class _ServerTime(msgspec.Struct):
    serverTime: int


_order_decoder = msgspec.json.Decoder(_OrderBody)
_orders_decoder = msgspec.json.Decoder(list[_OrderBody])


class Listed(msgspec.Struct, frozen=True):
    """An open order as `GET /api/v3/openOrders` (every symbol) lists it: the fields naive reads."""

    symbol: str
    clientOrderId: str
    side: str = ""
    price: str = "0"
    origQty: str = "0"
    executedQty: str = "0"
    status: str = ""
    time: int = 0  # ms, the order's creation


class _BalanceBody(msgspec.Struct):
    asset: str
    free: str
    locked: str


class _AccountBody(msgspec.Struct):
    """GET /api/v3/account: the balances only (msgspec skips the rest)."""

    balances: list[_BalanceBody]


_listed_decoder = msgspec.json.Decoder(list[Listed])
_trades_decoder = msgspec.json.Decoder(list[_TradeBody])
_error_decoder = msgspec.json.Decoder(_ErrorBody)
_time_decoder = msgspec.json.Decoder(_ServerTime)
_listen_key_decoder = msgspec.json.Decoder(_ListenKey)
_json_object = msgspec.json.Decoder(dict[str, Any])
_account_decoder = msgspec.json.Decoder(_AccountBody)


FINAL_STATUSES = frozenset({"FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED"})
MY_TRADES_LIMIT = 1000  # Binance's maximum page


def _order(body: _OrderBody) -> Order:
    order = Order(
        client_order_id=body.origClientOrderId or body.clientOrderId,
        side=body.side,
        price=body.price,
        quantity=body.origQty,
        status=body.status,
        order_id=body.orderId,
        executed_qty=body.executedQty,
        quote_qty=body.cummulativeQuoteQty,
        update_time=body.updateTime or body.transactTime,
    )
    if body.fills is None or body.status not in FINAL_STATUSES:
        return order  # an order still open may trade more: its commissions are learned at its end
    # Final at once (a taker fill): the answer has all its trades. The strategy sums them.
    fills = [Fill(f.price, f.qty, f.commission, f.commissionAsset, f.tradeId) for f in body.fills]
    return msgspec.structs.replace(order, fills=fills)


class BinanceClient:
    def __init__(
        self, base_url: str, api_key: str, api_secret: str, *, recv_window_ms: int = 5000, timeout: float = 5.0,
        budget: rate_budget.Budget | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.used_weight = 0
        self._recv_window = str(recv_window_ms)
        self._mac = hmac.new(api_secret.encode(), digestmod=hashlib.sha256)  # copied per request
        self._offset_ms: int | None = None  # server clock minus ours
        # Bans, weight and order counts: shared by the host's processes when `client_for` built it.
        self.budget = budget or rate_budget.LocalBudget()
        # One keep-alive connection, no proxy from the environment; see http1 for why not requests.
        self._http = http1.Connection(self.base_url, timeout, {"X-MBX-APIKEY": api_key})

    def __repr__(self) -> str:
        return f"BinanceClient({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    # --- public endpoints ----------------------------------------------------------------

    def ping(self) -> None:
        self._call("GET", "/api/v3/ping", {}, signed=False)

    def server_time(self) -> int:
        """Binance's clock in ms; also refreshes the offset used for timestamps."""
        sent = time.time()
        body = _time_decoder.decode(self._call("GET", "/api/v3/time", {}, signed=False))
        received = time.time()
        self._offset_ms = body.serverTime - int((sent + received) * 500)  # midpoint, in ms
        return body.serverTime

    def exchange_info(self, symbol: str | None = None) -> dict[str, Any]:
        params = {"symbol": symbol} if symbol else {}
        return _json_object.decode(self._call("GET", "/api/v3/exchangeInfo", params, signed=False))

    # --- orders (signed) -----------------------------------------------------------------

    def new_order(self, symbol: str, side: str, price: str, quantity: str, client_order_id: str,
                  not_after: float | None = None) -> Order:
        """A LIMIT GTC order. OutcomeUnknown means: look `client_order_id` up before retrying.

        `not_after` (monotonic): the request is signed only until then, else `Stale` and nothing is
        sent. Its timestamp is taken before that check, so the exchange cannot execute it later than
        `not_after` plus recvWindow, however long this process is paused afterwards."""
        params = {
            "symbol": symbol,
            "side": side,
            "type": "LIMIT",
            "timeInForce": "GTC",
            "quantity": quantity,
            "price": price,
            "newClientOrderId": client_order_id,
            "newOrderRespType": "FULL",  # an order filled at once comes with its fills and commissions
        }
        return _order(_order_decoder.decode(self._call("POST", "/api/v3/order", params, signed=True, not_after=not_after)))

    def get_order(self, symbol: str, client_order_id: str) -> Order:
        params = {"symbol": symbol, "origClientOrderId": client_order_id}
        return _order(_order_decoder.decode(self._call("GET", "/api/v3/order", params, signed=True)))

    def my_trades(self, symbol: str, order_id: int) -> list[Fill]:
        """Every trade of one order, with its commission (weight 5 per page, with orderId).

        `GET /api/v3/order` does not say what commission was paid; this does. Paged forward
        from trade id 0 (`symbol` + `orderId` + `fromId` is a supported combination)."""
        fills: list[Fill] = []
        from_id = 0
        while True:
            params = {"symbol": symbol, "orderId": str(order_id), "fromId": str(from_id), "limit": str(MY_TRADES_LIMIT)}
            page = _trades_decoder.decode(self._call("GET", "/api/v3/myTrades", params, signed=True))
            fills += [Fill(t.price, t.qty, t.commission, t.commissionAsset, t.id) for t in page if t.orderId == order_id]
            if len(page) < MY_TRADES_LIMIT:
                return fills
            from_id = max(t.id for t in page) + 1

    def cancel_order(self, symbol: str, client_order_id: str) -> Order:
        params = {"symbol": symbol, "origClientOrderId": client_order_id}
        return _order(_order_decoder.decode(self._call("DELETE", "/api/v3/order", params, signed=True)))

    def open_orders(self, symbol: str) -> list[Order]:
        body = self._call("GET", "/api/v3/openOrders", {"symbol": symbol}, signed=True)
        return [_order(o) for o in _orders_decoder.decode(body)]

    def open_order_ids(self) -> dict[str, list[str]]:
        """Every open order of the account, client order ids by symbol: one call for all symbols
        (weight 80, where a call per symbol costs 6 each: 8,040 for 1,340 symbols)."""
        result: dict[str, list[str]] = {}
        for order in self.all_open_orders():
            result.setdefault(order.symbol, []).append(order.clientOrderId)
        return result

    def all_open_orders(self) -> list[Listed]:
        """Every open order of the account, in one call (weight 80)."""
        return _listed_decoder.decode(self._call("GET", "/api/v3/openOrders", {}, signed=True))

    # --- the user data stream's listen key (USER_STREAM: API key, no signature) -----------------
    # The key is a credential for the account's events: callers keep it out of logs and argv.

    def new_listen_key(self) -> str:
        """The account's active listen key (Binance extends it), or a new one."""
        return _listen_key_decoder.decode(self._call("POST", "/api/v3/userDataStream", {}, signed=False)).listenKey

    def keepalive_listen_key(self, listen_key: str) -> None:
        """Another 60 minutes of validity. `BinanceError` -1125: the key is gone (make a new one)."""
        self._call("PUT", "/api/v3/userDataStream", {"listenKey": listen_key}, signed=False)

    def close_listen_key(self, listen_key: str) -> None:
        self._call("DELETE", "/api/v3/userDataStream", {"listenKey": listen_key}, signed=False)

    def account(self) -> dict[str, Any]:
        return _json_object.decode(self._call("GET", "/api/v3/account", {}, signed=True))

    def balances(self) -> list[tuple[str, str, str]]:
        """The account's balances as (asset, free, locked), decimal strings as sent (one
        `GET /api/v3/account`, weight 20; `omitZeroBalances` spares Binance sending hundreds of
        zeros, which an exchange that ignores it sends anyway)."""
        body = _account_decoder.decode(self._call("GET", "/api/v3/account", {"omitZeroBalances": "true"}, signed=True))
        return [(b.asset, b.free, b.locked) for b in body.balances]

    # --- the one request path -------------------------------------------------------------

    def _call(self, method: str, path: str, params: dict[str, str], *, signed: bool,
              not_after: float | None = None) -> bytes:
        try:
            return self._send(method, path, params, signed, not_after)
        except BinanceError as exc:
            if exc.code != INVALID_TIMESTAMP or not signed:
                raise
        # A stale timestamp is refused before anything happens, so one retry is safe, orders included.
        log.warning("%s %s: timestamp outside recvWindow, resyncing with the server clock", method, path)
        self.server_time()
        return self._send(method, path, params, signed, not_after)

    def _send(self, method: str, path: str, params: dict[str, str], signed: bool, not_after: float | None = None) -> bytes:
        if signed and self._offset_ms is None:
            self.server_time()
        # Binance's windows follow its clock: ours, corrected by the offset once it is known
        # (always, before a signed request: server_time() above sets it or raises).
        offset_ms = self._offset_ms or 0
        wall = time.time() + offset_ms / 1000
        _in_time(not_after, method, path)  # before the budget: a request not sent spends none of it
        try:
            spent = self.budget.acquire(request_weight(method, path, params), request_kind(method, path), wall)
        except rate_budget.Refused as held:
            if held.status:  # a 429/418 seen by any process of this host: nothing goes out
                raise RateLimited(held.retry_after, held.status == 418) from None
            raise OverBudget(held.retry_after) from None
        query = urlencode(params)
        if signed:
            stamp = int(time.time() * 1000) + offset_ms
            _in_time(not_after, method, path)  # again after the stamp: see new_order
            timing = f"recvWindow={self._recv_window}&timestamp={stamp}"
            query = f"{query}&{timing}" if query else timing
            mac = self._mac.copy()
            mac.update(query.encode())
            query = f"{query}&signature={mac.hexdigest()}"
        try:
            response = self._http.request(method, f"{path}?{query}" if query else path)
        except http1.TransportError as exc:
            # Whatever it was (timeout, reset, refused), we cannot know what the exchange did.
            raise OutcomeUnknown(f"{method} {path}: no answer ({exc})") from None
        headers = response.headers
        weight = _header_int(headers, "X-MBX-USED-WEIGHT-1M")
        if weight is not None:
            self.used_weight = weight
        status = response.status_code
        limited = status if status in (418, 429) else 0
        retry_after = _retry_after(response, 60.0 if status == 418 else 1.0) if limited else 0.0
        self.budget.record(wall, weight, _header_int(headers, "X-MBX-ORDER-COUNT-10S"),
                           _header_int(headers, "X-MBX-ORDER-COUNT-1D"), limited, retry_after, spent)
        if status < 300:
            return response.content
        if limited:
            raise RateLimited(retry_after, status == 418)
        if status >= 500:
            raise OutcomeUnknown(f"{method} {path}: HTTP {status}, execution status unknown")
        try:
            error = _error_decoder.decode(response.content)
        except msgspec.DecodeError:
            raise BinanceError(0, f"HTTP {status} without a Binance error body", status) from None
        if error.code in EXECUTION_UNKNOWN:
            raise OutcomeUnknown(f"{method} {path}: Binance error {error.code}: {error.msg}")
        kind = UnknownOrder if error.code == UNKNOWN_ORDER else BinanceError
        raise kind(error.code, error.msg, status)


def _in_time(not_after: float | None, method: str, path: str) -> None:
    if not_after is not None and time.monotonic() > not_after:
        raise Stale(f"{method} {path}: not sent, {time.monotonic() - not_after:.3f}s past its deadline")


def _header_int(headers: Any, name: str) -> int | None:
    try:
        return int(headers[name])
    except (KeyError, ValueError):
        return None


def _retry_after(response: http1.Response, default: float) -> float:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return default


# --- which exchange, which keys ------------------------------------------------------------


def client_for(config: Config) -> BinanceClient:
    """The client for `config.naived.exchange`, on the host's shared rate budget. Real targets
    need keys (see `naived.core.credentials`)."""
    target = config.naived.exchange
    if target == "paper":
        url, key, secret = config.paper_url, config.paper.api_key, config.paper.api_secret
    else:
        url = config.exchange.testnet_url if target == "binance-testnet" else config.exchange.binance_url
        key, secret = credentials(config.exchange.key_file)
    return BinanceClient(url, key, secret, recv_window_ms=config.exchange.recv_window_ms,
                         timeout=config.exchange.timeout_seconds, budget=shared_budget(config))


T = TypeVar("T")


def patiently(call: Callable[[], T], seconds: float, what: str, final: Callable[[BinanceError], bool],
              on_failure: Callable[[str], None] | None = None) -> T:
    """For a worker child: `call` retried with backoff (20 ms doubling to 1 s) until it answers or
    `seconds` have passed (then SystemExit: the worker fails, its supervisor decides). Time held back
    by the host's own rate budget does not count; a refusal that `final` says will not change is
    raised at once. The log (and `on_failure`) hear of a failure when its kind changes, not at
    every retry, and of the answer that ends a run of failures."""
    started = time.monotonic()
    deadline = started + seconds
    delay = 0.02
    said: str | None = None
    while True:
        try:
            answer = call()
            if said is not None:
                log.info("%s: the exchange answered after %.1fs", what, time.monotonic() - started)
            return answer
        except OverBudget as exc:  # the host's own pacing, not a failing exchange: wait it out
            deadline += exc.retry_after
            time.sleep(exc.retry_after)
            continue
        except BinanceError as exc:
            if final(exc):
                raise
            failure: Exception = exc
        except Exception as exc:  # not up yet, rate limited, connection refused...
            failure = exc
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: the exchange did not answer for {seconds:g}s: {failure}")
        reason = f"{type(failure).__name__}: {failure}" if isinstance(failure, BinanceError) else type(failure).__name__
        if reason != said:
            said = reason
            log.warning("%s: the exchange does not answer (%s); retrying for up to %gs", what, failure, seconds)
            if on_failure is not None:
                on_failure(f"{failure}")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def budget_limits(config: Config) -> rate_budget.Limits:
    e = config.exchange
    return rate_budget.Limits(e.weight_budget_per_minute, e.orders_budget_per_10s, e.orders_budget_per_day)


def shared_budget(config: Config) -> rate_budget.SharedBudget:
    """The host's budget file in the runtime directory (naived's root made it; else made here)."""
    config.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return rate_budget.SharedBudget(config.budget_path, budget_limits(config))


