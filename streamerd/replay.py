"""Replay recorded trades: data.binance.vision CSVs and raw websocket tapes.

Formats (detected from the first line; `.gz` and `.zip` are opened transparently):
- CSV `id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch`, no header, the
  symbol taken from the file name (`XRPUSDT-trades-2024-01-01.csv`); `time` is
  in ms before 2025 and in µs from 2025 on, told apart by magnitude.
- Tapes: `<receive_ns> <combined-stream JSON>` lines; only `<sym>@trade` streams
  are replayed, everything else (bookTicker, depth, REST snapshots) is skipped.
  streamerd's recordings (`recorder.py`) are tapes; one cut short (streamerd killed,
  disk full) lacks gzip's end-of-stream marker and is replayed up to the cut.

Several files are merged by time. The replay starts when something is wanted
(a subscriber, or symbols in the config), so a subscriber that starts it sees
the tape from its first trade; trades are published whatever their symbol (the
XPUB drops those nobody subscribed to). When it ends the daemon idles, so
subscribers stay connected.
"""

from __future__ import annotations

import gzip
import heapq
import logging
import re
import sys
import time
import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator

import msgspec

from naived.messages import StreamEnvelope, TradeEvent
from streamerd.daemon import Emit
from streamerd.publisher import Stats

log = logging.getLogger(__name__)

BATCH = 2000  # events per loop turn at full speed, so subscriptions and signals stay responsive
MICROS_THRESHOLD = 10**14  # ms timestamps are ~1.7e12 today, µs ~1.7e15
CSV_NAME = re.compile(r"^([A-Z0-9]+)-(?:trades|aggTrades)-")

# (time ns, file order, event, raw frame of a tape line or None): merge key first. Tapes
# keep their ns so that a recording, whose receive times strictly increase, merges back in
# exactly the order it was published.
Timed = tuple[int, int, TradeEvent, bytes | None]


class ReplayError(Exception):
    """A replay file that cannot be used, worded for the user."""


class _Progress:
    """Compressed bytes consumed across all files: a cheap, honest completion ratio."""

    def __init__(self) -> None:
        self.files: list[tuple[BinaryIO, int]] = []
        self.total = 0

    def add(self, raw: BinaryIO, size: int) -> None:
        self.files.append((raw, size))
        self.total += size

    def ratio(self) -> float:
        done = 0
        for f, size in self.files:
            done += size if f.closed else f.tell()
        return min(1.0, done / self.total) if self.total else 1.0


def _open_lines(path: Path, progress: _Progress, stats: Stats | None = None) -> Iterator[bytes]:
    """The file's lines; `stats` counts (and a line logs) a gzip cut short, when given."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the generator below
    progress.add(raw, path.stat().st_size)
    try:
        if path.suffix == ".zip":
            archive = zipfile.ZipFile(raw)
            stream: BinaryIO = archive.open(archive.namelist()[0])
        elif path.suffix == ".gz":
            stream = gzip.GzipFile(fileobj=raw)
        else:
            stream = raw
        try:
            yield from stream
        except EOFError:
            # No end-of-stream marker: a recording whose writer was killed or whose disk
            # filled up. Every complete line before the cut has been read; the partial line
            # at the cut never is (the line reader drops it with the error).
            if stats is not None:
                stats.truncated += 1
                log.warning("%s: ends without gzip's end-of-stream marker (cut short while recording), "
                            "replayed up to the cut", path)
    finally:
        raw.close()


def _csv_symbol(path: Path) -> str:
    match = CSV_NAME.match(path.name)
    if not match:
        raise ReplayError(f"{path}: cannot tell the symbol of a CSV from its name (expected SYMBOL-trades-...)")
    return match.group(1)


def _is_tape(path: Path) -> bool:
    lines = _open_lines(path, _Progress())
    try:
        first = next((line for line in lines if line.strip()), b"")
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ReplayError(f"{path}: cannot read: {exc}") from None
    finally:
        lines.close()
    # An empty file (a recording killed before its first flush) has nothing to replay: it
    # needs no symbol in its name.
    return first == b"" or re.match(rb"^\d+ \{", first) is not None


def read_file(path: Path, order: int, stats: Stats, progress: _Progress) -> Iterator[Timed]:
    """The trades of one file, in file order."""
    lines = _open_lines(path, progress, stats)
    if _is_tape(path):
        yield from _tape(path, order, lines, stats)
    else:
        yield from _csv(path, order, _csv_symbol(path), lines, stats)


_envelope = msgspec.json.Decoder(StreamEnvelope)
_trade = msgspec.json.Decoder(TradeEvent)


def _tape(path: Path, order: int, lines: Iterator[bytes], stats: Stats) -> Iterator[Timed]:
    for number, line in enumerate(lines, 1):
        if b'@trade"' not in line:  # cheap pre-filter: depth/bookTicker/snapshots are most lines
            continue
        try:
            stamp, _, text = line.partition(b" ")
            envelope = _envelope.decode(text)
            if not envelope.stream.endswith("@trade"):
                continue
            event = _trade.decode(envelope.data)
            yield int(stamp), order, event, text.rstrip(b"\r\n")
        except (msgspec.DecodeError, ValueError) as exc:
            _malformed(stats, f"{path}:{number}: {exc}")


def _csv(path: Path, order: int, symbol: str, lines: Iterator[bytes], stats: Stats) -> Iterator[Timed]:
    for number, line in enumerate(lines, 1):
        fields = line.strip().split(b",")
        if len(fields) < 6 or not fields[0].isdigit():
            if line.strip() and not (number == 1 and fields[0] == b"id"):  # tolerate a header
                _malformed(stats, f"{path}:{number}: not a trade row")
            continue
        try:
            stamp = int(fields[4])
            micros = stamp if stamp >= MICROS_THRESHOLD else stamp * 1000
            millis = micros // 1000
            yield micros * 1000, order, TradeEvent(
                e="trade",
                E=millis,
                s=symbol,
                t=int(fields[0]),
                p=fields[1].decode(),
                q=fields[2].decode(),
                T=millis,
                m=fields[5].lower() == b"true",
                M=len(fields) < 7 or fields[6].lower() == b"true",
            ), None
        except ValueError as exc:
            _malformed(stats, f"{path}:{number}: {exc}")


def _malformed(stats: Stats, message: str) -> None:
    stats.malformed += 1
    if stats.malformed <= 10 or stats.malformed % 1000 == 0:
        log.warning("malformed replay line (%d so far): %s", stats.malformed, message)


def check_files(paths: list[str]) -> list[Path]:
    """Fail early, in one line, on files that are missing or nameless CSVs."""
    result = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise ReplayError(f"{path}: no such file")
        if not _is_tape(path):
            _csv_symbol(path)  # raises now rather than when the replay reaches this file
        result.append(path)
    if not result:
        raise ReplayError("--source replay needs at least one --replay-file (or streamer.replay_files)")
    return result


class ReplaySource:
    name = "replay"

    def __init__(self, emit: Emit, stats: Stats, files: list[Path], speed: float) -> None:
        self.emit = emit
        self.stats = stats
        self.files = files
        self.speed = speed
        self.progress = _Progress()
        self.events: Iterator[Timed] | None = None
        self.pending: Timed | None = None
        self.start_wall = 0.0
        self.start_data = 0
        self.count = 0
        self.finished = False
        self.tty = sys.stderr.isatty()
        self._drawn_at = 0.0

    def set_wanted(self, symbols: set[str]) -> None:
        if symbols and self.events is None:
            log.info("replay: start (%s, speed %s)", ", ".join(map(str, self.files)),
                     "max" if self.speed == 0 else f"x{self.speed:g}")
            streams = [read_file(p, i, self.stats, self.progress) for i, p in enumerate(self.files)]
            self.events = heapq.merge(*streams)
            self.pending = next(self.events, None)
            self.start_wall = time.monotonic()
            self.start_data = self.pending[0] if self.pending else 0

    def fds(self) -> list[int]:
        return []

    def on_readable(self, fd: int) -> None:
        pass

    def _due(self, item: Timed) -> float:
        return self.start_wall + (item[0] - self.start_data) / 1e9 / self.speed

    def next_deadline(self) -> float | None:
        if self.pending is None:
            return None
        return 0.0 if self.speed == 0 else self._due(self.pending)

    def on_timer(self, now: float) -> None:
        assert self.events is not None
        for _ in range(BATCH):
            item = self.pending
            if item is None:
                break
            if self.speed and self._due(item) > now:
                break
            self.stats.events_in += 1
            self.count += 1
            self.emit(item[2], item[3])
            self.pending = next(self.events, None)
        if self.tty:
            self._draw(now)
        if self.pending is None and not self.finished:
            self.finished = True
            if self.tty:
                sys.stderr.write("\r\033[K")
            log.info("replay finished: %d trades", self.count)

    def _draw(self, now: float) -> None:
        if now - self._drawn_at < 0.2:
            return
        self._drawn_at = now
        ratio = self.progress.ratio()
        bar = "#" * int(ratio * 30)
        sys.stderr.write(f"\rreplay [{bar:<30}] {ratio:4.0%} {self.count} trades")
        sys.stderr.flush()

    def close(self) -> None:
        if self.events is not None and hasattr(self.events, "close"):
            self.events.close()
