"""freqtrade, configured only through its documented settings, trading on the paper exchange.

No shim: a real paper exchange process (fed trades by this script's ZeroMQ XPUB, the path
streamerd's trades take) and a real `freqtrade trade` (dry_run false) whose `exchange` section is
the README's ("Use the paper exchange from another bot"), its ports made this run's. Startup
candles come from a generated trade history (`[paper] history_files`, a data.binance.vision-style
CSV of the last hours), the live market from a price wave this script publishes. The strategy
(written here) enters whenever it can, exits on a small ROI, keeps its stop loss on the exchange
(`stoploss_on_exchange`: Binance's STOP_LOSS_LIMIT) and parks every fourth entry far below the
market so `unfilledtimeout` cancels it. Once an exchange stop is resting on BTCUSDT, the script
walks BTCUSDT's price down between the stop price and its limit, so the stop triggers and fills.

Before trading, `freqtrade download-data` fetches the history's 1m candles (klines paged by
startTime): every minute of the history must come back. At the end (deadline, or every goal seen
and a few seconds more) freqtrade's process group is killed, and its trade database (sqlite) is
checked against the paper exchange's own orders (GET /api/v3/allOrders and myTrades, signed):
every order freqtrade knows exists there with the same side, type, status, filled amount and
average price, and freqtrade's fees are the exchange's commissions; every order of the account
is one freqtrade knows (or an unfilled entry it cancelled and removed, as its log says); entries
and exits filled; an entry cancelled by timeout; STOP_LOSS_LIMIT orders placed and one triggered
and filled, closing its trade as `stoploss_on_exchange`. Every answer the exchange gave is
printed (GET /paper/usage `answers`). Exit status 1 if an invariant broke, a goal was not
reached or an answer was not 200 (freqtrade may carry on past one; Binance would have answered).

    .venv/bin/python bench/freqtrade_e2e.py [--freqtrade /tmp/ft-venv/bin/freqtrade] [--seconds 420] [--trades 6] [--keep]

freqtrade is not a dependency of naive: install it in its own venv,
`python3 -m venv /tmp/ft-venv && /tmp/ft-venv/bin/pip install freqtrade==2026.9`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_paper_exchange import KEY, SECRET, Exchange, Market  # noqa: E402 - the tests' real-process helpers

from naived.exchange.binance import signature  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {"BTCUSDT": Decimal("60000"), "ETHUSDT": Decimal("3000")}  # symbol -> the price the wave circles
DROPPED = "BTCUSDT"  # the symbol whose price is walked through a resting stop
HISTORY_HOURS = 3  # 1m candles before the start: freqtrade's startup candles and more
WAVE_SECONDS, WAVE_AMPLITUDE = 40.0, Decimal("0.005")  # ±0.5%: the ROI (0.3%) is reached on each wave
TICK_SECONDS = 0.2  # one trade per pair this often

STRATEGY = '''
from datetime import datetime
from freqtrade.strategy import IStrategy


class PaperE2E(IStrategy):
    """Enter whenever a slot is free; exit on a small ROI; the stop loss lives on the exchange."""
    INTERFACE_VERSION = 3
    timeframe = "1m"
    startup_candle_count = 30
    process_only_new_candles = False
    minimal_roi = {"0": 0.003, "1": -1}  # -1: exit at any price after a minute (freqtrade's documented special case)
    stoploss = -0.02
    order_types = {"entry": "limit", "exit": "limit", "stoploss": "limit", "stoploss_on_exchange": True,
                   "stoploss_on_exchange_interval": 5}
    entries = 0

    def populate_indicators(self, dataframe, metadata):
        return dataframe

    def populate_entry_trend(self, dataframe, metadata):
        dataframe["enter_long"] = 1
        return dataframe

    def populate_exit_trend(self, dataframe, metadata):
        dataframe["exit_long"] = 0
        return dataframe

    def custom_entry_price(self, pair: str, trade, current_time: datetime, proposed_rate: float,
                           entry_tag, side: str, **kwargs) -> float:
        # Every fourth entry rests 1.5% below the market (the wave: ±0.5%): unfilledtimeout cancels it.
        PaperE2E.entries += 1
        return proposed_rate * 0.985 if PaperE2E.entries % 4 == 1 else proposed_rate
'''


def freqtrade_config(ex: Exchange, directory: Path) -> dict[str, Any]:
    """freqtrade's config: the README's `exchange` section (ports made this run's), live trading."""
    text = (ROOT / "README.md").read_text()
    block = text.split('"exchange": {', 1)[1].split("\n```", 1)[0]
    block = block.replace("127.0.0.1:5681", ex.url.removeprefix("http://")).replace(
        "127.0.0.1:5682", ex.ws_url.removeprefix("ws://"))
    exchange: dict[str, Any] = json.loads("{" + block)
    exchange["pair_whitelist"] = [f"{s[:-4]}/USDT" for s in PAIRS]
    return {
        "max_open_trades": 2, "stake_currency": "USDT", "stake_amount": 100, "tradable_balance_ratio": 0.99,
        "dry_run": False, "cancel_open_orders_on_exit": False,
        "trading_mode": "spot", "margin_mode": "",
        "unfilledtimeout": {"entry": 15, "exit": 30, "exit_timeout_count": 0, "unit": "seconds"},
        "entry_pricing": {"price_side": "same", "use_order_book": False, "price_last_balance": 0.0,
                          "check_depth_of_market": {"enabled": False, "bids_to_ask_delta": 1}},
        "exit_pricing": {"price_side": "same", "use_order_book": False},
        "exchange": exchange,
        "pairlists": [{"method": "StaticPairList"}],
        "telegram": {"enabled": False, "token": "", "chat_id": ""},
        "bot_name": "paper-e2e", "initial_state": "running", "force_entry_enable": False,
        "internals": {"process_throttle_secs": 1, "heartbeat_interval": 0},
        "db_url": f"sqlite:///{directory / 'trades.sqlite'}",
        "user_data_dir": str(directory / "user_data"),
        "strategy": "PaperE2E", "strategy_path": str(directory / "strategies"),
    }


def history(directory: Path, now_ms: int) -> tuple[list[Path], int]:
    """data.binance.vision-style trade CSVs of the last HISTORY_HOURS (a trade every 10 s per
    pair, on the wave): the startup candles. The last trade id used, so live ids follow it."""
    files, trade_id = [], 0
    for symbol, centre in PAIRS.items():
        path = directory / f"{symbol}-trades-generated.csv"
        with path.open("w") as out:
            for stamp in range(now_ms - HISTORY_HOURS * 3_600_000, now_ms - 1000, 10_000):
                trade_id += 1
                price = wave(centre, stamp / 1000)
                out.write(f"{trade_id},{price},0.01,{price * Decimal('0.01')},{stamp},{trade_id % 2 == 0},true\n")
        files.append(path)
    return files, trade_id


def wave(centre: Decimal, at: float) -> Decimal:
    return (centre * (1 + WAVE_AMPLITUDE * Decimal(math.sin(2 * math.pi * at / WAVE_SECONDS)))).quantize(Decimal("0.01"))


def download(freqtrade: str, ex: Exchange, config: Path, directory: Path) -> dict[str, int]:
    """`freqtrade download-data` of the history's 1m candles (klines paged by startTime, as for
    a backtest): each pair's candle count; the history's every minute but the open one expected."""
    done = subprocess.run([freqtrade, "download-data", "--config", str(config), "--timeframes", "1m", "--days", "1",
                           "--data-format-ohlcv", "json"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=120, cwd=directory)
    (directory / "download-data.log").write_bytes(done.stdout)
    counts = {}
    for symbol in PAIRS:
        path = directory / "user_data" / "data" / "binance" / f"{symbol[:-4]}_USDT-1m.json"
        counts[symbol] = len(json.loads(path.read_text())) if path.exists() else 0
    return counts


def signed_get(ex: Exchange, path: str, params: dict[str, Any]) -> Any:
    query = urlencode({**params, "recvWindow": 5000, "timestamp": int(time.time() * 1000)})
    query += "&signature=" + signature(SECRET, query)
    r = ex.http.get(f"{ex.url}{path}?{query}", headers={"X-MBX-APIKEY": KEY}, timeout=5)
    r.raise_for_status()
    return r.json()


def exchange_orders(ex: Exchange, signed: bool) -> tuple[dict[str, dict[str, Any]], dict[str, Decimal]]:
    """The account's orders on every pair by order id, and the commission paid per order: as any
    client reads them (GET /api/v3/allOrders and myTrades, signed, weight 20 each), or, while
    the run polls, from the free inspection endpoint (GET /paper/orders), not to use up weight."""
    commission: dict[str, Decimal] = {}
    if signed:
        orders = {str(o["orderId"]): o for s in PAIRS for o in signed_get(ex, "/api/v3/allOrders", {"symbol": s})}
        fills = [f for s in PAIRS for f in signed_get(ex, "/api/v3/myTrades", {"symbol": s})]
    else:
        orders = {str(o["orderId"]): o for o in ex.get("/paper/orders")}
        fills = [f | {"orderId": o["orderId"]} for o in orders.values() for f in o["fills"]]
    for fill in fills:
        commission[str(fill["orderId"])] = commission.get(str(fill["orderId"]), Decimal(0)) + Decimal(fill["commission"])
    return orders, commission


def ft_orders(db: Path) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(
                "SELECT o.*, t.exit_reason, t.is_open AS trade_open, t.fee_close_cost"
                " FROM orders o JOIN trades t ON t.id = o.ft_trade_id")]
        except sqlite3.OperationalError:  # freqtrade has not created its tables yet
            return []


CCXT_TYPE = {"STOP_LOSS_LIMIT": "limit", "TAKE_PROFIT_LIMIT": "limit", "LIMIT_MAKER": "limit",
             "STOP_LOSS": "market", "TAKE_PROFIT": "market"}  # ccxt's parseOrderType, which freqtrade stores
STATUS = {"FILLED": "closed", "CANCELED": "canceled", "EXPIRED": "expired", "NEW": "open", "PARTIALLY_FILLED": "open"}


def check(ex: Exchange, directory: Path, signed: bool = True) -> tuple[list[str], dict[str, int]]:
    """Freqtrade's orders against the exchange's: the broken invariants and the counts seen."""
    db = directory / "trades.sqlite"
    broken: list[str] = []
    theirs, commission = exchange_orders(ex, signed)
    ours = ft_orders(db)
    known = {str(o["order_id"]) for o in ours if o["order_id"]}
    for o in ours:
        x = theirs.get(str(o["order_id"]))
        if x is None:
            broken.append(f"freqtrade's order {o['order_id']} ({o['ft_pair']} {o['ft_order_side']}) is not on the exchange")
            continue
        want_status = STATUS.get(x["status"], x["status"].lower())
        # freqtrade's status is ccxt's; "canceled" also when Binance says EXPIRED (ccxt maps it so)
        if o["status"] != want_status and not (o["status"] == "canceled" and x["status"] == "EXPIRED"):
            broken.append(f"order {o['order_id']}: freqtrade says {o['status']}, the exchange {x['status']}")
        if x["side"].lower() != o["side"]:
            broken.append(f"order {o['order_id']}: side {o['side']} vs {x['side']}")
        if CCXT_TYPE.get(x["type"], x["type"].lower()) != o["order_type"]:
            broken.append(f"order {o['order_id']}: type {o['order_type']} vs {x['type']}")
        filled = Decimal(x["executedQty"])
        if abs(Decimal(str(o["filled"] or 0)) - filled) > Decimal("1e-9"):
            broken.append(f"order {o['order_id']}: filled {o['filled']} vs executedQty {filled}")
        if filled and o["average"] is not None:
            average = Decimal(x["cummulativeQuoteQty"]) / filled
            if abs(Decimal(str(o["average"])) - average) > average * Decimal("1e-9"):
                broken.append(f"order {o['order_id']}: average {o['average']} vs {average}")
    # Fees: what freqtrade took off a buy's amount (the fee in the base asset) and charged on an
    # exit (in USDT) are the commissions of the order's fills in myTrades.
    fees_checked = 0
    for o in ours:
        if o["status"] != "closed":
            continue
        charged = o["ft_fee_base"] if o["ft_order_side"] == "buy" else o["fee_close_cost"]
        paid = commission.get(str(o["order_id"]), Decimal(0))
        if charged is None or abs(Decimal(str(charged)) - paid) > max(paid, Decimal("1e-8")) * Decimal("1e-6"):
            broken.append(f"order {o['order_id']} ({o['ft_order_side']}): freqtrade's fee {charged}, "
                          f"the exchange's commission {paid}")
        fees_checked += 1
    # freqtrade deletes a trade whose entry was cancelled unfilled (its log says so): those orders
    # are the exchange's alone, and must be cancelled buys that filled nothing.
    log = (directory / "freqtrade.log").read_text(errors="replace") if (directory / "freqtrade.log").exists() else ""
    removed = log.count("order fully cancelled. Removing")
    unknown = 0
    for order_id, x in theirs.items():
        if order_id not in known and (x["side"], x["status"], Decimal(x["executedQty"])) == ("BUY", "CANCELED", 0):
            unknown += 1
        elif order_id not in known:
            broken.append(f"the exchange's order {order_id} ({x['symbol']} {x['type']} {x['status']}) is unknown to freqtrade")
    if unknown > removed:
        broken.append(f"{unknown} cancelled buys unknown to freqtrade, but its log removed only {removed} trades")
    entries = [o for o in ours if o["ft_order_side"] == "buy"]
    exits = [o for o in ours if o["ft_order_side"] == "sell"]
    stops = [o for o in ours if o["ft_order_side"] == "stoploss"]
    counts = {
        "exchange_orders": len(theirs),
        "fees_checked": fees_checked,
        "freqtrade_orders": len(ours),
        "entries_filled": sum(o["status"] == "closed" for o in entries),
        "entries_cancelled_unfilled": unknown + sum(o["status"] == "canceled" and not o["filled"] for o in entries),
        "entries_cancelled_by_timeout": log.count("order cancelled due to timeout"),
        "exits_filled": sum(o["status"] == "closed" for o in exits),
        "stop_loss_limit_placed": sum(theirs.get(str(o["order_id"]), {}).get("type") == "STOP_LOSS_LIMIT" for o in stops),
        "stop_loss_limit_filled": sum(theirs.get(str(o["order_id"]), {}).get("status") == "FILLED" for o in stops),
        "trades_closed": len({o["ft_trade_id"] for o in ours if not o["trade_open"]}),
        "trades_closed_by_exchange_stop": len({o["ft_trade_id"] for o in stops
                                               if o["exit_reason"] == "stoploss_on_exchange" and not o["trade_open"]}),
    }
    return broken, counts


GOALS = ("entries_filled", "exits_filled", "entries_cancelled_unfilled", "stop_loss_limit_placed",
         "stop_loss_limit_filled", "trades_closed_by_exchange_stop")


def resting_stop(ex: Exchange) -> Decimal | None:
    """The stop price of a STOP_LOSS_LIMIT resting on DROPPED, if there is one."""
    for o in ex.get(f"/paper/orders?symbol={DROPPED}"):
        if o.get("type") == "STOP_LOSS_LIMIT" and o.get("status") == "NEW":
            return Decimal(o["stopPrice"])
    return None


def run(args: argparse.Namespace, directory: Path) -> int:
    now_ms = int(time.time() * 1000)
    files, last_id = history(directory, now_ms)
    market = Market(f"ipc://{directory / 'market.sock'}")
    market.next_id = last_id + 1  # live trades follow the history's ids (older ids are skipped as counted)
    ex = Exchange(directory, f"ipc://{directory / 'market.sock'}",
                  f'history_files = {json.dumps([str(f) for f in files])}\nbalances = {{ USDT = "1000" }}\n')
    ft: subprocess.Popen[bytes] | None = None
    downloaded: dict[str, int] = {}
    try:
        ex.start()
        (directory / "strategies").mkdir()
        (directory / "user_data").mkdir()  # freqtrade makes its subdirectories, not this one
        (directory / "strategies" / "paper_e2e.py").write_text(STRATEGY)
        config = directory / "freqtrade.json"
        config.write_text(json.dumps(freqtrade_config(ex, directory), indent=1))
        downloaded = download(args.freqtrade, ex, config, directory)
        with open(directory / "freqtrade.log", "wb") as log:
            ft = subprocess.Popen([args.freqtrade, "trade", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True, cwd=directory)
        started = time.monotonic()
        deadline = started + args.seconds
        price = dict(PAIRS)
        drop_from: Decimal | None = None
        done_at: float | None = None
        counts: dict[str, int] = {}
        next_check = started
        while time.monotonic() < deadline:
            if ft.poll() is not None:
                print(f"freqtrade exited early with {ft.returncode}; see {directory / 'freqtrade.log'}")
                break
            for symbol, centre in PAIRS.items():
                if symbol == DROPPED and drop_from is not None and counts.get("stop_loss_limit_filled"):
                    price[symbol] = wave(drop_from, time.time())  # the stop filled: the wave again, lower
                elif symbol == DROPPED and drop_from is not None:
                    # Walk down to just under the stop (above its limit: stop x 0.99), then hold there.
                    price[symbol] = max(drop_from, price[symbol] * Decimal("0.999")).quantize(Decimal("0.01"))
                else:
                    price[symbol] = wave(centre, time.time())
                market.trade(symbol, str(price[symbol]), "0.5")
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 2
                if drop_from is None and counts.get("exits_filled", 0) >= 1 and (stop := resting_stop(ex)):
                    drop_from = (stop * Decimal("0.997")).quantize(Decimal("0.01"))
                    print(f"{time.monotonic() - started:5.0f}s: walking {DROPPED} down to {drop_from} (a stop rests at {stop})")
                _, counts = check(ex, directory, signed=False)
                if done_at is None and all(counts.get(g, 0) for g in GOALS) and counts["trades_closed"] >= args.trades:
                    done_at = time.monotonic()
                    print(f"{done_at - started:5.0f}s: every goal seen: {counts}")
                    deadline = min(deadline, done_at + 10)
            time.sleep(TICK_SECONDS)
        elapsed = time.monotonic() - started
    finally:
        if ft is not None and ft.poll() is None:
            os.killpg(ft.pid, signal.SIGKILL)
            ft.wait(10)
    try:
        broken, counts = check(ex, directory)
        usage = ex.get("/paper/usage")
    finally:
        if ex.proc is not None and ex.proc.poll() is None:
            os.kill(ex.proc.pid, signal.SIGKILL)
            ex.proc.wait(10)
        market.close()
    print(f"freqtrade download-data: 1m candles {downloaded} (the history: {HISTORY_HOURS * 60} minutes)")
    print(f"freqtrade ran {elapsed:.0f}s against the paper exchange (dry_run false, enable_ws true)")
    for name, value in counts.items():
        print(f"  {name:32} {value}")
    dropped = {f"{k}.{r}": n for k, v in usage.items() if k.endswith("dropped") for r, n in v.items() if n}
    print(f"  REST requests {usage['requests']} (weight {usage['weight']}); connections dropped: {dropped or 'none'}")
    print("  the paper exchange's answers to freqtrade (method path status: count):")
    for key, n in usage["answers"].items():
        print(f"    {key:48} {n}")
    refused = {k: n for k, n in usage["answers"].items() if not k.endswith(" 200")}
    missing = [g for g in GOALS if not counts.get(g)]
    # 1 s short of now, the history's last minute may still be open: freqtrade drops an open candle
    missing += [f"download-data {s}" for s, n in downloaded.items() if n < HISTORY_HOURS * 60 - 1]
    if counts.get("trades_closed", 0) < args.trades:
        missing.append("trades_closed")
    for b in broken:
        print(f"BROKEN: {b}")
    if missing:
        print(f"NOT SEEN: {', '.join(missing)}")
    errors = [line for line in (directory / "freqtrade.log").read_text(errors="replace").splitlines()
              if " - ERROR - " in line or " - WARNING - " in line]
    print(f"freqtrade logged {len(errors)} warnings/errors" + (":" if errors else ""))
    for line in errors[:20]:
        print("  " + line[:300])
    if refused:  # freqtrade may carry on past them, but Binance would have answered
        print(f"NOT 200: {refused}")
    return 1 if broken or missing or refused else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--freqtrade", default=os.environ.get("NAIVE_FREQTRADE", "/tmp/ft-venv/bin/freqtrade"))
    parser.add_argument("--seconds", type=float, default=420.0,
                        help="the run's deadline (it ends sooner once every goal is seen)")
    parser.add_argument("--trades", type=int, default=6, help="closed trades to see before ending (with every other goal)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, configs, trade database)")
    args = parser.parse_args()
    if not (shutil.which(args.freqtrade) or os.access(args.freqtrade, os.X_OK)):
        print(f"freqtrade not found at {args.freqtrade}: install it (python3 -m venv /tmp/ft-venv && "
              f"/tmp/ft-venv/bin/pip install freqtrade==2026.9) or pass --freqtrade / set NAIVE_FREQTRADE", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="naive-freqtrade-"))
    try:
        return run(args, directory)
    finally:
        if args.keep:
            print(f"kept {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
