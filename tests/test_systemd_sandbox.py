"""The daemons under their units' own seccomp settings (tests/sandbox.py applies
`RestrictAddressFamilies=` and `SystemCallFilter=` from systemd/*.service as systemd does).

A unit file that forbids something a daemon needs only shows under a real systemd: libzmq
aborts when netlink is refused, a forbidden syscall kills with SIGSYS. These tests run the
real programs under the real lists, read from the unit files, so they follow the units.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from harness import BIN, SANDBOX, UNITS, Tree, free_port, open_buys, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not Path("/proc/self/status").read_text().count("Seccomp:"),
    reason="needs systemd-analyze (syscall groups) and a seccomp-capable kernel",
)

RESTING = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.5"   # the buys rest far below the market
"""


def test_streamerd_without_af_netlink_aborts_in_libzmq(tmp_path: Path) -> None:
    # The unit as it was: libzmq lists interfaces over netlink when it binds tcp, and
    # asserts on the EAFNOSUPPORT that seccomp answers. This also proves the sandbox bites.
    unit = tmp_path / "streamerd.service"
    text = (UNITS / "streamerd.service").read_text()
    assert re.search(r"^RestrictAddressFamilies=.*\bAF_NETLINK\b", text, re.M)
    unit.write_text(re.sub(r"^(RestrictAddressFamilies=.*?) ?\bAF_NETLINK\b", r"\1", text, flags=re.M))
    result = subprocess.run(
        [sys.executable, str(SANDBOX), str(unit), "--", str(BIN / "streamerd"), "start",
         "--source", "simulate", "--endpoint", f"tcp://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=20, start_new_session=True, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "NAIVE_CONFIG"},
    )
    assert result.returncode == -signal.SIGABRT, result.stderr
    assert "Address family not supported" in result.stderr


def drain(sock: socket.socket, into: list[bytes], stop: threading.Event) -> threading.Thread:
    """Read the datagrams `sock` receives into `into` as they come, until `stop`, as systemd reads
    them: the daemons ping every second, and a queue left full (10 datagrams) holds up their sends."""

    def run() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                into.append(sock.recv(4096))
            except TimeoutError:
                continue

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_both_daemons_run_under_their_units_filters(tmp_path: Path) -> None:
    """The whole tree as installed: tcp market endpoint, metrics on loopback, fork, pidfds,
    SQLite, the paper exchange; a trader killed and restarted; a clean stop, no SIGSYS."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    streamer_metrics, naived_metrics = free_port(), free_port()
    tree = Tree(
        tmp_path, RESTING + f"\n[naived]\nmetrics_port = {naived_metrics}\n",
        market_endpoint=f"tcp://127.0.0.1:{free_port()}", streamer=f"metrics_port = {streamer_metrics}",
        sandboxed=True,
    )
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    http = requests.Session()
    http.trust_env = False
    stop, notes, drainer = threading.Event(), list[bytes](), None
    try:
        tree.start_streamer(env=env)
        assert notify.recv(4096).startswith(b"READY=1"), tree.log("streamerd")
        drainer = drain(notify, notes, stop)
        tree.start_naived(env=env)
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        before = open_buys(tree, "XRPUSDT", 2)[0]  # trades crossed tcp from the sandboxed streamerd
        os.kill(before["pid"], signal.SIGKILL)
        wait_for("trader 0 back with a new PID", lambda: (t := tree.traders("XRPUSDT").get(0)) and t["pid"] != before["pid"])
        for port in (streamer_metrics, naived_metrics):
            assert http.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
        wait_for("a WATCHDOG=1", lambda: b"WATCHDOG=1" in b"".join(notes))
        for proc in (tree.naived, tree.streamer):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, f"exit {proc.returncode}\n{tree.log('naived')}\n{tree.log('streamerd')}"
        assert tree.leftovers() == []
        assert "SIGSYS" not in tree.log("naived")  # no child died of a forbidden syscall either
        # prctl(PR_SET_MEMORY_MERGE) passes the filter (`@process`); only a kernel without it refuses
        assert "memory merge: the kernel refused" not in tree.log("naived") or not Path("/proc/self/ksm_stat").exists()
    finally:
        stop.set()
        if drainer is not None:
            drainer.join()
        tree.stop()
        notify.close()
