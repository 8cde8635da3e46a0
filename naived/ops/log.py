"""Logging: one line per event, on stderr or appended to a file.

On stderr under systemd (`JOURNAL_STREAM` set) each line starts with a syslog priority prefix
(`<3>` error ... `<7>` debug) so journald files it at the right level; on a terminal the lines
are plain and readable.

A log file (`[naived.log] file`, `--log-file`) is opened once, before the daemon forks; every
process of the tree inherits the descriptor (O_APPEND) and writes each record, traceback and
all, with one write(2), so lines of many processes never interleave mid-line. Rotation needs no
signal: before each record a process compares the path's inode with its descriptor's (what
logging's WatchedFileHandler does; one stat(2), ~1 µs, measured in docs/benchmarks.md) and, when
logrotate moved or removed the file, reopens it onto the same descriptor number, so that what it
forks afterwards inherits the new file too.
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
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Logs may reveal trading activity: readable by the daemon's user only (logrotate's `create`
# may give a group more).
FILE_MODE = 0o600
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # journald reads one entry per line: prefix every line (a traceback's too), or the
        # continuation lines of an error would be filed at the default level (info).
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class _FileHandler(logging.Handler):
    """Appends each record to `path` with one write(2) on an O_APPEND descriptor shared by the
    whole tree; reopens the path (onto the same descriptor number) when it names another file."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = os.path.abspath(path)  # a reopen must find it whatever the working directory
        self.fd = os.open(self.path, _FLAGS, FILE_MODE)
        self.identity = _identity(os.fstat(self.fd))
        self.reopen_failed = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            self._follow_rotation()
            written = os.write(self.fd, data)
            while written < len(data):  # only on a full disk or the like: the rest, never a lost tail
                data = data[written:]
                written = os.write(self.fd, data)
        except Exception:
            self.handleError(record)

    def _follow_rotation(self) -> None:
        try:
            if _identity(os.stat(self.path)) == self.identity:
                return
        except FileNotFoundError:
            pass  # removed (logrotate without `create`): recreated below
        try:
            fd = os.open(self.path, _FLAGS, FILE_MODE)
        except OSError as exc:
            if not self.reopen_failed:  # said once; the old file keeps the lines meanwhile
                self.reopen_failed = True
                sys.stderr.write(f"cannot reopen log file {self.path}: {exc.strerror}; writing to the old one\n")
            return
        self.reopen_failed = False
        os.dup2(fd, self.fd)  # the same number: inherit_in_tree keeps it in every child forked from now on
        os.close(fd)
        self.identity = _identity(os.fstat(self.fd))


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def file_problem(path: str) -> str | None:
    """Why a log file could not be opened at `path`, in a few words (None when it could); creates
    nothing. `check-config` asks this; `start` opens the file, which is the real test."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"no such directory: {directory}"
    if os.path.isdir(path):
        return f"is a directory: {path}"
    if not os.access(path if os.path.exists(path) else directory, os.W_OK):
        return f"not writable: {path if os.path.exists(path) else directory}"
    return None


_title = "naive"  # the process name on each line; a forked child changes it, not the handler


def _add_title(record: logging.LogRecord) -> bool:
    record.title = _title
    return True


def setup_logging(name: str, level: int | str = logging.INFO, file: str = "") -> int | None:
    """Configure the root logger for process `name` (e.g. "naived", "trader XRPUSDT/0"): lines at
    `level` ("debug", "info", "warning", "error" or a number) and above, to `file` ("" = stderr).
    Returns the log file's descriptor, which the tree's children must keep; raises OSError when
    the file cannot be opened (nothing is changed then)."""
    global _title
    handler: logging.Handler = _FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    _title = name
    handler.addFilter(_add_title)
    if not file and os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(title)s[%(process)d]: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(title)s[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    # Nothing we print needs the caller's file and line, the thread or the multiprocessing name:
    # not gathering them is less work per line, and less code each forked process first runs
    # (and so copies the pages of) when it logs (logging's documented switches for this).
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    return handler.fd if isinstance(handler, _FileHandler) else None


def set_level(level: int | str) -> None:
    """Lines below `level` are dropped from now on, in this process and those it forks later."""
    logging.getLogger().setLevel(LEVELS[level] if isinstance(level, str) else level)


def rename_process_logs(name: str) -> None:
    """After fork: the same handler, another name on each line. Only a string changes: building a
    new handler and formatter in every forked child cost ~0.4 MiB of private memory each
    (CPython writes to every inherited object the logging set-up code touches)."""
    global _title
    _title = name
