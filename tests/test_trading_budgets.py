"""Budgets that cannot surprise (issue 20, item 8), one validation for check-config, start,
start-trading and reload, and the config rough edges of item 7: a refused reload says nothing
reloaded, and naivectl reaches naived while the file is broken."""

from __future__ import annotations

import os
import signal
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from harness import BIN, RESTING_QUICK_FAILURE, open_buys, running_tree, wait_for

from naived.core import validate
from naived.core.config import ConfigError, NoBudget, parse_config

ETHBTC_NO_BUDGET = ('ETHBTC: no budget in BTC, its quote asset: set [trading.budgets] BTC = "<amount>" '
                    'or [trading.symbols.ETHBTC] budget = "<amount>" (in BTC)')


# --- the rule, through the one validation function -------------------------------------------


@pytest.mark.parametrize("exchange", ["binance", "binance-testnet", "paper"])
def test_a_symbol_whose_quote_asset_has_no_budget_is_refused_in_one_line(exchange: str) -> None:
    # Before: ETHBTC traded the default budget, 100, in BTC.
    config = parse_config(f'[naived]\nexchange = "{exchange}"\n'.encode())
    assert validate.symbol_problem(config, "ETHBTC") == ETHBTC_NO_BUDGET
    with pytest.raises(NoBudget):
        config.trading.for_symbol("ETHBTC")
    assert validate.symbol_problem(config, "XRPUSDT") is None  # USDT has the documented default
    assert config.trading.for_symbol("XRPUSDT").budget == Decimal("100")


def test_a_budget_per_quote_asset_or_per_symbol_is_in_that_asset() -> None:
    config = parse_config(b'[naived]\nexchange = "binance"\n'
                          b'[trading.budgets]\nbtc = "0.01"\n'
                          b'[trading.symbols.BNBBTC]\nbudget = "0.004"\n')
    assert config.trading.budgets == {"BTC": Decimal("0.01")}  # as written: no USDT unless named
    assert config.trading.for_symbol("ETHBTC").budget == Decimal("0.01")
    assert config.trading.budget_for("BNBBTC", "BTC") == (Decimal("0.004"), "trading.symbols.BNBBTC.budget")
    assert validate.symbol_problem(config, "ETHBTC") is None
    assert validate.symbol_problem(config, "XRPUSDT", None).startswith('XRPUSDT: no budget in USDT, its quote asset: ')


def test_the_old_bare_budget_is_refused_saying_what_to_write() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(b'[trading.defaults]\nbudget = "250"\n', "naive.toml")
    assert str(err.value) == (
        'naive.toml: trading.defaults.budget: a budget names its asset now: write [trading.budgets] USDT = "250" '
        '(one line per quote asset) or budget under [trading.symbols.<SYMBOL>] (in its quote asset)')


def test_a_share_per_trader_below_the_minimum_notional_is_refused_naming_the_minimum() -> None:
    # BTCUSDT: minimum notional 5 USDT; 8 over 2 chunks is 4 per trader.
    config = parse_config(b'[trading.symbols.BTCUSDT]\nbudget = "8"\n')
    assert validate.symbol_problem(config, "BTCUSDT") == (
        "BTCUSDT: trading.symbols.BTCUSDT.budget = 8 USDT over 2 chunks is 4 USDT per trader, below the minimum "
        "notional 5 USDT: set at least 10 or fewer chunks")
    assert validate.symbol_problem(parse_config(b'[trading.symbols.BTCUSDT]\nbudget = "10"\n'), "BTCUSDT") is None


# --- check-config and start: the same checks, the same lines ----------------------------------


def naived(command: str, config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BINANCE_API")}
    return subprocess.run([str(BIN / "naived"), command, "--config", str(config)], capture_output=True, text=True,
                          timeout=30, env={**environment, **(env or {})}, start_new_session=True)


def test_check_config_refuses_a_budget_below_the_minimum_notional(tmp_path: Path) -> None:
    path = tmp_path / "naive.toml"
    path.write_text('[naived]\nautostart = ["XRPUSDT", "ETHBTC"]\n[trading.symbols.BTCUSDT]\nbudget = "8"\n')
    result = naived("check-config", path)
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines() == [
        f"naived: {path}: {ETHBTC_NO_BUDGET}",
        f"naived: {path}: BTCUSDT: trading.symbols.BTCUSDT.budget = 8 USDT over 2 chunks is 4 USDT per trader, "
        "below the minimum notional 5 USDT: set at least 10 or fewer chunks",
    ]
    path.write_text('[naived]\nautostart = ["XRPUSDT", "ETHBTC"]\n[trading.budgets]\nUSDT = "20"\nBTC = "0.01"\n')
    ok = naived("check-config", path)
    assert ok.returncode == 0 and ok.stdout == f"configuration OK: {path}\n", ok.stderr


def test_check_config_refuses_an_autostart_symbol_the_table_does_not_list(tmp_path: Path) -> None:
    path = tmp_path / "naive.toml"
    path.write_text('[naived]\nautostart = ["NOSUCHUSDT"]\n')
    result = naived("check-config", path)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"naived: {path}: naived.autostart: unknown symbol NOSUCHUSDT: the symbol table does not list it")


@pytest.mark.parametrize(("text", "mode", "message"), [
    # refused by start before anything is forked; check-config said "configuration OK" before
    ('[naived]\nexchange = "binance"\n', None,
     "no Binance API key: set BINANCE_API_KEY and BINANCE_API_SECRET, or exchange.key_file"),
    ('[naived]\nexchange = "binance-testnet"\n[exchange]\nkey_file = "{keys}"\n', 0o644,
     "key file {keys} has mode 0644; it must be 0600 (chmod 600 {keys})"),
    ('[naived]\nexchange = "binance-testnet"\n[exchange]\nkey_file = "{keys}"\n', 0o600,
     "key file {keys}: needs API_KEY=... and API_SECRET=... lines"),
    # refused by parsing, as before, now also the old bare budget
    ('[trading.defaults]\nbudget = "100"\n', None, "trading.defaults.budget: a budget names its asset now"),
    ("[trading.defaults]\nchunks = 0\n", None, "trading.defaults.chunks: must be > 0, got 0"),
    ('[trading.budgets]\nUSDT = "0"\n', None, "trading.budgets.USDT: must be > 0, got 0"),
])
def test_check_config_and_start_refuse_the_same_values_with_the_same_line(
        tmp_path: Path, text: str, mode: int | None, message: str) -> None:
    keys = tmp_path / "keys"
    keys.write_text("API_KEY=k\n")
    if mode is not None:
        keys.chmod(mode)
    path = tmp_path / "naive.toml"
    # Should start take it anyway, it runs in tmp_path (a session of its own; see `naived`).
    path.write_text(f'[paths]\nruntime_dir = "{tmp_path / "run"}"\nstate_dir = "{tmp_path / "state"}"\n' + text.format(keys=keys))
    message = message.format(keys=keys)
    lines = {}
    for command in ("check-config", "start"):
        result = naived(command, path)
        assert result.returncode == 2, (command, result.stderr)
        (lines[command],) = result.stderr.splitlines()
        assert message in lines[command], (command, lines[command])
    assert lines["check-config"] == lines["start"]
    assert str(path) in lines["start"]


# --- through a running tree on paper -------------------------------------------------------------


@pytest.mark.sqlite_only("naived.autostart (a cluster host starts what the shared trading set holds)")
def test_on_paper_a_symbol_without_a_budget_is_refused_and_not_autostarted(tmp_path: Path) -> None:
    with running_tree(tmp_path, RESTING_QUICK_FAILURE + '\n[naived]\nautostart = ["ETHBTC", "XRPUSDT"]\n') as tree:
        eth = wait_for("ETHBTC marked failed", lambda: (s := tree.symbol("ETHBTC")) and s["state"] == "failed" and s)
        assert eth["error"] == ETHBTC_NO_BUDGET and eth["supervisor"]["pid"] is None
        assert f"ETHBTC: not autostarted: {ETHBTC_NO_BUDGET}" in tree.log("naived")
        refused = tree.ctl("start-trading", "BNBBTC")
        assert refused.returncode == 1
        assert refused.stderr == ('naivectl: BNBBTC: no budget in BTC, its quote asset: set [trading.budgets] BTC = "<amount>" '
                                  'or [trading.symbols.BNBBTC] budget = "<amount>" (in BTC)\n')
        assert tree.symbol("BNBBTC") is None
        open_buys(tree, "XRPUSDT", 2)  # the others trade on
        assert not tree.paper_orders("ETHBTC") and not tree.paper_orders("BNBBTC")


def test_a_refused_reload_changes_nothing_and_nobody_says_it_reloaded(tmp_path: Path) -> None:
    extra = RESTING_QUICK_FAILURE + '\n[trading.budgets]\nUSDT = "100"\n'
    with running_tree(tmp_path, extra) as tree:
        tree.ctl("start-trading", "XRPUSDT")
        leader = open_buys(tree, "XRPUSDT", 2) and tree.symbol("XRPUSDT")["leader"]
        good = tree.config_path.read_text()
        refusals = lambda: tree.log("naived").count("reload refused, keeping the running configuration")  # noqa: E731 - a probe named for what it counts, beside its use

        tree.config_path.write_text(good + "\n[nonsense]\n")  # not a key naived knows
        tree.naived.send_signal(signal.SIGHUP)
        wait_for("the root's refusal", lambda: refusals() >= 1)
        os.kill(leader["pid"], signal.SIGHUP)  # as if the root had passed it on
        wait_for("the leader's own refusal", lambda: refusals() >= 2)

        # A file that parses but takes XRPUSDT's budget away: refused, by the same check as start-trading.
        tree.config_path.write_text(good.replace('USDT = "100"', 'BTC = "0.01"'))
        tree.naived.send_signal(signal.SIGHUP)
        wait_for("the root's refusal naming XRPUSDT", lambda: f"naived[{tree.naived.pid}] reload refused, keeping the running "
                 "configuration: XRPUSDT: no budget in USDT, its quote asset" in tree.log("naived"))

        tree.config_path.write_text(good.replace('USDT = "100"', 'USDT = "200"'))
        tree.naived.send_signal(signal.SIGHUP)
        wait_for("the leader to reload", lambda: "XRPUSDT: configuration reloaded: new cycles get budget 200 USDT over 2 chunks"
                 in tree.log("naived"))
        assert tree.log("naived").count("configuration reloaded") == 1  # the good one only
        assert refusals() == 3  # one line per refused reload: the root's two and the leader's own; no level below was told
        assert tree.naived.poll() is None and len(tree.traders("XRPUSDT")) == 2


def test_naivectl_reaches_naived_while_the_file_is_broken(tmp_path: Path) -> None:
    with running_tree(tmp_path, RESTING_QUICK_FAILURE) as tree:
        tree.ctl("start-trading", "XRPUSDT")
        good = tree.config_path.read_text()
        for broken in (good + "\n[nonsense]\n", good.replace("[paper]", "[paper\n"), good + '\n[naived]\nexchange = "kraken"\n'):
            tree.config_path.write_text(broken)
            status = tree.ctl("status")
            assert status.returncode == 0, status.stderr
            assert "XRPUSDT [running]" in status.stdout
            (line,) = status.stderr.splitlines()
            assert line.startswith(f"naivectl: the configuration is broken ({tree.config_path}: ")
            assert line.endswith(f"trying naived at ipc://{tmp_path / 'run' / 'naived.sock'}")
        stopped = tree.ctl("stop-trading", "XRPUSDT")
        assert stopped.returncode == 0 and "stopped trading XRPUSDT" in stopped.stdout
        assert tree.symbol("XRPUSDT") is None
