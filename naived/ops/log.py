"""Logging: one line per event on stderr.

Under systemd (`JOURNAL_STREAM` set) each line starts with a syslog priority
prefix (`<3>` error ... `<7>` debug) so journald files it at the right level;
on a terminal the lines are plain and readable.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # journald reads one entry per line: prefix every line (a traceback's too), or the
        # continuation lines of an error would be filed at the default level (info).
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


_title = "naive"  # the process name on each line; a forked child changes it, not the handler


def _add_title(record: logging.LogRecord) -> bool:
    record.title = _title
    return True


def setup_logging(name: str, level: int = logging.INFO) -> None:
    """Configure the root logger for process `name` (e.g. "naived", "trader XRPUSDT/0")."""
    global _title
    _title = name
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_add_title)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(title)s[%(process)d]: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(title)s[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Nothing we print needs the caller's file and line, the thread or the multiprocessing name:
    # not gathering them is less work per line, and less code each forked process first runs
    # (and so copies the pages of) when it logs (logging's documented switches for this).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False


def rename_process_logs(name: str) -> None:
    """After fork: the same handler, another name on each line. Only a string changes: building a
    new handler and formatter in every forked child cost ~0.4 MiB of private memory each
    (CPython writes to every inherited object the logging set-up code touches)."""
    global _title
    _title = name
