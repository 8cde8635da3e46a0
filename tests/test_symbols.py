"""The symbol table: regenerated from exchangeInfo (`naived refresh-symbols`), preferred from the
state directory, and the paper account funds every quote asset it lists."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from harness import BIN, Tree, wait_for
from recorded import EXCHANGE_INFO

from naived.core import symbols
from naived.core.config import Paper


def entry(symbol: str, base: str, quote: str, status: str = "TRADING", notional: str = "NOTIONAL",
          lot: bool = True) -> dict:
    filters = [{"filterType": "PRICE_FILTER", "minPrice": "0.00000100", "maxPrice": "1000.00000000", "tickSize": "0.00000100"}]
    if lot:
        filters.append({"filterType": "LOT_SIZE", "minQty": "0.00100000", "maxQty": "90000.00000000", "stepSize": "0.00100000"})
    filters.append({"filterType": notional, "minNotional": "0.00010000"})
    return {"symbol": symbol, "status": status, "baseAsset": base, "quoteAsset": quote, "filters": filters}


# A small exchangeInfo in Binance's shape: two quote assets, a symbol on BREAK, the older
# MIN_NOTIONAL filter, and one without LOT_SIZE (the strategy could not size an order).
FIXTURE = {
    "timezone": "UTC", "serverTime": 1694185561976, "rateLimits": [], "exchangeFilters": [],
    "symbols": [
        entry("ETHBTC", "ETH", "BTC"),
        entry("XRPUSDT", "XRP", "USDT", notional="MIN_NOTIONAL"),
        entry("LUNABUSD", "LUNA", "BUSD", status="BREAK"),
        entry("ODDBNB", "ODD", "BNB", lot=False),
    ],
}


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state"
    symbols._override = None  # the shipped table again for the other tests
    symbols.table.cache_clear()


def refresh(tmp_path: Path, state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "naive.toml"
    config.write_text(f'[paths]\nstate_dir = "{state_dir}"\nruntime_dir = "{tmp_path / "run"}"\n')
    return subprocess.run([str(BIN / "naived"), "refresh-symbols", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def test_refresh_writes_every_trading_symbol_to_the_state_dir_and_is_preferred(tmp_path: Path, state_dir: Path) -> None:
    source = tmp_path / "exchangeInfo.json"
    source.write_text(json.dumps(FIXTURE))
    done = refresh(tmp_path, state_dir, "--from", str(source))
    assert done.returncode == 0, done.stderr
    assert "2 TRADING symbols, 2 quote assets (BTC USDT)" in done.stdout
    text = (state_dir / "symbols.csv").read_text()
    assert text.startswith("# Spot symbols TRADING on Binance (all quote assets), from exchangeInfo of 2023-09-08 15:06 UTC")
    assert "0.000001" in text and "E-" not in text  # plain notation for people
    assert not list(state_dir.glob(".*tmp"))  # replaced atomically: no temp file left

    assert symbols.lookup("ETHBTC") is not None  # the shipped table has it too
    symbols.use_state_dir(state_dir)
    assert sorted(symbols.table()) == ["ETHBTC", "XRPUSDT"]  # the refreshed table wins
    assert symbols.lookup("ETHBTC") == symbols.SymbolFilters(
        "ETHBTC", "ETH", "BTC", Decimal("0.000001"), Decimal("0.001"), Decimal("0.001"), Decimal("90000"), Decimal("0.0001"))
    assert symbols.lookup("XRPUSDT").min_notional == Decimal("0.0001")  # MIN_NOTIONAL, the older name
    assert symbols.quote_assets() == ["BTC", "USDT"]
    assert symbols.table_path() == str(state_dir / "symbols.csv")


@pytest.mark.parametrize("content, message", [
    (b"{not json", "exchangeInfo.json: "),
    (json.dumps({"code": -1121, "msg": "Invalid symbol."}).encode(), "not an exchangeInfo answer"),
    (json.dumps({**FIXTURE, "symbols": [entry("LUNABUSD", "LUNA", "BUSD", status="BREAK")]}).encode(), "no TRADING symbol"),
])
def test_refresh_refuses_what_is_not_a_table_and_keeps_the_old_one(
        tmp_path: Path, state_dir: Path, content: bytes, message: str) -> None:
    state_dir.mkdir(parents=True)
    (state_dir / "symbols.csv").write_text("symbol,base,quote,tick_size,step_size,min_qty,max_qty,min_notional\n")
    source = tmp_path / "exchangeInfo.json"
    source.write_bytes(content)
    done = refresh(tmp_path, state_dir, "--from", str(source))
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert (state_dir / "symbols.csv").read_text().startswith("symbol,")  # untouched


def test_the_shipped_table_is_the_real_exchange_info_regenerated(tmp_path: Path, state_dir: Path) -> None:
    """samples/exchangeInfo.json is the answer the shipped table was made from, cut to 7 symbols
    (one on BREAK): regenerated, its header and every line are the shipped table's."""
    out = tmp_path / "symbols.csv"
    done = refresh(tmp_path, state_dir, "--from", str(EXCHANGE_INFO), "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert "6 TRADING symbols, 2 quote assets (BTC USDT)" in done.stdout
    shipped = Path(symbols.__file__).with_name("symbols.csv").read_text().splitlines()
    lines = out.read_text().splitlines()
    assert lines[:2] == shipped[:2]
    rows = lines[2:]
    assert [row.split(",")[0] for row in rows] == ["ADAUSDT", "BNBUSDT", "BTCUSDT", "ETHBTC", "ETHUSDT", "XRPUSDT"]
    assert set(rows) <= set(shipped[2:])


def test_the_paper_account_funds_every_quote_asset_it_does_not_name() -> None:
    paper = Paper(balances={"USDT": Decimal("500")}, default_balance=Decimal("2"))
    assert paper.starting_balances(["BTC", "USDT", "EUR"]) == {"USDT": Decimal("500"), "BTC": Decimal("2"), "EUR": Decimal("2")}
    assert Paper(default_balance=Decimal(0)).starting_balances(["BTC", "USDT"]) == {"USDT": Decimal("10000")}
    with pytest.raises(ValueError, match="default_balance: must be >= 0"):
        Paper(default_balance=Decimal("-1"))


def test_a_btc_quoted_symbol_trades_a_cycle_on_paper(tmp_path: Path) -> None:
    """ETHBTC: the BTC to buy with comes from default_balance (no BTC in `balances`)."""
    tree = Tree(tmp_path, """
[trading.defaults]
chunks = 1
buy_down_interval = "0.0001"
profit_interval = "-0.0012"

[trading.symbols.ETHBTC]
budget = "0.05"
""", paper='balances = { USDT = "10000" }\ndefault_balance = "1"')
    try:
        tree.start_streamer()
        tree.start_naived()
        assert tree.ctl("start-trading", "ETHBTC").returncode == 0
        wait_for("a finished ETHBTC cycle",
                 lambda: (s := tree.symbol("ETHBTC")) and s["leader"] and s["leader"]["cycles_finished"] >= 1, timeout=90)
        orders = [o for o in tree.paper_orders("ETHBTC") if o["status"] == "FILLED"]
        assert {o["side"] for o in orders} == {"BUY", "SELL"}, orders
        btc = tree.paper_balances()["BTC"]
        assert Decimal(btc["free"]) + Decimal(btc["locked"]) != Decimal("1")  # the cycle moved BTC
        assert Decimal(tree.paper_balances()["USDT"]["free"]) == Decimal("10000")  # and nothing else
        result = tree.history("ETHBTC")[0]["result"]
        assert Decimal(result["cost"]) <= Decimal("0.05") and "BTC" in tree.ctl("history", "ETHBTC").stdout
    finally:
        tree.stop()


def test_similar_symbols_for_a_mistyped_one() -> None:
    similar = symbols.similar
    assert similar("BTC")[0] == "BTCUSDT" and all("BTC" in s for s in similar("BTC"))
    assert similar("xrp")[0] == "XRPUSDT" and len(similar("XRP", limit=3)) == 3
    assert similar("QQQQQQ") == [] and "XRPUSDT" not in similar("XRPUSDT")
