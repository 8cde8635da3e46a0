"""The account as the backtest keeps it, from its fills: per symbol, cash and base held marked at
every trade (equity, its peak, the deepest fall from it); per quote asset, the summed curve."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

ZERO = Decimal(0)
SAMPLE_MS = 1000  # the plot keeps one point per symbol per second of tape (the figures use every trade)


@dataclass
class Marker:
    """A fill on the price chart."""

    time_ms: int
    price: Decimal
    side: str


@dataclass
class Ledger:
    """One symbol's share of the paper account, from its fills: quote cash (starting at the
    budget) and base held, marked at each trade's price."""

    symbol: str
    base: str
    quote: str
    budget: Decimal
    cash: Decimal = ZERO
    units: Decimal = ZERO
    fees_quote: Decimal = ZERO
    fees_other: dict[str, Decimal] = field(default_factory=dict)  # commission in a third asset (BNB)
    price: Decimal = ZERO  # the last trade's
    price_text: str = ""  # as printed: the next trade at the same text needs no new Decimal
    moved: bool = False  # a fill since the last mark
    equity: Decimal = ZERO
    peak: Decimal = ZERO
    max_drawdown: Decimal = ZERO
    max_drawdown_fraction: Decimal = ZERO
    trades: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    first_price: Decimal | None = None
    samples: list[tuple[int, Decimal, Decimal]] | None = None  # (ms, price, equity), for the plot
    markers: list[Marker] | None = None

    def __post_init__(self) -> None:
        self.cash = self.equity = self.peak = self.budget

    def fill(self, side: str, price: Decimal, qty: Decimal, commission: Decimal, asset: str, time_ms: int) -> None:
        self.moved = True
        amount = price * qty
        if side == "BUY":
            self.cash -= amount
            self.units += qty
        else:
            self.cash += amount
            self.units -= qty
        if asset == self.quote:
            self.cash -= commission
            self.fees_quote += commission
        elif asset == self.base:
            self.units -= commission
            self.fees_quote += commission * price
        elif commission:
            self.fees_other[asset] = self.fees_other.get(asset, ZERO) + commission
        if self.markers is not None:
            self.markers.append(Marker(time_ms, price, side))

    def mark(self, price: Decimal, text: str, time_ms: int) -> Decimal:
        """The equity at this trade's price (`text` as the trade printed it); returns the change
        since the last mark."""
        self.trades += 1
        self.last_ms = time_ms
        if self.samples is not None and (not self.samples or time_ms // SAMPLE_MS != self.samples[-1][0] // SAMPLE_MS):
            self.samples.append((time_ms, price, self.cash + self.units * price))
        if text == self.price_text and not self.moved:
            return ZERO  # same price, no fill since: the same equity
        if self.first_ms is None:
            self.first_ms, self.first_price = time_ms, price
        self.price, self.price_text, self.moved = price, text, False
        equity = self.cash + self.units * price if self.units else self.cash
        change = equity - self.equity
        self.equity = equity
        if equity > self.peak:
            self.peak = equity
        elif self.peak - equity > self.max_drawdown:
            self.max_drawdown = self.peak - equity
            self.max_drawdown_fraction = self.max_drawdown / self.peak
        return change


@dataclass
class Curve:
    """The equity of every symbol together (one quote asset), for the total drawdown."""

    equity: Decimal
    peak: Decimal = ZERO
    max_drawdown: Decimal = ZERO
    max_drawdown_fraction: Decimal = ZERO
    samples: list[tuple[int, Decimal]] | None = None

    def __post_init__(self) -> None:
        self.peak = self.equity

    def move(self, change: Decimal, time_ms: int) -> None:
        if change:
            self.equity += change
            if self.equity > self.peak:
                self.peak = self.equity
            elif self.peak - self.equity > self.max_drawdown:
                self.max_drawdown = self.peak - self.equity
                self.max_drawdown_fraction = self.max_drawdown / self.peak
        if self.samples is not None and (not self.samples or time_ms // SAMPLE_MS != self.samples[-1][0] // SAMPLE_MS):
            self.samples.append((time_ms, self.equity))
