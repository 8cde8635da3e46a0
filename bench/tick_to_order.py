"""Tick to order: a trade frame entering streamerd → the BUY it triggers arriving at the paper exchange.

A real deployment in a temp dir: the fake Binance websocket server
(tests/fake_binance.py) in this process, `streamerd --source binance` reading
from it, naived with its paper exchange, XRPUSDT traded by one trader
(`chunks = 1`). Each sample is a trader cycle, on a fresh trader (the trade comes the moment it
said hello, while its warm-up request is still out) and on a warmed one (the trade comes 0.3 s
later, which is what a user sees), then the same number of samples on the bare chain of the
same hops (bench/bare_chain.py: a websocket relay to XPUB, a SUB that asks a REP for an ack and
sends the same order POST to the same paper exchange), whose p50 the target compares with:

1. wait until the cycle's trader said hello to its leader (`ready_at`);
2. write one trade frame to streamerd's websocket (t0 = time.time_ns() just before
   the write); the trader's first trade places a BUY;
3. the paper exchange stamps the order request when its request line arrives
   (`receivedNs`, time.time_ns(), the same system-wide clock): sample = receivedNs - t0;
4. finish the cycle (a trade below the buy fills it, a trade above the sell fills
   that): the trader exits 0 and the leader forks the next cycle's trader.

A SUB socket in this process receives the same trades, which splits each sample
into the streamer leg (websocket → streamerd → ZeroMQ) and the trader leg. The
script then times the parts of the trader leg one by one against the live tree
(the leader's acked state write, back to back and after a quiet spell as a trader's; a cold
vs a warm exchange client), and with `--profile` samples the traders with py-spy.

The same is measured on each store backend of `--stores` (default both), one deployment each,
alike but for `[store]`: SQLite (the default) and PostgreSQL (a real server started as the tests
start it, tests/pg.py, over TCP on 127.0.0.1; the host a one-host cluster whose leader fences
every write with the symbol's lease). Both trees run at once and their cycles alternate, so
that the machine's other work weighs on both alike; the bare chain runs once, on the first
store's tree. A PostgreSQL host trades a symbol once its lease keeper took the lease, and
places orders once the keeper's first round set its share of the account's order limits (in
force at once for a host alone, else from the next 10 s window): the cycles start only then.

    .venv/bin/python bench/tick_to_order.py [--samples 200] [--stores sqlite postgresql] [--quick] [--profile] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_binance import FakeBinance, server_frame, trade_json
from figures import percentiles
from harness import BIN, Tree, wait_for
from pg import running_server

from naived.core.config import Config, load_config
from naived.core.messages import (  # noqa: E402
    LeaderStatus,
    LeaderStatusRequest,
    StateUpdated,
    TraderState,
    decode_trade,
    encode,
    leader_reply_decoder,
    trade_topic,
)
from naived.exchange import binance as exchange
from naived.exchange import budget as rate_budget
from naived.tree.ipc import request

SYMBOL = "XRPUSDT"
PRICE = Decimal("0.5000")
LOW, HIGH = "0.4800", "0.5200"  # fills the buy (strictly below it), fills the sell (above it)
RETRY_S = 0.3  # a trade the trader missed (it cannot, but never hang on it) is sent again
TARGET_BARE_RATIO = 1.5  # issue 13: p50 within 1.5x of the bare chain measured in the same run

CONFIG = """
[trading.defaults]
chunks = 1
rebuy_interval = "0.5"      # the fill trade must not also trigger a rebuy notification
"""


IDLE_ACK_S = 0.3  # s: a leader ack timed after as long a quiet spell as a warmed trader's
ORDER_PAIR_SPACING = 0.45  # s: two orders per 0.45 s is 44 in 10 s, under the budget's 45


class Tap(threading.Thread):
    """A SUB like a trader's: when each trade id left streamerd's XPUB (arrival here, ns)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(endpoint)
        self.sub.setsockopt(zmq.SUBSCRIBE, trade_topic(SYMBOL))
        self.seen: dict[int, int] = {}
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            if self.sub.poll(100, zmq.POLLIN):
                _, payload = self.sub.recv_multipart()
                at = time.time_ns()
                self.seen[decode_trade(payload).t] = at

    def stop(self) -> None:
        self.stopping = True
        self.join(2)
        self.sub.close()
        self.ctx.term()


class Bench:
    def __init__(self, tree: Tree, fake: FakeBinance) -> None:
        self.tree = tree
        self.fake = fake
        self.config = load_config(str(tree.config_path))
        self.ctx = zmq.Context()
        self.trade_id = 1000
        self.paced_until = 0.0  # monotonic: the next cycle may place its orders from then
        self.conn = None

    def leader(self) -> LeaderStatus | None:
        reply = request(self.ctx, self.config.leader_endpoint(SYMBOL), LeaderStatusRequest(), leader_reply_decoder, 500)
        return reply if isinstance(reply, LeaderStatus) else None

    def trader(self) -> tuple[int, int, float, str] | None:
        """(pid, cycle, ready_at, id prefix) of trader 0 once it said hello with a fresh cycle (no buy yet)."""
        status = self.leader()
        t = next((t for t in status.traders if t.trader_id == 0), None) if status else None
        if t and t.pid and t.ready_at and t.state and t.state.buy_order is None and t.state.intent is None:
            return t.pid, t.state.cycle, t.ready_at, t.state.id_prefix
        return None

    def push(self, price: str) -> int:
        """One trade frame, written to streamerd's connection; returns the send time in ns."""
        self.trade_id += 1
        frame = server_frame(trade_json(SYMBOL, self.trade_id, price=price))
        if self.conn is None or self.conn.closed:
            self.conn = self.fake.wait_for_subscription(f"{SYMBOL.lower()}@trade", timeout=10)
        sent = time.time_ns()
        if not self.conn.send(frame):
            raise RuntimeError("streamerd's websocket connection dropped")
        return sent

    def order(self, client_order_id: str) -> dict | None:
        orders = self.tree.http.get(f"{self.tree.paper_url}/paper/orders", params={"symbol": SYMBOL}, timeout=5).json()
        return next((o for o in orders if o["clientOrderId"] == client_order_id), None)

    def until(self, what: str, price: str, probe) -> tuple[object, list[tuple[int, int]]]:
        """Send a trade at `price` (again every RETRY_S) until `probe()` answers; the sends made."""
        sends = [(self.push(price), self.trade_id)]
        deadline = time.monotonic() + 20
        while True:
            found = probe()
            if found:
                return found, sends
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.005)  # polling harder would take CPU from the tree (2 cores)
            if time.time_ns() - sends[-1][0] > RETRY_S * 1e9:
                sends.append((self.push(price), self.trade_id))

    def cycle(self, tap: Tap, settle: float = 0.01) -> tuple[float, float | None]:
        pid, cycle, _, prefix = wait_for("a fresh trader", self.trader, interval=0.002)
        time.sleep(settle)  # its SUB subscription reaches streamerd's XPUB right after the hello; be sure
        buy_id = f"{prefix}-0-{cycle}B"
        buy, sends = self.until("the buy", str(PRICE), lambda: self.order(buy_id))
        received = buy["receivedNs"]
        sent, trade_id = max((s for s in sends if s[0] <= received), default=sends[0])
        total = (received - sent) / 1e6
        tapped = tap.seen.get(trade_id)
        streamer = (tapped - sent) / 1e6 if tapped else None
        # finish the cycle: fill the buy, then the sell; the trader exits and the next one starts.
        # Untimed, paced first: two orders a cycle stay under the host's order budget (at most 50 in
        # 10 s, Binance's limit), so no timed order is ever held back by it.
        time.sleep(max(0.0, self.paced_until - time.monotonic()))
        self.paced_until = time.monotonic() + ORDER_PAIR_SPACING
        sell_id = f"{prefix}-0-{cycle}S"
        self.until("the sell", LOW, lambda: self.order(sell_id))
        self.until("the next cycle", HIGH, lambda: (t := self.trader()) and t[0] != pid)
        return total, streamer

    # --- the trader leg, part by part ----------------------------------------------------

    def leader_acks(self, rounds: int, idle: float = 0.0) -> dict[str, float]:
        """A state write the leader must store before it acks (on this tree's store), on a spare
        trader id the leader never runs; `idle` s before each, as a trader's intent comes after a
        quiet spell (the processes of the store's path are asleep then and must be woken)."""
        status = self.leader()
        settings = next(t.state.settings for t in status.traders if t.state)
        req = self.ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(self.config.leader_endpoint(SYMBOL))
        took = []
        for i in range(rounds):
            time.sleep(idle)
            payload = encode(StateUpdated(TraderState(SYMBOL, 99, 10_000_000 + i, settings), 0))
            start = time.perf_counter()
            req.send(payload)
            req.recv()
            took.append((time.perf_counter() - start) * 1000)
        req.close()
        return percentiles(took)

    def exchange_parts(self, rounds: int) -> dict[str, dict[str, float]]:
        """A fresh trader's exchange calls, each timed alone against the live tree's paper exchange."""
        out: dict[str, list[float]] = {"exchange: cold client, first order": [], "exchange: warm client, one order": [],
                                      "exchange: cold client, server time only": []}
        for i in range(rounds):
            time.sleep(ORDER_PAIR_SPACING)  # two orders a round, under the host's order budget
            client = exchange.client_for(self.config)
            start = time.perf_counter()
            client.server_time()
            out["exchange: cold client, server time only"].append((time.perf_counter() - start) * 1000)
            client.close()
            client = exchange.client_for(self.config)
            start = time.perf_counter()
            client.new_order("ADAUSDT", "BUY", "0.1000", "100.0", f"bench-cold-{os.getpid()}-{i}")
            out["exchange: cold client, first order"].append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            client.new_order("ADAUSDT", "BUY", "0.1000", "100.0", f"bench-warm-{os.getpid()}-{i}")
            out["exchange: warm client, one order"].append((time.perf_counter() - start) * 1000)
            client.close()
        return {name: percentiles(v) for name, v in out.items()}


BARE_CHAIN = Path(__file__).resolve().parent / "bare_chain.py"


def bare_chain(bench: Bench, directory: Path, samples: int) -> list[float]:
    """The same hops with nothing else (bench/bare_chain.py): frame -> relay -> SUB -> REQ/REP ack
    -> the same order POST to the same paper exchange. Its processes are killed by PID."""
    run = directory / "run"
    xpub, rep = f"ipc://{run / 'bare-market.sock'}", f"ipc://{run / 'bare-ack.sock'}"
    python = str(BIN / "python")
    with open(directory / "bare-chain.log", "ab") as log:  # each process keeps its own copy of the descriptor
        procs = [subprocess.Popen([python, str(BARE_CHAIN), *argv], stderr=log, start_new_session=True) for argv in (
            ["relay", f"{bench.fake.url}/stream?streams=xrpusdt@trade", xpub], ["ack", rep],
            ["trader", xpub, rep, bench.tree.paper_url])]
    try:
        streamerd_conn = bench.conn
        conn = bench.fake.wait_for_subscription("xrpusdt@trade", timeout=10, exclude=[streamerd_conn] if streamerd_conn else [])

        def push() -> tuple[int, int]:
            bench.trade_id += 1
            frame = server_frame(trade_json(SYMBOL, bench.trade_id, price=str(PRICE)))
            sent = time.time_ns()
            if not conn.send(frame):
                raise RuntimeError("the bare relay's websocket connection dropped")
            return sent, bench.trade_id

        def order(trade_id: int) -> dict | None:
            return bench.order(f"bare-{trade_id}")

        # the first frames only prove the chain is connected end to end (SUB joins late)
        wait_for("the bare chain", lambda: order(push()[1]), timeout=20, interval=0.2)
        out = []
        for _ in range(samples):
            time.sleep(0.05)  # as idle between trades as naive's trader is
            sent, trade_id = push()
            try:
                placed = wait_for("a bare order", lambda trade_id=trade_id: order(trade_id), interval=0.005)
            except AssertionError:
                raise AssertionError("no bare order; bare-chain.log ends:\n"
                                     + (directory / "bare-chain.log").read_text()[-2000:]) from None
            out.append((placed["receivedNs"] - sent) / 1e6)
        return out
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def profile(spy: str, bench: Bench, tap: Tap, cycles: int, directory: Path, store: str) -> None:
    """py-spy on the leader and its forked traders while cycles run: where the active time goes."""
    leader = bench.leader()
    out = directory / "profile.txt"
    proc = subprocess.Popen([spy, "record", "--subprocesses", "--rate", "1000", "--format", "raw", "--output", str(out),
                             "--pid", str(leader.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    try:
        for _ in range(cycles):
            bench.cycle(tap, settle=0.3)  # py-spy finds a new child process within ~0.1 s
    finally:
        proc.send_signal(2)
        _, err = proc.communicate(timeout=30)
    if not out.exists():
        print(f"\nprofile: py-spy failed: {err.decode(errors='replace')[-300:]}")
        return
    # raw format: "process title;frame;frame;... count" per line; only the traders' active samples
    leaf, inclusive, total = Counter(), Counter(), 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        if not any(f.startswith("process ") and "trader" in f for f in parts):
            continue
        n = int(count)
        total += n
        frames = [f for f in parts if not f.startswith("process ")]
        if frames[-1].startswith(("Poller.poll (zmq", "Socket.poll (zmq")):
            continue  # waiting for a trade or an ack: idle, whatever py-spy thinks
        leaf[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    if total == 0:
        print("\nprofile: no trader samples; py-spy said:", err.decode(errors="replace")[-300:])
        print("\n".join(out.read_text().splitlines()[:3])[:600])
        return
    print(f"\nprofile ({store}): py-spy, traders' active samples over {cycles} cycles ({total} samples at 1 kHz,"
          " zmq waits left out; whole cycles: buy, fill checks, sell)")
    interesting = [f for f, _ in inclusive.most_common(60) if any(k in f for k in (
        "report", "place", "new_order", "server_time", "_send", "connect", "call ", "on_trade", "decode", "getresponse",
        "request ", "check", "act ", "resume", "__init__ (naived/trader", "_retrying", "poll"))]
    for f in interesting[:14]:
        print(f"  {inclusive[f] / max(total, 1):6.1%} incl  {f}")
    print("  hottest leaves:")
    for f, n in leaf.most_common(8):
        print(f"  {n / max(total, 1):6.1%}       {f}")


STORES = ("sqlite", "postgresql")
HOST_ID = "bench"  # the PostgreSQL host's name in its (one-host) cluster


def store_config(store: str) -> str:
    """The only lines the deployments differ by: the store."""
    if store == "sqlite":
        return CONFIG  # the default store
    return CONFIG + f"""
[store]
backend = "postgresql"
host_id = "{HOST_ID}"
"""


def orders_open(config: Config) -> bool:
    """The host may place its whole order budget now. On PostgreSQL the host shares the account's
    order limits with the cluster: its lease keeper's first round holds the orders and reserves the
    host's share, which is in force at once for a host alone (no other host held a lease lately),
    else from the 10 s window after it (naived/core/order_shares.py); a cycle timed before then
    would time the hold."""
    state = rate_budget.snapshot(config.budget_path)
    if state is None:
        return False
    if config.store.shared and not state.share_hosts:
        return False  # the keeper's first round has not set the host's share yet
    limits = exchange.budget_limits(config)
    return state.order_limits(limits)[0] >= limits.orders_per_10s


class Deployment:
    """One store's tree: its fake Binance, streamerd, naived (paper exchange), its tap and its bench."""

    def __init__(self, store: str, directory: Path, stack: ExitStack, dsn: str | None) -> None:
        self.store = store
        directory.mkdir()
        self.fake = stack.enter_context(FakeBinance())
        self.tree = Tree(directory, store_config(store), market="binance")
        stack.callback(self.tree.stop)
        self.tree._spawn("streamerd", "start", "--binance-url", self.fake.url)
        self.tree.start_naived(env={"NAIVE_STORE_DSN": dsn} if dsn else None)
        self.tap = Tap(tree_endpoint(self.tree))
        self.tap.start()
        stack.callback(self.tap.stop)
        assert self.tree.ctl("start-trading", SYMBOL).returncode == 0
        self.bench = Bench(self.tree, self.fake)

    def held(self) -> int:
        """Requests the host's rate budget has held back so far (never sent)."""
        state = rate_budget.snapshot(self.bench.config.budget_path)
        return state.held_total if state else 0

    def wait_ready(self) -> None:
        """Trader 0 said hello (on PostgreSQL: once the keeper's round took the symbol's lease) and
        the host's orders are open; a symbol on PostgreSQL may take a lease round and a 10 s window."""
        wait_for(f"trader 0 of {SYMBOL} ready ({self.store})", self.bench.trader, timeout=60, interval=0.1)
        wait_for(f"the host's order budget in force ({self.store})", lambda: orders_open(self.bench.config),
                 timeout=60, interval=0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES),
                        help="the store backends to measure, each on its own tree, cycles alternating (default: both)")
    parser.add_argument("--quick", action="store_true", help="a few samples, to check the script works")
    parser.add_argument("--profile", action="store_true", help="py-spy the traders over some more cycles")
    parser.add_argument("--json", action="store_true", help="also print one BENCH-JSON line for bench/run_all")
    args = parser.parse_args()
    if args.quick:
        args.samples = 10
    stores = list(dict.fromkeys(args.stores))
    with tempfile.TemporaryDirectory(prefix="naive-bench-") as tmp, ExitStack() as stack:
        directory = Path(tmp)
        dsn = None
        if "postgresql" in stores:
            try:
                dsn = stack.enter_context(running_server()).dsn()
            except RuntimeError as exc:
                raise SystemExit(f"{exc}\n(`--stores sqlite` measures without PostgreSQL)") from None
        deployments = [Deployment(store, directory / store, stack, dsn if store == "postgresql" else None)
                       for store in stores]
        for d in deployments:
            d.wait_ready()
        held_before = {d.store: d.held() for d in deployments}
        first = deployments[0]
        # fresh: the trade arrives the moment the trader said hello (before its warm-up request
        # is done); warmed: a trader that has been waiting a while, which is what a user sees.
        # The stores' cycles alternate, so that the machine's other work weighs on each alike.
        runs: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        for kind, settle in (("fresh", 0.01), ("warmed", 0.3)):
            for d in deployments:
                runs[kind, d.store] = [], []
            for _ in range(args.samples):
                for d in deployments:
                    total, leg = d.bench.cycle(d.tap, settle)
                    totals, streamer = runs[kind, d.store]
                    totals.append(total)
                    if leg is not None:
                        streamer.append(leg)
        held = {d.store: d.held() - held_before[d.store] for d in deployments}
        bare = percentiles(bare_chain(first.bench, first.tree.dir, args.samples))
        print(f"tick to order, {SYMBOL}, one trader cycle per sample (n={args.samples} each), "
              f"store{'s' * (len(stores) > 1)} {' and '.join(stores)}"
              + (", their cycles alternating" if len(stores) > 1 else ""))
        print(f"{'':<44}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  (ms)")

        def row(name: str, p: dict[str, float]) -> None:
            print(f"{name:<44}{p['p50']:9.3f}{p['p90']:9.3f}{p['p99']:9.3f}{p['max']:9.3f}")

        for (kind, store), (totals, streamer) in runs.items():
            row(f"frame -> order, {kind} trader, {store}", percentiles(totals))
            row("  streamer leg: frame -> SUB (this process)", percentiles(streamer))
            if len(streamer) == len(totals):
                row("  trader leg: SUB -> order request line",
                    percentiles([a - b for a, b in zip(totals, streamer, strict=True)]))
        row("frame -> order, bare chain of the same hops", bare)
        for (kind, store), (totals, _) in runs.items():
            p50 = percentiles(totals)["p50"]
            ratio = p50 / bare["p50"]
            verdict = "met" if ratio <= TARGET_BARE_RATIO else f"MISSED by {p50 - TARGET_BARE_RATIO * bare['p50']:.2f} ms"
            print(f"target p50 within {TARGET_BARE_RATIO:g}x of the bare chain, {kind} trader, {store}: {ratio:.2f}x, {verdict}")
        if len(stores) > 1:
            for kind in ("fresh", "warmed"):
                base = percentiles(runs[kind, stores[0]][0])
                print(f"{kind} trader, against {stores[0]}: " + ", ".join(
                    f"{store} p50 {percentiles(runs[kind, store][0])['p50'] - base['p50']:+.3f} ms, "
                    f"p90 {percentiles(runs[kind, store][0])['p90'] - base['p90']:+.3f} ms" for store in stores[1:]))
        # A request the host's budget held back (an order share not yet in force, say) would be in
        # a sample: none may be.
        print("requests held back by the host's budget during the cycles: "
              + ", ".join(f"{store} {n}" for store, n in held.items())
              + ("" if not any(held.values()) else "  (NOT 0: some samples include a hold)"))
        rounds = 10 if args.quick else 50
        print("\nthe trader leg's steps, each timed alone against the live tree:")
        for d in deployments:
            row(f"  leader ack (state stored), {d.store}", d.bench.leader_acks(rounds))
        for d in deployments:
            row(f"  the same after {IDLE_ACK_S:g} s idle, {d.store}", d.bench.leader_acks(rounds, IDLE_ACK_S))
        for name, p in first.bench.exchange_parts(rounds).items():
            row(f"  {name}", p)
        if args.profile:
            spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
            if spy is None:
                print("\nprofile: py-spy is not installed (pip install py-spy into the venv)")
            for d in deployments if spy else []:
                profile(spy, d.bench, d.tap, 20 if args.quick else 100, d.tree.dir, d.store)
        if args.json:
            rows = []
            for store in stores:
                label = "" if store == "sqlite" else f", {store} store"
                for kind in ("warmed", "fresh"):
                    p = percentiles(runs[kind, store][0])
                    rows.append({"figure": f"tick -> order at exchange, {kind} trader{label}", "unit": "ms", "p50": p["p50"],
                                 "p99": p["p99"], "peer": f"bare chain p50 {bare['p50']:.2f}", "ratio": bare["p50"] / p["p50"],
                                 "target": f"<={TARGET_BARE_RATIO:g}x bare", "n": p["n"]})
            rows.append({"figure": "  bare chain of the same hops", "unit": "ms", "p50": bare["p50"], "p99": bare["p99"],
                         "peer": None, "ratio": None, "target": "", "n": bare["n"]})
            print("BENCH-JSON: " + json.dumps(rows))


def tree_endpoint(tree: Tree) -> str:
    return load_config(str(tree.config_path)).streamer.endpoint


if __name__ == "__main__":
    main()
