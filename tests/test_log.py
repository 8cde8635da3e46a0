"""Logging: journald priority prefixes under systemd, plain lines on a terminal.

Each case runs in a fresh interpreter so that setup_logging never touches pytest's logging.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

SCRIPT = r"""
import logging
from naived.ops.log import setup_logging, rename_process_logs

setup_logging("naived", logging.DEBUG)
log = logging.getLogger("naived.test")
log.debug("debug line")
log.info("info line")
log.warning("warning line")
log.error("error line")
log.critical("critical line")
try:
    raise RuntimeError("boom")
except RuntimeError:
    log.exception("failed")
rename_process_logs("trader XRPUSDT/0")
log.info("after rename")
"""


def run(journal: bool) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal:
        env["JOURNAL_STREAM"] = "8:12345"
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == ""
    return result.stderr.splitlines()


def test_journal_stream_gives_priority_prefixes():
    lines = run(journal=True)
    pid = r"\d+"
    assert re.fullmatch(rf"<7>naived\[{pid}\]: debug line", lines[0]), lines[0]
    assert re.fullmatch(rf"<6>naived\[{pid}\]: info line", lines[1]), lines[1]
    assert re.fullmatch(rf"<4>naived\[{pid}\]: warning line", lines[2]), lines[2]
    assert re.fullmatch(rf"<3>naived\[{pid}\]: error line", lines[3]), lines[3]
    assert re.fullmatch(rf"<2>naived\[{pid}\]: critical line", lines[4]), lines[4]
    assert re.fullmatch(rf"<3>naived\[{pid}\]: failed", lines[5]), lines[5]
    assert re.fullmatch(rf"<6>trader XRPUSDT/0\[{pid}\]: after rename", lines[-1]), lines[-1]
    # The traceback: every line is its own journal entry, so every line carries the error priority.
    traceback = lines[6:-1]
    assert traceback[0] == "<3>Traceback (most recent call last):"
    assert traceback[-1] == "<3>RuntimeError: boom"
    assert all(line.startswith("<3>") for line in traceback)


def test_plain_lines_without_journal():
    lines = run(journal=False)
    assert not any(line.startswith("<") for line in lines), lines
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(rf"{stamp} DEBUG naived\[\d+\] debug line", lines[0]), lines[0]
    assert re.fullmatch(rf"{stamp} INFO  naived\[\d+\] info line", lines[1]), lines[1]
    assert re.fullmatch(rf"{stamp} WARNING naived\[\d+\] warning line", lines[2]), lines[2]
    assert re.fullmatch(rf"{stamp} ERROR naived\[\d+\] error line", lines[3]), lines[3]
    assert "Traceback (most recent call last):" in lines
    assert re.fullmatch(rf"{stamp} INFO  trader XRPUSDT/0\[\d+\] after rename", lines[-1]), lines[-1]
