"""Recorded tapes without holes (issue 25): a Binance stream cut mid-burst skips trade ids;
streamerd fetches them from the REST API into the tape (never to subscribers), and what it
cannot fetch is a gap line the tape reader counts. The real `streamerd start`, the fake Binance
of tests/fake_binance.py (websocket and REST, Binance's message formats), files in tmp_path."""

from __future__ import annotations

import gzip
import json
import select
import socket
import time
from pathlib import Path

import msgspec
import pytest
import test_streamerd
from test_streamerd import _today, assert_quiet, receive, subscriber

import streamerd.gapfill as gapfill
import streamerd.recorder as recorder_module
from naived.core.messages import TradeEvent
from naived.market.tape import Progress, ReadCounts, TapeGap, read_file
from streamerd.gapfill import GapFiller
from streamerd.publisher import Stats
from streamerd.recorder import Recorder

ctx, fake, start_streamerd = test_streamerd.ctx, test_streamerd.fake, test_streamerd.start_streamerd  # fixtures


def _record(fake, start_streamerd, tmp_path: Path, *extra: str):
    record_dir = tmp_path / "rec"
    daemon = start_streamerd("--source", "binance", "--binance-url", fake.url, "--rest-url", fake.rest_url,
                             "--record-dir", str(record_dir), *extra)
    return daemon, record_dir / f"xrpusdt_{_today()}.gz"


def _read(path: Path) -> tuple[list[tuple[int, int]], ReadCounts]:
    """(ns, trade id) of every trade the tape reader yields, and its counts."""
    counts = ReadCounts()
    return [(ns, event.t) for ns, _, event, _ in read_file(path, 0, counts, Progress())], counts


def _cut_mid_burst(ctx, fake, daemon, gap: range, after: range) -> None:
    """Trades 1..gap.start-1 streamed, the stream cut mid-burst, `gap` made while streamerd is
    away (only REST has them), `after` streamed on the new connection. A subscriber sees no
    more than the stream carried."""
    sub = subscriber(ctx, daemon.endpoint, "XRPUSDT")
    first = fake.wait_for_subscription("xrpusdt@trade", timeout=10)
    fake.burst("XRPUSDT", range(1, gap.stop), cut_after=gap.start - 1, price="0.51230000")
    assert [e.t for e in receive(sub, gap.start - 1)] == list(range(1, gap.start))
    fake.wait_for_subscription("xrpusdt@trade", timeout=15, exclude=[first])
    fake.push_trades("XRPUSDT", after, price="0.51240000")
    assert [e.t for e in receive(sub, len(after))] == list(after)  # live: the gap stays a gap
    assert_quiet(sub)  # the fetched trades are never published
    sub.close()


def test_a_stream_cut_mid_burst_leaves_every_trade_id_in_the_tape_once_in_order(ctx, fake, start_streamerd, tmp_path):
    daemon, tape = _record(fake, start_streamerd, tmp_path)
    gap, after = range(301, 2801), range(2801, 2901)  # 2500 ids missed: three REST pages
    _cut_mid_burst(ctx, fake, daemon, gap, after)
    daemon.wait_log("ids 301..2800 fetched from the REST API for the tape", timeout=15)
    assert daemon.stop() == 0

    trades, counts = _read(tape)
    assert [t for _, t in trades] == list(range(1, 2901))  # every id, in order, none twice
    stamps = [ns for ns, _ in trades]
    assert stamps == sorted(set(stamps))  # times strictly increasing: a replay keeps this order
    assert counts.tape_gaps == [] and counts.malformed == 0
    assert [(q["fromId"], q["limit"]) for q in fake.rest_requests] == [("301", "1000"), ("1301", "1000"),
                                                                       ("2301", "500")]
    with gzip.open(tape) as f:
        filled = next(json.loads(line.split(b" ", 1)[1]) for line in f if b'"t":301,' in line)
    made = fake.trades["XRPUSDT"][301]
    assert filled == {"stream": "xrpusdt@trade", "data": {**made, "E": made["T"]}}  # the stream's shape
    assert " gaps=1 missing=2500 " in daemon.log() and " filled=2500 unfilled=0\n" in daemon.log()


@pytest.mark.parametrize("status", [429, 403])
def test_a_gap_rest_refuses_is_a_gap_line_the_reader_counts(ctx, fake, start_streamerd, tmp_path, status):
    fake.rest_status = status  # 429: weight limit (Retry-After: 60); 403: refused (a key wanted)
    daemon, tape = _record(fake, start_streamerd, tmp_path)
    gap, after = range(51, 81), range(81, 121)
    _cut_mid_burst(ctx, fake, daemon, gap, after)
    daemon.wait_log("written as a gap in the tape", timeout=15)
    if status == 429:  # Retry-After holds the next gap back without a request
        second = fake.wait_for_subscription("xrpusdt@trade", timeout=10)
        fake.burst("XRPUSDT", range(121, 131), cut_after=5)
        fake.wait_for_subscription("xrpusdt@trade", timeout=15, exclude=[second])
        fake.push_trades("XRPUSDT", range(131, 141))
        daemon.wait_log("written as a gap in the tape", timeout=15, occurrences=2)
    assert daemon.stop() == 0

    trades, counts = _read(tape)
    ids = [t for _, t in trades]
    assert len(fake.rest_requests) == 1
    if status == 429:
        assert ids == [*range(1, 51), *range(81, 126), *range(131, 141)]
        assert [(g.symbol, g.first, g.last) for g in counts.tape_gaps] == [("XRPUSDT", 51, 80), ("XRPUSDT", 126, 130)]
        assert "retry after 60s" in daemon.log() and "REST limited (429)" in daemon.log()
    else:
        assert ids == [*range(1, 51), *range(81, 121)]
        assert counts.tape_gaps == [TapeGap("XRPUSDT", 51, 80, fake.trades["XRPUSDT"][81]["E"], str(tape))]
        assert "HTTP 403" in daemon.log()
    # The gap line sits where the missing trades would be, in the tape's time order.
    with gzip.open(tape) as f:
        lines = f.read().splitlines()
    where = next(i for i, line in enumerate(lines) if b'"xrpusdt@gap"' in line)
    assert b'"t":50,' in lines[where - 1] and b'"t":81,' in lines[where + 1]
    stamps = [int(line.split(b" ", 1)[0]) for line in lines]
    assert stamps == sorted(set(stamps))
    assert counts.malformed == 0 and f" filled=0 unfilled={35 if status == 429 else 30}\n" in daemon.log()


# --- the recorder's holes and the reader's gap lines, in process -----------------------------


def _trade(symbol: str, trade_id: int) -> TradeEvent:
    return TradeEvent(e="trade", E=1_700_000_000_000 + trade_id, s=symbol, t=trade_id, p="1.5", q="2",
                      T=1_700_000_000_000 + trade_id, m=False)


def _recorder(tmp_path: Path) -> Recorder:
    ticks = iter(range(1_765_000_000_000_000_000, 1_765_000_000_000_000_000 + 10**9, 1000))
    recorder = Recorder(tmp_path / "rec", 10**9, clock=lambda: next(ticks))
    recorder.start()
    return recorder


def _tape_of(tmp_path: Path, symbol: str) -> Path:
    [path] = (tmp_path / "rec").glob(f"{symbol.lower()}_*.gz")
    return path


def test_holes_keep_their_symbol_back_and_fill_in_id_order(tmp_path):
    recorder = _recorder(tmp_path)
    for t in (1, 2):
        recorder.record(_trade("XRPUSDT", t))
    first = recorder.hold("XRPUSDT", 3, 5, 111)
    for t in (6, 7):
        recorder.record(_trade("XRPUSDT", t))
    recorder.record(_trade("ADAUSDT", 1))  # another symbol is never kept back
    second = recorder.hold("XRPUSDT", 8, 8, 222)
    recorder.record(_trade("XRPUSDT", 9))
    assert first is not None and second is not None
    assert recorder.resolve(second, [_trade("XRPUSDT", 8)]) == []  # behind the first hole: still kept
    recorder.hand_over()
    assert recorder.resolve(first, [_trade("XRPUSDT", 3), _trade("XRPUSDT", 5), _trade("XRPUSDT", 12)]) == [(4, 4)]
    assert recorder.resolve(first, []) == []  # once only
    recorder.close()

    trades, counts = _read(_tape_of(tmp_path, "XRPUSDT"))
    assert [t for _, t in trades] == [1, 2, 3, 5, 6, 7, 8, 9]
    assert [ns for ns, _ in trades] == sorted({ns for ns, _ in trades})
    assert counts.tape_gaps == [TapeGap("XRPUSDT", 4, 4, 111, str(_tape_of(tmp_path, "XRPUSDT")))]
    assert [t for _, t in _read(_tape_of(tmp_path, "ADAUSDT"))[0]] == [1]


def test_a_hole_kept_open_too_long_is_given_up_as_a_gap_line(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "MAX_HELD", 3)
    recorder = _recorder(tmp_path)
    recorder.record(_trade("XRPUSDT", 1))
    hole = recorder.hold("XRPUSDT", 2, 10, 333)
    assert hole is not None
    for t in range(11, 16):
        recorder.record(_trade("XRPUSDT", t))
    assert recorder.resolve(hole, [_trade("XRPUSDT", 2)]) == []  # too late: the gap line is written
    recorder.close()
    trades, counts = _read(_tape_of(tmp_path, "XRPUSDT"))
    assert [t for _, t in trades] == [1, *range(11, 16)]
    assert [(g.first, g.last) for g in counts.tape_gaps] == [(2, 10)]


def test_the_reader_counts_bad_gap_lines_as_malformed_and_yields_trades_only(tmp_path):
    path = tmp_path / "xrpusdt_20261206.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'1 {"stream":"xrpusdt@trade","data":' + msgspec.json.encode(_trade("XRPUSDT", 1)) + b"}\n")
        f.write(b'2 {"stream":"xrpusdt@gap","data":{"e":"gap","E":5,"s":"XRPUSDT","from":2,"to":3}}\n')
        f.write(b'3 {"stream":"xrpusdt@gap","data":{"e":"gap","E":5,"s":"XRPUSDT","from":9,"to":8}}\n')
        f.write(b'4 {"stream":"xrpusdt@gap","data":{"e":"gap","E":5,"s":"XRPUSDT"}}\n')
        f.write(b'5 {"stream":"xrpusdt@depth","data":{"note":"@gap\\""}}\n')  # not a gap stream: skipped
        f.write(b'6 {"stream":"xrpusdt@trade","data":' + msgspec.json.encode(_trade("XRPUSDT", 4)) + b"}\n")
    trades, counts = _read(path)
    assert [t for _, t in trades] == [1, 4]
    assert counts.tape_gaps == [TapeGap("XRPUSDT", 2, 3, 5, str(path))] and counts.tape_gaps[0].missing == 2
    assert counts.malformed == 2


def test_a_fill_without_an_answer_by_its_deadline_is_a_gap_line_and_the_late_answer_is_dropped(tmp_path, monkeypatch):
    """The main loop never waits for REST: a hole whose answer is late is given up at its deadline."""
    monkeypatch.setattr(gapfill, "REQUEST_TIMEOUT", 0.5)
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does) and never answers
    recorder = _recorder(tmp_path)
    filler = GapFiller(recorder, Stats(), f"http://127.0.0.1:{silent.getsockname()[1]}", fill_seconds=0.2)
    try:
        recorder.record(_trade("XRPUSDT", 1))
        started = time.monotonic()
        filler.on_gap("XRPUSDT", 2, 4, 444)
        recorder.record(_trade("XRPUSDT", 5))
        assert time.monotonic() - started < 0.1  # handed over, not fetched here
        deadline = filler.next_deadline()
        assert deadline is not None and deadline <= started + 0.2 + 0.01
        filler.on_timer(deadline - 0.01)
        assert filler.stats.unfilled == 0  # not yet
        filler.on_timer(deadline)
        assert filler.stats.unfilled == 3 and filler.next_deadline() is None
        ready, _, _ = select.select([filler.fd], [], [], 5)  # the worker's own timeout, then its result
        assert ready
        filler.on_readable()  # late: dropped
        assert filler.stats.filled == 0 and filler.stats.unfilled == 3
    finally:
        filler.close()
        silent.close()
    recorder.close()
    trades, counts = _read(_tape_of(tmp_path, "XRPUSDT"))
    assert [t for _, t in trades] == [1, 5]
    assert [(g.first, g.last, g.time_ms) for g in counts.tape_gaps] == [(2, 4, 444)]


def test_gaps_not_asked_for_are_gap_lines_at_once(tmp_path):
    """Filling off (`gap_fill = false`), or a gap over `gap_fill_max_trades`: a gap line, no wait."""
    recorder = _recorder(tmp_path)
    off = GapFiller(recorder, Stats(), None)
    small = GapFiller(recorder, Stats(), "http://127.0.0.1:9", max_trades=10)  # never asked: too large
    try:
        recorder.record(_trade("XRPUSDT", 1))
        off.on_gap("XRPUSDT", 2, 3, 5)
        recorder.record(_trade("XRPUSDT", 4))
        small.on_gap("XRPUSDT", 5, 1_000_004, 6)  # one stamp for its line, not a million
        recorder.record(_trade("XRPUSDT", 1_000_005))
        assert off.next_deadline() is None and small.next_deadline() is None
        assert (off.stats.unfilled, small.stats.unfilled) == (2, 1_000_000)
    finally:
        off.close()
        small.close()
    recorder.close()
    trades, counts = _read(_tape_of(tmp_path, "XRPUSDT"))
    assert [t for _, t in trades] == [1, 4, 1_000_005]
    assert trades[-1][0] - trades[0][0] < 10**6  # the stamps stay close to the clock
    assert [(g.first, g.last) for g in counts.tape_gaps] == [(2, 3), (5, 1_000_004)]
