"""`naived demo`: the whole product on one machine, offline, in a temporary directory.

streamerd publishes a simulated market, naived trades it on the embedded paper
exchange, and the demo prints the live tree every few seconds. Part way
through it sends `kill -9` to a trader, so you can watch it come back with the
same cycle and the same open order.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import msgspec
import requests
import zmq

from naived.core.messages import StatusRequest, TreeStatus, control_reply_decoder
from naived.core.symbols import lookup
from naived.ctl import render
from naived.ops import processes
from naived.ops.listen import free_ports
from naived.tree.ipc import request
from naived.tree.process import die_with_parent

STATUS_EVERY = 5.0


def write_config(directory: Path, symbols: list[str]) -> Path:
    path = directory / "naive.toml"
    port, ws_port = free_ports(2)
    path.write_text(
        f"""
[paths]
runtime_dir = "{directory / 'run'}"
state_dir = "{directory / 'state'}"

[streamer]
endpoint = "ipc://{directory / 'run' / 'market.sock'}"
source = "simulate"
simulate_rate = 20.0

[naived]
autostart = {msgspec.json.encode(symbols).decode()}

[paper]
port = {port}
ws_port = {ws_port}

[trading.defaults]
profit_interval = "-0.0012"  # the book's chapter 5: a loss per cycle, so cycles finish while you watch (paper only)

[trading.budgets]  # a budget names its asset: one per quote asset of the symbols shown
{demo_budgets(symbols)}
"""
    )
    return path


def demo_budgets(symbols: list[str]) -> str:
    """TOML lines: 100 USDT as the documented default does; any other quote asset (ETHBTC's BTC)
    gets ten times what 2 traders need to pass its minimum notional, so the demo shows every
    symbol asked for trading. An unknown symbol gets nothing: naived says why it is not traded."""
    budgets = {"USDT": Decimal("100")}
    for symbol in symbols:
        filters = lookup(symbol)
        if filters is not None and filters.quote not in budgets:
            budgets[filters.quote] = filters.min_notional * 2 * 10
    return "\n".join(f'{asset} = "{amount}"' for asset, amount in budgets.items())


def _command(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [shutil.which(name) or name]


def _status(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> TreeStatus | None:
    reply = request(ctx, endpoint, StatusRequest(), control_reply_decoder, 2000)
    return reply if isinstance(reply, TreeStatus) else None


def _filled_orders(paper_url: str) -> int:
    try:
        orders = requests.get(f"{paper_url}/paper/orders", timeout=2).json()
    except (requests.RequestException, ValueError):
        return 0
    return sum(1 for o in orders if o.get("status") == "FILLED")


def _kill_a_trader(tree: TreeStatus) -> str | None:
    for sym in tree.symbols:
        for t in sym.leader.traders if sym.leader else []:
            if t.pid and t.state and t.state.buy_order:
                os.kill(t.pid, signal.SIGKILL)
                return f"kill -9 {t.pid} (trader {sym.symbol}/{t.trader_id}, cycle {t.state.cycle}, {t.state.status})"
    return None


def run(seconds: float, symbols: list[str]) -> int:
    from naived.core.config import load_config

    directory = Path(tempfile.mkdtemp(prefix="naive-demo-"))
    config_path = write_config(directory, symbols)
    config = load_config(str(config_path))
    config.make_dirs()  # 0700, before streamerd binds its ipc socket there
    print(f"naive demo: SIMULATED market, paper exchange, symbols {' '.join(symbols)}")
    print(f"  files and logs in {directory}; this demo stops after {seconds:g}s" if seconds else "  Ctrl-C stops it")
    procs = []
    for name in ("streamerd", "naived"):
        with open(directory / f"{name}.log", "w") as log:  # the daemon keeps its own copy of the descriptor
            procs.append(subprocess.Popen(_command(name) + ["start", "--config", str(config_path)], stderr=log,
                                          start_new_session=True, preexec_fn=die_with_parent))
    ctx = zmq.Context()
    start = time.monotonic()
    killed = False
    filled = 0
    try:
        while not seconds or time.monotonic() - start < seconds:
            time.sleep(STATUS_EVERY)  # the demo's pace for a human reader, not synchronisation
            if any(p.poll() is not None for p in procs):
                print("a daemon exited early; see the logs in", directory)
                return 1
            tree = _status(ctx, config.control_endpoint)
            if tree is None:
                continue
            print()
            print(render(tree, time.time()))
            filled = _filled_orders(config.paper_url)
            print(f"filled orders at the paper exchange: {filled}")
            if not killed and time.monotonic() - start > STATUS_EVERY * 1.5:
                done = _kill_a_trader(tree)
                if done:
                    killed = True
                    print(f"\n>>> {done}: watch it come back with the same cycle and order")
    except KeyboardInterrupt:
        pass
    finally:
        processes.stop(procs, timeout=10)
        ctx.term()
    print(f"\ndemo finished: {filled} orders filled at the paper exchange; logs in {directory}")
    return 0
