"""`naived demo`, run as the README runs it: free ports, its reason on failure, nothing left behind."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import BIN

from naived import demo


@contextmanager
def ports_taken(*ports: int) -> Iterator[None]:
    """Hold the documented default ports, as the tour's own naived does (if free here)."""
    held = []
    for port in ports:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            held.append(s)
        except OSError:
            s.close()  # someone else holds it: taken all the same
    try:
        yield
    finally:
        for s in held:
            s.close()


def test_the_demo_trades_kills_a_trader_shows_its_profit_and_cleans_up(short_tmp: Path) -> None:
    tmp_path = short_tmp
    with ports_taken(5680, 5681, 5682, 8470):
        result = subprocess.run([str(BIN / "naived"), "demo", "--seconds", "20"], capture_output=True, text=True,
                                timeout=90, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("naive demo: SIMULATED market")
    assert "trading settings: the defaults" in out
    web = re.search(r"^  watch it in a browser: http://127\.0\.0\.1:(\d+)/$", out, re.M)
    assert web and web[1] != "8470", out  # the documented port is taken here: another one, printed
    assert re.search(r"^>>> kill -9 \d+ \(trader \w+/\d, cycle \d+, \w+\)", out, re.M)
    for symbol in ("XRPUSDT", "BTCUSDT"):
        assert re.search(rf"^  {symbol}: \d+ cycles finished, pnl [+-]?[\d.]+ USDT after [\d.]+ USDT fees; "
                         r"\d bought and waiting to sell$", out, re.M), out
    assert list(tmp_path.iterdir()) == []  # its temporary directory is gone


def test_a_failed_daemon_is_said_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "streamerd.log").write_text("")
    (tmp_path / "naived.log").write_text("2026-12-05 10:00:00,000 ERROR naived[7] paper exchange: port 5681 is in use\n")
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    exited.wait()
    try:
        assert demo._failure([running, exited], tmp_path) == (
            "naived exited (1): 2026-12-05 10:00:00,000 ERROR naived[7] paper exchange: port 5681 is in use")
    finally:
        running.kill()
        running.wait()


def test_a_temporary_directory_too_long_for_sockets_is_one_line(tmp_path: Path) -> None:
    long = tmp_path / ("x" * 80)
    long.mkdir()
    result = subprocess.run([str(BIN / "naived"), "demo", "--seconds", "5"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "TMPDIR": str(long)})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "more than a Unix socket path may have (107)" in result.stderr
    assert list(long.iterdir()) == []
