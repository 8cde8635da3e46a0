"""The account as the root keeps it: balances, open orders at the exchange, the host's rate budget.

The root never calls the exchange. Its reconcile worker (workers.py `reconcile_all`, every
`reconcile_seconds`) reads the open orders and the balances and reports them (`AccountRead`), or
why it could not; a worker that ends without a word is a failed read too. Between two reads the
account stream's pushed balances (`outboundAccountPosition`, carried by its `StreamAlive`) that
are newer than the read replace the read's. The rate budget is read from the host's budget file
when the status is asked for, without blocking (budget.py `snapshot`, as the metrics do).
`naivectl account`, `naivectl status --json` and the web observer show `status()`.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal, InvalidOperation

import msgspec

from naived.core.config import Config
from naived.core.messages import AccountRead, AccountStatus, Balance, PushedBalance, RateBudget
from naived.exchange import budget as rate_budget
from naived.exchange.binance import budget_limits

log = logging.getLogger(__name__)


class Account:
    def __init__(self) -> None:
        self.read: AccountRead | None = None  # the last good read
        self.error: str | None = None  # the last read's failure, until a read succeeds
        self.error_at: float | None = None
        self.reported = True  # the running worker's read has come (or no worker runs)
        self.pushed: dict[str, PushedBalance] = {}  # the account stream's latest balance of each asset it saw move

    def worker_started(self) -> None:
        self.reported = False

    def on_read(self, read: AccountRead) -> None:
        self.reported = True
        if read.error is not None:
            if self.error is None:  # one line when reading starts failing, one when it works again
                log.warning("account: %s; shown as read %s", read.error,
                            "never" if self.read is None else f"{time.time() - self.read.asked_at:.0f}s ago")
            self.error, self.error_at = read.error, read.asked_at
            return
        if self.error is not None:
            log.info("account: read again (%d balances, %d open orders)", len(read.balances), len(read.open_orders))
        orders = sorted(read.open_orders, key=lambda o: (o.symbol, o.time, o.client_order_id))  # once, not per status
        self.read, self.error, self.error_at = msgspec.structs.replace(read, open_orders=orders), None, None

    def worker_ended(self, reason: str) -> None:
        """The reconcile worker exited: without its read (killed, crashed, hung past the root's
        patience), that is a failed read as well."""
        if not self.reported:
            self.on_read(AccountRead(time.time(), error=f"the reconcile worker ended without reading it ({reason})"))

    def on_pushed(self, balances: list[PushedBalance]) -> None:
        """The account stream's pushed balances (StreamAlive: its whole set, as of its latest push).
        Kept per asset, the newest of each: a restarted stream starts with an empty set."""
        for b in balances:
            known = self.pushed.get(b.asset)
            if known is None or b.at >= known.at:
                self.pushed[b.asset] = b

    def balances(self, read: AccountRead) -> tuple[list[Balance], float | None]:
        """The read's balances, each replaced by a push of the exchange's made after the read asked
        (zero ones left out), and the time of the latest push used."""
        merged = {b.asset: b for b in read.balances}
        newer = [p for p in self.pushed.values() if p.at / 1000 > read.asked_at]
        for p in newer:
            merged[p.asset] = Balance(p.asset, p.free, p.locked)
        shown = [b for _, b in sorted(merged.items()) if not (_zero(b.free) and _zero(b.locked))]
        return shown, max((p.at / 1000 for p in newer), default=None)

    def status(self, config: Config) -> AccountStatus:
        read = self.read
        balances, pushed = self.balances(read) if read is not None else ([], None)
        return AccountStatus(
            read_at=read.asked_at if read is not None else None,
            balances=balances,
            open_orders=read.open_orders if read is not None else [],
            error=self.error,
            error_at=self.error_at,
            pushed_at=pushed,
            every_seconds=config.naived.reconcile_seconds,
            budget=budget_in_use(config),
        )


def _zero(amount: str) -> bool:
    try:
        return Decimal(amount) == 0
    except InvalidOperation:
        return False


def budget_in_use(config: Config) -> RateBudget | None:
    """The host's rate budget now, from its file without waiting on a lock; None without a usable file.
    Orders: this host's own count against its allowance (a cluster host's share), or, on a host that
    has the account's limits alone, the larger of its count and Binance's headers (the account's)."""
    state = rate_budget.snapshot(config.budget_path)
    if state is None:
        return None
    limits = budget_limits(config)
    per_10s, per_day = state.order_limits(limits)
    shared = state.share_hosts
    remaining = state.ban_remaining(time.monotonic_ns())
    return RateBudget(
        weight=state.weight,
        weight_limit=limits.weight_per_minute,
        orders_10s=state.orders_10s if shared else state.orders,
        orders_10s_limit=per_10s,
        orders_day=state.orders_day if shared else max(state.orders_day, state.orders_day_header),
        orders_day_limit=per_day,
        share_hosts=shared,
        ban_status=state.ban_status if remaining > 0 else 0,
        banned_until=float(round(time.time() + remaining)) if remaining > 0 else None,
    )
