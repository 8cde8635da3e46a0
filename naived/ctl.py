"""`naivectl`: talk to a running naived over its control socket."""

from __future__ import annotations

import datetime
import os
import re
import select
import socket
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import NoReturn

import click
import msgspec
import zmq

from naived.core.config import SYSTEMD_RUNTIME_DIR, Config, ConfigError, Naived, Paths, find_config, ipc_path, load_config
from naived.core.messages import (
    AccountRequest,
    AccountStatus,
    ClusterStatus,
    ControlRequest,
    Error,
    History,
    HistoryRequest,
    LeaderStatus,
    Ok,
    ProcessInfo,
    Profit,
    RateBudget,
    ShutdownTrading,
    StartTrading,
    StatusRequest,
    StopDaemon,
    Stopping,
    StopTrading,
    TraderInfo,
    TreeStatus,
    control_reply_decoder,
)
from naived.core.strategy import StrategyError, assets
from naived.core.symbols import lookup
from naived.store.ownership import StateDirLock
from naived.tree.ipc import request

# The feed of a followed symbol without a trade for this long is called out in status (the busy
# USDT pairs trade every second; a quiet pair may go minutes, hence the question, not a verdict).
SILENT_FEED_SECONDS = 60.0
STARTING_GRACE = 5.0  # seconds a naived that holds its state directory gets to bind its control socket
DEFAULT_TIMEOUT = 1.0  # seconds: naived answers from memory in well under a millisecond


class Target(msgspec.Struct):
    endpoint: str
    timeout: float
    state_dir: str | None = None  # from the configuration: whose lock tells whether naived runs


def _fail(message: str) -> NoReturn:
    click.echo(f"naivectl: {message}", err=True)
    sys.exit(1)


def call(target: Target, message: ControlRequest) -> msgspec.Struct:
    endpoint = target.endpoint
    path = ipc_path(endpoint)
    if path is not None and not os.path.exists(path) and not _starting(target, path):
        _unreachable(target, f"its control socket {path} is gone", f"naived is not running (no control socket at {path})")
    ctx = zmq.Context()
    try:
        reply = request(ctx, endpoint, message, control_reply_decoder, int(target.timeout * 1000))
    except zmq.ZMQError as exc:
        _unreachable(target, f"its control socket {endpoint} cannot be reached ({exc})",
                     f"cannot reach naived on {endpoint}: {exc}")
    finally:
        ctx.term()
    if reply is None:
        _unreachable(target, f"it did not answer on {endpoint} within {target.timeout:g}s: it is busy or hung "
                     "(--timeout SECONDS waits longer)",
                     f"naived did not answer on {endpoint} within {target.timeout:g}s: it is not running (a stale socket "
                     "left by a crash?) or is overloaded; --timeout SECONDS waits longer")
    if isinstance(reply, Error):
        _fail(reply.message)
    assert isinstance(reply, msgspec.Struct)  # control_reply_decoder decodes Structs only
    return reply


def _starting(target: Target, path: str) -> bool:
    """A naived holds the state directory but has no control socket yet: it may be starting (a
    user who types `naived start &` and then `naivectl ...` at once). Give it STARTING_GRACE
    seconds to bind; True once the socket is there."""
    if target.state_dir is None:
        return False
    try:
        holder = StateDirLock(Path(target.state_dir)).holder()
    except OSError:
        return False
    if holder is None or time.time() - holder.since > STARTING_GRACE:
        return False  # nobody, or a naived up for longer that lost its socket: say so at once
    deadline = holder.since + STARTING_GRACE - time.time() + time.monotonic()
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.05)  # a file appearing: nothing to wait on but the clock
    return False


def _unreachable(target: Target, if_running: str, if_not: str) -> None:
    """The control socket did not answer: tell "not running" from "running without a usable
    socket" by the state directory's lock (naived/store/ownership.py), and never invite a second start
    while a tree holds it."""
    if target.state_dir is None:
        _fail(if_not)
    lock = StateDirLock(Path(target.state_dir))
    try:
        holder = lock.holder()
    except OSError as exc:
        _fail(f"{if_not}; cannot tell from {lock.path}: {exc.strerror}")
    if holder is None:
        _fail(if_not)
    assert holder is not None
    who = f"naived (pid {holder.pid}{'' if holder.host == socket.gethostname() else f' on {holder.host}'})" if holder.pid \
        else "a process"
    _fail(f"{who} holds {target.state_dir} (lock file {lock.path}) but {if_running}; do not start another naived: "
          f"if its socket was deleted or it runs with another runtime directory, restart that naived or give --endpoint")


def find_endpoint(config: Config) -> str:
    """The control endpoint as naived would compute it; failing that, where systemd runs it
    (`RuntimeDirectory=naive`), so `naivectl status` works as the service user with no flags."""
    endpoint = config.control_endpoint
    configured = config.naived.control_endpoint or config.paths.runtime_dir or os.environ.get("RUNTIME_DIRECTORY")
    path = ipc_path(endpoint)
    systemd_socket = SYSTEMD_RUNTIME_DIR / "naived.sock"
    if not configured and path is not None and not os.path.exists(path) and systemd_socket.exists():
        return f"ipc://{systemd_socket}"
    return endpoint


@click.group()
@click.version_option(package_name="naive", prog_name="naivectl")
@click.option("--config", "config_path", metavar="PATH", help="naived's configuration (for its control endpoint).")
@click.option("--endpoint", metavar="ENDPOINT", help="naived's control endpoint, e.g. ipc:///run/naive/naived.sock.")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=click.FloatRange(min=0.01),
              help="Seconds to wait for naived's answer.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, endpoint: str | None, timeout: float) -> None:
    """Control a running naived."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        # A broken file must not cut the operator off a running naived (status, stop-trading):
        # the socket's place and the state dir's (for its lock) need only three keys, read as far
        # as the file allows. With --endpoint the file only tells where the state directory is.
        config = endpoint_keys(config_path)
        if endpoint is None:
            click.echo(f"naivectl: the configuration is broken ({exc}); trying naived at {find_endpoint(config)}", err=True)
    if endpoint is None:
        endpoint = find_endpoint(config)
    ctx.obj = Target(endpoint, timeout, str(config.state_dir))


def endpoint_keys(config_path: str | None) -> Config:
    """The defaults but for what places the control socket (`paths.runtime_dir`,
    `naived.control_endpoint`) and the state directory, taken from the file when it has them as
    valid values."""
    path = find_config(config_path)
    try:
        raw = _readable_tables(path.read_text(errors="replace")) if path is not None else {}
    except OSError:
        raw = {}  # unreadable: where naived runs without a file (the environment's runtime dir)
    found: dict[str, dict[str, str]] = {}
    for section, key, struct in (("paths", "runtime_dir", Paths), ("paths", "state_dir", Paths),
                                 ("naived", "control_endpoint", Naived)):
        table = raw.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if isinstance(value, str):
            try:
                msgspec.convert({key: value}, struct)  # checked as naived checks it
            except msgspec.ValidationError:
                continue
            found.setdefault(section, {})[key] = value
    return msgspec.convert(found, Config)


def _readable_tables(text: str) -> dict[str, object]:
    """As much of a TOML file as parses: all of it, else each [table] that parses on its own."""
    try:
        whole = msgspec.toml.decode(text)
        return whole if isinstance(whole, dict) else {}
    except msgspec.DecodeError:
        pass
    tables: dict[str, object] = {}
    for chunk in re.split(r"(?m)^(?=\s*\[)", text):
        try:
            part = msgspec.toml.decode(chunk)
        except msgspec.DecodeError:
            continue  # the broken table, or one cut from its parent's keys: not needed here
        for name, value in part.items():
            known = tables.get(name)
            if isinstance(value, dict) and isinstance(known, dict):
                known.update(value)  # [naived] and [naived.supervision], cut apart by the split
            else:
                tables[name] = value
    return tables


def _simple(request_type: type) -> Callable[[str], None]:
    @click.argument("symbol")
    @click.pass_obj
    def command(target: Target, symbol: str) -> None:
        reply = call(target, request_type(symbol))
        assert isinstance(reply, Ok)
        click.echo(reply.message)

    return command


main.command("start-trading", help="Start trading SYMBOL, for example XRPUSDT.")(_simple(StartTrading))
main.command("stop-trading", help="Stop SYMBOL now; its open orders stay and are adopted on the next start.",
             short_help="Stop SYMBOL now; its open orders stay.")(
    _simple(StopTrading)
)
main.command("shutdown-trading", help="Let SYMBOL's traders finish their cycles, then stop it.")(
    _simple(ShutdownTrading)
)


@main.command(short_help="Stop naived: its traders first, then the rest.")
@click.option("--finish-cycles", is_flag=True, help="Let every symbol finish its cycles first (as SIGUSR1 does).")
@click.option("--wait", "wait_seconds", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Seconds to wait for naived to exit; 0 does not wait.  [default: 60, or 0 with --finish-cycles]")
@click.pass_obj
def stop(target: Target, finish_cycles: bool, wait_seconds: float | None) -> None:
    """Stop the running naived as SIGTERM does: its traders stop first; open orders stay at the
    exchange and are adopted at the next start. Under systemd, use `systemctl stop naived`
    (a service stopped behind systemd's back is not restarted, and systemd reports it inactive)."""
    reply = call(target, StopDaemon(finish_cycles))
    assert isinstance(reply, Stopping)
    click.echo(reply.message)
    wait = wait_seconds if wait_seconds is not None else (0.0 if finish_cycles else 60.0)
    if not wait or reply.host != socket.gethostname():
        return
    if not _exited(reply.pid, wait):
        _fail(f"naived pid {reply.pid} has not exited after {wait:g}s; naivectl status shows what it waits for")
    click.echo(f"naived pid {reply.pid} stopped")


def _exited(pid: int, seconds: float) -> bool:
    """Wait up to `seconds` for process `pid` to end (a pidfd: no polling, no PID reuse race)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], seconds)[0])
    finally:
        os.close(fd)


@main.command(short_help="The live process tree, or one symbol's.")
@click.argument("symbol", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(target: Target, symbol: str | None, as_json: bool) -> None:
    """The live process tree: PIDs, uptimes, restarts, each trader's cycle and orders, each symbol's
    position and profit."""
    reply = call(target, StatusRequest(symbol))
    assert isinstance(reply, TreeStatus)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(reply).decode(), indent=2))
    else:
        click.echo(render(reply, time.time()))


@main.command(short_help="Finished cycles of SYMBOL: fees and profit.")
@click.argument("symbol")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def history(target: Target, symbol: str, as_json: bool) -> None:
    """Finished cycles of SYMBOL, oldest first: times, fees, realised pnl and dust."""
    reply = call(target, HistoryRequest(symbol))
    assert isinstance(reply, History)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(reply).decode(), indent=2))
        return
    for line in history_lines(reply):
        click.echo(line)


@main.command(short_help="Balances, open orders at the exchange, the rate budget.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def account(target: Target, as_json: bool) -> None:
    """The account as naived last read it (every reconcile_seconds; naivectl asks the exchange
    nothing): balances, the open orders at the exchange, and the host's rate budget in use."""
    reply = call(target, AccountRequest())
    assert isinstance(reply, AccountStatus)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(reply).decode(), indent=2))
    else:
        click.echo(account_text(reply, time.time()))


def _when(ms: int | None) -> str:
    if ms is None:
        return "?"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def history_lines(reply: History) -> list[str]:
    """One line per finished cycle (times UTC, from the exchange), then the totals per quote asset;
    before the first, one line that says so (silence would read as a broken command)."""
    if not reply.cycles:
        return [f"{reply.symbol}: no finished cycle yet (a cycle finishes when its sell fills; "
                f"naivectl status {reply.symbol} shows the open ones)"]
    lines = []
    totals: dict[str, list[Decimal]] = {}  # quote asset -> [fees in quote, pnl]
    for s in reply.cycles:
        head = f"cycle {s.cycle} trader {s.trader_id}  {_when(s.started_at)} → {_when(s.finished_at)} UTC"
        r = s.result
        if r is None:  # finished before cycles kept their books
            buy, sell = s.buy_order, s.sell_order
            lines.append(
                f"{head}  bought {_num(buy.executed_qty) if buy else '-'} @ {_num(buy.price) if buy else '-'}, "
                f"sold {_num(sell.executed_qty) if sell else '-'} @ {_num(sell.price) if sell else '-'}"
            )
            continue
        try:
            base, quote = assets(s.settings)
        except StrategyError:
            base, quote = "", ""
        fees = " + ".join(f"{_num(v)} {a}" for a, v in sorted(r.fees.items())) or "none"
        pnl = Decimal(r.pnl)
        line = (
            f"{head}  bought {_num(r.bought)} {base} for {_num(r.cost)} {quote}, sold {_num(r.sold)} for {_num(r.proceeds)}, "
            f"fees {fees} ({_num(r.fees_quote)} {quote}), pnl {'+' if pnl > 0 else ''}{_num(r.pnl)} {quote}"
        )
        if Decimal(r.dust):
            line += f", dust {_num(r.dust)} {base} (cost {_num(r.dust_cost)})"
        if r.note:
            line += f"  [{r.note}]"
        lines.append(line)
        total = totals.setdefault(quote, [Decimal(0), Decimal(0)])
        total[0] += Decimal(r.fees_quote)
        total[1] += pnl
    for quote, (fees_quote, pnl) in sorted(totals.items()):
        lines.append(f"total {quote}: fees {_num(str(fees_quote))}, pnl {'+' if pnl > 0 else ''}{_num(str(pnl))}")
    return lines


# --- the tree as text ---------------------------------------------------------------


def _age(started_at: float | None, now: float) -> str:
    return "-" if started_at is None else _duration(now - started_at)


def _duration(span: float) -> str:
    seconds = max(0, int(span))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _num(text: str) -> str:
    """Exchange decimals without their padding: "0.49980000" -> "0.4998", "100.00000000" -> "100"."""
    return text.rstrip("0").rstrip(".") if "." in text else text


def _proc(info: ProcessInfo | None, now: float) -> str:
    if info is None or info.pid is None:
        return "not running" + (f", restarts {info.restarts}" if info else "") + (
            f"  error: {info.error}" if info and info.error else "")
    return f"pid {info.pid}, up {_age(info.started_at, now)}, restarts {info.restarts}"


def _trader_line(t: TraderInfo, now: float) -> str:
    head = f"trader {t.trader_id}  " + (f"pid {t.pid}, up {_age(t.started_at, now)}" if t.pid else "not running")
    head += f", restarts {t.restarts}"
    s = t.state
    if s is None:
        return head
    parts = [f"cycle {s.cycle} {s.status}"]
    for order in (s.buy_order, s.sell_order):
        if order is not None:
            parts.append(f"{order.side} {_num(order.quantity)} @ {_num(order.price)} {order.status}")
    if s.intent is not None:
        parts.append(f"placing {s.intent.side} {s.intent.client_order_id}" + (" (outcome unknown)" if s.intent.unknown else ""))
    return head + "  " + ", ".join(parts)


def books_text(leader: LeaderStatus) -> str:
    """The symbol's finished cycles' result: "pnl +0.15 USDT after 0.30 USDT fees" (pnl is after fees)."""
    quote = _quote(leader)
    pnl = Decimal(leader.books.get("pnl_quote", "0"))
    return f"pnl {'+' if pnl > 0 else ''}{_num(str(pnl))} {quote} after {_num(leader.books.get('fees_quote', '0'))} {quote} fees"


def _signed(text: str) -> str:
    return ("+" if Decimal(text) > 0 else "") + _num(text)


def profit_line(p: Profit) -> str:
    """A symbol's position and profit, live: "profit  position 199.8 XRP (cost 100 USDT), unrealised
    -0.08 USDT, realised +0.03 USDT after 0.02 USDT fees, return -0.05% on 100 USDT". The fees are
    the finished cycles' (a third asset's, e.g. BNB, listed as it is: it is in no profit)."""
    quote = p.quote
    unrealised = f"{_signed(p.unrealised)} {quote}" if p.unrealised is not None else "unknown (no market trade seen yet)"
    third = [f"{_num(v)} {a}" for a, v in p.fees.items() if a not in (p.base, quote)]
    fees = " + ".join([f"{_num(p.fees_quote)} {quote}", *third])
    line = (f"profit  position {_num(p.position)} {p.base} (cost {_num(p.cost)} {quote}), unrealised {unrealised}, "
            f"realised {_signed(p.realised)} {quote} after {fees} fees")
    if p.return_on_budget is not None:
        percent = (Decimal(p.return_on_budget) * 100).quantize(Decimal("0.0001"))
        line += f", return {_signed(str(percent))}% on {_num(p.budget)} {quote}"
    return line


def _quote(leader: LeaderStatus) -> str:
    filters = lookup(leader.symbol)
    if filters is not None:
        return filters.quote
    for t in leader.traders:  # a symbol the table does not know: its traders' settings do
        if t.state is not None:
            try:
                return assets(t.state.settings)[1]
            except StrategyError:
                pass
    return "(quote)"


def _market(leader: LeaderStatus, now: float) -> str:
    """The symbol's last trade and its age, so a silent market feed shows on the leader's line."""
    trade = leader.last_trade
    if trade is None:
        return ", no market trade seen yet" if leader.following_market else ""
    text = f", last trade {_num(trade.p)} {_age(trade.E / 1000, now)} ago"
    if not leader.following_market:
        return text + " (not followed while the orders rest)"
    if now - trade.E / 1000 > SILENT_FEED_SECONDS:
        return text + " (a quiet market or a silent feed: is streamerd running?)"
    return text


def _branch(lines: list[str], last: bool) -> list[str]:
    out = []
    for i, line in enumerate(lines):
        if i == 0:
            out.append(("└── " if last else "├── ") + line)
        else:
            out.append(("    " if last else "│   ") + line)
    return out


def _leader_lines(leader: LeaderStatus, now: float) -> list[str]:
    head = (f"leader  pid {leader.pid}, up {_age(leader.started_at, now)}, restarts {leader.restarts}, "
            f"cycles finished {leader.cycles_finished}")
    if leader.cycles_finished and leader.profit is None:  # a leader from before profit lines
        head += f" ({books_text(leader)})"
    if leader.shutting_down:
        head += ", shutting down"
    if leader.waiting is not None and leader.waiting_since is not None:
        head += f", waiting {_age(leader.waiting_since, now)} for {leader.waiting}"
    head += _market(leader, now)
    if leader.market_dropped:
        head += ", market frames dropped: " + ", ".join(f"{r} {n}" for r, n in sorted(leader.market_dropped.items()))
    children = [[_trader_line(t, now)] for t in leader.traders]
    lines = [head]
    for i, child in enumerate(children):
        lines += _branch(child, i == len(children) - 1)
    return lines


def render(tree: TreeStatus, now: float) -> str:
    lines = [f"naived  pid {tree.pid}, up {_age(tree.started_at, now)}, exchange {tree.exchange}, market {tree.market}"]
    lines += [f"  problem: {problem}" for problem in tree.problems]
    branches: list[list[str]] = []
    if tree.paper_exchange is not None:
        branches.append([f"paper-exchange  {_proc(tree.paper_exchange, now)}"])
    if tree.account_stream is not None:
        branches.append([f"account-stream  {_proc(tree.account_stream, now)}"])
    for sym in tree.symbols:
        lease = "" if sym.lease_token is None else f"lease {sym.lease_token}, "
        head = f"{sym.symbol} [{sym.state}]  {lease}supervisor {_proc(sym.supervisor, now)}"
        if sym.error:
            head += f"  error: {sym.error}"
        lines_sym = [head]
        if sym.leader is not None and sym.leader.profit is not None:
            lines_sym.append(profit_line(sym.leader.profit))
        if sym.leader is not None:
            lines_sym += _branch(_leader_lines(sym.leader, now), True)
        branches.append(lines_sym)
    if not tree.symbols and tree.cluster is not None:
        branches.append(["(no symbols held by this host: the cluster below says which host trades what)"])
    elif not tree.symbols:
        branches.append(["(no symbols trading: naivectl start-trading XRPUSDT)"])
    for o in tree.orphans:  # an abandoned position must never go unnoticed
        branches.append([f"orphan {o.symbol} {o.client_order_id}  {o.side} {_num(o.quantity)} @ {_num(o.price)}, "
                         f"executed {_num(o.executed_qty)}: prefix of {o.minted_for}'s store, no trader owns it "
                         f"(for {_age(o.since, now)}); cancel it or settle it by hand"])
    for i, branch in enumerate(branches):
        lines += _branch(branch, i == len(branches) - 1)
    if tree.cluster is not None:
        lines += cluster_lines(tree.cluster)
    return "\n".join(lines)


def cluster_lines(cluster: ClusterStatus) -> list[str]:
    """The PostgreSQL store's hosts and leases, after the tree. The keeper's figures are as of its
    last good read; they are aged by the time since (`read_seconds_ago`) so that a lease nobody
    renewed since, this host's own while the database is away, shows running out."""
    since = cluster.read_seconds_ago or 0.0
    read = "no good read yet" if cluster.read_seconds_ago is None else f"last good read {_duration(since)} ago"
    lines = [f"cluster  this host {cluster.host_id}, lease time {cluster.lease_seconds:g}s"]
    if cluster.error is not None:
        lines.append(f"  lease keeper: {cluster.error}, {read}")
    else:
        lines[0] += ", not read yet" if cluster.read_seconds_ago is None else f", read {_duration(since)} ago"
    branches: list[str] = []
    hosts = sorted(cluster.hosts, key=lambda h: h.host_id)
    width = max((len(h.host_id) for h in hosts), default=0)
    for h in hosts:
        seen = h.seen_seconds_ago + since
        # as the keepers count them: seen within the lease time (placement.plan's `alive`)
        state = "alive" if seen < cluster.lease_seconds else "dead"
        here = "  (this host)" if h.host_id == cluster.host_id else ""
        branches.append(f"host {h.host_id:<{width}}  {state}, last seen {_duration(seen)} ago, pid {h.pid}{here}")
    leases = sorted(cluster.leases, key=lambda lease: lease.symbol)
    width = max((len(lease.symbol) for lease in leases), default=0)
    for lease in leases:
        left = lease.expires_in_seconds - since
        expiry = f"expires in {_duration(left)}" if left > 0 else \
            f"expired {_duration(-left)} ago (free for another host)"
        holder = lease.holder + (" (this host)" if lease.holder == cluster.host_id else "")
        branches.append(f"lease {lease.symbol:<{width}}  {holder}, token {lease.token}, "
                        f"age {_duration(lease.age_seconds + since)}, {expiry}")
    if cluster.read_seconds_ago is not None and not leases:
        branches.append("(no leases)")
    for i, line in enumerate(branches):
        lines += _branch([line], i == len(branches) - 1)
    return lines


# --- the account as text ------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], right: frozenset[int]) -> list[str]:
    """Columns padded to their widest cell; the columns in `right` (numbers) aligned right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in [header, *rows]]


def budget_lines(b: RateBudget, now: float) -> list[str]:
    """The host's rate budget in use, each figure against what this host allows itself."""
    hosts = f"{b.share_hosts} host{'' if b.share_hosts == 1 else 's'}"
    share = f" (this host's share of the account, among {hosts})" if b.share_hosts else ""
    lines = [f"  request weight  {b.weight} / {b.weight_limit} this minute",
             f"  orders          {b.orders_10s} / {b.orders_10s_limit} this 10 s, "
             f"{b.orders_day} / {b.orders_day_limit} today (UTC){share}"]
    if b.banned_until is not None and b.banned_until > now:
        lines.append(f"  held: the exchange answered {b.ban_status}; nothing is sent for {_duration(b.banned_until - now)} more")
    return lines


def account_text(account: AccountStatus, now: float) -> str:
    """How old it is, the last read's error first when it failed, then the balances, the open
    orders at the exchange (every symbol's, this install's or not) and the rate budget."""
    if account.read_at is None:
        head = f"account  not read yet (naived's reconcile worker reads it every {account.every_seconds:g}s)"
    else:
        head = f"account  read {_duration(now - account.read_at)} ago (every {account.every_seconds:g}s)"
        if account.pushed_at is not None:
            head += f", balances pushed {_duration(now - account.pushed_at)} ago"
    lines = [head]
    if account.error is not None:
        when = f" {_duration(now - account.error_at)} ago" if account.error_at is not None else ""
        lines.append(f"  error{when}: {account.error}")
    if account.read_at is not None:
        lines.append("balances" if account.balances else "balances  (none)")
        if account.balances:
            lines += _table(["asset", "free", "locked"], [[b.asset, _num(b.free), _num(b.locked)] for b in account.balances],
                            frozenset({1, 2}))
        orders = account.open_orders
        lines.append(f"open orders at the exchange  ({len(orders)})" if orders else "open orders at the exchange  (none)")
        if orders:
            rows = [[o.symbol, o.side, _num(o.price), _num(o.quantity), _num(o.executed_qty), o.status, o.client_order_id,
                     _duration(now - o.time / 1000) if o.time else "-"] for o in orders]
            lines += _table(["symbol", "side", "price", "qty", "executed", "status", "client order id", "age"], rows,
                            frozenset({2, 3, 4, 7}))
    if account.budget is not None:
        lines.append("rate budget (this host)")
        lines += budget_lines(account.budget, now)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
