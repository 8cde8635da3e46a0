"""Recorded trades, read: data.binance.vision CSVs and streamerd's raw websocket tapes. One reader
for streamerd's replay and for the backtest, so both see the same trades from the same file.

Formats (detected from the first line; `.gz` and `.zip` are opened transparently):
- CSV `id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch`, no header, the
  symbol taken from the file name (`XRPUSDT-trades-2024-01-01.csv`); `time` is
  in ms before 2025 and in µs from 2025 on, told apart by magnitude.
- Tapes: `<receive_ns> <combined-stream JSON>` lines; only `<sym>@trade` streams
  are read, everything else (bookTicker, depth, REST snapshots) is skipped.
  streamerd's recordings are tapes; one cut short (streamerd killed,
  disk full) lacks gzip's end-of-stream marker and is read up to the cut.
- Gap lines in tapes: trade ids streamerd knows it missed and could not fetch again (its stream
  was cut and Binance's REST refused, limited or was not asked), written where the trades would
  have been, in the tape's time order:
  `<ns> {"stream":"<sym>@gap","data":{"e":"gap","E":<ms>,"s":"<SYM>","from":<id>,"to":<id>}}`
  — ids `from`..`to` (both included) are missing; `E` is the time (ms) of the first trade
  received after them. They are never trades: `read_file` yields none for them, and counts each
  in `ReadCounts.tape_gaps`.
"""

from __future__ import annotations

import gzip
import logging
import re
import zipfile
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgspec

from naived.core.messages import StreamEnvelope, TradeEvent

log = logging.getLogger(__name__)

MICROS_THRESHOLD = 10**14  # ms timestamps are ~1.7e12 today, µs ~1.7e15
CSV_NAME = re.compile(r"^([A-Z0-9]+)-(?:trades|aggTrades)-")

# (time ns, file order, event, raw frame of a tape line or None): merge key first. Tapes
# keep their ns so that a recording, whose receive times strictly increase, merges back in
# exactly the order it was published.
Timed = tuple[int, int, TradeEvent, bytes | None]


class TapeError(Exception):
    """A trade file that cannot be used, worded for the user."""


class NamelessCsv(TapeError):
    """A CSV whose name does not say its symbol: each caller says how to name it (the backtest
    has `--symbol`; streamerd's replay only the file's name)."""


class GapData(msgspec.Struct, frozen=True):
    """The `data` of a gap line, in the style of Binance's events (streamerd writes it)."""

    e: str  # event type, "gap"
    E: int  # ms: the first trade received after the missing ids
    s: str  # symbol, upper case
    first: int = msgspec.field(name="from")  # first missing trade id
    last: int = msgspec.field(name="to")  # last missing trade id (included)


class TapeGap(msgspec.Struct, frozen=True):
    """Trade ids a tape says are missing, as read from one of its gap lines."""

    symbol: str
    first: int  # first missing trade id
    last: int  # last missing trade id (included)
    time_ms: int  # the first trade received after them
    path: str = ""  # the file it was read from

    @property
    def missing(self) -> int:
        return self.last - self.first + 1


@dataclass
class ReadCounts:
    """What reading found wrong: lines that are not trades, gzip files cut short, and the gaps
    a tape declares. streamerd's counters (`streamerd.publisher.Stats`) extend these."""

    malformed: int = 0
    truncated: int = 0  # gzip files cut short (no end-of-stream marker)
    tape_gaps: list[TapeGap] = field(default_factory=list)  # gap lines read, in file order


class Progress:
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


def _open_lines(path: Path, progress: Progress, stats: ReadCounts | None = None) -> Generator[bytes, None, None]:
    """The file's lines; `stats` counts (and a line logs) a gzip cut short, when given."""
    raw = open(path, "rb")  # noqa: SIM115 - closed by the generator below
    progress.add(raw, path.stat().st_size)
    try:
        if path.suffix == ".zip":
            archive = zipfile.ZipFile(raw)
            stream: Iterable[bytes] = archive.open(archive.namelist()[0])
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


def _csv_symbol(path: Path, named: str | None = None) -> str:
    """The symbol of a CSV from its name, else `named` (the backtest's `--symbol`)."""
    match = CSV_NAME.match(path.name)
    if match:
        return match.group(1)
    if named:
        return named
    raise NamelessCsv(f"{path}: cannot tell the symbol of a CSV from its name (expected SYMBOL-trades-...)")


csv_symbol = _csv_symbol


def _is_tape(path: Path) -> bool:
    lines = _open_lines(path, Progress())
    try:
        first = next((line for line in lines if line.strip()), b"")
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise TapeError(f"{path}: cannot read: {exc}") from None
    finally:
        lines.close()
    # An empty file (a recording killed before its first flush) has nothing to replay: it
    # needs no symbol in its name.
    return first == b"" or re.match(rb"^\d+ \{", first) is not None


is_tape = _is_tape


def read_file(path: Path, order: int, stats: ReadCounts, progress: Progress, csv_symbol: str | None = None) -> Iterator[Timed]:
    """The trades of one file, in file order (`csv_symbol`: of a CSV whose name does not say it)."""
    lines = _open_lines(path, progress, stats)
    if _is_tape(path):
        yield from _tape(path, order, lines, stats)
    else:
        yield from _csv(path, order, _csv_symbol(path, csv_symbol), lines, stats)


_envelope = msgspec.json.Decoder(StreamEnvelope)
_trade = msgspec.json.Decoder(TradeEvent)
_gap = msgspec.json.Decoder(GapData)


def _tape(path: Path, order: int, lines: Iterator[bytes], stats: ReadCounts) -> Iterator[Timed]:
    for number, line in enumerate(lines, 1):
        if b'@trade"' not in line:  # cheap pre-filter: depth/bookTicker/snapshots are most lines
            if b'@gap"' in line:
                _gap_line(path, number, line, stats)
            continue
        try:
            stamp, _, text = line.partition(b" ")
            envelope = _envelope.decode(text)
            if not envelope.stream.endswith("@trade"):
                continue
            event = _trade.decode(envelope.data)
            yield int(stamp), order, event, text.rstrip(b"\r\n")
        except (msgspec.DecodeError, ValueError) as exc:
            count_malformed(stats, f"{path}:{number}: {exc}")


def _gap_line(path: Path, number: int, line: bytes, stats: ReadCounts) -> None:
    try:
        envelope = _envelope.decode(line.partition(b" ")[2])
        if not envelope.stream.endswith("@gap"):
            return
        gap = _gap.decode(envelope.data)
        if gap.first > gap.last:
            raise ValueError(f"gap from {gap.first} to {gap.last}")
    except (msgspec.DecodeError, ValueError) as exc:
        count_malformed(stats, f"{path}:{number}: {exc}")
        return
    stats.tape_gaps.append(TapeGap(gap.s, gap.first, gap.last, gap.E, str(path)))


def _csv(path: Path, order: int, symbol: str, lines: Iterator[bytes], stats: ReadCounts) -> Iterator[Timed]:
    for number, line in enumerate(lines, 1):
        fields = line.strip().split(b",")
        if len(fields) < 6 or not fields[0].isdigit():
            if line.strip() and not (number == 1 and fields[0] == b"id"):  # tolerate a header
                count_malformed(stats, f"{path}:{number}: not a trade row")
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
            count_malformed(stats, f"{path}:{number}: {exc}")


def count_malformed(stats: ReadCounts, message: str) -> None:
    """A line (or trade) that is not a trade: counted, the first ten and every thousandth logged."""
    stats.malformed += 1
    if stats.malformed <= 10 or stats.malformed % 1000 == 0:
        log.warning("malformed trade line (%d so far): %s", stats.malformed, message)


def check_files(paths: list[str], csv_symbol: str | None = None) -> list[Path]:
    """Fail early, in one line, on files that are missing or nameless CSVs (`csv_symbol` names them)."""
    result = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise TapeError(f"{path}: no such file")
        if not _is_tape(path):
            _csv_symbol(path, csv_symbol)  # raises now rather than when the replay reaches this file
        result.append(path)
    if not result:
        raise TapeError("--source replay needs at least one --replay-file (or streamer.replay_files)")
    return result
