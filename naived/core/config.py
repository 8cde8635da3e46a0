"""Configuration: one TOML file decoded into msgspec Structs.

The Struct defaults *are* the embedded defaults (the demo runs with no file at
all); `config/naive.toml` documents the same values. Any unknown key, wrong type
or invalid value is refused with its path, in one line (`ConfigError`).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import socket
import tempfile
import types
import typing
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import msgspec

from naived.core.symbols import lookup as lookup_symbol
from naived.ops.log import set_level as set_log_level

SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")
HOST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
LATE_ACCEPT_WINDOW = 10.0  # seconds: Binance's backend may still execute an order with an unknown status


class ConfigError(Exception):
    """A configuration problem, worded for the user in one line."""


# Validators raise ValueError("<field>: <reason>"); `_readable` joins <field> to the key path.


def _finite(name: str, value: Decimal | float | int | None) -> None:
    # TOML has nan/inf floats and Decimal parses "NaN"/"Infinity"; comparing a NaN Decimal raises.
    if isinstance(value, Decimal) and not value.is_finite() or isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value}")


def _positive(name: str, value: Decimal | float | int | None) -> None:
    _finite(name, value)
    if value is not None and value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")


def _in_range(name: str, value: Decimal | None, low: Decimal, high: Decimal) -> None:
    _finite(name, value)
    if value is not None and not (low < value < high):
        raise ValueError(f"{name}: must be between {low} and {high} (exclusive), got {value}")


def _port(name: str, value: int, zero_means_off: bool = False) -> None:
    low = 0 if zero_means_off else 1
    if not low <= value <= 65535:
        raise ValueError(f"{name}: must be a TCP port {low}-65535{' (0 = off)' if zero_means_off else ''}, got {value}")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _loopback(name: str, host: str) -> None:
    if not is_loopback(host):
        raise ValueError(f"{name}: must be a loopback address (127.0.0.1, ::1, localhost), got {host!r} "
                         "(remote_clients = true lets `naived paper-exchange` serve other hosts)")


def _existing_files(name: str, paths: list[str]) -> None:
    for path in paths:
        if path and not Path(path).is_file():
            raise ValueError(f"{name}: no such file: {path}")


_ENDPOINT = re.compile(r"^(ipc://.+|tcp://(\*|[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5}))$")


def _endpoint(name: str, value: str, empty_ok: bool = False) -> None:
    """A ZeroMQ endpoint naive can bind or connect: ipc://PATH or tcp://HOST:PORT."""
    if empty_ok and not value:
        return
    match = _ENDPOINT.match(value)
    if not match or (match[3] and not 1 <= int(match[3]) <= 65535):
        raise ValueError(f"{name}: must be ipc://PATH or tcp://HOST:PORT (port 1-65535), got {value!r}")


def check_symbol(symbol: str) -> str:
    """Upper-case a symbol and check its shape; raises ValueError with a readable message."""
    upper = symbol.strip().upper()
    if not SYMBOL_RE.match(upper):
        raise ValueError(f"bad symbol {symbol!r}: expected letters and digits like XRPUSDT")
    return upper


def _symbols(name: str, symbols: list[str]) -> list[str]:
    try:
        return [check_symbol(s) for s in symbols]
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


# A Unix socket's path is at most 107 bytes (sockaddr_un.sun_path): validate.py checks naived's.
SOCKET_PATH_MAX = 107


def ipc_path(endpoint: str) -> str | None:
    """The socket file of an ipc:// endpoint; None for any other transport."""
    return endpoint.removeprefix("ipc://") if endpoint.startswith("ipc://") else None


class Paths(msgspec.Struct, forbid_unknown_fields=True):
    runtime_dir: str = ""  # "" = $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/naive, else a temp dir
    state_dir: str = ""  # "" = $STATE_DIRECTORY, else ~/.local/state/naive


class Log(msgspec.Struct, forbid_unknown_fields=True):
    """One daemon's log (`[naived.log]`, `[streamer.log]`; `--log-level`, `--log-file` override)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    # "" = stderr (the journal under systemd); else appended to this file, created mode 0600,
    # whose directory must exist. Rotation: moved or removed, the next line reopens it.
    file: str = ""


class Streamer(msgspec.Struct, forbid_unknown_fields=True):
    endpoint: str = "tcp://127.0.0.1:5680"  # XPUB bind / SUB connect
    source: Literal["binance", "replay", "simulate"] = "simulate"
    symbols: list[str] = []  # streamed always, subscribers or not
    grace_seconds: float = 30.0  # keep a symbol streaming this long after its last subscriber left
    binance_url: str = "wss://stream.binance.com:9443"
    replay_files: list[str] = []
    replay_speed: float = 0.0  # 0 = as fast as possible, 1 = real time, 10 = ten times faster
    simulate_seed: int = 42
    simulate_rate: float = 20.0  # trades per second per symbol
    simulate_volatility: float = 0.0002  # log-price standard deviation per simulated trade
    metrics_port: int = 0  # Prometheus text metrics on 127.0.0.1:<port>; 0 = off
    record_dir: str = ""  # record published trades here as <symbol>_<YYYYMMDD>.gz tapes; "" = off
    record_budget_mb: float = 10240.0  # disk budget of all recorded files; the oldest days are deleted first
    record_symbols: list[str] = []  # record only these; [] = every published symbol
    # Trade ids missed while the Binance stream was cut, fetched again for the recorder
    # (streamerd/gapfill.py); what cannot be fetched is a gap line in the tape.
    gap_fill: bool = True
    rest_url: str = "https://api.binance.com"  # Binance's REST API (GET /api/v3/historicalTrades)
    gap_fill_weight_per_minute: int = 1000  # streamerd's own request weight; Binance allows 6000 per IP
    gap_fill_max_trades: int = 10000  # a larger gap is not fetched (10 pages of 1000, weight 250)
    log: Log = msgspec.field(default_factory=Log)

    def __post_init__(self) -> None:
        self.symbols = _symbols("symbols", self.symbols)
        self.record_symbols = _symbols("record_symbols", self.record_symbols)
        _positive("record_budget_mb", self.record_budget_mb)
        _finite("grace_seconds", self.grace_seconds)
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds: must be >= 0, got {self.grace_seconds}")
        _positive("simulate_rate", self.simulate_rate)
        _finite("simulate_volatility", self.simulate_volatility)
        if not 0 < self.simulate_volatility <= 0.01:
            raise ValueError(f"simulate_volatility: must be > 0 and <= 0.01, got {self.simulate_volatility}")
        _finite("replay_speed", self.replay_speed)
        if self.replay_speed < 0:
            raise ValueError(f"replay_speed: must be >= 0, got {self.replay_speed}")
        _port("metrics_port", self.metrics_port, zero_means_off=True)
        _positive("gap_fill_weight_per_minute", self.gap_fill_weight_per_minute)
        _positive("gap_fill_max_trades", self.gap_fill_max_trades)
        if not self.rest_url.startswith(("http://", "https://")):
            raise ValueError(f"rest_url: not an http(s) URL: {self.rest_url!r}")
        _existing_files("replay_files", self.replay_files)
        _endpoint("endpoint", self.endpoint)


class Supervision(msgspec.Struct, forbid_unknown_fields=True):
    """OTP restart intensity: more than `max_restarts` in `period_seconds` → give up."""

    max_restarts: int = 5
    period_seconds: float = 10.0
    stop_timeout_seconds: float = 5.0  # SIGTERM, then SIGKILL after this long

    def __post_init__(self) -> None:
        _positive("max_restarts", self.max_restarts)
        _positive("period_seconds", self.period_seconds)
        _positive("stop_timeout_seconds", self.stop_timeout_seconds)


class Naived(msgspec.Struct, forbid_unknown_fields=True):
    control_endpoint: str = ""  # "" = ipc://<runtime dir>/naived.sock
    exchange: Literal["paper", "binance-testnet", "binance"] = "paper"
    autostart: list[str] = []
    metrics_port: int = 0  # 0 = no metrics endpoint
    # Every this many seconds one openOrders call for every symbol (weight 80) is compared with the
    # traders' open orders; a trader whose order is no longer open is asked to look it up, and an
    # order with this install's prefix that no trader owns is reported (an orphan).
    reconcile_seconds: float = 30.0
    # Offer the tree's memory to the kernel's samepage merging (KSM): forked processes hold many
    # identical copies of the same pages. Nothing is merged unless the host runs KSM.
    memory_merge: bool = True
    supervision: Supervision = msgspec.field(default_factory=Supervision)
    log: Log = msgspec.field(default_factory=Log)

    def __post_init__(self) -> None:
        self.autostart = _symbols("autostart", self.autostart)
        _port("metrics_port", self.metrics_port, zero_means_off=True)
        _endpoint("control_endpoint", self.control_endpoint, empty_ok=True)
        _positive("reconcile_seconds", self.reconcile_seconds)


class Faults(msgspec.Struct, forbid_unknown_fields=True):
    """Paper-exchange fault injection, each a probability per order request (tests, chaos)."""

    accept_then_timeout: float = 0.0
    accept_then_5xx: float = 0.0
    rate_limit_429: float = 0.0
    ban_418: float = 0.0
    stale_timestamp: float = 0.0
    drop_connection: float = 0.0
    retry_after_seconds: int = 1
    seed: int = 0  # of the fault RNG: the same seed draws the same faults in the same order
    # Late acceptance: answer "execution status unknown" (503 -1007, or nothing) with the
    # order not yet in the book; it enters the book `late_accept_seconds` later.
    late_accept_5xx: float = 0.0
    late_accept_timeout: float = 0.0
    late_accept_seconds: float = 2.0
    # Per public trade of a symbol with open orders: the exchange cancels / expires one of them.
    exchange_cancel: float = 0.0
    exchange_expire: float = 0.0
    # Per user data stream event and connection: the connection drops instead of delivering it.
    user_stream_drop: float = 0.0

    def __post_init__(self) -> None:
        _finite("late_accept_seconds", self.late_accept_seconds)
        if not (0 < self.late_accept_seconds <= LATE_ACCEPT_WINDOW):
            # Binance: an order with an unknown status may still execute within 10 s.
            raise ValueError(f"late_accept_seconds: must be > 0 and <= {LATE_ACCEPT_WINDOW} (Binance's window), "
                             f"got {self.late_accept_seconds}")
        for name in self.__struct_fields__:  # every float but the delay is a probability
            value = getattr(self, name)
            if not isinstance(value, float) or name == "late_accept_seconds":
                continue
            _finite(name, value)
            if not (0 <= value <= 1):
                raise ValueError(f"{name}: must be a probability between 0 and 1, got {value}")
        if self.retry_after_seconds < 0:
            raise ValueError(f"retry_after_seconds: must be >= 0, got {self.retry_after_seconds}")


class Paper(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    # The inspection and control endpoints are unsigned and the keys fixed: loopback only, unless
    # the standalone `naived paper-exchange` serves several hosts on a trusted network (fake money).
    remote_clients: bool = False
    port: int = 5681
    ws_port: int = 5682  # the user data stream: ws://<host>:<ws_port>/ws/<listenKey>
    # Binance: a listen key is valid 60 minutes after its creation or last keep-alive, and a
    # stream connection for 24 hours. Shorter only in tests.
    listen_key_seconds: float = 3600.0
    user_stream_connection_seconds: float = 86400.0
    api_key: str = "paper-key"
    api_secret: str = "paper-secret"
    fill_on_touch: bool = False  # fill at <= / >= instead of the book's strict < / >
    partial_fills: bool = False  # fill at most the traded quantity per trade
    balances: dict[str, Decimal] = msgspec.field(default_factory=lambda: {"USDT": Decimal("10000")})
    # Every quote asset of the symbol table that `balances` does not name starts with this much
    # (in that asset's units, as `trading.budgets` are). 0, as a fresh Binance account: only what
    # `balances` deposits, so fee-in-base dust and a missing BNB balance show as they would there.
    default_balance: Decimal = Decimal(0)
    # Binance's standard spot rates (0.1%), charged on each fill from the asset it gives.
    maker_commission: Decimal = Decimal("0.001")
    taker_commission: Decimal = Decimal("0.001")
    commission_in_bnb: bool = False  # pay from BNB at Binance's 25% discount when the BNB balance covers it
    # The listeners' limits (issue 20): no client may hold the exchange, nor make it grow without bound.
    # REST connections at once (each trader keeps one: all of Binance, 1,340 symbols x 2 traders,
    # fits); past it the longest idle goes, or the new one gets 503
    max_connections: int = 4096
    idle_seconds: float = 60.0  # a kept-alive REST connection with no request for this long is closed
    request_seconds: float = 5.0  # a request's head and body must arrive within this, from its first byte
    faults: Faults = msgspec.field(default_factory=Faults)
    # Recorded trades (streamerd tapes, data.binance.vision trade CSVs) read into the candles at
    # start: the klines from before the paper exchange started (naived/paper/candles.py)
    history_files: list[str] = []

    def __post_init__(self) -> None:
        # The inspection endpoints are unsigned: only this machine may reach them, unless asked.
        if not self.remote_clients:
            _loopback("host", self.host)
        _port("port", self.port)
        _port("ws_port", self.ws_port)
        if self.ws_port == self.port:
            raise ValueError(f"ws_port: must differ from port ({self.port}): the user data stream has its own listener")
        _positive("listen_key_seconds", self.listen_key_seconds)
        _positive("user_stream_connection_seconds", self.user_stream_connection_seconds)
        _positive("idle_seconds", self.idle_seconds)
        _positive("request_seconds", self.request_seconds)
        if self.max_connections < 1:
            raise ValueError(f"max_connections: must be >= 1, got {self.max_connections}")
        for name in ("maker_commission", "taker_commission"):
            value = getattr(self, name)
            _finite(name, value)
            if not (0 <= value < 1):
                raise ValueError(f"{name}: must be >= 0 and < 1 (a fraction: 0.001 is 0.1%), got {value}")
        for asset, amount in self.balances.items():
            _finite(f"balances.{asset}", amount)
            if amount < 0:
                raise ValueError(f"balances.{asset}: must be >= 0, got {amount}")
        _existing_files("history_files", self.history_files)
        _finite("default_balance", self.default_balance)
        if self.default_balance < 0:
            raise ValueError(f"default_balance: must be >= 0, got {self.default_balance}")

    def starting_balances(self, quote_assets: list[str]) -> dict[str, Decimal]:
        """The account a fresh paper exchange starts with: `balances`, and `default_balance` of
        every other quote asset the symbol table trades."""
        start = dict(self.balances)
        if self.default_balance > 0:
            for asset in quote_assets:
                start.setdefault(asset, self.default_balance)
        return start


class Exchange(msgspec.Struct, forbid_unknown_fields=True):
    """Real Binance targets. Keys never come from here: environment or a 0600 key file."""

    binance_url: str = "https://api.binance.com"
    testnet_url: str = "https://testnet.binance.vision"
    # The user data stream's websocket base (the account-stream connects to <url>/ws/<listenKey>).
    binance_ws_url: str = "wss://stream.binance.com:9443"
    testnet_ws_url: str = "wss://stream.testnet.binance.vision"
    key_file: str = ""  # lines API_KEY=..., API_SECRET=...; must be mode 0600
    recv_window_ms: int = 5000
    timeout_seconds: float = 5.0
    # Binance: "APIs have a timeout of 10 seconds when processing a request" (-1007, execution
    # status unknown): a request the exchange took in may still execute until recvWindow plus
    # this has passed since it was sent. An intent with no order behind it is placed again only
    # after that. Lower it only for an exchange known to decide sooner (the paper exchange).
    backend_timeout_seconds: float = 10.0
    # The host's own rate budget, shared by all its processes (naived/exchange/budget.py). Binance allows
    # 6000 request weight per minute per IP (exchangeInfo REQUEST_WEIGHT); keeping a fifth of it
    # spare leaves room for another program on the same IP and for our count lagging Binance's.
    weight_budget_per_minute: int = 4800
    # Binance's ORDERS limits (50 unfilled orders per 10 s, 160,000 per day per account); every
    # placement counts here, filled or not, so this errs on the safe side.
    orders_budget_per_10s: int = 45
    orders_budget_per_day: int = 150_000

    def __post_init__(self) -> None:
        binance_limits = (("weight_budget_per_minute", 6000), ("orders_budget_per_10s", 50), ("orders_budget_per_day", 160_000))
        for name, binance in binance_limits:
            value = getattr(self, name)
            if not 0 < value <= binance:
                raise ValueError(f"{name}: must be 1-{binance} (Binance's limit), got {value}")
        # Binance refuses a recvWindow above 60000 ms (-1131).
        if not 0 < self.recv_window_ms <= 60000:
            raise ValueError(f"recv_window_ms: must be 1-60000 (Binance's limit), got {self.recv_window_ms}")
        _positive("timeout_seconds", self.timeout_seconds)
        _finite("backend_timeout_seconds", self.backend_timeout_seconds)
        if self.backend_timeout_seconds < 0:
            raise ValueError(f"backend_timeout_seconds: must be >= 0, got {self.backend_timeout_seconds}")
        if self.key_file and not Path(self.key_file).is_file():
            raise ValueError(f"key_file: no such file: {self.key_file}")


class StoreSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Where the trading state lives. SQLite (the default): one file per symbol in the state
    directory, one host. PostgreSQL: one database shared by several naived hosts, each symbol held
    by one host at a time through a fenced lease (naived/store/postgres.py, naived/tree/lease_keeper.py)."""

    backend: Literal["sqlite", "postgresql"] = "sqlite"
    # libpq's key=value or postgresql:// form; "" = $NAIVE_STORE_DSN. Keep a password out of the
    # file: $NAIVE_STORE_DSN, a ~/.pgpass file or $PGPASSWORD (libpq reads both); it is never logged.
    dsn: str = ""
    host_id: str = ""  # this host's name in the cluster; "" = the hostname
    # A lease lives lease_seconds by the database's clock; renewed every renew_seconds; a host that
    # could not renew stops the symbol stop_margin_seconds before the lease can expire anywhere.
    lease_seconds: float = 15.0
    renew_seconds: float = 5.0
    stop_margin_seconds: float = 3.0

    def __post_init__(self) -> None:
        for name in ("lease_seconds", "renew_seconds", "stop_margin_seconds"):
            _positive(name, getattr(self, name))
        # Two renewals may fail in a row (a slow database) and the holder still stops in time.
        if 2 * self.renew_seconds + self.stop_margin_seconds > self.lease_seconds:
            raise ValueError(f"lease_seconds: must be at least 2 * renew_seconds + stop_margin_seconds "
                             f"({2 * self.renew_seconds + self.stop_margin_seconds:g}), got {self.lease_seconds:g}")
        if self.host_id and not HOST_ID_RE.match(self.host_id):
            raise ValueError(f"host_id: 1-63 letters, digits, '.', '_' or '-', got {self.host_id!r}")

    @property
    def shared(self) -> bool:
        return self.backend == "postgresql"

    def resolved_dsn(self) -> str:
        return self.dsn or os.environ.get("NAIVE_STORE_DSN", "")

    def resolved_host_id(self) -> str:
        return self.host_id or socket.gethostname()


class AccountStreamSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The account-stream process (the user data stream -> ZeroMQ) and how traders rely on it."""

    endpoint: str = ""  # its PUB socket; "" = ipc://<runtime dir>/account-stream.sock
    # It tells the root it is alive this often; silent for one more beyond that (and beyond any
    # call it said it was in), the root kills it and it is restarted. Traders are never woken by it.
    heartbeat_seconds: float = 2.0
    keepalive_seconds: float = 1800.0  # Binance: a listen key lives 60 min; keep it alive every 30
    rollover_seconds: float = 84600.0  # a new connection before Binance's 24 h limit ends this one (23.5 h)
    reconnect_max_seconds: float = 30.0  # backoff cap between connection attempts
    # A trader waiting for a fill while the stream is not known to be up asks by REST this often
    # (weight 4 each; also on the trades crossing its price, as without the stream).
    fallback_check_seconds: float = 10.0

    def __post_init__(self) -> None:
        for name in ("heartbeat_seconds", "keepalive_seconds", "rollover_seconds", "reconnect_max_seconds",
                     "fallback_check_seconds"):
            _positive(name, getattr(self, name))
        if self.keepalive_seconds >= 3600:
            raise ValueError(f"keepalive_seconds: must be below 3600 (a listen key's validity), got {self.keepalive_seconds}")
        if self.rollover_seconds >= 86400:
            raise ValueError(f"rollover_seconds: must be below 86400 (Binance ends a connection at 24 h), "
                             f"got {self.rollover_seconds}")


class TradingSettings(msgspec.Struct, forbid_unknown_fields=True):
    """`[trading.defaults]` as written (no budget: a budget names its asset, see `Trading`), and
    a symbol's settings as `Trading.for_symbol` resolves them (with its budget)."""

    chunks: int = 2
    budget: Decimal | None = None  # in the symbol's quote asset; None only in [trading.defaults]
    buy_down_interval: Decimal = Decimal("0.0001")
    # Positive after fees: 0.1% each way makes 0.000002 the break-even (see BREAK_EVEN_PROFIT);
    # the book's chapter-5 -0.0012 loses ~0.12% a cycle and is for demos on paper only.
    profit_interval: Decimal = Decimal("0.001")
    rebuy_interval: Decimal = Decimal("0.001")
    # Traders started with the symbol; 0 = `chunks` (chapter 5). 1 = chapter 9: one trader,
    # and another each time a rebuy fires, up to `chunks`.
    initial_traders: int = 0
    # Market frames priced farther than this fraction from the median of the last few trades are
    # dropped (naived/market/gate.py). 0.1: one trade rarely moves a Binance market 10 % (the book
    # sweep it takes is rare even on thin pairs), while a bad tick is usually off by far more;
    # a genuine move is followed after 3 trades. Within the band, a bad price costs at most 10 %.
    price_band: Decimal = Decimal("0.1")

    def __post_init__(self) -> None:
        _check_settings(self)

    @property
    def traders_at_start(self) -> int:
        return min(self.initial_traders or self.chunks, self.chunks)


class SymbolOverrides(msgspec.Struct, forbid_unknown_fields=True):
    """Checked by `Trading`, which knows the symbol to name in an error (msgspec does not)."""

    chunks: int | None = None
    budget: Decimal | None = None
    buy_down_interval: Decimal | None = None
    profit_interval: Decimal | None = None
    rebuy_interval: Decimal | None = None
    initial_traders: int | None = None
    price_band: Decimal | None = None


def _check_settings(s: TradingSettings | SymbolOverrides) -> None:
    _positive("chunks", s.chunks)
    _positive("budget", s.budget)
    _in_range("buy_down_interval", s.buy_down_interval, Decimal("-1"), Decimal("1"))
    _in_range("profit_interval", s.profit_interval, Decimal("-1"), Decimal("10"))
    _in_range("rebuy_interval", s.rebuy_interval, Decimal("0"), Decimal("1"))
    _in_range("price_band", s.price_band, Decimal("0"), Decimal("1"))
    if s.initial_traders is not None and s.initial_traders < 0:
        raise ValueError(f"initial_traders must be >= 0, got {s.initial_traders}")


# The smallest profit_interval that does not lose money at Binance's standard 0.1% commission,
# paid from the received asset each way: the sell price is buy × 1.001 × (1 + p) × 1.001 and
# what comes back per unit bought is 0.999 × sell × 0.999, so break-even is
# (1 + p) = 1 / (1.001 × 0.999)², p = 0.000002000003. Rounded up to the sixth decimal.
BREAK_EVEN_PROFIT = Decimal("0.000003")
REAL_EXCHANGES = ("binance", "binance-testnet")


class NoBudget(ValueError):
    """A symbol whose quote asset has no budget configured: one line saying what to set."""


class Trading(msgspec.Struct, forbid_unknown_fields=True):
    defaults: TradingSettings = msgspec.field(default_factory=TradingSettings)
    # A budget always names its asset: per quote asset here (each symbol quoted in it gets this
    # much, in that asset), or per symbol in `symbols` (in the symbol's quote asset). A symbol
    # whose quote asset is in neither is refused on every exchange: 100 BTC must never be a default.
    budgets: dict[str, Decimal] = msgspec.field(default_factory=lambda: {"USDT": Decimal("100")})
    symbols: dict[str, SymbolOverrides] = {}
    # Real exchanges refuse a profit_interval that loses money after fees unless this is true.
    allow_losing_settings: bool = False

    def __post_init__(self) -> None:
        if self.defaults.budget is not None:
            # Before budgets named their asset this was "100 of whatever the symbol is quoted in".
            raise ValueError(
                f'defaults.budget: a budget names its asset now: write [trading.budgets] USDT = "{self.defaults.budget}" '
                f"(one line per quote asset) or budget under [trading.symbols.<SYMBOL>] (in its quote asset)")
        budgets = {}
        for asset, amount in self.budgets.items():
            if not SYMBOL_RE.match(asset.upper()):
                raise ValueError(f"budgets: bad asset {asset!r}: expected letters and digits like USDT")
            _positive(f"budgets.{asset}", amount)
            budgets[asset.upper()] = amount
        self.budgets = budgets
        checked = {}
        for name, overrides in self.symbols.items():
            (symbol,) = _symbols("symbols", [name])
            try:
                _check_settings(overrides)
            except ValueError as exc:
                raise ValueError(f"symbols.{name}.{exc}") from None
            checked[symbol] = overrides
        self.symbols = checked

    def budget_for(self, symbol: str, quote: str) -> tuple[Decimal, str] | None:
        """The symbol's budget (in `quote`, its quote asset) and the key that set it, if any."""
        overrides = self.symbols.get(symbol)
        if overrides is not None and overrides.budget is not None:
            return overrides.budget, f"trading.symbols.{symbol}.budget"
        if quote in self.budgets:
            return self.budgets[quote], f"trading.budgets.{quote}"
        return None

    def for_symbol(self, symbol: str, quote: str | None = None) -> TradingSettings:
        """Defaults with the symbol's overrides applied and its budget, in `quote` (default: its
        quote asset in the symbol table). Raises NoBudget when none is configured."""
        if quote is None:
            known = lookup_symbol(symbol)
            if known is None:
                raise NoBudget(f"{symbol}: no budget: the symbol table does not list it, so its quote asset is unknown")
            quote = known.quote
        budget = self.budget_for(symbol, quote)
        if budget is None:
            raise NoBudget(f'{symbol}: no budget in {quote}, its quote asset: set [trading.budgets] {quote} = "<amount>" '
                           f'or [trading.symbols.{symbol}] budget = "<amount>" (in {quote})')
        return msgspec.structs.replace(self.merged(symbol), budget=budget[0])

    def merged(self, symbol: str) -> TradingSettings:
        """Defaults with the symbol's overrides applied, for what needs no budget (chunks, intervals):
        the budget is there only if the symbol sets its own; trade with `for_symbol`."""
        overrides = self.symbols.get(symbol)
        if overrides is None:
            return self.defaults
        changes = {f: getattr(overrides, f) for f in overrides.__struct_fields__ if getattr(overrides, f) is not None}
        return msgspec.structs.replace(self.defaults, **changes)


class Web(msgspec.Struct, forbid_unknown_fields=True):
    """The web observer (naived/web/): a read-only page of the live tree and its JSON API, served by
    a child of the root on a port the root binds before it says READY."""

    enabled: bool = True
    # Loopback by default: the page has no login. From another machine, reach it through an SSH tunnel.
    host: str = "127.0.0.1"
    port: int = 8470

    def __post_init__(self) -> None:
        _port("port", self.port)
        if not self.host:
            raise ValueError("host: must be an address to listen on, e.g. 127.0.0.1")


class Config(msgspec.Struct, forbid_unknown_fields=True):
    paths: Paths = msgspec.field(default_factory=Paths)
    streamer: Streamer = msgspec.field(default_factory=Streamer)
    naived: Naived = msgspec.field(default_factory=Naived)
    paper: Paper = msgspec.field(default_factory=Paper)
    exchange: Exchange = msgspec.field(default_factory=Exchange)
    trading: Trading = msgspec.field(default_factory=Trading)
    account_stream: AccountStreamSettings = msgspec.field(default_factory=AccountStreamSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    web: Web = msgspec.field(default_factory=Web)

    def __post_init__(self) -> None:
        if self.web.enabled:
            _distinct_web_port(self)
        if self.naived.exchange in REAL_EXCHANGES and not self.trading.allow_losing_settings:
            _refuse_losing(self.trading, self.naived.exchange)

    @property
    def runtime_dir(self) -> Path:
        return runtime_dir(self.paths)

    @property
    def state_dir(self) -> Path:
        return state_dir(self.paths)

    def make_dirs(self) -> None:
        """Create the runtime and state directories (0700); only the daemons do, never naivectl."""
        for path in (self.runtime_dir, self.state_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def reports_endpoint(self) -> str:
        """The root's PULL socket: leaders push their status, the account stream its heartbeat."""
        return f"ipc://{self.runtime_dir / 'naived-reports.sock'}"

    @property
    def workers_endpoint(self) -> str:
        """The root's REP socket: its workers hand their answers over (naived/tree/ipc.py report)."""
        return f"ipc://{self.runtime_dir / 'naived-workers.sock'}"

    @property
    def observer_endpoint(self) -> str:
        """The root's XPUB socket: the tree's status, pushed to the web observer as it changes."""
        return f"ipc://{self.runtime_dir / 'observer.sock'}"

    @property
    def control_endpoint(self) -> str:
        return self.naived.control_endpoint or f"ipc://{self.runtime_dir / 'naived.sock'}"

    def leader_endpoint(self, symbol: str) -> str:
        return f"ipc://{self.runtime_dir / f'leader-{symbol}.sock'}"

    def leader_pub_endpoint(self, symbol: str) -> str:
        """The leader's PUB socket: requests to its traders (look an order up)."""
        return f"ipc://{self.runtime_dir / f'leader-{symbol}-pub.sock'}"

    @property
    def budget_path(self) -> Path:
        """The host's shared rate budget (naived/exchange/budget.py): every process of the tree maps it."""
        return self.runtime_dir / "rate-budget"

    @property
    def paper_url(self) -> str:
        return f"http://{self.paper.host}:{self.paper.port}"

    @property
    def paper_ws_url(self) -> str:
        return f"ws://{self.paper.host}:{self.paper.ws_port}"

    @property
    def user_stream_url(self) -> str:
        """The user data stream's websocket base of the exchange traded on."""
        target = self.naived.exchange
        if target == "paper":
            return self.paper_ws_url
        return (self.exchange.testnet_ws_url if target == "binance-testnet" else self.exchange.binance_ws_url).rstrip("/")

    @property
    def account_stream_endpoint(self) -> str:
        return self.account_stream.endpoint or f"ipc://{self.runtime_dir / 'account-stream.sock'}"


def _distinct_web_port(config: Config) -> None:
    """The web observer's port is bound by the same root as the paper exchange's and the metrics'."""
    others = [("naived.metrics_port", config.naived.metrics_port)]
    if config.naived.exchange == "paper":
        others += [("paper.port", config.paper.port), ("paper.ws_port", config.paper.ws_port)]
    for key, port in others:
        if port == config.web.port:
            raise ValueError(f"web.port: must differ from {key} ({port}): each has its own listener")


def _refuse_losing(trading: Trading, exchange: str) -> None:
    """Real money: a profit interval below break-even loses on every cycle; say which key."""
    places = [("trading.defaults", trading.defaults.profit_interval)]
    places += [(f"trading.symbols.{sym}", o.profit_interval)
               for sym, o in trading.symbols.items() if o.profit_interval is not None]
    for where, value in places:
        if value < BREAK_EVEN_PROFIT:
            raise ValueError(
                f"{where}.profit_interval: {value} loses money on {exchange} after the 0.1% fee each way "
                f"(break-even {BREAK_EVEN_PROFIT}); set trading.allow_losing_settings = true to trade it anyway"
            )


SYSTEMD_RUNTIME_DIR = Path("/run/naive")  # RuntimeDirectory=naive in naived.service


def runtime_dir(paths: Paths) -> Path:
    if paths.runtime_dir:
        return Path(paths.runtime_dir)
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "naive"
    return Path(tempfile.gettempdir()) / f"naive-{os.getuid()}"


def state_dir(paths: Paths) -> Path:
    if paths.state_dir:
        return Path(paths.state_dir)
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]) / "naive"
    return Path.home() / ".local" / "state" / "naive"


DEFAULT_LOCATIONS = (Path("/etc/naive/naive.toml"),)


def find_config(explicit: str | None) -> Path | None:
    """--config, else $NAIVE_CONFIG, else /etc/naive/naive.toml, else none (embedded defaults)."""
    if explicit:
        return Path(explicit)
    if os.environ.get("NAIVE_CONFIG"):
        return Path(os.environ["NAIVE_CONFIG"])
    for candidate in DEFAULT_LOCATIONS:
        if candidate.exists():
            return candidate
    return None


_explicit: str | None = None  # what load_config was last given: SIGHUP reads the same source again
log = logging.getLogger(__name__)

# Sections a running tree applies on SIGHUP; a change anywhere else needs a restart. The log
# level: at once in every process that reloads (root, symbol supervisors, leaders) and so in
# what they fork later; the paper exchange, the account stream and running traders keep theirs.
RELOADABLE = ("trading", "naived.supervision", "naived.autostart", "naived.log.level")
_log_options: dict[str, str] = {}  # naived start's --log-level/--log-file: they win at every reload too


def with_log_options(config: Config, level: str | None, file: str | None) -> Config:
    """`config` with naived's log settings from the command line on top of the file's; a reload
    keeps them (a child forked later inherits them with this module)."""
    _log_options.update({k: v for k, v in (("level", level), ("file", file)) if v is not None})
    return _apply_log_options(config)


def _apply_log_options(config: Config) -> Config:
    if not _log_options:
        return config
    log_settings = msgspec.structs.replace(config.naived.log, **_log_options)
    return msgspec.structs.replace(config, naived=msgspec.structs.replace(config.naived, log=log_settings))


def reload_config(current: Config, check: Callable[[Config], str | None] = lambda new: None) -> Config | None:
    """Read the configuration again (SIGHUP): the new one, or None when it does not check out
    (parsing, then `check`, the caller's own problems with it: one error line) and nothing changes."""
    try:
        new = _apply_log_options(load_config(_explicit))
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        return None
    problem = check(new)
    if problem is not None:
        log.error("reload refused, keeping the running configuration: %s", problem)
        return None
    needing_restart = [key for key in _changed_keys(current, new) if not key.startswith(RELOADABLE)]
    if needing_restart:
        log.warning("reloaded; these changes take effect only after a restart: %s", ", ".join(needing_restart))
    if new.naived.log.level != current.naived.log.level:
        set_log_level(new.naived.log.level)
        log.info("log level %s (was %s)", new.naived.log.level, current.naived.log.level)
    return new


def _changed_keys(old: object, new: object, prefix: str = "") -> list[str]:
    if isinstance(old, msgspec.Struct) and isinstance(new, msgspec.Struct):
        return [k for f in old.__struct_fields__
                for k in _changed_keys(getattr(old, f), getattr(new, f), f"{prefix}{f}.")]
    return [prefix.rstrip(".")] if old != new else []


def load_config(explicit: str | None = None) -> Config:
    global _explicit
    _explicit = explicit
    path = find_config(explicit)
    if path is None:
        return Config()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(raw, str(path))


def parse_config(raw: bytes, origin: str = "<config>") -> Config:
    try:
        return msgspec.toml.decode(raw, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_readable(str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None


def _readable(message: str) -> str:
    # msgspec says "... - at `$.trading.defaults.chunks`"; users know keys, not JSON paths.
    text, sep, where = message.rpartition(" - at ")
    if not sep:
        return message
    key = where.strip("`").removeprefix("$").lstrip(".") or "<top level>"
    field = _FIELD_REASON.match(text)  # our validators' "<field>: <reason>"
    if field:
        return f"{key}.{field[1]}: {field[2]}"
    choices = _choices(key) if text.startswith("Invalid enum value") else None
    if choices:
        text += f" (choose one of: {', '.join(choices)})"
    return f"{key}: {text}"


def _choices(key: str) -> list[str] | None:
    """The values a `Literal` setting allows, found by walking its dotted key down `Config`."""
    tp: Any = Config
    for part in key.split("."):
        if typing.get_origin(tp) is dict:  # a table keyed by the user ([trading.symbols.XRPUSDT])
            tp = typing.get_args(tp)[1]
            continue
        if not (isinstance(tp, type) and issubclass(tp, msgspec.Struct)):
            return None
        tp = typing.get_type_hints(tp).get(part)
        if tp is None:
            return None
    members = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return [str(v) for m in members if typing.get_origin(m) is Literal for v in typing.get_args(m)] or None


_FIELD_REASON = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): (.+)$")
