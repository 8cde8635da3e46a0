"""Chaos: kill -9 random processes of a trading tree, then check that no order was lost or placed twice.

Shared by `tests/test_chaos.py` (short, in CI) and `bench/chaos.py` (long, on demand).

The market is a real BTCUSDT tape (the sample in `samples/`; `bench/chaos.py` prefers the
larger recordings when they are there), replayed by streamerd at a speed that makes it last the
run, or streamerd's simulated market when the tape is too short for the run. naived trades it
with several traders and a negative profit interval, so cycles finish within seconds; the paper
exchange injects faults (seeded) on order requests and drops user data stream connections.

A killer sends SIGKILL at random moments to random traders, leaders, symbol supervisors, the account stream,
the paper exchange and naived itself (started again, as systemd would), taking PIDs from
`naivectl status --json` (never by name). After a naived,
leader or supervisor kill it waits, with a deadline, until the new leader's traders have
all said hello again, and keeps that time (the leader timestamps each hello: `ready_at`).

Then it stops the market, waits until the tree settles (every trader running, no pending
intent, states and the exchange's orders unchanged for a while: polled, with a deadline)
and checks the invariants of DESIGN.md "Never lose or duplicate an order" against the
paper exchange's records, the live states and the finished cycles.
"""

from __future__ import annotations

import gzip
import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
from figures import percentiles
from harness import Tree, wait_for
from recorded import BTC_TAPE

from naived.core.symbols import lookup

SYMBOL = "BTCUSDT"
CHUNKS = 4
START_USDT = Decimal("10000")
CID = re.compile(r"^(nv[a-z0-9]{6})-(\d+)-(\d+)(B|S\d*)$")  # <store prefix>-<trader>-<cycle><leg>
OPEN = ("NEW", "PARTIALLY_FILLED")
FINAL = ("FILLED", "CANCELED", "EXPIRED", "EXPIRED_IN_MATCH", "REJECTED")
# How often each is the victim. naived itself too: the killer then starts it again, as systemd would.
# streamerd and the account stream too: the killer starts it again (a replay starts the tape over), and the traders, the
# paper exchange and the leaders reconnect to the new publisher.
KINDS = {"trader": 12, "leader": 4, "supervisor": 2, "paper": 2, "account_stream": 2, "naived": 1, "streamer": 1}

# Buy 0.0001% under the first price (~0.06 USDT on BTCUSDT), sell ~0.1% *below* the buy: the buy
# fills at the next lower print, the sell at the next higher one, so cycles take seconds of tape
# and every leg of the protocol (intent, place, check, fill) runs many times. No restart intensity:
# the killer restarts things on purpose. A 1 s exchange timeout keeps accept_then_timeout short;
# a 1 s recvWindow and a 0.5 s backend window (the paper exchange decides every order before it
# answers) keep short the wait of a trader that finds no order behind an unknown intent (it trusts
# "no such order" only once no request in flight can still execute).
def trading_config(chunks: int) -> str:
    """The trading and supervision part (tests/cluster_chaos.py trades with it too)."""
    return f"""
[trading.defaults]
chunks = {chunks}
buy_down_interval = "0.000001"
profit_interval = "-0.003"

[naived.supervision]
max_restarts = 1000000
period_seconds = 1.0
stop_timeout_seconds = 3.0
"""


CONFIG = trading_config(CHUNKS) + """
[exchange]
timeout_seconds = 1.0
recv_window_ms = 1000
backend_timeout_seconds = 0.5
"""

# Exchange-side faults on top of kill -9: per order request, the classic failures, a rare 418
# ban, and late acceptance (answered "execution status unknown", the order enters the book 1 s
# later: inside the trader's 2.5 s window of recvWindow + backend + 1 s, as Binance promises);
# per public trade of a symbol with open orders, the exchange cancels or expires one of them.
FAULTS = """
[paper.faults]
accept_then_timeout = 0.03
accept_then_5xx = 0.04
rate_limit_429 = 0.02
ban_418 = 0.005
stale_timestamp = 0.02
drop_connection = 0.04
late_accept_5xx = 0.02
late_accept_timeout = 0.01
late_accept_seconds = 1.0
exchange_cancel = 0.002
exchange_expire = 0.002
user_stream_drop = 0.02
retry_after_seconds = 1
seed = {seed}
"""


def tape_seconds(tapes: list[Path]) -> float:
    """Span of the tapes' trades (receive times), in seconds."""
    stamps = []
    for path in tapes:
        first = last = None
        with gzip.open(path, "rb") as f:
            for line in f:
                if b'@trade"' in line:
                    stamp = int(line.split(b" ", 1)[0])
                    first = first or stamp
                    last = stamp
        stamps += [first, last]
    return (max(stamps) - min(stamps)) / 1e9


def default_market_seconds(kills: int, pause: tuple[float, float]) -> float:
    """About as long as the killing: the market keeps trades flowing throughout."""
    return kills * (sum(pause) / 2 + 0.25)


def replay_speed(tapes: list[Path], market_seconds: float) -> float | None:
    """The replay speed that makes `tapes` last about `market_seconds`; None when they are shorter
    than that at their own pace (the market would go quiet before the run ends)."""
    seconds = tape_seconds(tapes)
    return seconds / market_seconds if seconds >= market_seconds else None


def make_tree(directory: Path, seed: int, market_seconds: float, tapes: list[Path], faults: bool = True,
              partial_fills: bool = False) -> Tree:
    """A tree trading BTCUSDT on `tapes`, replayed to last about `market_seconds`; simulated if they are too short."""
    speed = replay_speed(tapes, market_seconds)
    if speed is not None:
        files = ", ".join(f'"{p}"' for p in tapes)
        streamer = f'replay_files = [{files}]\nreplay_speed = {speed:.3f}'
        market = "replay"
    else:
        streamer = f"simulate_seed = {seed}"  # at the harness's 50 trades/s: cycles within seconds
        market = "simulate"
    extra = CONFIG + (FAULTS.format(seed=seed) if faults else "")
    paper = "partial_fills = true\n" if partial_fills else ""  # a trade fills at most its own quantity
    paper += 'default_balance = "0"'  # the account holds USDT only: the checker counts every unit of both assets
    return Tree(directory, extra, market=market, streamer=streamer, paper=paper)


# --- the killer ------------------------------------------------------------------------


def victims(tree: Tree, status: dict[str, Any]) -> dict[str, list[int]]:
    """PIDs by kind, from one status answer."""
    found: dict[str, list[int]] = {kind: [] for kind in KINDS}
    found["naived"].append(status["pid"])
    if tree.streamer.poll() is None:
        found["streamer"].append(tree.streamer.pid)
    paper = status.get("paper_exchange")
    if paper and paper["pid"]:
        found["paper"].append(paper["pid"])
    stream = status.get("account_stream")
    if stream and stream["pid"]:
        found["account_stream"].append(stream["pid"])
    for sym in status["symbols"]:
        if sym["supervisor"]["pid"]:
            found["supervisor"].append(sym["supervisor"]["pid"])
        leader = sym.get("leader")
        if leader:
            found["leader"].append(leader["pid"])
            found["trader"] += [t["pid"] for t in leader["traders"] if t["pid"]]
    return found


def ours(tree: Tree, pid: int) -> bool:
    """Is `pid` (still) a process of this tree: a descendant of our naived, titled `naive: ...`?"""
    if pid == tree.naived.pid:
        return tree.naived.poll() is None
    if pid == tree.streamer.pid:
        return tree.streamer.poll() is None
    try:
        process = psutil.Process(pid)
        if not " ".join(process.cmdline()).startswith("naive: "):
            return False
        return any(p.pid == tree.naived.pid for p in process.parents())
    except psutil.Error:
        return False


def recovered(tree: Tree, old_leader: int) -> float | None:
    """When a new leader's traders have all said hello: the last `ready_at`, else None."""
    sym = tree.symbol(SYMBOL)
    leader = sym and sym.get("leader")
    if not leader or leader["pid"] == old_leader:
        return None
    traders = [t for t in leader["traders"] if t["pid"]]
    if len(traders) < CHUNKS or not all(t["ready_at"] for t in traders):
        return None
    return max(t["ready_at"] for t in traders)


@dataclass
class Report:
    kills: Counter = field(default_factory=Counter)  # by kind
    recovery_ms: dict[str, list[float]] = field(default_factory=lambda: {"leader": [], "supervisor": [], "naived": []})
    kill_seconds: float = 0.0
    settle_seconds: float = 0.0
    cycles: int = 0
    orders: int = 0
    lost: list[str] = field(default_factory=list)  # named by a state or cycle, not at the exchange
    orphaned: list[str] = field(default_factory=list)  # at the exchange, owned by no state or cycle
    duplicated: list[str] = field(default_factory=list)  # (symbol, trader, cycle, leg) placed twice
    problems: list[str] = field(default_factory=list)  # every broken invariant, lost/duplicated included
    traders: dict[str, int] = field(default_factory=dict)  # live traders by status at the end
    faults: Counter = field(default_factory=Counter)  # exchange-side faults injected, by kind

    @property
    def killed(self) -> int:
        return sum(self.kills.values())

    def summary(self) -> str:
        lines = [
            f"kills survived: {self.killed if not self.problems else 'FAILED'} of {self.killed} "
            f"({', '.join(f'{k} {n}' for k, n in sorted(self.kills.items()))}) in {self.kill_seconds:.0f}s",
            f"cycles completed: {self.cycles}; orders at the exchange: {self.orders}; live traders: "
            + ", ".join(f"{s} {n}" for s, n in sorted(self.traders.items())),
            f"orders lost: {len(self.lost) + len(self.orphaned)} (named but not at the exchange {len(self.lost)}, "
            f"at the exchange but owned by nobody {len(self.orphaned)})",
            f"orders duplicated: {len(self.duplicated)}",
        ]
        for kind, samples in self.recovery_ms.items():
            if samples:
                lines.append(f"{kind} kill -> all traders ready: {summary(samples)} ({len(samples)} kills)")
        lines.append("exchange faults: " + (", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())) or "none"))
        lines.append(f"settled in {self.settle_seconds:.1f}s after the market stopped")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


FAULT_LINES = {  # what the paper exchange logs when it injects each fault
    "accept then 503": "answering 503",
    "accept then silence": "answering nothing for",
    "late acceptance": "entered the book late",
    "429": "fault rate_limit_429",
    "418": "fault ban_418",
    "stale timestamp": "fault stale_timestamp",
    "dropped connection": "fault drop_connection",
    "exchange cancel": "the exchange canceled",
    "exchange expire": "the exchange expired",
}


def count_faults(log: str) -> Counter:
    return Counter({kind: n for kind, text in FAULT_LINES.items() if (n := log.count(text))})


def summary(samples: list[float]) -> str:
    p = percentiles(samples)
    return f"p50 {p['p50']:.0f} ms, p99 {p['p99']:.0f} ms, max {p['max']:.0f} ms"


def kill_loop(
    tree: Tree, kills: int, rng: random.Random, report: Report, pause: tuple[float, float],
    progress: Callable[[str], None] | None = None,
) -> None:
    started = time.monotonic()
    while report.killed < kills:
        status = wait_for("naived's status", tree.status)  # the root may be busy restarting a child
        found = victims(tree, status)
        kinds = [k for k in KINDS if found[k]]
        if not kinds:
            wait_for("any process to kill", lambda: any(victims(tree, tree.status()).values()))
            continue
        kind = rng.choices(kinds, weights=[KINDS[k] for k in kinds])[0]
        pid = rng.choice(found[kind])
        old_leader = next((p for p in found["leader"]), 0)
        if not ours(tree, pid):
            continue  # died (and maybe reused) since the status: pick again
        killed_at = time.time()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue  # it exited between the check and the kill
        report.kills[kind] += 1
        if kind == "naived":
            tree.naived.wait(10)
            tree.start_naived()  # it resumes every symbol, leader and trader from the state directory
        if kind == "streamer":
            tree.streamer.wait(10)
            tree.start_streamer()
        if kind in ("leader", "supervisor", "naived"):
            ready = wait_for(f"{SYMBOL}'s traders after a {kind} kill",
                             lambda old_leader=old_leader: recovered(tree, old_leader), timeout=60)
            report.recovery_ms[kind].append((ready - killed_at) * 1000)
        if progress and report.killed % 50 == 0:
            progress(f"{report.killed} kills, {time.monotonic() - started:.0f}s")
        time.sleep(rng.uniform(*pause))  # the workload: random moments, not synchronisation
    report.kill_seconds = time.monotonic() - started


# --- settling and the invariants -------------------------------------------------------------


def settle(tree: Tree, timeout: float = 90.0, stable_for: float = 1.5) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Wait until every trader runs with no pending intent and nothing changes for `stable_for` s."""
    last: list[Any] = [None, 0.0]

    def quiet() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        status = tree.status()
        if not status.get("paper_exchange") or not status["paper_exchange"]["pid"]:
            return None
        sym = next((s for s in status["symbols"] if s["symbol"] == SYMBOL), None)
        leader = sym and sym.get("leader")
        if not leader:
            return None
        traders = leader["traders"]
        if len([t for t in traders if t["pid"] and t["ready_at"]]) < CHUNKS:
            return None
        if any(t["state"] and t["state"]["intent"] for t in traders):
            return None
        orders = tree.paper_orders(SYMBOL)
        snapshot = (
            leader["pid"],
            [(t["trader_id"], t["pid"], t["state"]) for t in traders],
            [(o["clientOrderId"], o["status"], o["executedQty"]) for o in orders],
        )
        now = time.monotonic()
        if snapshot != last[0]:
            last[0], last[1] = snapshot, now
            return None
        return (leader, orders) if now - last[1] >= stable_for else None

    return wait_for("the tree to settle", quiet, timeout=timeout, interval=0.1)


def _dec(value: str | None) -> Decimal:
    return Decimal(value) if value is not None else Decimal(0)


def check(tree: Tree, leader: dict[str, Any], orders: list[dict[str, Any]], report: Report) -> None:
    history = tree.history(SYMBOL)
    report.cycles = len(history)
    report.orders = len(orders)
    check_symbol(SYMBOL, CHUNKS, history, leader, orders, report)
    check_balances(tree.paper_orders(), tree.paper_balances(), {"USDT": START_USDT}, report)


def check_symbol(symbol: str, chunks: int, history: list[dict[str, Any]], leader: dict[str, Any],
                 orders: list[dict[str, Any]], report: Report) -> None:
    """One symbol's invariants: its orders at the exchange (`orders`) against its live traders
    (`leader`, as status shows it) and its finished cycles (`history`)."""
    problems = report.problems

    # 1. No two orders share a (store prefix, trader, cycle, leg).
    by_key: dict[tuple[str, int, int, str], list[dict[str, Any]]] = {}
    for o in orders:
        m = CID.match(o["clientOrderId"])
        if not m:
            problems.append(f"order {o['clientOrderId']} (orderId {o['orderId']}) was not placed by a trader")
            continue
        key = (m[1], int(m[2]), int(m[3]), m[4])
        by_key.setdefault(key, []).append(o)
    for key, same in sorted(by_key.items()):
        if len(same) > 1:
            report.duplicated.append(same[0]["clientOrderId"])
            problems.append(f"{key} placed {len(same)} times: orderIds {[o['orderId'] for o in same]}")
    at_exchange = {o["clientOrderId"]: o for o in orders}

    # 2. Owners: every live state and finished cycle names its orders; each order has one owner.
    owners: dict[str, list[str]] = {}
    named: dict[str, dict[str, Any]] = {}  # cid -> the owner's view of the order
    cycles_seen: Counter = Counter()

    def own(state: dict[str, Any], who: str) -> None:
        cycles_seen[state["cycle"]] += 1
        sells = [*state["sells"], state["sell_order"]]
        legs = [("B", state["buy_order"])] + [("S" if i == 0 else f"S{i + 1}", o) for i, o in enumerate(sells)]
        for leg, order in legs:
            if order is None:
                continue
            cid = order["client_order_id"]
            expected = f"{state['id_prefix']}-{state['trader_id']}-{state['cycle']}{leg}"
            if cid != expected:
                problems.append(f"{who} names {cid} as its {leg} leg; expected {expected}")
            owners.setdefault(cid, []).append(who)
            named[cid] = order

    live = {t["trader_id"]: t for t in leader["traders"]}
    for trader_id in range(chunks):
        t = live.get(trader_id)
        if t is None or not t["pid"] or not t["state"]:
            problems.append(f"trader {trader_id} is not running with a state: {t}")
    for t in leader["traders"]:
        s = t["state"]
        if s is None:
            continue
        who = f"trader {s['trader_id']} (cycle {s['cycle']}, {s['status']})"
        own(s, who)
        report.traders[s["status"]] = report.traders.get(s["status"], 0) + 1
        buy, sell = s["buy_order"], s["sell_order"]
        # 3. Mid-cycle with a consistent state (the market is quiet: the exchange's word is final).
        if s["intent"] is not None:
            problems.append(f"{who} still has a pending intent {s['intent']}")
        ok = {
            "new": buy is None and sell is None,
            "buying": buy is not None and buy["status"] in OPEN and sell is None,
            "selling": buy is not None and buy["status"] in FINAL and sell is not None and sell["status"] in OPEN,
        }.get(s["status"], False)
        if not ok:
            problems.append(f"{who} is not a consistent mid-cycle state: buy {buy}, sell {sell}")
    for c in history:
        who = f"finished cycle {c['cycle']} (trader {c['trader_id']})"
        own(c, who)
        buy, sells, r = c["buy_order"], [*c["sells"], c["sell_order"]], c["result"]
        # Done, every order final, and the books add up: what the buy delivered was sold or is dust.
        if not (c["status"] == "done" and r is not None and buy and buy["status"] in FINAL
                and all(o["status"] in FINAL for o in sells if o)
                and _dec(r["sold"]) + _dec(r["dust"]) + _dec(r["fees"].get(symbol.removesuffix("USDT")))
                    == _dec(buy["executed_qty"])):
            problems.append(f"{who} did not finish with final orders whose books add up: {c}")
    for cycle, n in cycles_seen.items():
        if n > 1:
            problems.append(f"cycle {cycle} belongs to {n} traders or finished cycles")
    for cid, who in sorted(owners.items()):
        if len(who) > 1:
            problems.append(f"{cid} is owned {len(who)} times: {who}")

    # 4. Every order at the exchange has an owner; every named order exists, as its owner says.
    for cid in sorted(set(at_exchange) - set(owners)):
        o = at_exchange[cid]
        report.orphaned.append(cid)
        problems.append(f"{cid} ({o['side']} {o['status']}, orderId {o['orderId']}) is at the exchange, owned by nobody")
    for cid in sorted(set(owners) - set(at_exchange)):
        report.lost.append(cid)
        problems.append(f"{cid} is named by {owners[cid]} but the exchange has no such order")
    for cid in sorted(set(owners) & set(at_exchange)):
        mine, theirs = named[cid], at_exchange[cid]
        same = (
            mine["side"] == theirs["side"]
            and _dec(mine["price"]) == _dec(theirs["price"])
            and _dec(mine["quantity"]) == _dec(theirs["origQty"])
            and mine["status"] == theirs["status"]
            and _dec(mine["executed_qty"]) == _dec(theirs["executedQty"])
            and (mine["order_id"] is None or mine["order_id"] == theirs["orderId"])
        )
        if not same:
            problems.append(
                f"{cid}: {owners[cid][0]} says {mine['side']} {mine['quantity']} @ {mine['price']} {mine['status']} "
                f"executed {mine['executed_qty']}; the exchange says {theirs['side']} {theirs['origQty']} @ "
                f"{theirs['price']} {theirs['status']} executed {theirs['executedQty']}"
            )



def check_balances(all_orders: list[dict[str, Any]], balances: dict[str, dict[str, str]], start: dict[str, Decimal],
                   report: Report) -> None:
    """5. The account's balances: `start` plus every fill of every order, each asset of every symbol
    traded counted from 0 unless `start` says otherwise; locked = what open orders still commit."""
    problems = report.problems
    expected: dict[str, Decimal] = dict(start)
    locked: dict[str, Decimal] = {asset: Decimal(0) for asset in start}
    for o in all_orders:  # every symbol: the account is shared
        price, filled = _dec(o["price"]), sum((_dec(x["qty"]) for x in o["fills"]), Decimal(0))
        if filled != _dec(o["executedQty"]):
            problems.append(f"{o['clientOrderId']}: fills add up to {filled}, executedQty is {o['executedQty']}")
        f = lookup(o["symbol"])
        base, quote = f.base, f.quote
        for asset in (base, quote):
            expected.setdefault(asset, Decimal(0))
            locked.setdefault(asset, Decimal(0))
        sign = 1 if o["side"] == "BUY" else -1
        for x in o["fills"]:
            expected[base] += sign * _dec(x["qty"])
            expected[quote] -= sign * _dec(x["price"]) * _dec(x["qty"])
            if x["commissionAsset"] in expected:  # BNB, when fees are paid in it, is not checked here
                expected[x["commissionAsset"]] -= _dec(x["commission"])
        if o["status"] in OPEN:
            remaining = _dec(o["origQty"]) - _dec(o["executedQty"])
            if o["side"] == "BUY":
                locked[quote] += price * remaining
            else:
                locked[base] += remaining
    for asset, amount in expected.items():
        b = balances.get(asset, {"free": "0", "locked": "0"})
        total = _dec(b["free"]) + _dec(b["locked"])
        if total != amount:
            problems.append(f"{asset}: the exchange holds {total}, start + fills = {amount}")
        if _dec(b["locked"]) != locked[asset]:
            problems.append(f"{asset}: {b['locked']} locked, open orders commit {locked[asset]}")


def run(
    directory: Path, kills: int, seed: int = 1, pause: tuple[float, float] = (0.05, 0.5),
    market_seconds: float | None = None, faults: bool = True, partial_fills: bool = False,
    progress: Callable[[str], None] | None = None, tapes: list[Path] | None = None,
) -> Report:
    """One chaos run in `directory` on `tapes` (default: the sample's BTCUSDT); the tree is
    stopped (every process killed) on the way out."""
    rng = random.Random(seed)
    if market_seconds is None:
        market_seconds = default_market_seconds(kills, pause)
    tree = make_tree(directory, seed, market_seconds, tapes or [BTC_TAPE], faults, partial_fills)
    report = Report()
    try:
        tree.start_streamer()
        tree.start_naived()
        assert tree.ctl("start-trading", SYMBOL).returncode == 0
        wait_for(f"{CHUNKS} {SYMBOL} traders", lambda: recovered(tree, 0), timeout=30)
        kill_loop(tree, kills, rng, report, pause, progress)
        stopped = time.monotonic()
        tree.stop_streamer()
        leader, orders = settle(tree)
        report.settle_seconds = time.monotonic() - stopped
        check(tree, leader, orders, report)
        report.faults = count_faults(tree.log("naived"))
        sym = tree.symbol(SYMBOL)
        if sym["state"] != "running":
            report.problems.append(f"{SYMBOL} is {sym['state']}: {sym['error']}")
    finally:
        tree.stop()
    return report
