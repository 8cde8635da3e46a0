"""One rate budget per host (naived/exchange/budget.py): the rules, and the sharing between real processes.

The sharing tests run separate processes (tests/budget_worker.py) that build their clients as
naived's processes do, against a real paper exchange, and ask the exchange what it received.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import running_tree, wait_for
from test_paper_exchange import Exchange

from naived.core.config import load_config
from naived.exchange import budget

WORKER = Path(__file__).resolve().parent / "budget_worker.py"
MINUTE = 60 * 29_000_000  # an epoch second at the start of a minute (and of a 10 s window)


# --- the rules, in one process -----------------------------------------------------------------


def local(**limits: int) -> budget.LocalBudget:
    return budget.LocalBudget(budget.Limits(**limits))


def test_reads_give_way_before_orders() -> None:
    b = local(weight_per_minute=1000, orders_per_10s=1000)
    at = MINUTE + 59.0  # late in the minute: the reads' allowance is their whole share
    b.record(at, 840, None, None)  # Binance says 840 already (another process, another program)
    b.acquire(4, "read", at)  # 844 <= 850: the reads' share
    with pytest.raises(budget.Refused) as held:
        b.acquire(10, "read", at)
    assert held.value.status == 0 and 0 < held.value.retry_after <= 1.1  # until the minute turns
    b.acquire(1, "order", at)  # orders may use the rest
    b.acquire(1, "cancel", at)
    b.record(at, 999, None, None)
    with pytest.raises(budget.Refused):
        b.acquire(2, "order", at)
    b.acquire(4, "read", MINUTE + 60.5)  # a new minute: counts start again
    assert b.state(MINUTE + 60.5).weight_spent == 4 and b.state(MINUTE + 60.5).held_total == 2


def test_reads_are_spread_over_the_minute() -> None:
    b = local(weight_per_minute=600)  # reads: 510 a minute, (elapsed + 10) / 60 of it by now
    at = MINUTE + 2.0
    for _ in range(102):  # 12 s worth: 102 weight
        b.acquire(1, "read", at)
    with pytest.raises(budget.Refused) as held:
        b.acquire(4, "read", at)
    # 106 of 510 is allowed from 60 * 106 / 510 - 10 = 2.47 s into the minute
    assert held.value.retry_after == pytest.approx(0.48, abs=0.02)
    b.acquire(1, "order", at)  # orders are not paced


def test_a_header_counts_for_the_minute_its_request_was_sent_in() -> None:
    b = local()
    b.acquire(1, "read", MINUTE + 1.0)
    b.record(MINUTE - 0.5, 4000, None, None)  # sent in the minute before: says nothing about this one
    assert b.state(MINUTE + 1.0).weight == 1
    b.record(MINUTE + 1.0, 30, None, None)
    b.record(MINUTE + 1.0, 20, None, None)  # answers overtake each other: the largest stands
    assert b.state(MINUTE + 1.0).weight_header == 30


def test_binances_figure_plus_what_was_sent_after_it() -> None:
    b = local()
    at = MINUTE + 50.0
    ticket = b.acquire(4, "read", at)
    b.acquire(4, "read", at)  # sent while the first was answered: maybe not in its header
    b.record(at, 100, None, None, spent=ticket)
    assert b.state(at).weight == 104
    b.acquire(1, "order", at)
    assert b.state(at).weight == 105


def test_orders_per_10_seconds() -> None:
    b = local(orders_per_10s=3)
    at = MINUTE + 1.0
    for _ in range(2):
        b.acquire(1, "order", at)
    b.record(at, None, 3, None)  # Binance counts one more (placed by another program)
    with pytest.raises(budget.Refused) as held:
        b.acquire(1, "order", at)
    assert held.value.retry_after == pytest.approx(9.0)
    b.acquire(1, "cancel", at)  # a cancel is not an order
    b.acquire(1, "order", MINUTE + 10.0)


def test_a_429_or_418_holds_everything_for_retry_after() -> None:
    b = local()
    b.record(time.time(), 10, None, None, limited=429, retry_after=1.0)
    b.record(time.time(), 10, None, None, limited=418, retry_after=0.5)  # ends sooner: the 429's wait stands
    for kind in ("read", "order", "cancel"):
        with pytest.raises(budget.Refused) as held:
            b.acquire(1, kind)
        assert held.value.status == 418 and 0.9 < held.value.retry_after <= 1.0
    assert b.state().held_total == 0  # a ban is not the budget's own holding back


def test_polling_slows_down_as_the_budget_tightens() -> None:
    b = local(weight_per_minute=1000)
    base = 0.05
    intervals = []
    for weight in (0, 400, 500, 600, 800):
        b.record(time.time(), weight, None, None)
        intervals.append(b.recheck_interval(base))
    assert intervals == sorted(intervals) and intervals[0] == base and intervals[-1] == budget.RECHECK_MAX


def test_a_bad_file_is_started_afresh_and_never_breaks_a_reader(tmp_path: Path) -> None:
    path = tmp_path / "rate-budget"
    assert budget.snapshot(path) is None  # none yet
    path.write_bytes(b"garbage")
    assert budget.snapshot(path) is None  # too short
    path.write_bytes(b"x" * 4096)
    assert budget.snapshot(path) is None  # not ours
    budget.ensure(path)
    assert os.stat(path).st_mode & 0o777 == 0o600 and path.stat().st_size == budget.SIZE
    state = budget.snapshot(path)
    assert state is not None and state.weight == 0
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(OSError):
        budget.SharedBudget(link)  # never through a planted link
    assert budget.snapshot(link) is None


def test_a_ban_from_before_a_reboot_is_void(tmp_path: Path) -> None:
    path = tmp_path / "rate-budget"
    shared = budget.SharedBudget(path)
    shared.record(time.time(), 1, None, None, limited=418, retry_after=600)
    raw = bytearray(path.read_bytes())
    raw[8:24] = bytes(16)  # another boot id
    path.write_bytes(bytes(raw))
    shared.acquire(1, "read")  # not held back


# --- shared by real processes -----------------------------------------------------------------------


def worker(config: Path, *args: str, timeout: float = 30) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, str(WORKER), str(config), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def paper(tmp_path: Path) -> Iterator[Exchange]:
    ex = Exchange(tmp_path, f"ipc://{tmp_path / 'no-market.sock'}")
    try:
        ex.start()
        yield ex
    finally:
        if ex.proc is not None and ex.proc.poll() is None:
            ex.kill()


@pytest.mark.parametrize(("fault", "status"), [("rate_limit_429", 429), ("ban_418", 418)])
def test_a_refusal_seen_by_one_process_holds_every_process_of_the_host(paper: Exchange, fault: str, status: int) -> None:
    paper.faults(**{fault: 1.0, "retry_after_seconds": 3})
    (placed,) = worker(paper.config, "place", "b1")
    refused_at = time.monotonic()
    assert placed == {"ok": False, "error": "RateLimited", "banned": status == 418, "retry_after": 3}
    paper.faults()  # the exchange would take anything now: only the host's budget holds it back
    received = paper.get("/paper/usage")["requests"]

    probes = worker(paper.config, "probe")  # another process, started after the refusal
    assert [p["call"] for p in probes] == ["ping", "get_order", "new_order"]
    for p in probes:
        assert p["error"] == "RateLimited" and p["banned"] == (status == 418) and 0 < p["retry_after"] <= 3, p
    assert paper.get("/paper/usage")["requests"] == received  # nothing reached the exchange
    assert budget.snapshot(load_config(str(paper.config)).budget_path).ban_status == status

    (after,) = wait_for("the wait to pass", lambda: [p for p in worker(paper.config, "probe")[:1] if p["ok"]], timeout=10)
    assert time.monotonic() - refused_at >= 3 - 0.05
    assert paper.get("/paper/usage")["requests"] > received


def test_the_count_is_exact_with_processes_updating_it_at_once(tmp_path: Path) -> None:
    config = tmp_path / "naive.toml"
    config.write_text(f'[paths]\nruntime_dir = "{tmp_path / "run"}"\n')
    (tmp_path / "run").mkdir(mode=0o700)  # the workers make the file: all at once
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(config), "count", "3000"], stdout=subprocess.PIPE)
             for _ in range(4)]
    for p in procs:
        assert p.wait(60) == 0
    state = budget.snapshot(load_config(str(config)).budget_path)
    assert state is not None and state.orders_day == 4 * 3000  # no update lost


def test_a_process_killed_while_holding_the_lock_holds_nobody_up(tmp_path: Path) -> None:
    config = tmp_path / "naive.toml"
    config.write_text(f'[paths]\nruntime_dir = "{tmp_path / "run"}"\n')
    path = load_config(str(config)).budget_path
    (tmp_path / "run").mkdir(mode=0o700)
    holder = subprocess.Popen([sys.executable, str(WORKER), str(config), "hold"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and json.loads(holder.stdout.readline()) == {"holding": True}
        with open(path, "rb") as f, pytest.raises(BlockingIOError):  # it really holds it
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        assert worker(config, "count", "10", timeout=10) == [{"done": True}]
        state = budget.snapshot(path)
        assert state is not None and state.orders_day == 10
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


CYCLING = """
[trading.defaults]
chunks = 2
buy_down_interval = "0.0001"
profit_interval = "-0.0012"

[exchange]
weight_budget_per_minute = 100

[account_stream]
heartbeat_seconds = 3000  # the root's watchdog leaves the stopped stream alone
"""


def test_traders_of_a_real_tree_keep_the_exchange_within_the_budget(tmp_path: Path) -> None:
    """Two traders whose orders the price keeps reaching would ask about them 20 times a second
    each (weight 4 each time) while no account stream pushes their fills (stopped before they
    start, it never tells them it is up); with a budget of 100 a minute the exchange counts no more
    than that in any minute, and they still trade."""
    with running_tree(tmp_path, CYCLING) as tree:
        stream = wait_for("the account stream", lambda: tree.status()["account_stream"]["pid"])
        os.kill(stream, signal.SIGSTOP)
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        path = load_config(str(tree.config_path)).budget_path
        wait_for("the budget to hold requests back", lambda: (s := budget.snapshot(path)) is not None and s.held_total > 0,
                 timeout=60, interval=0.2)
        wait_for("an order placed", lambda: tree.paper_orders("XRPUSDT"), timeout=60)
        minutes = tree.http.get(f"{tree.paper_url}/paper/usage", timeout=5).json()["minutes"]
        assert 0 < max(minutes.values()) <= 100, minutes


def test_a_forked_child_takes_the_lock_on_its_own_descriptor(tmp_path: Path) -> None:
    """A flock belongs to the open file description, which fork shares: a child using its
    parent's descriptor would walk into a section its parent holds. It reopens the file."""
    shared = budget.SharedBudget(tmp_path / "rate-budget")
    statuses: list[int] = []

    def fork_while_holding(state: budget.State) -> None:
        pid = os.fork()
        if pid == 0:  # the child: blocked until the parent lets go (the alarm ends the wait)
            signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
            signal.alarm(1)
            shared.acquire(1, "read")
            os._exit(1)  # got in while the parent holds the lock
        statuses.append(os.waitpid(pid, 0)[1])

    shared._locked(fork_while_holding)
    assert os.waitstatus_to_exitcode(statuses[0]) == 0
