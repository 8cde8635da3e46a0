"""`[naived] memory_merge`: every process of the tree offers its pages to the kernel's samepage
merging (KSM), which naived asks for once, before its first fork, so that every child inherits it.

Whether pages are then merged is the host's choice (`/sys/kernel/mm/ksm/run`); these tests do not
change that machine-wide setting. What merging saves is measured by `bench/scale.py --ksm`."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
from harness import open_buys, running_tree, tree_pids

RESTING = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.5"
"""


def _merge_any(pid: int) -> bool:
    """The kernel's own record (Linux >= 6.4): is this process's memory offered to KSM?"""
    for line in Path(f"/proc/{pid}/ksm_stat").read_text().splitlines():
        if line.startswith("ksm_merge_any:"):
            return line.split()[1] == "yes"
    pytest.skip("this kernel's /proc/PID/ksm_stat has no ksm_merge_any line")


def _kernel_has_it() -> bool:
    if not Path("/proc/self/ksm_stat").exists():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(68, 0, 0, 0, 0) >= 0  # PR_GET_MEMORY_MERGE: -1 (EINVAL) where unknown


needs_ksm = pytest.mark.skipif(not _kernel_has_it(), reason="needs Linux >= 6.4 with KSM (PR_SET_MEMORY_MERGE)")


@needs_ksm
@pytest.mark.parametrize("merge", [True, False])
def test_every_process_of_the_tree_offers_its_memory_or_none_does(tmp_path: Path, merge: bool) -> None:
    config = RESTING + ("" if merge else "\n[naived]\nmemory_merge = false\n")
    with running_tree(tmp_path, config) as tree:
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        open_buys(tree, "XRPUSDT", 2)
        pids = tree_pids(tree.status())
        assert len(pids) == 1 + 2 + 1 + 1 + 2  # naived, paper exchange, account stream, supervisor, leader, traders
        assert {pid: _merge_any(pid) for pid in pids} == dict.fromkeys(pids, merge)
        lines = [line for line in tree.log("naived").splitlines() if "memory merge:" in line]
        assert len(lines) == (1 if merge else 0), lines
