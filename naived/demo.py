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
import socket
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import msgspec
import zmq

from naived.core import validate
from naived.core.config import Web
from naived.core.messages import StatusRequest, TreeStatus, control_reply_decoder
from naived.core.symbols import lookup
from naived.ctl import books_text, render
from naived.ops import processes
from naived.ops.listen import free_ports
from naived.tree.ipc import request
from naived.tree.process import die_with_parent

STATUS_EVERY = 5.0
# The simulated market's log-price step per trade (streamerd/simulate.py; default 0.0002): at 20
# trades/s it moves ~0.4% within a few seconds, enough for the default settings' +0.3% sells
# (0.1% profit after 0.1% fees each way) to fill while you watch.
DEMO_VOLATILITY = 0.0008
WEB_PORT = Web().port  # [web] port's default


def web_port() -> int:
    """The web observer's documented port when it is free here (an address to remember), else any free one."""
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", WEB_PORT))
        return WEB_PORT
    except OSError:
        return free_ports(1)[0]
    finally:
        probe.close()


def write_config(directory: Path, symbols: list[str], web: int) -> Path:
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
simulate_volatility = {DEMO_VOLATILITY}  # livelier than the default market: cycles finish while you watch

[naived]
autostart = {msgspec.json.encode(symbols).decode()}
reconcile_seconds = 5.0  # the account read as often: the web observer's Account panel fills within seconds

[paper]
port = {port}
ws_port = {ws_port}

[web]  # the web observer: the tree in a browser, live
port = {web}

# [trading.defaults]: none here; the demo trades with the defaults config/naive.toml documents.

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


def _kill_a_trader(tree: TreeStatus) -> str | None:
    for sym in tree.symbols:
        for t in sym.leader.traders if sym.leader else []:
            if t.pid and t.state and t.state.buy_order:
                os.kill(t.pid, signal.SIGKILL)
                return f"kill -9 {t.pid} (trader {sym.symbol}/{t.trader_id}, cycle {t.state.cycle}, {t.state.status})"
    return None


def run(seconds: float, symbols: list[str], keep: bool = False) -> int:
    """The demo; its directory is removed at the end unless `keep`, or a daemon failed (its logs
    are then what the message points to)."""
    from naived.core.config import load_config

    directory = Path(tempfile.mkdtemp(prefix="naive-demo-"))
    config_path = write_config(directory, symbols, web_port())
    config = load_config(str(config_path))
    if problem := validate.config_problem(config):  # e.g. a TMPDIR too long for the sockets in it
        shutil.rmtree(directory, ignore_errors=True)
        print(f"naive demo: {problem}", file=sys.stderr)
        return 2
    config.make_dirs()  # 0700, before streamerd binds its ipc socket there
    print(f"naive demo: SIMULATED market (simulate_volatility {DEMO_VOLATILITY}), paper exchange, symbols {' '.join(symbols)}")
    print("  trading settings: the defaults (config/naive.toml [trading.defaults]); budgets: "
          + ", ".join(line.replace(' = ', ' ').replace('"', '') for line in demo_budgets(symbols).splitlines()))
    print(f"  watch it in a browser: http://127.0.0.1:{config.web.port}/")
    print(f"  this demo stops after {seconds:g}s (naived demo --seconds 0 runs until Ctrl-C, to watch it at leisure)"
          if seconds else "  Ctrl-C stops it")
    procs = []
    for name in ("streamerd", "naived"):
        with open(directory / f"{name}.log", "w") as log:  # the daemon keeps its own copy of the descriptor
            procs.append(subprocess.Popen(_command(name) + ["start", "--config", str(config_path)], stderr=log,
                                          start_new_session=True, preexec_fn=die_with_parent))
    ctx = zmq.Context()
    start = time.monotonic()
    killed = False
    failed: str | None = None
    tree: TreeStatus | None = None
    try:
        while not seconds or time.monotonic() - start < seconds:
            time.sleep(STATUS_EVERY)  # the demo's pace for a human reader, not synchronisation
            if (failed := _failure(procs, directory)) is not None:
                break
            tree = _status(ctx, config.control_endpoint) or tree
            if tree is None:
                continue
            print()
            print(render(tree, time.time()))
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
    if failed is not None:
        print(f"\ndemo failed: {failed}\n  the logs are kept in {directory}")
        return 1
    print()
    for line in summary(tree):
        print(line)
    if keep:
        print(f"files and logs kept in {directory}")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def _failure(procs: list[subprocess.Popen[bytes]], directory: Path) -> str | None:
    """Why a daemon exited early (None while both run)."""
    for proc, name in zip(procs, ("streamerd", "naived"), strict=True):
        if proc.poll() is not None:
            return processes.exit_reason(name, proc, directory / f"{name}.log")
    return None


def summary(tree: TreeStatus | None) -> list[str]:
    """What the demo made, per symbol: finished cycles and their profit after fees; open positions."""
    if tree is None:
        return ["demo finished before naived answered"]
    lines = ["demo finished (paper money, simulated market):"]
    for sym in tree.symbols:
        leader = sym.leader
        if leader is None:
            lines.append(f"  {sym.symbol}: {sym.state}" + (f" ({sym.error})" if sym.error else ""))
            continue
        holding = sum(1 for t in leader.traders if t.state and t.state.buy_order and t.state.buy_order.status == "FILLED")
        lines.append(f"  {sym.symbol}: {leader.cycles_finished} cycles finished, {books_text(leader)}; "
                     f"{holding} bought and waiting to sell")
    lines.append("  (pnl is realised: the finished cycles' sells less their buys, fees included; "
                 "naivectl history SYMBOL lists each cycle)")
    return lines
