"""Scale: every symbol of the symbol table, 2 traders each, on one machine.

A real tree in a temp dir (simulated market, paper exchange). The script sends
`StartTrading` for every symbol over the control socket (the request `naivectl
start-trading` sends; one naivectl process per symbol would mostly time Python
start-ups), then measures:
- time from the first request to the last trader's hello (`ready_at`);
- memory of the whole tree per kind of process (root, paper exchange, streamerd,
  symbol supervisors, leaders, traders): USS and PSS from /proc/PID/smaps_rollup, and
  where each kind's private pages are (bench/memory.py: /proc/PID/smaps by mapping);
- CPU of the whole tree (streamerd included) while the market trades at the recorded
  tapes' real rate, and which processes woke at all (voluntary context switches): an idle
  symbol supervisor must not wake;
- file descriptors and threads.

The market rate: the recorded tapes (`$NAIVE_TAPES`, else `../shared/data/binance-spot-tapes`
beside the repository, or --tapes DIR) hold every trade of BTCUSDT and ETHUSDT over the same minutes; their combined real rate
(trades per second) is spread evenly over every symbol traded here (the simulator draws each
symbol's trades as a Poisson stream at that rate). Without the tapes it uses the rate they gave
when measured (TAPES_RATE). `--rate R` sets trades/s per symbol instead. The CPU per market
trade is printed too, to scale the figure to any other rate.

With `--ksm` (root) the host's kernel samepage merging runs for the benchmark and is put back
after: naived offers the tree's pages (`[naived] memory_merge`, on by default), ksmd merges the
identical copies that forked CPython processes make. Memory is measured once merging has settled,
and ksmd's CPU in the idle window (at the `--ksm-idle-*` scan rate) counts with the tree's.

The traders' buys rest below the market (`buy_down_interval = 0.05`; the simulated walk stays within ~0.2%), so after their first
trade they idle like a trader waiting for a fill. `[naived.supervision]`: the defaults (5
restarts in 10 s per child) are kept; a stop timeout of 30 s gives thousands of processes time
to stop in order.

    .venv/bin/python bench/scale.py [--symbols 100 | --all-symbols] [--ksm] [--idle-seconds 20] [--quick] [--json]
                                    [--latency | --no-latency]

With --all-symbols (or --latency) it then runs the issue's latency benchmarks on trees of their
own, each against its bare baseline in the same run: bench/start_latency.py, bench/recovery.py,
bench/tick_to_order.py. So one command prints every figure of issue 13.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory
import recorded
from harness import Tree, wait_for

from naived.core.config import load_config
from naived.core.messages import Error, StartTrading, StatusRequest, TreeStatus, control_reply_decoder
from naived.core.symbols import table
from naived.tree.ipc import request
from streamerd.simulate import START_PRICES

T = TypeVar("T")
BUY_DOWN = Decimal("0.05")
ALL_TRADING = 1340  # TRADING symbols in the real exchangeInfo of 2023-09-08 (the shipped table)
TAPES_RATE = 52.9  # trades/s of the BTCUSDT + ETHUSDT tapes together, as measured from them
TARGET_TREE_GIB, TARGET_READY_S, TARGET_IDLE_CPU = 12.0, 30.0, 5.0
KSM = Path("/sys/kernel/mm/ksm")
KINDS = ("root", "paper-exchange", "streamerd", "supervisor", "leader", "trader")

CONFIG = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.05"   # buys rest (the simulated walk stays within ~0.2%): traders idle after their first trade


[exchange]
orders_budget_per_10s = 50  # Binance's own limit (the default keeps 5 in reserve): the first buys come faster

[naived.supervision]
max_restarts = 5
period_seconds = 10.0
stop_timeout_seconds = 30.0
"""


def budgets(names: list[str]) -> str:
    """A budget per symbol in its own quote asset (100 BTC, the default's 100, would break most
    BTC pairs' LOT_SIZE maximum): each of the 2 chunks twice the symbol's minimum order (notional
    and quantity) at the simulated market's buy price (streamerd's start price less
    BUY_DOWN); every quote asset is funded by the paper exchange's default_balance."""
    out = []
    for name in names:
        f = table()[name]
        buy = START_PRICES.get(name, f.tick_size * 10_000) * (1 - BUY_DOWN)
        chunk = 2 * max(f.min_notional, f.min_qty * buy, f.tick_size)
        out.append(f'[trading.symbols.{name}]\nbudget = "{2 * chunk}"\n')
    return "\n".join(out)


def default_tapes() -> Path:
    """$NAIVE_TAPES, else the larger recordings beside the repository. Not the sample in
    samples/: its 78 s are a sell-off's, busier than the 11 minutes the rate was measured on."""
    return Path(os.environ.get("NAIVE_TAPES") or recorded.LARGER_TAPES)


def tapes_rate(directory: Path) -> tuple[float, str]:
    """Trades per second of all the tapes together: per symbol, trades over the span of their
    trade times (Binance's `T`), summed over symbols."""
    per_symbol: dict[str, list[int]] = {}
    for path in sorted(directory.glob("*.gz")):
        times = per_symbol.setdefault(path.name.split("_")[0].upper(), [])
        with gzip.open(path, "rt") as f:
            for line in f:
                if '@trade"' in line:
                    data = json.loads(line.split(" ", 1)[1])["data"]
                    times.append(data["T"])
    rates = {s: (len(t) - 1) / ((max(t) - min(t)) / 1000) for s, t in per_symbol.items() if len(t) > 1}
    if not rates:
        return TAPES_RATE, f"no tapes in {directory}: the rate they gave when measured"
    detail = ", ".join(f"{s} {r:.1f}/s" for s, r in sorted(rates.items()))
    return sum(rates.values()), f"tapes {detail}"


def tree_status(ctx: zmq.Context, endpoint: str) -> TreeStatus:
    reply = request(ctx, endpoint, StatusRequest(), control_reply_decoder, 120_000)
    assert isinstance(reply, TreeStatus), reply
    return reply


def ready_times(status: TreeStatus, traders: int) -> list[float] | None:
    times = []
    for sym in status.symbols:
        ready = [t.ready_at for t in (sym.leader.traders if sym.leader else []) if t.pid and t.ready_at]
        if len(ready) < traders:
            return None
        times += ready
    return times


def kinds_of(status: TreeStatus, streamer: int) -> dict[int, str]:
    kinds = {status.pid: "root", streamer: "streamerd"}
    if status.paper_exchange and status.paper_exchange.pid:
        kinds[status.paper_exchange.pid] = "paper-exchange"
    for sym in status.symbols:
        if sym.supervisor.pid:
            kinds[sym.supervisor.pid] = "supervisor"
        if sym.leader:
            kinds[sym.leader.pid] = "leader"
            kinds.update({t.pid: "trader" for t in sym.leader.traders if t.pid})
    return kinds


def alive(kinds: dict[int, str]) -> dict[int, tuple[str, psutil.Process]]:
    found = {}
    for pid, kind in kinds.items():
        try:
            found[pid] = (kind, psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass  # ended since the status was taken
    return found


def measure(found: dict[int, tuple[str, psutil.Process]], what: Callable[[int, psutil.Process], T]) -> dict[int, T]:
    out = {}
    for pid, (_, proc) in found.items():
        try:
            out[pid] = what(pid, proc)
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError, KeyError):
            pass  # ended meanwhile
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of the process, in ns precision (/proc/PID/task/*/schedstat):
    the clock-tick figures of /proc/PID/stat round a trader's few ms away."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that just ended
    return total / 1e9


def machine_busy() -> float:
    """CPU seconds all cores have spent not idle since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def switches(pid: int) -> int:
    """Context switches of every thread of the process (each one a wake-up or a preemption)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
        except FileNotFoundError:
            pass  # a thread that just ended
    return total


def mib(n: float) -> float:
    return n / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=100, help="the first N symbols of the table (default 100)")
    parser.add_argument("--all-symbols", action="store_true", help=f"every symbol of the table ({ALL_TRADING} TRADING)")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, help="trades/s per symbol (default: the tapes' real rate, spread evenly)")
    parser.add_argument("--tapes", type=Path, default=default_tapes())
    parser.add_argument("--min-available-gib", type=float, default=4.0,
                        help="stop starting symbols while the machine has less memory available (default 4)")
    parser.add_argument("--ksm", action="store_true",
                        help="run the host's KSM for the benchmark (needs root; restored after): naived offers the "
                             "tree's pages ([naived] memory_merge), ksmd merges the identical ones")
    parser.add_argument("--ksm-pages", type=int, default=10_000,
                        help="with --ksm: pages ksmd scans per 20 ms while the tree starts and settles (default 10000)")
    parser.add_argument("--ksm-idle-pages", type=int, default=100,
                        help="with --ksm: pages per wake-up during the idle window, whose CPU counts (default 100, the kernel's)")
    parser.add_argument("--ksm-idle-sleep-ms", type=int, default=200,
                        help="with --ksm: ksmd's sleep between wake-ups during the idle window (default 200; the kernel's is 20)")
    parser.add_argument("--quick", action="store_true", help="20 symbols, 5 s idle")
    parser.add_argument("--json", action="store_true", help="also print one BENCH-JSON line for bench/run_all")
    parser.add_argument("--latency", action=argparse.BooleanOptionalAction, default=None,
                        help="then the issue's latency figures: start-trading, recovery, tick to order "
                             "(default: with --all-symbols)")
    args = parser.parse_args()
    if args.quick:
        args.symbols, args.idle_seconds = 20, 5.0
    names = sorted(table())
    if not args.all_symbols:
        # spread over the table (every quote asset), not the first N alphabetically
        step = max(1, len(names) // args.symbols)
        names = names[::step][: args.symbols]
    if args.rate:
        rate, origin = args.rate, "--rate"
    else:
        total, origin = tapes_rate(args.tapes)
        rate = total / len(names)
    # SIGTERM too stops the tree and puts the host's KSM back (the finally blocks run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    host_ksm = HostKsm.switch_on(args.ksm_pages) if args.ksm else None
    try:
        run(args, names, rate, origin, host_ksm)
    finally:
        if host_ksm:
            host_ksm.restore()
    if args.latency or (args.latency is None and args.all_symbols):
        latency_figures(args.quick)


class HostKsm:
    """The host's kernel samepage merging, switched on for a run and put back as it was after."""

    SETTINGS = ("run", "pages_to_scan", "sleep_millisecs")

    def __init__(self, saved: dict[str, str]) -> None:
        self.saved = saved

    @classmethod
    def switch_on(cls, pages: int) -> HostKsm:
        if not KSM.is_dir():
            sys.exit(f"--ksm: this kernel has no KSM ({KSM} is missing)")
        saved = {name: (KSM / name).read_text().strip() for name in cls.SETTINGS}
        try:
            cls.scan(pages)
            (KSM / "run").write_text("1")
        except PermissionError:
            sys.exit(f"--ksm: cannot switch the host's KSM on ({KSM}/run is root's); run as root, or without --ksm")
        print(f"host KSM on for this run: {pages} pages per 20 ms while starting and settling"
              f" (was run={saved['run']}, pages_to_scan={saved['pages_to_scan']})", flush=True)
        return cls(saved)

    @staticmethod
    def scan(pages: int, sleep_ms: int = 20) -> None:
        (KSM / "sleep_millisecs").write_text(str(sleep_ms))
        (KSM / "pages_to_scan").write_text(str(pages))

    @staticmethod
    def stat(name: str) -> int:
        return int((KSM / name).read_text())

    def settle(self, timeout: float) -> None:
        """Wait until ksmd merges no more than 1% more in two full scans (or the timeout)."""
        t0 = time.monotonic()
        scans, sharing = self.stat("full_scans"), self.stat("pages_sharing")
        while time.monotonic() - t0 < timeout:
            time.sleep(1.0)
            if self.stat("full_scans") >= scans + 2:
                now = self.stat("pages_sharing")
                if now <= sharing * 1.01 and now > 0:
                    break
                scans, sharing = self.stat("full_scans"), now
        # (KSM's own counts; they include pages the processes already shared by fork, so the saving
        # is read from USS and PSS below, not from them)
        print(f"KSM settled after {time.monotonic() - t0:.0f} s: {self.stat('pages_sharing'):,} mappings of"
              f" {self.stat('pages_shared'):,} merged pages", flush=True)

    def catch_up(self, gib: float, timeout: float) -> float:
        """Low on memory while starting symbols: wait (up to `timeout`) until ksmd merged enough for
        `gib` GiB to be available again. Returns the seconds waited."""
        t0 = time.monotonic()
        while psutil.virtual_memory().available < gib * 2**30 and time.monotonic() - t0 < timeout:
            time.sleep(1.0)
        waited = time.monotonic() - t0
        print(f"paused {waited:.0f} s for KSM to merge ({mib(psutil.virtual_memory().available) / 1024:.1f} GiB available)",
              flush=True)
        return waited

    def restore(self) -> None:
        for name in ("pages_to_scan", "sleep_millisecs", "run"):
            (KSM / name).write_text(self.saved[name])


def ksmd_pid() -> int | None:
    return next((p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "ksmd"), None)


def run(args: argparse.Namespace, names: list[str], rate: float, origin: str, host_ksm: HostKsm | None) -> None:
    ctx = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="naive-bench-") as directory:
        # every quote asset funded: every symbol's traders can afford their buys
        tree = Tree(Path(directory), CONFIG + budgets(names), paper='default_balance = "1000000000"')
        try:
            streamer = tree._spawn("streamerd", "start", "--rate", f"{rate:.6f}")
            tree.start_naived()
            endpoint = load_config(str(tree.config_path)).control_endpoint
            start = time.time()
            busy0 = machine_busy()
            asked = len(names)
            paused = 0.0
            for i, name in enumerate(names):
                if i % 20 == 0 and host_ksm and psutil.virtual_memory().available < args.min_available_gib * 2**30:
                    paused += host_ksm.catch_up(args.min_available_gib + 1, timeout=900)
                if i % 20 == 0 and psutil.virtual_memory().available < args.min_available_gib * 2**30:
                    # the machine is shared: never push it into the OOM killer; extrapolate instead
                    print(f"stopped starting symbols at {i} of {asked}: less than {args.min_available_gib:g} GiB"
                          " of memory available", flush=True)
                    names = names[:i]
                    break
                reply = request(ctx, endpoint, StartTrading(name), control_reply_decoder, 30_000)
                assert not isinstance(reply, Error) and reply is not None, (name, reply)
            sent = time.time()
            times = wait_for("every trader ready", lambda: ready_times(tree_status(ctx, endpoint), 2), timeout=900, interval=0.5)
            all_ready = max(times) - start
            busy = machine_busy() - busy0
            print(f"{len(names)} symbols x 2 traders: all {len(times)} ready {all_ready:.2f} s after the first request"
                  f" (requests sent in {sent - start:.2f} s"
                  + (f"; of which {paused:.0f} s paused for KSM to merge" if paused else "") + ")", flush=True)
            started = alive(kinds_of(tree_status(ctx, endpoint), streamer.pid))
            by_kind = Counter()
            for pid, (kind, _proc) in started.items():
                try:
                    by_kind[kind] += cpu_seconds(pid)
                except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                    pass
            print(f"CPU while starting: {busy:.1f} s of the machine's cores busy ({1000 * busy / len(names):.0f} ms per symbol;"
                  " other users of the machine included); by the tree's processes since their start: "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in by_kind.items()), flush=True)
            # every trader sees a trade and places its buy (at most 50 orders in 10 s: Binance's limit,
            # ~9 minutes for 2,680 buys); then the tree only waits. A symbol whose first trade is late
            # keeps its traders following trades: measured once 95% of the buys rest.
            try:
                wait_for("95% of the buys resting", lambda: len(tree.paper_orders()) >= 0.95 * len(times),
                         timeout=30 if args.quick else max(120.0, 1.2 * len(times) / 5), interval=1.0)
            except AssertionError as exc:
                print(f"measuring anyway: {exc}", flush=True)
            status = tree_status(ctx, endpoint)
            failed = [s for s in status.symbols if s.state == "failed"]
            if failed:
                print(f"{len(failed)} symbols failed, e.g. {failed[0].symbol}: {failed[0].error}")
            if host_ksm:
                host_ksm.settle(timeout=600)
                HostKsm.scan(args.ksm_idle_pages, args.ksm_idle_sleep_ms)  # the idle window pays the steady rate
            found = alive(kinds_of(status, streamer.pid))
            tree.seen.update({pid: proc.create_time() for pid, (_, proc) in found.items()})  # for the clean-up
            # While the host runs KSM its scanner works for the tree: its CPU counts with the tree's.
            ksmd = ksmd_pid() if KSM.is_dir() and HostKsm.stat("run") == 1 else None
            ksmd0 = cpu_seconds(ksmd) if ksmd else 0.0
            # the market trades on; how much CPU does the tree use, and who wakes? (a process that
            # ends meanwhile, e.g. a trader restarted, is left out of every figure)
            cpu0 = measure(found, lambda pid, proc: cpu_seconds(pid))
            busy0 = machine_busy()
            woke0 = measure(found, lambda pid, proc: switches(pid))
            t0 = time.monotonic()
            time.sleep(args.idle_seconds)
            elapsed = time.monotonic() - t0
            busy = machine_busy() - busy0
            cpu = measure(found, lambda pid, proc: cpu_seconds(pid) - cpu0[pid])
            woke = measure(found, lambda pid, proc: switches(pid) - woke0[pid])
            mem = measure(found, lambda pid, proc: memory.rollup(pid))
            fds = measure(found, lambda pid, proc: proc.num_fds())
            kinds = {pid: kind for pid, (kind, _) in found.items() if all(pid in d for d in (cpu0, woke0, cpu, woke, mem, fds))}
            ksmd_cpu = cpu_seconds(ksmd) - ksmd0 if ksmd else None
            orders = len(tree.paper_orders())
            report(args, names, kinds, mem, cpu, woke, fds, elapsed, rate, origin, all_ready, times, orders, ksmd_cpu, paused)
            print(f"  (the whole machine was busy {100 * busy / elapsed:.1f} % of one core meanwhile, other users included)")
        finally:
            tree.stop()
            ctx.term()


def report(args: argparse.Namespace, names: list[str], kinds: dict[int, str], mem: dict[int, dict[str, int]],
           cpu: dict[int, float], woke: dict[int, int], fds: dict[int, int], elapsed: float, rate: float, origin: str,
           all_ready: float, times: list[float], orders: int, ksmd_cpu: float | None, paused: float) -> None:
    n = len(names)
    by_kind: dict[str, list[int]] = {k: [p for p, kind in kinds.items() if kind == k] for k in KINDS}
    total_uss, total_pss = sum(m["USS"] for m in mem.values()), sum(m["Pss"] for m in mem.values())
    vm = psutil.virtual_memory()
    print(f"processes: {len(kinds)} ({len(by_kind['trader'])} traders), orders resting: {orders}")
    if ksmd_cpu is not None:
        print("the host runs KSM: pages it merged are shared, so in no process's USS (PSS splits them)")
    print(f"memory, whole tree: USS {mib(total_uss):,.0f} MiB, PSS {mib(total_pss):,.0f} MiB"
          f" ({mib(total_uss) / len(kinds):.2f} / {mib(total_pss) / len(kinds):.2f} MiB per process;"
          f" machine: {mib(vm.total) / 1024:.1f} GiB, {mib(vm.available) / 1024:.1f} GiB available)")
    print(f"{'memory by kind (MiB)':<22}{'n':>6}{'USS p50':>9}{'PSS p50':>9}{'USS sum':>10}{'PSS sum':>10}{'threads':>8}")
    rows = []
    for kind in KINDS:
        pids = by_kind[kind]
        if not pids:
            continue
        uss = [mib(mem[p]["USS"]) for p in pids]
        pss = [mib(mem[p]["Pss"]) for p in pids]
        print(f"  {kind:<20}{len(pids):>6}{statistics.median(uss):9.2f}{statistics.median(pss):9.2f}"
              f"{sum(uss):10,.0f}{sum(pss):10,.0f}{memory.threads(pids[0]):8d}")
        rows.append((kind, pids, uss, pss))
    print("where the private pages are (USS, MiB, mean of up to 20 processes per kind):")
    print(f"  {'':<20}" + "".join(f"{k.split(' ')[0][:10]:>11}" for k in memory.KINDS))
    for kind, pids, _, _ in rows:
        sample = pids[:20]
        parts = Counter()
        for p in sample:
            parts.update(memory.breakdown(p))
        print(f"  {kind:<20}" + "".join(f"{mib(parts[k]) / len(sample):11.2f}" for k in memory.KINDS))
    per_symbol_pss = sum(sum(pss) for kind, _, _, pss in rows if kind in ("supervisor", "leader", "trader")) / n
    per_symbol_uss = sum(sum(uss) for kind, _, uss, _ in rows if kind in ("supervisor", "leader", "trader")) / n
    fixed_uss = sum(sum(uss) for kind, _, uss, _ in rows if kind not in ("supervisor", "leader", "trader"))
    at_all_uss = (fixed_uss + per_symbol_uss * ALL_TRADING) / 1024
    at_all_pss = (total_pss / 2**20 - per_symbol_pss * n + per_symbol_pss * ALL_TRADING) / 1024
    print(f"per symbol (supervisor + leader + 2 traders): USS {per_symbol_uss:.2f} MiB, PSS {per_symbol_pss:.2f} MiB;"
          f" at {ALL_TRADING} symbols: USS ~{at_all_uss:.1f} GiB, PSS ~{at_all_pss:.1f} GiB")
    cpu_pct = 100 * (sum(cpu.values()) + (ksmd_cpu or 0.0)) / elapsed
    market = rate * n
    print(f"idle CPU, whole tree{' and ksmd' if ksmd_cpu is not None else ''} over {elapsed:.0f} s:"
          f" {cpu_pct:.2f} % of one core, market {market:.1f} trades/s ({rate:.4f}/s per symbol; {origin}):"
          f" {1e6 * sum(cpu.values()) / max(1.0, market * elapsed):,.0f} µs of CPU per trade")
    for kind, pids, _, _ in rows:
        woken = [p for p in pids if woke[p] > 0]
        share = 100 * sum(cpu[p] for p in pids) / elapsed
        print(f"  {kind:<20}{share:6.2f} % of a core; {len(woken)} of {len(pids)} woke"
              f" ({sum(woke[p] for p in pids):,} context switches)")
    if ksmd_cpu is not None:
        print(f"  {'ksmd (kernel, KSM)':<20}{100 * ksmd_cpu / elapsed:6.2f} % of a core, scanning"
              f" {HostKsm.stat('pages_to_scan')} pages per {HostKsm.stat('sleep_millisecs')} ms")
    fds_t = sorted(fds[p] for p in by_kind["trader"])
    print(f"file descriptors: {sum(fds.values())} in all; per trader p50 {statistics.median(fds_t):.0f}, max {fds_t[-1]}")
    tree_gib = mib(total_uss) / 1024 if args.all_symbols else at_all_uss
    verdicts = [
        (f"whole tree USS <= {TARGET_TREE_GIB:g} GiB at {ALL_TRADING} symbols" + ("" if args.all_symbols else " (extrapolated)"),
         tree_gib <= TARGET_TREE_GIB, f"{tree_gib:.1f} GiB"),
        (f"all traders ready <= {TARGET_READY_S:g} s" + ("" if args.all_symbols else f" (at {n} symbols)"),
         all_ready <= TARGET_READY_S,
         f"{all_ready:.1f} s" + (f"; {all_ready - paused:.1f} s without the pauses for KSM" if paused else "")),
        (f"idle CPU < {TARGET_IDLE_CPU:g} % of a core", cpu_pct < TARGET_IDLE_CPU, f"{cpu_pct:.2f} %"),
        ("idle supervisors never wake", not any(woke[p] for p in by_kind["supervisor"]),
         f"{sum(1 for p in by_kind['supervisor'] if woke[p])} woke"),
    ]
    for name, met, figure in verdicts:
        print(f"target {name}: {'met' if met else 'MISSED'} ({figure})")
    if args.json:
        trader = next(r for r in rows if r[0] == "trader")
        out = [
            {"figure": f"scale: {n} symbols x 2 traders all ready", "unit": "s", "p50": all_ready, "p99": None,
             "peer": None, "ratio": None, "target": f"<={TARGET_READY_S:g} s", "n": len(times)},
            {"figure": "scale: whole tree USS / PSS", "unit": "MiB", "p50": mib(total_uss), "p99": mib(total_pss),
             "peer": None, "ratio": None, "target": f"<={TARGET_TREE_GIB:g} GiB at {ALL_TRADING}", "n": len(kinds),
             "note": "p50 column = USS, p99 column = PSS"},
            {"figure": "scale: USS / PSS per trader (p50)", "unit": "MiB", "p50": statistics.median(trader[2]),
             "p99": statistics.median(trader[3]), "peer": None, "ratio": None, "target": "", "n": len(trader[1]),
             "note": "p50 column = USS, p99 column = PSS"},
            {"figure": "scale: idle CPU, whole tree", "unit": "% core", "p50": cpu_pct, "p99": None,
             "peer": None, "ratio": None, "target": f"<{TARGET_IDLE_CPU:g} %", "n": 1},
        ]
        print("BENCH-JSON: " + json.dumps(out))


LATENCY = (("start_latency.py", "--samples", "30"),
           ("recovery.py", "--kills", "100", "--peer-kills", "30", "--leader-kills", "10"),
           ("tick_to_order.py", "--samples", "60"))


def latency_figures(quick: bool) -> None:
    """The targets measured on a tree of their own, after the big one is gone: each script's own
    output (each compares with its bare baseline in the same run)."""
    for script, *argv in LATENCY:
        print(f"\n$ bench/{script} {' '.join(['--quick'] if quick else argv)}", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve().parent / script), *(["--quick"] if quick else argv)],
                       check=False)


if __name__ == "__main__":
    main()
