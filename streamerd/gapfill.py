"""Fill the recorder's gaps: trade ids the Binance stream skipped, fetched from the REST API.

When `binance.py` sees a symbol's trade ids jump (its connection was cut and a new one started
later in the stream), `on_gap` opens a hole in that symbol's tape (`Recorder.hold`: its later
lines wait there) and hands the range to a worker thread, which asks Binance for it:

    GET /api/v3/historicalTrades?symbol=BTCUSDT&fromId=<first>&limit=<≤1000>

("Old trade lookup", request weight 25; Binance's spot REST docs list it without a security
type since 2023-12, so no API key is needed). Pages follow from the last id received until the
hole is full. The answer's trades go into the tape in id order, as the `<sym>@trade` frames the
stream would have carried (`E`, the event time, is the trade time `T`: the REST answer has no
other); they are *not* published: subscribers saw the stream move on, and trades from the past
arriving after later ones would look like a market going backwards to a trader. A recorded
tape therefore has every trade; a live subscriber has the same gap as before (counted).

What cannot be fetched becomes a gap line in the tape (naived/market/tape.py says the format):
gap filling off (`gap_fill = false`), a gap over `gap_fill_max_trades`, streamerd's own weight
budget (`gap_fill_weight_per_minute`, paced like a trader's reads by
`naived.exchange.budget.LocalBudget`) not allowing it before `FILL_SECONDS`, a 429/418 (and
every gap until its `Retry-After` is over: no request is sent meanwhile), Binance's minute weight for this IP near its 6000
(the `X-MBX-USED-WEIGHT-1M` header: the traders of this host count there too), any other
HTTP error (401/403: a key would be needed after all), a timeout, or more than `MAX_JOBS`
gaps waiting. Never does a gap wait on the live loop: the worker is a thread, the hand-over
a bounded queue, results come back through a pipe the main loop polls, and a hole whose
answer has not come by its deadline is given up (gap line; the late answer is dropped).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import msgspec

from naived.core.messages import TradeEvent
from naived.exchange import http1
from naived.exchange.binance import _retry_after
from naived.exchange.budget import BINANCE_WEIGHT_PER_MINUTE, Limits, LocalBudget, Refused
from streamerd.publisher import Stats
from streamerd.recorder import Hole, Recorder

log = logging.getLogger(__name__)

PATH = "/api/v3/historicalTrades"
WEIGHT = 25  # Binance's request weight of historicalTrades
PAGE = 1000  # its largest `limit`
REQUEST_TIMEOUT = 10.0  # seconds per request (connect, and each read)
FILL_SECONDS = 60.0  # a hole not filled by then is a gap line: the recorder holds its symbol back until then
MAX_JOBS = 64  # gaps waiting for the worker; past that, gap lines at once
IP_WEIGHT_CEILING = int(BINANCE_WEIGHT_PER_MINUTE * 0.9)  # leave Binance's last 10% to the traders' orders


class _RestTrade(msgspec.Struct):
    """One trade of historicalTrades' answer."""

    id: int
    price: str
    qty: str
    time: int
    isBuyerMaker: bool
    isBestMatch: bool = True


_decode_page = msgspec.json.Decoder(list[_RestTrade]).decode


@dataclass(eq=False)
class _Job:
    symbol: str
    first: int
    last: int
    deadline: float  # time.monotonic()
    cancelled: bool = False  # set by the main thread when it gave up waiting
    trades: list[TradeEvent] = field(default_factory=list)
    reason: str = ""  # why it stopped short, "" when complete


class GapFiller:
    """Main-thread side: `on_gap`, and the loop interface (`fd`, `on_readable`, deadlines)."""

    def __init__(self, recorder: Recorder, stats: Stats, rest_url: str | None, weight_per_minute: int = 1000,
                 max_trades: int = 10000, fill_seconds: float = FILL_SECONDS) -> None:
        self.recorder = recorder
        self.stats = stats
        self.rest_url = rest_url
        self.max_trades = max_trades
        self.fill_seconds = fill_seconds
        self.budget = LocalBudget(Limits(weight_per_minute=weight_per_minute))
        self._pending: dict[_Job, Hole] = {}
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=MAX_JOBS)
        self._done: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._ip_weight = (0, 0)  # (minute, X-MBX-USED-WEIGHT-1M): Binance's count for this IP
        self._thread: threading.Thread | None = None
        if rest_url:
            self._thread = threading.Thread(target=self._run, name="gapfill", daemon=True)
            self._thread.start()

    # --- main thread -------------------------------------------------------------

    def on_gap(self, symbol: str, first: int, last: int, time_ms: int) -> None:
        """Ids `first`..`last` of `symbol` were skipped; called before the trade after them is
        recorded. Returns at once."""
        size = last - first + 1
        if not self.rest_url:
            reason = "gap filling is off"
        elif size > self.max_trades:
            reason = f"more than gap_fill_max_trades ({self.max_trades})"
        else:
            reason = ""
        hole = self.recorder.hold(symbol, first, last, time_ms, fillable=not reason)
        if hole is None:
            return  # not recorded: nothing to fill
        job = _Job(symbol, first, last, time.monotonic() + self.fill_seconds)
        if not reason:
            try:
                self._jobs.put_nowait(job)
            except queue.Full:
                reason = f"{MAX_JOBS} gaps waiting already"
        if reason:
            job.reason = reason
            self._resolve(job, hole)
            return
        self._pending[job] = hole

    @property
    def fd(self) -> int:
        return self._wake_r

    def on_readable(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                job = self._done.get_nowait()
            except queue.Empty:
                return
            hole = self._pending.pop(job, None)
            if hole is not None:  # else given up at its deadline already
                self._resolve(job, hole)

    def next_deadline(self) -> float | None:
        return min((job.deadline for job in self._pending), default=None)

    def on_timer(self, now: float) -> None:
        for job in [j for j in self._pending if j.deadline <= now]:
            job.cancelled = True
            job.reason = f"no answer within {self.fill_seconds:g}s"
            self._resolve(job, self._pending.pop(job))

    def close(self) -> None:
        """Give up what is pending (gap lines, written by the recorder's close) and stop the worker."""
        self._stop.set()
        for job, hole in list(self._pending.items()):
            job.cancelled = True
            job.reason = "streamerd stopped"
            self._resolve(job, hole)
        self._pending.clear()
        if self._thread is not None:
            try:
                self._jobs.put_nowait(None)
            except queue.Full:
                pass  # it sees _stop between requests
            self._thread.join(timeout=REQUEST_TIMEOUT + 1)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _resolve(self, job: _Job, hole: Hole) -> None:
        trades = [] if job.cancelled else job.trades
        missing = self.recorder.resolve(hole, trades)
        unfilled = sum(last - first + 1 for first, last in missing)
        self.stats.filled += hole.last - hole.first + 1 - unfilled
        self.stats.unfilled += unfilled
        if missing:
            log.warning("%s: ids %d..%d: %d fetched, %d written as a gap in the tape (%s)", job.symbol,
                        job.first, job.last, hole.last - hole.first + 1 - unfilled, unfilled,
                        job.reason or "not all returned")
        else:
            log.info("%s: ids %d..%d fetched from the REST API for the tape", job.symbol, job.first, job.last)

    # --- worker thread -----------------------------------------------------------

    def _run(self) -> None:
        assert self.rest_url is not None
        conn = http1.Connection(self.rest_url, REQUEST_TIMEOUT)
        try:
            while True:
                job = self._jobs.get()
                if job is None or self._stop.is_set():
                    return
                try:
                    self._fetch(conn, job)
                except Exception as exc:  # a bug must leave a gap line, never a hole held forever
                    log.exception("gap fill of %s failed", job.symbol)
                    job.reason = f"{type(exc).__name__}: {exc}"
                self._done.put(job)
                try:
                    os.write(self._wake_w, b"!")
                except (BlockingIOError, OSError):
                    pass  # the pipe is full (the loop will read it) or closed (stopping)
        finally:
            conn.close()

    def _fetch(self, conn: http1.Connection, job: _Job) -> None:
        next_id = job.first
        while next_id <= job.last:
            if job.cancelled or self._stop.is_set():
                job.reason = "given up"
                return
            left = job.deadline - time.monotonic()
            wait, banned = self._may_send()
            if banned:  # the IP is limited: traders' orders come first, the tape gets a gap line
                job.reason = f"REST limited ({banned}) for {wait:.0f}s more"
                return
            if wait > 0:
                if wait >= left:
                    job.reason = f"request weight budget: next request in {wait:.1f}s"
                    return
                self._stop.wait(wait)
                continue
            limit = min(PAGE, job.last - next_id + 1)
            sent = time.time()
            try:
                response = conn.request("GET", f"{PATH}?symbol={job.symbol}&fromId={next_id}&limit={limit}")
            except http1.TransportError as exc:
                job.reason = f"REST: {exc}"
                return
            self._note_weight(sent, response)
            if response.status_code in (418, 429):
                retry = _retry_after(response, 60.0)  # Binance always sends one; else a minute
                self.budget.record(sent, None, None, None, limited=response.status_code, retry_after=retry)
                job.reason = f"REST: HTTP {response.status_code}, retry after {retry:g}s"
                return
            if response.status_code != 200:
                job.reason = f"REST: HTTP {response.status_code} {response.content[:200]!r}"
                return
            try:
                page = _decode_page(response.content)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                job.reason = f"REST: unexpected answer: {exc}"
                return
            got = [t for t in page if next_id <= t.id <= job.last]
            if not got:
                job.reason = f"REST: no trades from id {next_id}"
                return
            got.sort(key=lambda t: t.id)
            job.trades += [TradeEvent(e="trade", E=t.time, s=job.symbol, t=t.id, p=t.price, q=t.qty, T=t.time,
                                      m=t.isBuyerMaker, M=t.isBestMatch) for t in got]
            next_id = got[-1].id + 1

    def _may_send(self) -> tuple[float, int]:
        """(0, 0) when a request may go now (counted), else seconds to wait and the 429/418 behind
        them (0: our own pacing)."""
        minute, used = self._ip_weight
        if minute == int(time.time()) // 60 and used + WEIGHT > IP_WEIGHT_CEILING:
            return 60 - time.time() % 60 + 0.01, 0
        try:
            self.budget.acquire(WEIGHT, "read")
        except Refused as refused:
            return max(refused.retry_after, 0.01), refused.status
        return 0.0, 0

    def _note_weight(self, sent: float, response: http1.Response) -> None:
        try:
            used = int(response.headers["X-MBX-USED-WEIGHT-1M"])
        except (KeyError, ValueError):
            return
        minute = int(sent) // 60
        if minute >= self._ip_weight[0]:
            self._ip_weight = (minute, max(used, self._ip_weight[1] if minute == self._ip_weight[0] else 0))

