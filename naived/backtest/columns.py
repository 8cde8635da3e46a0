"""The backtest's input boundary: every trade of the files, read once into columns, merged by
time and checked, before any of it reaches the engine.

Reading: data.binance.vision CSVs are parsed by numpy (`np.loadtxt`, C) into columns; a CSV it
cannot parse whole (a malformed row, a gzip cut short) and streamerd's tapes go through the
line reader the replay uses (`naived.market.tape`), which skips and counts what is not a trade.
Prices and quantities are kept as integers of 1e-8 (Binance prints eight decimals): exact,
comparable without `Decimal`, and turned back into Binance's text (`text`) only for the few
trades the engine looks at.

Checks, in this one place:
- a CSV whose name does not say its symbol takes `--symbol` (exactly one), else a one-line error;
- a file whose trades go back in time is an error naming the file and the line;
- the same trade (symbol and trade id) in several files, or twice in one, is kept once: the
  others are dropped and counted (`Checked.duplicates`);
- missing trade ids (Binance numbers each symbol's trades without holes) are gaps: counted,
  listed (the largest first) and, when they span more than `BREAK_MS`, the plot's breaks; the
  holes streamerd marked in its tapes (trades it could not fetch) are counted apart.
"""

from __future__ import annotations

import gzip
import io
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np
import numpy.typing as npt

from naived.backtest.errors import BacktestError
from naived.backtest.report import Gap, InputSummary
from naived.market import tape
from naived.market.tape import MICROS_THRESHOLD, NamelessCsv, ReadCounts, TapeError

SCALE = 10**8  # prices and quantities as integers of 1e-8
MAX_PRICE = 90_000_000  # a float64 holds price × 1e8 exactly below ~9e15
BREAK_MS = 3_600_000  # a gap in the trades longer than this starts a new period in the plot
GAPS_LISTED = 20  # the report lists this many gaps, the largest first

Ints = npt.NDArray[np.int64]


@dataclass
class Checked:
    """Every trade of the input in time order (the replay's order: time, then file, then line),
    one row per trade: `code` indexes `symbols`."""

    symbols: list[str]
    code: npt.NDArray[np.int32]
    trade_id: Ints
    price: Ints  # × 1e8
    qty: Ints  # × 1e8
    time_ms: Ints
    summary: InputSummary
    breaks: list[int] = field(default_factory=list)  # times (ms) at which a new period starts

    def __len__(self) -> int:
        return len(self.trade_id)


def text(value: int) -> str:
    """An integer of 1e-8 as Binance prints it: eight decimals."""
    whole, part = divmod(value, SCALE)
    return f"{whole}.{part:08d}"


@dataclass
class _File:
    path: Path
    symbols: list[str]
    code: npt.NDArray[np.int32]
    trade_id: Ints
    price: Ints
    qty: Ints
    time_ms: Ints
    key: Ints  # the merge key, ns: a CSV's trade time, a tape's receive time
    csv: bool  # read by numpy: a row's line is found again for an error (`_line_of`)


def read(paths: list[str], symbol: str | None = None, only: set[str] | None = None) -> Checked:
    """Read and check every file (see the module's docstring); `symbol` names the symbol of
    CSVs whose names do not; `only`: keep these symbols' trades only."""
    try:
        files = tape.check_files(list(paths), csv_symbol=symbol)
    except NamelessCsv as exc:  # also when several --symbol were given: they only choose symbols then
        raise BacktestError(f"{exc}: name its symbol with one --symbol SYMBOL") from None
    except TapeError as exc:
        raise BacktestError(str(exc)) from None
    counts = ReadCounts()
    parts = [_read_file(path, order, symbol, counts) for order, path in enumerate(files)]
    for part in parts:
        _check_order(part)
    return _merge(parts, counts, only)


def _read_file(path: Path, order: int, symbol: str | None, counts: ReadCounts) -> _File:
    if not tape.is_tape(path):
        name = tape.csv_symbol(path, symbol)
        columns = _csv_columns(path)
        if columns is not None:
            trade_id, price, qty, stamp = columns
            micros = np.where(stamp >= MICROS_THRESHOLD, stamp, stamp * 1000)
            return _File(path, [name], np.zeros(len(trade_id), np.int32), trade_id, price, qty, micros // 1000,
                         micros * 1000, True)
    return _line_reader(path, order, symbol, counts)


def _csv_columns(path: Path) -> tuple[Ints, Ints, Ints, Ints] | None:
    """(trade id, price, qty, time) of a clean CSV, or None: the line reader takes it."""
    try:
        with _opened(path) as stream:
            blocks = [_parse(block) for block in _blocks(stream)]
    except (OSError, EOFError, zipfile.BadZipFile, ValueError):
        return None  # cut short, not what its name says, a row that is not a trade: the line reader counts it
    rows = np.concatenate(blocks) if blocks else np.zeros(0, dtype=_ROW)
    price, qty = _scaled(rows["p"]), _scaled(rows["q"])
    if price is None or qty is None:
        return None
    return rows["id"].astype(np.int64), price, qty, rows["t"].astype(np.int64)


_ROW = np.dtype([("id", np.int64), ("p", np.float64), ("q", np.float64), ("t", np.int64)])
BLOCK_BYTES = 32 << 20  # parsed a block of whole lines at a time: a month's text is never held whole


def _blocks(stream: io.BufferedIOBase) -> Iterator[bytes]:
    """The stream's text in blocks of whole lines; a header line (`id,price,...`) dropped."""
    rest = b""
    first = True
    while True:
        chunk = stream.read(BLOCK_BYTES)
        if not chunk:
            break
        block = rest + chunk
        cut = block.rfind(b"\n") + 1
        block, rest = block[:cut], block[cut:]
        if first and block.startswith(b"id"):
            block = block[block.find(b"\n") + 1:]
        first = first and not block
        if block:
            yield block
    if rest.strip() and not (first and rest.startswith(b"id")):
        yield rest


def _parse(block: bytes) -> npt.NDArray[np.void]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # blank lines only: no rows
        return np.loadtxt(io.BytesIO(block), delimiter=",", usecols=(0, 1, 2, 4), ndmin=1, dtype=_ROW)


def _opened(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".zip":
        archive = zipfile.ZipFile(path)  # noqa: SIM115 - the member keeps it open; closed with it
        return archive.open(archive.namelist()[0])  # type: ignore[return-value]  # a ZipExtFile: BufferedIOBase
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - the caller closes it (with)


def _line_of(path: Path, row: int) -> int:
    """The line of a CSV's row (0-based, as numpy read it: blank lines and a header skipped);
    read again only to word an error."""
    seen = -1
    with _opened(path) as stream:
        for number, line in enumerate(stream, 1):
            if line.strip() and not (number == 1 and line.startswith(b"id")):
                seen += 1
                if seen == row:
                    return number
    return row + 1


def _line_of_id(path: Path, trade_id: int, earlier: int) -> int | str:
    """The line of a CSV's row with this trade id, after `earlier` rows with it; read again only to
    word an error (a file the line reader took: its malformed lines are not rows)."""
    wanted = str(trade_id).encode()
    with _opened(path) as stream:
        for number, line in enumerate(stream, 1):
            if line.split(b",", 1)[0].strip() == wanted:
                if not earlier:
                    return number
                earlier -= 1
    return "?"


def _scaled(values: npt.NDArray[np.float64]) -> Ints | None:
    """Decimals of at most 8 places as integers of 1e-8; None when one has more places or is too
    large for a float to carry exactly (the line reader then reads the text)."""
    if len(values) and (values.max() >= MAX_PRICE or values.min() <= 0):
        return None
    exact = values * SCALE
    scaled = np.rint(exact)
    exact -= scaled
    if len(values) and np.abs(exact).max() > 1e-3:
        return None
    return scaled.astype(np.int64)


def _line_reader(path: Path, order: int, symbol: str | None, counts: ReadCounts) -> _File:
    """A tape, or a CSV numpy would not take whole: `naived.market.tape`'s reader, row by row."""
    names: dict[str, int] = {}
    code, trade_id, price, qty, time_ms, key = [], [], [], [], [], []
    for ns, _, event, _ in tape.read_file(path, order, counts, tape.Progress(), csv_symbol=symbol):
        p, q = _exact(event.p), _exact(event.q)
        if p is None or q is None or p <= 0 or q <= 0:
            tape.count_malformed(counts, f"{path}: trade {event.t}: price {event.p!r} or quantity {event.q!r} "
                                         "is not a positive decimal of at most 8 places")
            continue
        code.append(names.setdefault(event.s, len(names)))
        trade_id.append(event.t)
        price.append(p)
        qty.append(q)
        time_ms.append(event.E)
        key.append(ns)

    def ints(values: list[int]) -> Ints:
        return np.array(values, dtype=np.int64)

    return _File(path, list(names), np.array(code, dtype=np.int32), ints(trade_id), ints(price), ints(qty),
                 ints(time_ms), ints(key), False)


def _exact(value: str) -> int | None:
    try:
        scaled = Decimal(value) * SCALE
    except ArithmeticError:
        return None
    if not scaled.is_finite() or scaled != scaled.to_integral_value():
        return None
    return int(scaled)


def _check_order(part: _File) -> None:
    """Trades of one file go forward in time: a file that goes back is not what it claims."""
    back = np.flatnonzero(np.diff(part.key) < 0)
    if not len(back):
        return
    row = int(back[0]) + 1
    if part.csv:
        where = f"line {_line_of(part.path, row)}"
    elif not tape.is_tape(part.path):  # a CSV the line reader took: rows skipped, so found by its id
        trade_id = part.trade_id[row]
        where = f"line {_line_of_id(part.path, int(trade_id), int(np.count_nonzero(part.trade_id[:row] == trade_id)))}"
    else:
        where = f"trade {row + 1} of the file"
    raise BacktestError(
        f"{part.path}: {where} (trade id {int(part.trade_id[row])}) is earlier than the trade before it: "
        "the file is out of time order (sort it by time, or give the files it was cut from)")


def _merge(parts: list[_File], counts: ReadCounts, only: set[str] | None) -> Checked:
    symbols = sorted({s for p in parts for s in p.symbols if only is None or s in only})
    index = {s: i for i, s in enumerate(symbols)}
    codes = []
    for part in parts:  # each file's symbol codes into the merged table (-1: not wanted)
        table = np.array([index.get(s, -1) for s in part.symbols] or [-1], dtype=np.int32)
        codes.append(table[part.code])
    code = np.concatenate(codes) if parts else np.zeros(0, np.int32)

    def joined(name: str) -> Ints:
        if len(parts) == 1:
            return getattr(parts[0], name)  # type: ignore[no-any-return]  # an Ints field
        return np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0, np.int64)

    key, trade_id = joined("key"), joined("trade_id")
    # The replay's merge: by time, then by file; a stable sort keeps each file's own order. Files
    # given in time order (one, or consecutive days) are merged already: no sort.
    if np.all(key[1:] >= key[:-1]):
        rank = np.arange(len(key))
    else:
        order = np.concatenate([np.full(len(p.key), i, np.int64) for i, p in enumerate(parts)])
        rank = np.lexsort((order, key))
    if not np.all(code >= 0):
        rank = rank[code[rank] >= 0]
    # The same trade twice (one symbol, one id): the first in time order stays. Ids that only
    # grow within each symbol (one symbol: the whole column) hold no duplicate: no sort.
    ident = code[rank].astype(np.int64) * (1 << 42) + trade_id[rank]
    if len(symbols) <= 1 and np.all(ident[1:] > ident[:-1]):
        kept = rank
    else:
        _, first = np.unique(ident, return_index=True)
        kept = rank[np.sort(first)]
    duplicates = len(rank) - len(kept)
    identity = len(kept) == len(key) and bool(np.all(kept == np.arange(len(key))))
    columns = {name: joined(name) if identity else joined(name)[kept] for name in ("trade_id", "price", "qty", "time_ms")}
    checked = Checked(symbols, code[kept], columns["trade_id"], columns["price"], columns["qty"], columns["time_ms"],
                      InputSummary(0, 0, 0, 0, 0, 0, 0, []))
    gaps = _gaps(checked)
    checked.breaks = sorted({g.to_ms for g in gaps if g.to_ms - g.from_ms > BREAK_MS})
    listed = sorted(gaps, key=lambda g: (-g.missing, g.symbol, g.after_id))[:GAPS_LISTED]
    checked.summary = InputSummary(len(kept), duplicates, counts.malformed, counts.truncated, len(gaps),
                                   sum(g.missing for g in gaps), len(counts.tape_gaps), listed)
    return checked


def _gaps(trades: Checked) -> list[Gap]:
    found = []
    for i, symbol in enumerate(trades.symbols):
        rows = np.flatnonzero(trades.code == i)
        ids = trades.trade_id[rows]
        holes = np.flatnonzero(np.diff(ids) > 1)
        for h in holes:
            before, after = rows[h], rows[h + 1]
            found.append(Gap(symbol, int(trades.trade_id[before]), int(trades.trade_id[after]),
                             int(trades.trade_id[after] - trades.trade_id[before] - 1),
                             int(trades.time_ms[before]), int(trades.time_ms[after])))
    return found
