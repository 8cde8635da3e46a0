"""The README shows what its commands print: each sample is checked against a real run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import BIN, wait_for
from readme import example_of, examples, section

from naived.ops import processes
from naived.ops.listen import free_ports
from naived.tree.process import die_with_parent

REPO = Path(__file__).resolve().parent.parent


def run_shown(command: str, cwd: Path) -> str:
    """Run a README command line as a user would, with this checkout's tools for `.venv/bin/`."""
    (cwd / "samples").symlink_to(REPO / "samples")
    result = subprocess.run(["bash", "-c", command.replace(".venv/bin/", f"{BIN}/")], cwd=cwd, capture_output=True,
                            text=True, timeout=120, env={k: v for k, v in os.environ.items() if k != "NAIVE_CONFIG"})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", [
    "naived backtest samples/*.gz --plot sample.png",
    "naived backtest samples/*.gz --set profit_interval=0.0005,0.001,0.002",
])
def test_the_backtest_samples_are_what_the_commands_print(command: str, tmp_path: Path) -> None:
    example = example_of(f".venv/bin/{command}")
    assert example.output is not None
    assert run_shown(f".venv/bin/{command}", tmp_path) == example.output


# --- the five-minute tour ------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def shape(text: str) -> list[str]:
    """What a status sample and a real run must share: the tree's lines and their fields, not the
    numbers, ages or the order book of the moment (a trader may be buying or already selling)."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r" \(pnl [^)]*\)", "", line)  # shown once a cycle has finished
        if "profit  position " in line:  # a profit or a loss, as the market went
            line = re.sub(r"[+-](?=\d)", "", line)
        line = re.sub(r"(, last trade [\d.]+ \S+ ago)( \([^)]*\))?", r"\1", line)
        line = re.sub(r"cycle \d+ \w+(, (?:BUY|SELL) [\d.]+ @ [\d.]+ \w+)*", "cycle N ORDERS", line)
        line = re.sub(r"\b\d+(?:h\d+)?[sm]\b", "AGE", line)
        line = re.sub(r", market \S+", ", market ENDPOINT", line)  # the tests' own, not the default port
        lines.append(_NUMBER.sub("N", line))
    return lines


class Tour:
    """Runs the README's tour commands as a user types them, in a temporary directory with free
    ports (NAIVE_CONFIG, which both daemons and naivectl read), waiting where a user would."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        run = directory / "run"
        run.mkdir(mode=0o700)
        port, ws_port, web_port = free_ports(3)
        config = directory / "naive.toml"
        config.write_text(f"""
[paths]
runtime_dir = "{run}"
state_dir = "{directory / 'state'}"
[streamer]
endpoint = "ipc://{run / 'market.sock'}"
[paper]
port = {port}
ws_port = {ws_port}
[web]
port = {web_port}
""")
        self.env = {**os.environ, "NAIVE_CONFIG": str(config)}
        self.background: list[subprocess.Popen[bytes]] = []
        self.killed: dict[str, Any] | None = None  # the trader killed, as status showed it before

    def run(self, command: str) -> str:
        command = command.replace(".venv/bin/", f"{BIN}/")
        if command.endswith("&"):
            self.background.append(subprocess.Popen(["bash", "-c", f"exec {command[:-1]}"], cwd=self.dir, env=self.env,
                                                    start_new_session=True, preexec_fn=die_with_parent))
            if "/naived start" in command:
                wait_for("naived to answer", lambda: self.ctl("status").returncode == 0)
            return ""
        if command == "kill %1":  # the shell's first job: streamerd
            processes.stop(self.background[:1], 10)
            return ""
        if command.startswith("kill -9 "):
            return self.kill_trader()
        if command.endswith("/naivectl status"):
            wait_for("both traders to place their buys", lambda: len(self.buying()) == 2)
        result = subprocess.run(["bash", "-c", command], cwd=self.dir, env=self.env, capture_output=True, text=True,
                                timeout=90)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        return result.stdout

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "naivectl"), *args], env=self.env, capture_output=True, text=True, timeout=30)

    def buying(self) -> dict[int, dict[str, Any]]:
        tree = json.loads(self.ctl("status", "--json").stdout)
        leader = tree["symbols"][0]["leader"] if tree["symbols"] else None
        return {t["trader_id"]: t for t in (leader or {}).get("traders", []) if t["pid"] and t["state"]
                and t["state"]["buy_order"]}

    def kill_trader(self) -> str:
        """`kill -9 <the PID of trader 0>`: the PID the user reads off the status they printed."""
        self.killed = self.buying()[0]
        old_pid = self.killed["pid"]
        os.kill(old_pid, signal.SIGKILL)
        wait_for("trader 0 to come back", lambda: (t := self.buying().get(0)) is not None and t["pid"] != old_pid)
        return ""

    def stop(self) -> None:
        self.ctl("stop")
        processes.stop(self.background, 10)


def test_the_tour_prints_what_the_readme_shows(short_tmp: Path) -> None:
    tour = Tour(short_tmp)
    try:
        for example in examples(section("A five-minute tour")):
            out = ""
            for command in example.commands:
                out = tour.run(command)
            if os.environ.get("README_TOUR_PRINT"):  # how the samples are made: run with -s and this set
                print(f"\n$ {example.commands[-1]}\n{out}", end="")
            elif example.output is not None:
                assert shape(out) == shape(example.output), f"{example.commands[-1]}:\n{out}"
            if example.commands[-1].endswith("naivectl status XRPUSDT"):  # after kill -9: back as it was
                assert tour.killed is not None
                line = next(line for line in out.splitlines() if "trader 0" in line)
                assert ", restarts 1 " in line and f"cycle {tour.killed['state']['cycle']} " in line, line
        assert all(p.poll() is not None for p in tour.background[1:]), "naivectl stop left naived running"
    finally:
        tour.stop()
