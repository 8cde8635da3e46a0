"""Fault injection (`paper.faults`): what a real exchange does to its clients now and then, drawn
from seeded RNGs so a seed replays the same faults.

Drawn once per new-order request (`draw`), in this order: 418/429 with `Retry-After`, -1021,
drop the connection before processing, accept then answer 503, accept then answer nothing until
the client has timed out, and late acceptance (answer 503 -1007 "execution status unknown", or
nothing, while the order is NOT in the book, and place it `late_accept_seconds` later). Drawn
after each public trade of a symbol with open orders (`after_trade`): the exchange cancels, or
expires, one of them. The user data stream draws its own (`stream`, `userstream.py`).
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

from naived.core.config import Faults
from naived.core.symbols import SymbolFilters
from naived.paper.book import NewOrder, PaperBook, Rejected
from naived.paper.params import generated_id
from naived.paper.shapes import now_ms

log = logging.getLogger(__name__)

# New faults go last: a seed keeps drawing the same older faults in the same order.
NEW_ORDER_FAULTS = ("ban_418", "rate_limit_429", "stale_timestamp", "drop_connection", "accept_then_5xx",
                    "accept_then_timeout", "late_accept_5xx", "late_accept_timeout")
REFUSED = ("ban_418", "rate_limit_429", "stale_timestamp", "drop_connection")  # before the request is looked at
LATE = ("late_accept_5xx", "late_accept_timeout")  # the order enters the book later
ANSWER_503 = ("accept_then_5xx", "late_accept_5xx")  # accepted, answered "execution status unknown"
ANSWER_NOTHING = ("accept_then_timeout", "late_accept_timeout")  # accepted, answered nothing
EXECUTION_UNKNOWN = {"code": -1007,
                     "msg": "Timeout waiting for response from backend server. Send status unknown; execution status unknown."}


class FaultInjector:
    """The faults in force and their RNGs: one per thread that draws (HTTP, trade feed, user stream)."""

    def __init__(self, faults: Faults, book: PaperBook, hang_seconds: float) -> None:
        """`hang_seconds`: how long an answer-nothing fault keeps the client waiting (past its timeout)."""
        self.book = book
        self.hang_seconds = hang_seconds
        self.set(faults)

    def set(self, faults: Faults) -> None:
        """Replace the faults in force and reseed every RNG (POST /paper/faults)."""
        self.settings = faults
        self._rng = random.Random(faults.seed)
        self._book_rng = random.Random(faults.seed + 1)  # drawn by the trade thread only
        self.stream = (faults, random.Random(faults.seed + 2))  # the user stream's thread only; swapped whole

    def draw(self) -> str | None:
        """The fault of one new-order request, or None."""
        f = self.settings
        r, total = self._rng.random(), 0.0
        for name in NEW_ORDER_FAULTS:
            total += getattr(f, name)
            if r < total:
                return name
        return None

    def refusal(self, fault: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The answer to a request refused by `fault` (one of REFUSED but drop_connection):
        status, body, extra headers."""
        retry = {"Retry-After": str(self.settings.retry_after_seconds)}
        if fault == "ban_418":
            until = now_ms() + 1000 * self.settings.retry_after_seconds
            msg = (f"Way too much request weight used; IP banned until {until}."
                   " Please use WebSocket Streams for live updates to avoid bans.")
            return 418, {"code": -1003, "msg": msg}, retry
        if fault == "rate_limit_429":
            msg = ("Too much request weight used; current limit is 6000 request weight per 1 MINUTE."
                   " Please use WebSocket Streams for live updates to avoid polling the API.")
            return 429, {"code": -1003, "msg": msg}, retry
        return 400, {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}, {}

    def place_later(self, f: SymbolFilters, new: NewOrder) -> None:
        """Late acceptance: a checked order enters the book `late_accept_seconds` from now (at most
        Binance's 10 s). A paper exchange killed in between never places it (one of the two
        outcomes Binance leaves open)."""
        timer = threading.Timer(self.settings.late_accept_seconds, self._accept_late, (f, new))
        timer.daemon = True
        timer.start()

    def _accept_late(self, f: SymbolFilters, new: NewOrder) -> None:
        try:
            order, _ = self.book.place(f, new)
            log.warning("fault: %s entered the book late (orderId %d)", new.client_order_id, order.order_id)
        except Rejected as exc:
            log.warning("fault: %s, accepted late, was refused: %s", new.client_order_id, exc.msg)
        except Exception:
            log.exception("fault: %s, accepted late, could not be placed", new.client_order_id)

    def after_trade(self, f: SymbolFilters) -> None:
        """After each public trade: the exchange itself may cancel or expire one open order of
        the symbol (Binance does, e.g. on a symbol's halt or a self-trade prevention)."""
        faults, rng = self.settings, self._book_rng
        if not (faults.exchange_cancel or faults.exchange_expire):
            return
        open_orders = self.book.open_orders(f.symbol)
        if not open_orders:
            return
        r = rng.random()
        status = ("CANCELED" if r < faults.exchange_cancel
                  else "EXPIRED" if r < faults.exchange_cancel + faults.exchange_expire else None)
        if status is not None:
            victim = rng.choice(open_orders)
            # A cancel the account did not ask for still names a cancel request in `c`, as another
            # client's (or Binance's web page's) cancel would; an expiry names none.
            cancel_id = generated_id() if status == "CANCELED" else ""
            if self.book.close_open(f, victim.order_id, status, cancel_id) is not None:
                log.warning("fault: the exchange %s %s (orderId %d)", status.lower(), victim.client_order_id, victim.order_id)
