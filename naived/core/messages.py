"""Every message that crosses a process boundary, as msgspec Structs.

One module for both daemons: streamerd publishes `TradeEvent`s, naived's traders,
leaders, root and `naivectl` speak the rest. Prices and quantities are decimal
strings on the wire; code that computes with them converts to `decimal.Decimal`.

Wire format between processes: multipart `[topic, msgpack(struct)]` for trade
events, one msgpack frame for request/reply sockets.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

from naived.core.symbols import SymbolFilters

TRADE_TOPIC_PREFIX = b"TRADE_EVENTS:"


# --- market data -------------------------------------------------------------


class TradeEvent(msgspec.Struct, frozen=True):
    """Binance raw trade (`<symbol>@trade`). `b`/`a` were removed from the public stream in 2024."""

    e: str  # event type, "trade"
    E: int  # event time, ms
    s: str  # symbol, upper case
    t: int  # trade id
    p: str  # price, decimal string
    q: str  # quantity, decimal string
    T: int  # trade time, ms
    m: bool  # buyer is the market maker
    M: bool = True  # ignore (Binance's "best match")
    b: int | None = None
    a: int | None = None


class StreamEnvelope(msgspec.Struct):
    """Combined-stream wrapper: `{"stream": "xrpusdt@trade", "data": {...}}`."""

    stream: str
    data: msgspec.Raw


def trade_topic(symbol: str) -> bytes:
    return TRADE_TOPIC_PREFIX + symbol.upper().encode()


_trade_encoder = msgspec.msgpack.Encoder()
_trade_decoder = msgspec.msgpack.Decoder(TradeEvent)


def encode_trade(event: TradeEvent) -> list[bytes]:
    return [trade_topic(event.s), _trade_encoder.encode(event)]


def decode_trade(payload: bytes) -> TradeEvent:
    """For tools and tests. naived's consumers take frames through `naived.market.gate.MarketGate`,
    which checks what this does not (topic, symbol, prices, band)."""
    return _trade_decoder.decode(payload)


# --- the account's user data stream (account-stream -> traders, PUB/SUB) -----------

EXECUTION_TOPIC_PREFIX = b"EXECUTION_REPORT:"
STREAM_STATUS_TOPIC = b"ACCOUNT_STREAM"


class ExecutionReport(msgspec.Struct, frozen=True):
    """Binance's `executionReport` (user data stream), the fields the bot reads; msgspec skips
    the rest. Amounts stay decimal strings. A CANCELED report names the cancel request in `c`
    and the cancelled order in `C`."""

    e: str  # "executionReport"
    E: int  # event time, ms
    s: str  # symbol
    c: str  # client order id (of the cancel request, for CANCELED)
    S: Literal["BUY", "SELL"]
    q: str  # order quantity
    p: str  # order price
    x: str  # execution type: NEW, TRADE, CANCELED, EXPIRED, REJECTED, TRADE_PREVENTION...
    X: str  # order status
    i: int  # order id
    l: str  # noqa: E741 - Binance's name: last executed quantity
    z: str  # cumulative filled quantity
    L: str  # last executed price
    n: str  # commission of this fill
    N: str | None  # its asset
    T: int  # transaction time, ms
    t: int  # trade id, -1 without a fill
    Z: str  # cumulative quote quantity
    C: str = ""  # original client order id (CANCELED)

    @property
    def client_order_id(self) -> str:
        """The order's own client order id, whatever the execution type."""
        return self.C if self.x == "CANCELED" and self.C else self.c


class StreamStatus(msgspec.Struct, frozen=True):
    """The account-stream's status: `up` while its connection to the user data stream is open.
    A new `session` (a new connection, a restarted process) means events may have been missed
    before it: an order waiting for a push must be asked about once."""

    session: str
    up: bool


def execution_topic(client_order_id: str) -> bytes:
    return EXECUTION_TOPIC_PREFIX + client_order_id.encode()


def trader_execution_topic(id_prefix: str, trader_id: int) -> bytes:
    """A trader's subscription: its ids are `<prefix>-<trader>-<cycle><leg>`, so the trailing
    dash keeps trader 1 from matching trader 10's orders."""
    return execution_topic(f"{id_prefix}-{trader_id}-")


def check_topic(trader_id: int) -> bytes:
    """The leader asks one of its traders to look its open order up (`CHECK:<trader>.`)."""
    return f"CHECK:{trader_id}.".encode()


execution_report_json_decoder = msgspec.json.Decoder(ExecutionReport)
execution_report_decoder = msgspec.msgpack.Decoder(ExecutionReport)
stream_status_decoder = msgspec.msgpack.Decoder(StreamStatus)


# --- trader state ------------------------------------------------------------


class Settings(msgspec.Struct, frozen=True):
    """What a trader needs to trade one symbol; the leader builds it once per symbol."""

    symbol: str
    chunks: int
    budget: str
    buy_down_interval: str
    profit_interval: str
    rebuy_interval: str
    tick_size: str
    step_size: str
    min_qty: str
    min_notional: str
    # Which asset a commission is taken in decides what a buy delivers; "" in states stored
    # before these existed (the strategy then reads the shipped symbol table).
    base_asset: str = ""
    quote_asset: str = ""


Side = Literal["BUY", "SELL"]


class Fill(msgspec.Struct, frozen=True):
    """One trade of one of our orders (`fills[]` of a FULL answer, or `GET /api/v3/myTrades`)."""

    price: str
    qty: str
    commission: str
    commission_asset: str
    trade_id: int = 0


class Order(msgspec.Struct, frozen=True):
    """An order as the exchange last reported it."""

    client_order_id: str
    side: Side
    price: str
    quantity: str
    status: str  # Binance order status: NEW, PARTIALLY_FILLED, FILLED, CANCELED, ...
    order_id: int | None = None
    executed_qty: str = "0"
    quote_qty: str = "0"  # cummulativeQuoteQty: quote spent (BUY) or received (SELL), before fees
    update_time: int | None = None  # ms, the exchange's time of the order's last change
    # Commission per asset summed over the order's fills, and the quote value of the part paid
    # in the base or quote asset. Known only once the order is final: None = not learned yet
    # (a GET /api/v3/order answer never carries commissions; myTrades does).
    fees: dict[str, str] | None = None
    fees_quote: str | None = None
    # Trades carried by an answer (FULL, order final at once); the strategy turns them into
    # `fees` and drops them, so stored states stay small.
    fills: list[Fill] | None = None


class Intent(msgspec.Struct, frozen=True):
    """An order the trader is about to place (or placed with an unknown outcome).

    It is stored by the leader before the order is sent, so a restarted trader
    looks the client order id up instead of placing the order a second time.
    """

    client_order_id: str
    side: Side
    price: str
    quantity: str
    unknown: bool = False  # a placement was attempted and its outcome is not known
    # Wall clock just before the last send was attempted, acked before that send; None = never
    # sent, so a restarted trader may place it at once. Not used as a deadline: the send came
    # after it was stored, by an unknown delay (see trader.Trader.settle_window).
    sent_at: float | None = None


TraderStatus = Literal["new", "buying", "selling", "done"]


class CycleResult(msgspec.Struct, frozen=True):
    """What a finished cycle did, in decimal strings (base asset for quantities, quote for money).

    `pnl` is realised: proceeds of the sells minus their quote-asset fees minus the cost of the
    units sold (the buy's quote spent, plus any quote fee on it, per unit actually received).
    Dust is what was received and not sold (step truncation, a remainder below the exchange's
    minimum); its cost is `dust_cost`, not in `pnl`. Fees in a third asset (BNB) are listed in
    `fees` but have no quote value here.
    """

    bought: str
    cost: str
    sold: str
    proceeds: str
    fees: dict[str, str]
    fees_quote: str
    pnl: str
    dust: str
    dust_cost: str
    note: str = ""  # why the cycle ended short of a full sell, e.g. "buy CANCELED, nothing bought"


class TraderState(msgspec.Struct, frozen=True):
    symbol: str
    trader_id: int
    cycle: int
    settings: Settings
    status: TraderStatus = "new"
    buy_order: Order | None = None
    sell_order: Order | None = None
    intent: Intent | None = None
    rebuy_notified: bool = False
    id_prefix: str = "nv"  # the store's random client order id prefix ("nv" in older states)
    sells: list[Order] = []  # earlier sells of this cycle that ended unfilled (cancelled, expired)
    started_at: int | None = None  # ms, exchange time of the trade that started the cycle
    finished_at: int | None = None  # ms, exchange time of the order change that ended it
    result: CycleResult | None = None  # set when status becomes "done"


# --- trader -> leader (REQ/REP) ------------------------------------------------


class TraderHello(msgspec.Struct, tag=True):
    """First message of a (re)started trader: it is subscribed and ready."""

    trader_id: int
    pid: int


class StateUpdated(msgspec.Struct, tag=True):
    state: TraderState
    used_weight: int = 0  # the exchange's X-MBX-USED-WEIGHT-1M as this trader last saw it


class RebuyTriggered(msgspec.Struct, tag=True):
    trader_id: int


class TraderFailed(msgspec.Struct, tag=True):
    """A trader's last words before a non-zero exit, kept as the symbol's last error."""

    trader_id: int
    error: str


class MarketReport(msgspec.Struct, tag=True):
    """What a trader saw of the market feed: frames dropped so far, by reason (naived/market/gate.py;
    cumulative for the process `pid`, so a resent one counts once), the latest trade it let through
    and whether it follows the feed now (a trader waiting on a resting order unsubscribes). Sent at
    most once a second, only after a change, so the leader's status shows a silent feed."""

    trader_id: int
    pid: int
    dropped: dict[str, int]
    last_trade: TradeEvent | None = None
    following: bool = True


class LeaderStatusRequest(msgspec.Struct, tag=True):
    """Asked by the root for `naivectl status`."""


class ShutdownRequest(msgspec.Struct, tag=True):
    """`naivectl shutdown-trading`: start no new cycles; exit once the last trader finishes."""


class FiltersFetched(msgspec.Struct, tag=True):
    """From the leader's filters worker: the symbol's exchange filters, as exchangeInfo gave them
    (its assets too: which one a commission is taken in decides what a buy delivers)."""

    filters: SymbolFilters


class ExchangeWaiting(msgspec.Struct, tag=True):
    """From a leader's worker that cannot get its answer from the exchange: why, once per change
    of reason (not per retry), so `status` says what the symbol is waiting for."""

    reason: str


class OpenOrdersFetched(msgspec.Struct, tag=True):
    """The client order ids the exchange lists as open for the symbol: from the leader's own
    reconcile worker (after a (re)start), or from the root's, which asks once for every symbol
    (`asked_at`: the wall time it asked; only orders open before then can be missing)."""

    client_order_ids: list[str]
    asked_at: float | None = None


LeaderRequest = (
    TraderHello | StateUpdated | RebuyTriggered | TraderFailed | LeaderStatusRequest | ShutdownRequest
    | FiltersFetched | ExchangeWaiting | OpenOrdersFetched | MarketReport
)


class Ack(msgspec.Struct, tag=True):
    pass


class TraderInfo(msgspec.Struct):
    trader_id: int
    pid: int | None
    started_at: float | None
    restarts: int
    state: TraderState | None
    ready_at: float | None = None  # wall clock of the trader's hello: subscribed, state restored


class Profit(msgspec.Struct, frozen=True):
    """A symbol's position and profit as its leader last computed them (naived/core/pnl.py has the
    definitions), decimal strings, money in `quote`. Fees in a third asset (BNB) are listed in
    `fees` and `open_fees` by asset, never converted, so they are in neither profit nor return."""

    base: str
    quote: str
    budget: str  # the symbol's [trading] budget, what the return is on
    position: str  # base asset the open cycles hold, net of commissions taken in it
    cost: str  # what that cost in quote, quote commissions on the buy included
    price: str | None = None  # the last trade price the position is valued at; None before one is seen
    unrealised: str | None = None  # the open cycles' profit at `price` (None: a position and no price)
    realised: str = "0"  # the finished cycles' pnl
    fees: dict[str, str] = {}  # the finished cycles' commissions, by asset
    fees_quote: str = "0"  # their value in quote (those in the base or quote asset)
    cycles: int = 0  # the finished cycles counted in `realised`
    open_fees: dict[str, str] = {}  # commissions the open cycles paid so far, by asset (in `cost` or `position`)
    return_on_budget: str | None = None  # (realised + unrealised) / budget, a fraction; None without `unrealised`


class FilledOrder(msgspec.Struct, frozen=True):
    """An order of a finished cycle that filled, fully or in part: what the web observer's chart marks
    (naived/web/series.py). Amounts as the exchange gave them; its average price is quote_qty / executed_qty."""

    client_order_id: str
    side: Side
    executed_qty: str
    quote_qty: str
    update_time: int | None = None  # ms, the exchange's time of the order's last change


LAST_FILLS = 8  # filled orders of finished cycles a leader's status carries: four cycles of a buy and a sell


class LeaderStatus(msgspec.Struct, tag=True):
    symbol: str
    pid: int
    started_at: float
    traders: list[TraderInfo]
    cycles_finished: int = 0
    shutting_down: bool = False
    last_error: str | None = None
    counters: dict[str, int] = {}
    used_weight: int = 0
    last_trade: TradeEvent | None = None  # the symbol's latest trade its traders saw on the market feed
    following_market: bool = False  # a running trader follows the feed now (else last_trade ages by design)
    # Totals over the symbol's finished cycles, quote asset, decimal strings: fees_quote, pnl_quote
    books: dict[str, str] = {}
    # What keeps fresh cycles from starting (the exchange's filters, unreachable) and why, since when.
    waiting: str | None = None
    waiting_since: float | None = None
    # Market frames the symbol's traders dropped, by reason, since the leader started
    market_dropped: dict[str, int] = {}
    restarts: int = 0  # the leader's own, as its symbol supervisor counts them (supervisor.py defines a restart)
    start_id: str = ""  # the symbol's start (start-trading, autostart) this leader belongs to
    profit: Profit | None = None  # positions and profit, live; None from a leader before it was added
    # The filled orders of the symbol's last finished cycles, oldest first, at most LAST_FILLS. A cycle's
    # last fill often ends it within milliseconds, so its state may never be in a status the observer
    # sees; here it stays for the next few cycles (the observer's chart takes its buys and sells from both).
    last_fills: list[FilledOrder] = []


LeaderReply = Ack | LeaderStatus


# --- naivectl -> root (REQ/REP) ------------------------------------------------


class StartTrading(msgspec.Struct, tag=True):
    symbol: str


class StopTrading(msgspec.Struct, tag=True):
    symbol: str


class ShutdownTrading(msgspec.Struct, tag=True):
    symbol: str


class StatusRequest(msgspec.Struct, tag=True):
    symbol: str | None = None


class HistoryRequest(msgspec.Struct, tag=True):
    """Finished cycles of a symbol, oldest first."""

    symbol: str


class AccountRequest(msgspec.Struct, tag=True):
    """`naivectl account`: the account as the root last had it read (AccountStatus); no exchange call."""


class StopDaemon(msgspec.Struct, tag=True):
    """`naivectl stop`: what SIGTERM does (stop now; open orders stay and are adopted at the next
    start), or with `finish_cycles` what SIGUSR1 does (every symbol finishes its cycles first)."""

    finish_cycles: bool = False


ControlRequest = StartTrading | StopTrading | ShutdownTrading | StatusRequest | HistoryRequest | StopDaemon | AccountRequest


class Ok(msgspec.Struct, tag=True):
    message: str


class Error(msgspec.Struct, tag=True):
    """Every error reply carries a message `naivectl` prints as-is, exiting non-zero."""

    message: str


class ProcessInfo(msgspec.Struct):
    pid: int | None
    started_at: float | None
    restarts: int
    error: str | None = None  # why it is not running, when it gave up


class SymbolStatus(msgspec.Struct):
    symbol: str
    state: str  # running | failed | stopping
    supervisor: ProcessInfo
    leader: LeaderStatus | None = None
    error: str | None = None
    lease_token: int | None = None  # the fencing token it trades under (PostgreSQL store); None on SQLite


class ListedOrder(msgspec.Struct, frozen=True):
    """An open order as the exchange listed it (`GET /api/v3/openOrders`, every symbol's)."""

    symbol: str
    client_order_id: str
    side: str
    price: str
    quantity: str
    executed_qty: str


class OrphanOrder(ListedOrder, frozen=True):
    """An open order at the exchange with one of this install's id prefixes that no trader owns."""

    minted_for: str  # the symbol whose store minted its prefix
    since: float = 0.0  # wall clock when the root first found it unowned


# --- the account, as the root keeps it (naivectl account, the web observer) ------------------


class Balance(msgspec.Struct, frozen=True):
    """One asset of the account (decimal strings); only assets with a non-zero balance are kept."""

    asset: str
    free: str
    locked: str


class OpenOrder(ListedOrder, frozen=True):
    """An open order at the exchange, any symbol's, as the account shows it."""

    status: str
    time: int = 0  # ms, the exchange's time of its creation (0: not said)


class RateBudget(msgspec.Struct, frozen=True):
    """The host's rate budget in use (naived/exchange/budget.py), as the root read it from the file:
    the minute's request weight, the orders of this 10 s window and of today (UTC), each against
    what this host allows itself (a cluster host: its share of the account's order limits)."""

    weight: int
    weight_limit: int
    orders_10s: int
    orders_10s_limit: int
    orders_day: int
    orders_day_limit: int
    share_hosts: int = 0  # hosts sharing the account's order limits; 0: this host has them all
    ban_status: int = 0  # 429 or 418 while a Retry-After holds every request of the host
    banned_until: float | None = None  # wall clock, whole seconds


class AccountStatus(msgspec.Struct, tag=True):
    """The account as the root holds it: balances and open orders from its reconcile worker's last
    good read (`read_at`, the wall clock it asked at; None before the first), balances moved since
    by the user data stream's pushes merged in (`pushed_at`), and the last read's error when it
    failed (what is shown is then older: `read_at`). `budget`: read by the root from the budget file."""

    read_at: float | None = None
    balances: list[Balance] = []
    open_orders: list[OpenOrder] = []
    error: str | None = None
    error_at: float | None = None
    pushed_at: float | None = None  # the exchange's time (s) of the latest balance push merged in
    every_seconds: float = 30.0  # [naived] reconcile_seconds: how often it is read
    budget: RateBudget | None = None


class TreeStatus(msgspec.Struct, tag=True):
    pid: int
    started_at: float
    exchange: str
    market: str
    symbols: list[SymbolStatus]
    paper_exchange: ProcessInfo | None = None
    account_stream: ProcessInfo | None = None
    orphans: list[OrphanOrder] = []
    problems: list[str] = []  # the tree's own, e.g. an unreadable trading set (one line each)
    cluster: ClusterStatus | None = None  # the PostgreSQL store's hosts and leases; None on SQLite
    lease_keeper: ProcessInfo | None = None  # a cluster's (PostgreSQL store); None on SQLite
    web: ProcessInfo | None = None  # the web observer ([web]); None when it is off
    account: AccountStatus | None = None  # balances, open orders at the exchange, the rate budget


class History(msgspec.Struct, tag=True):
    symbol: str
    cycles: list[TraderState]


# --- children -> root: news it keeps (PUSH/PULL), its workers' answers (REQ/REP, ipc.report) ---


class WorkerReply(msgspec.Struct, tag=True):
    """A root worker's answer to one control request (e.g. history, read from a symbol's store)."""

    request_id: int
    reply: Ok | Error | History


class ExchangeFilters(msgspec.Struct, tag=True):
    """From the root's exchange-info worker: every TRADING symbol's filters, from one exchangeInfo
    call (weight 20 once, where a call per symbol started costs 20 each)."""

    symbols: list[SymbolFilters]


class StreamAlive(msgspec.Struct, tag=True):
    """From the account stream to the root's watchdog: it turns, and says more `within` seconds.
    `dropped`: the events this process refused at its boundary so far, by reason (metrics).
    `balances`: every asset the stream's `outboundAccountPosition` pushes moved in this process,
    as last pushed: the whole set in each message, since the socket keeps only the latest (CONFLATE)."""

    within: float
    dropped: dict[str, int] = {}
    balances: list[PushedBalance] = []


class PushedBalance(msgspec.Struct, frozen=True):
    """An asset's balance as the user data stream pushed it, at `at` (ms, the exchange's time of
    the account update): newer than a REST read, it is the one to show."""

    asset: str
    free: str
    locked: str
    at: int


class AccountRead(msgspec.Struct, tag=True):
    """From the root's reconcile worker: the account's open orders and non-zero balances, asked for
    at `asked_at` (wall clock), or why they could not be read (`error`, one line)."""

    asked_at: float
    balances: list[Balance] = []
    open_orders: list[OpenOrder] = []
    error: str | None = None


class OrphansFound(msgspec.Struct, tag=True):
    """From the root's reconcile worker: open orders with an install prefix that neither the
    running traders (as the root last knew them) nor a stopped symbol's store own."""

    orders: list[OrphanOrder]


class Holding(msgspec.Struct, frozen=True):
    """A symbol's lease in the cluster (PostgreSQL store) as status shows it; ages by the database's clock."""

    symbol: str
    holder: str  # host id
    token: int
    age_seconds: float  # since this holder acquired it (renewals keep the age)
    expires_in_seconds: float  # negative once expired: free for another host


class Host(msgspec.Struct, frozen=True):
    """A naived host of the cluster, as the hosts table has it."""

    host_id: str
    pid: int
    started_at: dt.datetime
    seen_seconds_ago: float  # by the database's clock


class HeldLease(msgspec.Struct, frozen=True):
    """A lease this host holds: the symbol may trade here, under `token`, until `deadline`."""

    symbol: str
    token: int
    deadline: float  # CLOCK_MONOTONIC (one clock for every process of the host): stop trading by then
    mode: str  # the shared trading set's: running | shutting-down
    # The trading set's start requests (naived/store/postgres.py, Starts): a new `run` under the same
    # token is a stop-trading and a start-trading since the last report (stop it, start it afresh);
    # a new `generation`, a start-trading of any host (a failed run starts afresh).
    run: int = 0
    generation: int = 0


class LeasesHeld(msgspec.Struct, tag=True):
    """From the lease keeper, every round: what this host holds, and the cluster as the database
    showed it. `error`: the round failed (the database); `held` is then what was held before, each
    lease still good until its deadline."""

    held: list[HeldLease]
    hosts: list[Host] = []
    leases: list[Holding] = []
    error: str | None = None
    # The shared trading set's symbols as the round read them (None: not read, the round failed): a
    # lease no longer held whose symbol is not there was given up for a stop-trading, not lost.
    trading: list[str] | None = None


class ClusterStatus(msgspec.Struct):
    """The cluster as this host's lease keeper last read it (naivectl status shows it)."""

    host_id: str  # this host
    hosts: list[Host]
    leases: list[Holding]
    read_seconds_ago: float | None  # since the keeper's last good round; None before the first
    error: str | None = None  # the keeper's last round failed (the database), in one line
    lease_seconds: float = 15.0  # [store] lease_seconds: a host seen within it is alive


RootReport = LeaderStatus | StreamAlive  # pushed by the leaders and the account stream
WorkerReport = WorkerReply | ExchangeFilters | OrphansFound | LeasesHeld | AccountRead  # the root's workers' answers


class Stopping(msgspec.Struct, tag=True):
    """The answer to StopDaemon: naived `pid` is stopping (naivectl waits for that process to end)."""

    pid: int
    host: str  # the host naived runs on: naivectl waits for the process only on the same host
    message: str


ControlReply = Ok | Error | TreeStatus | History | Stopping | AccountStatus


# --- codecs --------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


leader_request_decoder = msgspec.msgpack.Decoder(LeaderRequest)
leader_reply_decoder = msgspec.msgpack.Decoder(LeaderReply)
control_request_decoder = msgspec.msgpack.Decoder(ControlRequest)
control_reply_decoder = msgspec.msgpack.Decoder(ControlReply)
root_report_decoder = msgspec.msgpack.Decoder(RootReport)
worker_report_decoder = msgspec.msgpack.Decoder(WorkerReport)
