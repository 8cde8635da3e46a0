"""Where a process's memory goes: /proc/PID/smaps_rollup and /proc/PID/smaps, by kind of mapping.

Used by bench/scale.py. USS counts pages only this process maps (its copies); PSS shares each
page among the processes that map it, so the sum of PSS over the tree is the memory it really
takes. The breakdown says which mappings hold a process's private pages:
- `python heap (obmalloc arenas)`: anonymous mappings of 1 MiB arenas, where every object of up to
  512 bytes lives: pages copied when a forked child writes an inherited object (a reference
  count, a GC header) or allocates into a half-used pool inherited from its parent;
- `[heap] (malloc)`: the brk heap: larger objects (dict tables, lists, code), libzmq and SQLite;
- `libpython data`: the interpreter's own static data (runtime state, small ints, static types);
- `thread stacks` (8 MiB mappings): libzmq's I/O and reaper threads, the paper exchange's threads;
- `thread malloc arenas` (64 MiB-aligned mappings): glibc's per-thread arenas;
- `other`: the main stack, shared-object data pages, SQLite's shared memory, the rest.
"""

from __future__ import annotations

import re
from collections import Counter

_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def rollup(pid: int) -> dict[str, int]:
    """smaps_rollup fields in bytes (Rss, Pss, Private_Dirty, ...)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    out["USS"] = out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)
    return out


def _kind(start: int, end: int, perms: str, name: str) -> str:
    size = end - start
    if name == "[heap]":
        return "[heap] (malloc)"
    if name == "[stack]":
        return "other"
    if "libpython" in name:
        return "libpython data"
    if name:
        return "other"
    if size in (8 << 20, (8 << 20) + 4096) and "w" in perms:
        return "thread stacks"
    if start % (64 << 20) == 0 and size <= 64 << 20:
        return "thread malloc arenas"
    return "python heap (obmalloc arenas)"


def breakdown(pid: int) -> Counter[str]:
    """Private bytes (USS) by kind of mapping."""
    kinds: Counter[str] = Counter()
    current = "other"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = _HEADER.match(line)
            if m:
                current = _kind(int(m[1], 16), int(m[2], 16), m[3], m[4].strip())
            elif line.startswith(("Private_Dirty:", "Private_Clean:")):
                kinds[current] += int(line.split()[1]) * 1024
    return kinds


KINDS = ("python heap (obmalloc arenas)", "[heap] (malloc)", "libpython data", "thread stacks", "thread malloc arenas", "other")


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0
