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


def setup_logging(name: str, level: int = logging.INFO) -> None:
    """Configure the root logger for process `name` (e.g. "naived", "trader XRPUSDT/0")."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter(f"{name}[%(process)d]: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)-5s {name}[%(process)d] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def rename_process_logs(name: str) -> None:
    """After fork: keep the handler, change the name shown on each line."""
    setup_logging(name, logging.getLogger().level)
