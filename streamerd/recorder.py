"""Record what streamerd publishes: one gzip tape per symbol and UTC day.

The lines are those of the recorded tapes (the sample in `samples/`, for one), which
`replay.py` reads back: `<receive_time_ns> {"stream":"<sym>@trade","data":{...}}`. The JSON is
the frame exactly as Binance sent it when the source has it (binance, replays of tapes);
otherwise (simulate, CSV replays) the TradeEvent re-encoded in Binance's field order, without
`b`/`a` unless present. The time is the local clock (ns) when streamerd published the trade,
made strictly increasing across all symbols so that a replay merges the files back in publish
order; files rotate at UTC midnight of that same time (as the recorded tapes do), so a file
never receives a line from another day.

The publish path formats the line (one `%` on bytes) and appends it to its symbol's list; the
lists are handed over to a writer thread once per loop turn (a turn publishes at most a
source's batch, 2000 trades). The writer joins and deflates each list in one call, and zlib
releases the GIL while it deflates: the writer runs almost no Python per line, because a
thread that holds the GIL line by line makes the publisher wait for it at every socket call
(measured: +5 µs per trade when the writer formatted the lines). A writer that falls
`MAX_PENDING` events behind makes the publish path drop (and count) whole batches, never wait.
Every `FLUSH_SECONDS` each file is flushed with a gzip sync flush: a streamerd killed with -9
leaves a gzip that reads up to its last flush (without the trailer, which `replay.py` tolerates).

Gaps (streamerd/gapfill.py). When the source misses trade ids of a symbol, `hold()` opens a
hole in that symbol's tape: its later lines are kept back (published live all the same) until
`resolve()` fills the hole with the trades fetched from Binance's REST API and, for ids that could
not be fetched, gap lines (`<ns> {"stream":"<sym>@gap","data":{...}}`, naived/market/tape.py).
So a tape holds its trade ids in order, each once, with its times strictly increasing: the hole
reserves one ns per missing id right after the last line stamped before it, and the lines that
fill it take those stamps (a fetched trade's line carries the ns of its place in the tape, not
of its arrival). A symbol kept back for more than `MAX_HELD` lines gives up its holes (gap lines).
A hole opened before UTC midnight and filled after it lands in the new day's file (with the
lines kept back behind it), its lines' times falling just before that file's day.

Any write error (disk full: ENOSPC, or EFBIG under a file-size limit) stops the recorder with
one error line; publishing goes on. Files beyond `budget_bytes` are deleted, oldest day first.
"""

from __future__ import annotations

import gzip
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from naived.core.messages import TradeEvent
from naived.market.tape import GapData

log = logging.getLogger(__name__)

# Deflate of trade lines on one core here (bench/record.py): level 1 0.6 µs/line at 9.7x,
# level 6 2.0 µs at 12.6x, level 9 6.3 µs at 13.8x. Off the publish path, but on a 2-core
# machine the other core is the traders': CPU is dearer than 12% of a budgeted disk.
COMPRESS_LEVEL = 1
FLUSH_SECONDS = 1.0  # at most this much recorded data is lost when streamerd is killed
MAX_PENDING = 200_000  # events handed over but not yet written: ~3 s at streamerd's top rate
MAX_HELD = 200_000  # lines of one symbol kept back behind an open hole (the gap filler's deadline comes first)
DAY_NS = 86_400 * 10**9
TAPE_NAME = re.compile(r"^[a-z0-9]+_(\d{8})(?:\.(\d+))?\.gz$")  # <symbol>_<YYYYMMDD>[.<part>].gz

Batch = tuple[int, int, dict[str, list[bytes]]]  # (first ns, last ns, symbol -> its lines)


@dataclass
class RecordStats:
    recorded: int = 0  # events in blocks flushed to disk
    bytes: int = 0  # compressed bytes flushed to disk
    dropped: int = 0  # events dropped because the writer was MAX_PENDING behind
    errors: int = 0  # write errors (each stops the recorder)
    deleted: int = 0  # files deleted to stay within the budget

    def line(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.__dict__.items())


class RecorderFailed(Exception):
    """Recording cannot go on; the message is the one log line."""


def encode_frame(event: TradeEvent) -> bytes:
    """A trade as Binance's combined stream prints it (for sources without the raw frame)."""
    fields = msgspec.structs.asdict(event)
    for optional in ("b", "a"):  # removed from the public stream in 2024: only when present
        if fields[optional] is None:
            del fields[optional]
    return b'{"stream":"%s@trade","data":%s}' % (event.s.lower().encode(), msgspec.json.encode(fields))


def encode_gap(symbol: str, first: int, last: int, time_ms: int) -> bytes:
    """A gap line's frame: ids `first`..`last` of `symbol` are missing from the tape."""
    data = msgspec.json.encode(GapData("gap", time_ms, symbol, first, last))
    return b'{"stream":"%s@gap","data":%s}' % (symbol.lower().encode(), data)


@dataclass(eq=False)
class Hole:
    """Trade ids missing from one symbol's tape, until `Recorder.resolve` fills them."""

    symbol: str
    first: int
    last: int
    time_ms: int  # the first trade received after the hole
    base_ns: int  # stamps base_ns .. base_ns + reserved - 1 are kept for its lines
    reserved: int  # its number of ids, or 1 when it cannot be filled (one gap line)
    lines: list[bytes] | None = None  # set when resolved


class Recorder:
    """The publish path's side: `record()` per trade, `hand_over()` per loop turn (main thread)."""

    def __init__(
        self, directory: Path, budget_bytes: int, symbols: frozenset[str] = frozenset(),
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.symbols = symbols
        self.stats = RecordStats()
        self._clock = clock
        self._lines: dict[str, list[bytes]] = {}
        self._count = 0  # events in self._lines
        self._first_ns = 0
        self._last_ns = 0
        self._handed = 0
        self._dropping = False
        self._held: dict[str, list[bytes | Hole]] = {}  # symbol -> its lines and holes since its first open hole
        self._queue: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._writer = _Writer(directory, budget_bytes, self.stats, self._queue)
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return not self._writer.failed

    def start(self) -> None:
        # A file-size limit (RLIMIT_FSIZE) is a write error (EFBIG) here, not a fatal SIGXFSZ:
        # CPython ignores SIGXFSZ from start-up (a mutation test showed it; nothing to set).
        self._thread = threading.Thread(target=self._writer.run, name="recorder", daemon=True)
        self._thread.start()

    def record(self, event: TradeEvent, raw: bytes | None = None) -> None:
        """On the publish path: a time, a line, an append."""
        if self.symbols and event.s not in self.symbols:
            return
        stamp = self._clock()
        if stamp <= self._last_ns:  # the same ns, or the wall clock stepped back
            stamp = self._last_ns + 1
        self._last_ns = stamp
        if self._held and event.s in self._held:  # behind a hole: kept back in order
            held = self._held[event.s]
            held.append(b"%d %b\n" % (stamp, raw or encode_frame(event)))
            if len(held) > MAX_HELD:
                self._give_up(event.s)
            return
        lines = self._lines.get(event.s)
        if lines is None:
            lines = self._lines[event.s] = []
            if not self._count:
                self._first_ns = stamp
        lines.append(b"%d %b\n" % (stamp, raw or encode_frame(event)))
        self._count += 1

    def hold(self, symbol: str, first: int, last: int, time_ms: int, fillable: bool = True) -> Hole | None:
        """Open a hole for ids `first`..`last` of `symbol` (main thread, before the trade after
        them is recorded); None when this symbol is not recorded. `fillable`: trades may come to
        fill it (else it will be one gap line)."""
        if (self.symbols and symbol not in self.symbols) or self._writer.failed:
            return None
        hole = Hole(symbol, first, last, time_ms, self._last_ns + 1, last - first + 1 if fillable else 1)
        self._last_ns += hole.reserved  # the stamps of the lines that will fill it
        self._held.setdefault(symbol, []).append(hole)
        return hole

    def resolve(self, hole: Hole, trades: list[TradeEvent]) -> list[tuple[int, int]]:
        """Fill `hole` with the fetched `trades` (ids in it, ascending) and gap lines for the ids
        still missing; release what it kept back. Returns the missing ranges (first, last)."""
        if hole.lines is not None:
            return []  # resolved already (given up when too much was kept back)
        lines: list[bytes] = []
        missing: list[tuple[int, int]] = []
        expected = hole.first
        for event in trades if hole.reserved > 1 or hole.first == hole.last else ():
            if not expected <= event.t <= hole.last:
                continue  # not in the hole, or out of order: what is not written is a gap line
            if event.t > expected:
                missing.append((expected, event.t - 1))
                lines.append(encode_gap(hole.symbol, expected, event.t - 1, hole.time_ms))
            lines.append(encode_frame(event))
            expected = event.t + 1
        if expected <= hole.last:
            missing.append((expected, hole.last))
            lines.append(encode_gap(hole.symbol, expected, hole.last, hole.time_ms))
        hole.lines = [b"%d %b\n" % (hole.base_ns + i, line) for i, line in enumerate(lines)]
        self._release(hole.symbol)
        return missing

    def _give_up(self, symbol: str) -> None:
        for entry in self._held.get(symbol, []):
            if isinstance(entry, Hole) and entry.lines is None:
                log.warning("recorder: %s: %d lines kept back behind a hole, giving it up (gap line)",
                            symbol, MAX_HELD)
                self.resolve(entry, [])

    def _release(self, symbol: str) -> None:
        """Move the symbol's lines up to its first open hole into the batch."""
        held = self._held.get(symbol)
        if held is None:
            return
        out: list[bytes] = []
        for i, entry in enumerate(held):
            if isinstance(entry, Hole):
                if entry.lines is None:
                    del held[:i]
                    break
                out += entry.lines
            else:
                out.append(entry)
        else:
            del self._held[symbol]
        if not out:
            return
        # Kept back, these lines are older than the batch's: its first time bounds them all
        # (the writer's day rotation splits a batch by it).
        stamp = int(out[0][: out[0].index(b" ")])
        self._first_ns = stamp if not self._count else min(self._first_ns, stamp)
        self._lines.setdefault(symbol, []).extend(out)
        self._count += len(out)

    def hand_over(self) -> None:
        count = self._count
        if not count:
            return
        batch = (self._first_ns, self._last_ns, self._lines)
        self._lines, self._count = {}, 0
        if self._writer.failed:
            return  # stopped, said once by the writer
        behind = self._handed - self._writer.taken
        if behind >= MAX_PENDING:
            self.stats.dropped += count
            if not self._dropping:
                self._dropping = True
                log.warning("recorder: writer %d events behind, dropping trades (never the publish path)", behind)
            return
        if self._dropping:
            self._dropping = False
            log.warning("recorder: writer caught up, recording again (%d trades dropped so far)", self.stats.dropped)
        self._handed += count
        self._queue.put(batch)

    def close(self) -> None:
        """Write what is pending, close every file with its gzip trailer, stop the thread."""
        self.hand_over()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        log.info("recorder stopped: %s", self.stats.line())


@dataclass
class _Tape:
    path: Path
    raw: BinaryIO
    gz: gzip.GzipFile
    unflushed: int = 0  # events written since the last flush


class _Writer:
    """The writer thread: owns every file; the main thread reads only `failed` and `taken`."""

    def __init__(self, directory: Path, budget_bytes: int, stats: RecordStats,
                 batches: queue.SimpleQueue[Batch | None]) -> None:
        self.directory = directory
        self.budget = budget_bytes
        self.stats = stats
        self.batches = batches
        self.failed = False
        self.taken = 0  # events taken off the queue (written or lost)
        self.tapes: dict[str, _Tape] = {}  # symbol -> today's open file
        self.sizes: dict[Path, int] = {}  # every recorded file in the directory -> bytes on disk
        self.day = ""
        self.day_end = 0  # ns: the first instant of the next UTC day

    def run(self) -> None:
        try:
            self._run()
        except RecorderFailed as exc:
            self._fail(str(exc))
        except OSError as exc:
            self._fail(f"{self.directory}: {exc}")
        except Exception as exc:  # a bug must stop recording, never the publisher
            self._fail(f"{type(exc).__name__}: {exc}")

    def _run(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.iterdir():
            if TAPE_NAME.match(path.name) and path.is_file():
                self.sizes[path] = path.stat().st_size
        self._keep_budget()
        log.info("recorder: recording to %s (budget %g MB, %.1f MB there already)",
                 self.directory, self.budget / 1e6, sum(self.sizes.values()) / 1e6)
        next_flush = time.monotonic() + FLUSH_SECONDS
        while True:
            timeout = max(0.0, next_flush - time.monotonic()) if self.tapes else None
            try:
                batch = self.batches.get(timeout=timeout)
            except queue.Empty:
                batch = (0, 0, {})  # time to flush
            if batch is None:
                break
            if batch[2]:
                self.taken += self._write(*batch)
            if self.tapes and time.monotonic() >= next_flush:
                self._flush()
                next_flush = time.monotonic() + FLUSH_SECONDS
        self._close_all()

    def _write(self, first_ns: int, last_ns: int, lines: dict[str, list[bytes]]) -> int:
        """Write one handed-over batch; returns its number of events."""
        if first_ns >= self.day_end:
            self._close_all()
            self._new_day(first_ns)
        if last_ns >= self.day_end:  # the batch spans midnight: split it by each line's time
            for symbol, chunk in lines.items():
                split = next((i for i, line in enumerate(chunk) if int(line[: line.index(b" ")]) >= self.day_end),
                             len(chunk))
                self._write_lines({symbol: chunk[:split]})
                lines[symbol] = chunk[split:]
            self._close_all()
            self._new_day(last_ns)
        return self._write_lines(lines)

    def _write_lines(self, lines: dict[str, list[bytes]]) -> int:
        count = 0
        for symbol, chunk in lines.items():
            if not chunk:
                continue
            count += len(chunk)
            data = b"".join(chunk)
            if data.count(b"\n") != len(chunk):  # one pass in C instead of a test per frame
                # A newline in a JSON frame can only be whitespace: a space keeps it one line.
                data = b"".join(line[:-1].replace(b"\n", b" ") + b"\n" for line in chunk)
            tape = self.tapes.get(symbol) or self._open(symbol)
            tape.gz.write(data)  # one deflate call: the GIL is released meanwhile
            tape.unflushed += len(chunk)
        return count

    def _new_day(self, stamp: int) -> None:
        start = stamp - stamp % DAY_NS
        self.day = time.strftime("%Y%m%d", time.gmtime(start // 10**9))
        self.day_end = start + DAY_NS

    def _open(self, symbol: str) -> _Tape:
        # A file of this day that exists already (an earlier run) is never appended to: after
        # a kill -9 it lacks its end-of-stream marker, and a member appended after that would
        # be unreadable. The next part number is taken instead.
        part = 0
        while True:
            name = f"{symbol.lower()}_{self.day}{f'.{part}' if part else ''}.gz"
            path = self.directory / name
            try:
                raw = open(path, "xb")  # noqa: SIM115 - closed in _close_tape
                break
            except FileExistsError:
                part += 1
        gz = gzip.GzipFile(filename=name, mode="wb", fileobj=raw, compresslevel=COMPRESS_LEVEL)
        tape = self.tapes[symbol] = _Tape(path, raw, gz)
        self.sizes[path] = 0
        log.info("recorder: %s opened", path)
        return tape

    def _flush(self) -> None:
        for tape in self.tapes.values():
            tape.gz.flush()  # zlib sync flush + write(2): readable up to here after a crash
            self._flushed(tape)
        self._keep_budget()

    def _flushed(self, tape: _Tape) -> None:
        size = tape.raw.tell()
        self.stats.bytes += size - self.sizes.get(tape.path, 0)
        self.sizes[tape.path] = size
        self.stats.recorded += tape.unflushed
        tape.unflushed = 0

    def _close_all(self) -> None:
        tapes, self.tapes = self.tapes, {}
        for tape in tapes.values():
            tape.gz.close()  # the gzip trailer: the file is complete
            tape.raw.flush()
            self._flushed(tape)
            tape.raw.close()
        self._keep_budget()

    def _keep_budget(self) -> None:
        total = sum(self.sizes.values())
        if total <= self.budget:
            return
        writing = {tape.path for tape in self.tapes.values()}
        # oldest day first; within a day the parts in the order they were written
        for path in sorted(set(self.sizes) - writing, key=_age):
            size = self.sizes.pop(path)
            try:
                path.unlink()
            except FileNotFoundError:
                pass  # removed by someone else: its room is free all the same
            self.stats.deleted += 1
            total -= size
            log.info("recorder: over the %g MB budget, deleted %s (%.1f MB)", self.budget / 1e6, path, size / 1e6)
            if total <= self.budget:
                return
        raise RecorderFailed(
            f"the files being written ({total / 1e6:.1f} MB) exceed record_budget_mb ({self.budget / 1e6:g})"
        )

    def _fail(self, message: str) -> None:
        self.stats.errors += 1
        self.failed = True
        log.error("recording stopped, publishing goes on: %s", message)
        for tape in self.tapes.values():
            for close in (tape.gz.close, tape.raw.close):  # keep what reached the disk
                try:
                    close()
                except OSError:
                    pass
        self.tapes = {}


def _age(path: Path) -> tuple[str, int, str]:
    """Day, part, then name: a deterministic order for the budget's deletions."""
    match = TAPE_NAME.match(path.name)
    assert match is not None
    return match.group(1), int(match.group(2) or 0), path.name
