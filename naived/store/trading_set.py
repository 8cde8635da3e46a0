"""The trading set: which symbols trade and how (running or shutting down), kept by the root in
`<state_dir>/trading.json` so that they start again, in the same mode, when naived starts.

Written whole under a temporary name, fsynced, and renamed into place (the directory fsynced
too): a crash or a power cut leaves the old set or the new one, never an empty file. A file that
does not parse is moved aside, not taken for an empty set, and said in `status`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from naived.core.config import check_symbol

log = logging.getLogger(__name__)


class TradingSet:
    """Symbols that are trading and how (running or shutting down), on disk for autostart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.modes: dict[str, str] = {}
        self.problem: str | None = None  # an unreadable file, said in status until naived restarts
        try:
            raw = json.loads(path.read_text())
            # An older naived wrote a plain list of running symbols.
            self.modes = {check_symbol(s): "running" for s in raw} if isinstance(raw, list) else {
                check_symbol(s): ("shutting-down" if m == "shutting-down" else "running") for s, m in raw.items()
            }
        except FileNotFoundError:
            pass
        except (ValueError, AttributeError, TypeError) as exc:  # not ours to lose: keep it for the user
            # An emptied file is as unreadable as a foreign one: never silently an empty set.
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            os.replace(path, aside)
            self.problem = (f"the trading set {path} was unreadable ({str(exc)[:80] or type(exc).__name__}); moved to "
                            f"{aside.name}, no symbol autostarted from it: start the symbols again (naivectl start-trading)")
            log.error("%s", self.problem)

    def set(self, symbol: str, mode: str | None) -> None:
        """Record a symbol's mode on disk; an OSError (a read-only or full state dir) leaves both
        the file and the modes in memory as they were."""
        modes = dict(self.modes)
        if mode is None:
            modes.pop(symbol, None)
        else:
            modes[symbol] = mode
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(dict(sorted(modes.items()))))
            f.flush()
            os.fsync(f.fileno())  # else a power cut after the rename may leave an empty file
        os.replace(tmp, self.path)  # atomic: a crash leaves the old or the new list
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself
        finally:
            os.close(directory)
        self.modes = modes
