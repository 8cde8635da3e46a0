"""Configuration: the documented file equals the embedded defaults; errors are one line with a key path."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from naived.core import validate
from naived.core.config import Config, ConfigError, TradingSettings, load_config, parse_config

DOCUMENTED = Path(__file__).resolve().parent.parent / "config" / "naive.toml"


def test_documented_file_equals_embedded_defaults():
    assert parse_config(DOCUMENTED.read_bytes(), str(DOCUMENTED)) == Config()


def test_empty_file_is_the_defaults():
    assert parse_config(b"") == Config()


def test_load_config_explicit_path_and_env(tmp_path, monkeypatch):
    path = tmp_path / "naive.toml"
    path.write_text('[trading.budgets]\nUSDT = "250"\n')
    assert load_config(str(path)).trading.budgets == {"USDT": Decimal("250")}
    monkeypatch.setenv("NAIVE_CONFIG", str(path))
    assert load_config().trading.budgets == {"USDT": Decimal("250")}


def test_load_config_unreadable_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as err:
        load_config(str(missing))
    assert str(err.value).startswith(f"{missing}: cannot read")


def test_load_config_error_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[trading.defaults]\nchunks = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(err.value) == f"{path}: trading.defaults.chunks: must be > 0, got 0"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        # unknown keys
        ("[trading.defaults]\nbogus = 1\n", "trading.defaults: Object contains unknown field `bogus`"),
        ("[streamer]\nsymbol = []\n", "streamer: Object contains unknown field `symbol`"),
        ("bogus = 1\n", "Object contains unknown field `bogus`"),
        # wrong types
        ('[trading.defaults]\nchunks = "2"\n', "trading.defaults.chunks: Expected `int`, got `str`"),
        ('[naived]\nautostart = "XRPUSDT"\n', "naived.autostart: Expected `array`, got `str`"),
        ('[naived]\nexchange = "kraken"\n',
         "naived.exchange: Invalid enum value 'kraken' (choose one of: paper, binance-testnet, binance)"),
        ('[streamer]\nsource = "simulated"\n',
         "streamer.source: Invalid enum value 'simulated' (choose one of: binance, replay, simulate)"),
        ('[trading.budgets]\nUSDT = "lots"\n', "trading.budgets[...]: Invalid decimal string"),
        # invalid values
        ('[trading.budgets]\nUSDT = "-5"\n', "trading.budgets.USDT: must be > 0, got -5"),
        ('[trading.symbols.XRPUSDT]\nbudget = "0"\n', "trading.symbols.XRPUSDT.budget: must be > 0, got 0"),
        ("[trading.budgets]\n'US-DT' = \"5\"\n", "trading.budgets: bad asset 'US-DT': expected letters and digits like USDT"),
        ("[trading.defaults]\nchunks = 0\n", "trading.defaults.chunks: must be > 0, got 0"),
        (
            '[naived]\nautostart = ["XRPUSDT", "xrp-usdt"]\n',
            "naived.autostart: bad symbol 'xrp-usdt': expected letters and digits like XRPUSDT",
        ),
        (
            '[trading.defaults]\nprofit_interval = "10"\n',
            "trading.defaults.profit_interval: must be between -1 and 10 (exclusive), got 10",
        ),
        (
            '[trading.defaults]\nprofit_interval = "-1.5"\n',
            "trading.defaults.profit_interval: must be between -1 and 10 (exclusive), got -1.5",
        ),
        (
            '[trading.symbols.XRPUSDT]\nprofit_interval = "-1"\n',
            "trading.symbols.XRPUSDT.profit_interval: must be between -1 and 10 (exclusive), got -1",
        ),
        ("[trading.symbols.ADAUSDT]\nchunks = -2\n", "trading.symbols.ADAUSDT.chunks: must be > 0, got -2"),
        (
            "[trading.symbols.xrp_usdt]\nchunks = 3\n",
            "trading.symbols: bad symbol 'xrp_usdt': expected letters and digits like XRPUSDT",
        ),
        ('[trading.budgets]\nBTC = "NaN"\n', "trading.budgets.BTC: must be a finite number, got NaN"),
        (
            '[trading.defaults]\nbuy_down_interval = "Infinity"\n',
            "trading.defaults.buy_down_interval: must be a finite number, got Infinity",
        ),
        ("[streamer]\ngrace_seconds = -1.0\n", "streamer.grace_seconds: must be >= 0, got -1.0"),
        ("[streamer]\ngrace_seconds = nan\n", "streamer.grace_seconds: must be a finite number, got nan"),
        ('[streamer]\nsymbols = ["X"]\n', "streamer.symbols: bad symbol 'X': expected letters and digits like XRPUSDT"),
        ("[streamer]\nrecord_budget_mb = 0\n", "streamer.record_budget_mb: must be > 0, got 0.0"),
        (
            '[streamer]\nrecord_symbols = ["btc-usdt"]\n',
            "streamer.record_symbols: bad symbol 'btc-usdt': expected letters and digits like XRPUSDT",
        ),
        ("[naived.supervision]\nmax_restarts = 0\n", "naived.supervision.max_restarts: must be > 0, got 0"),
        ("[streamer]\nsimulate_volatility = 0.5\n", "streamer.simulate_volatility: must be > 0 and <= 0.01, got 0.5"),
    ],
)
def test_invalid_config_is_one_line_naming_the_key(toml, message):
    with pytest.raises(ConfigError) as err:
        parse_config(toml.encode(), "naive.toml")
    text = str(err.value)
    assert "\n" not in text
    assert text == f"naive.toml: {message}"


def test_not_toml():
    with pytest.raises(ConfigError) as err:
        parse_config(b"[trading\n", "naive.toml")
    assert str(err.value).startswith("naive.toml: not valid TOML: ")
    assert "\n" not in str(err.value)


def test_symbols_are_upper_cased():
    config = parse_config(b'[naived]\nautostart = ["xrpusdt"]\n[trading.symbols.adausdt]\nchunks = 3\n')
    assert config.naived.autostart == ["XRPUSDT"]
    assert list(config.trading.symbols) == ["ADAUSDT"]


def test_for_symbol_applies_overrides_over_defaults():
    config = parse_config(
        b'[trading.budgets]\nUSDT = "200"\n[trading.defaults]\nchunks = 4\n'
        b'[trading.symbols.XRPUSDT]\nchunks = 5\nprofit_interval = "0.002"\n'
    )
    xrp = config.trading.for_symbol("XRPUSDT")
    assert xrp == TradingSettings(
        chunks=5,
        budget=Decimal("200"),
        buy_down_interval=Decimal("0.0001"),
        profit_interval=Decimal("0.002"),
        rebuy_interval=Decimal("0.001"),
    )
    assert config.trading.for_symbol("BTCUSDT") == msgspec.structs.replace(config.trading.defaults, budget=Decimal("200"))
    assert config.trading.defaults.chunks == 4  # overriding did not touch the defaults


def test_for_symbol_without_overrides_is_the_defaults():
    assert Config().trading.for_symbol("XRPUSDT") == TradingSettings(budget=Decimal("100"))


def test_the_default_profit_interval_makes_money_after_fees():
    # sell = buy × 1.001 × (1 + p) × 1.001; what comes back per unit bought is 0.999 × sell × 0.999
    p = Config().trading.defaults.profit_interval
    assert (Decimal("1.001") * (1 + p) * Decimal("1.001")) * Decimal("0.999") ** 2 > 1
    break_even = 1 / (Decimal("1.001") * Decimal("0.999")) ** 2 - 1
    assert Decimal("0.000002") < break_even < Decimal("0.000003")


@pytest.mark.parametrize("exchange", ["binance", "binance-testnet"])
@pytest.mark.parametrize(
    ("trading", "key"),
    [
        ('[trading.defaults]\nprofit_interval = "-0.0012"\n', "trading.defaults.profit_interval"),
        ('[trading.defaults]\nprofit_interval = "0"\n', "trading.defaults.profit_interval"),
        ('[trading.symbols.XRPUSDT]\nprofit_interval = "-0.0001"\n', "trading.symbols.XRPUSDT.profit_interval"),
    ],
)
def test_real_exchanges_refuse_losing_settings_in_one_line(exchange, trading, key):
    raw = f'[naived]\nexchange = "{exchange}"\n{trading}'.encode()
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "naive.toml")
    message = str(err.value)
    assert message.startswith(f"naive.toml: {key}: ") and "trading.allow_losing_settings" in message
    assert "\n" not in message
    allowed = parse_config(raw + b"[trading]\nallow_losing_settings = true\n")
    assert allowed.trading.allow_losing_settings


def test_paper_trades_losing_settings_without_asking():
    config = parse_config(b'[trading.defaults]\nprofit_interval = "-0.0012"\n')
    assert config.trading.defaults.profit_interval == Decimal("-0.0012")


def test_a_reload_applies_the_level_and_keeps_the_command_lines_log_options(tmp_path, monkeypatch):
    from naived.core import config as config_module

    levels: list[str] = []
    monkeypatch.setattr(config_module, "set_log_level", levels.append)  # pytest's own logging stays as it is
    monkeypatch.setattr(config_module, "_log_options", {})
    path = tmp_path / "naive.toml"
    path.write_text(f'[naived.log]\nlevel = "warning"\nfile = "{tmp_path}/from-file.log"\n')
    running = config_module.with_log_options(load_config(str(path)), None, str(tmp_path / "cli.log"))
    assert running.naived.log == config_module.Log(level="warning", file=str(tmp_path / "cli.log"))
    path.write_text(f'[naived.log]\nlevel = "debug"\nfile = "{tmp_path}/from-file.log"\n')
    reloaded = config_module.reload_config(running)
    assert reloaded is not None
    assert reloaded.naived.log == config_module.Log(level="debug", file=str(tmp_path / "cli.log"))
    assert levels == ["debug"]
    # --log-level wins over the file at a reload too: the file's change applies nowhere
    levels.clear()
    config_module.with_log_options(running, "error", None)
    assert config_module.reload_config(running).naived.log.level == "error"
    assert levels == ["error"]


def test_a_socket_path_too_long_for_the_kernel_is_refused_at_start_and_start_trading() -> None:
    """107 bytes at most: naived-reports.sock (19 characters) in an 87-byte runtime_dir fits, in an 88-byte
    one it does not; a leader's leader-<symbol>-pub.sock is checked per symbol."""
    fits = parse_config(f'[paths]\nruntime_dir = "/{"r" * 86}"\n'.encode())
    assert validate.config_problem(fits) is None
    long = "/" + "r" * 87
    assert validate.config_problem(parse_config(f'[paths]\nruntime_dir = "{long}"\n'.encode())) == (
        f"the socket {long}/naived-reports.sock would be 108 bytes, more than a Unix socket path may have (107): "
        "set a shorter paths.runtime_dir")
    leader = f"{fits.runtime_dir}/leader-XRPUSDT-pub.sock"
    assert validate.symbol_problem(fits, "XRPUSDT") == (
        f"XRPUSDT: the socket {leader} would be 111 bytes, more than a Unix socket path may have (107): "
        "set a shorter paths.runtime_dir")


def test_the_store_section_checks_its_lease_times_and_host_id() -> None:
    assert Config().store.backend == "sqlite" and not Config().store.shared
    with pytest.raises(ConfigError, match=r"store.lease_seconds: must be at least 2 \* renew_seconds"):
        parse_config(b"[store]\nlease_seconds = 10.0\nrenew_seconds = 4.0\n")
    with pytest.raises(ConfigError, match="store.host_id"):
        parse_config(b'[store]\nhost_id = "a b"\n')
    with pytest.raises(ConfigError, match="choose one of: sqlite, postgresql"):
        parse_config(b'[store]\nbackend = "mysql"\n')


def test_the_postgresql_store_needs_a_dsn_that_parses_and_never_shows_it(monkeypatch) -> None:
    monkeypatch.delenv("NAIVE_STORE_DSN", raising=False)
    config = parse_config(b'[store]\nbackend = "postgresql"\n')
    assert "store.dsn" in (validate.config_problem(config) or "")
    monkeypatch.setenv("NAIVE_STORE_DSN", "host=db password=s3cret dbname=naive")
    assert validate.config_problem(config) is None
    assert config.store.resolved_dsn().startswith("host=db")
    bad = parse_config(b'[store]\nbackend = "postgresql"\ndsn = "host=db password=\'s3cret"\n')
    problem = validate.config_problem(bad) or ""
    assert "does not parse" in problem and "s3cret" not in problem


def test_the_paper_exchange_serves_other_hosts_only_when_asked_and_only_standalone() -> None:
    import socket

    from naived.paper import main as paper_main

    with pytest.raises(ConfigError) as err:  # loopback unless asked
        parse_config(b'[paper]\nhost = "10.1.2.3"\n', "naive.toml")
    assert str(err.value) == ("naive.toml: paper.host: must be a loopback address (127.0.0.1, ::1, localhost), got "
                              "'10.1.2.3' (remote_clients = true lets `naived paper-exchange` serve other hosts)")
    assert not Config().paper.remote_clients
    shared = parse_config(b'[paper]\nhost = "10.1.2.3"\nremote_clients = true\n'
                          b'[naived]\nexchange = "binance-testnet"\n')
    assert shared.paper.host == "10.1.2.3"
    # naived's own paper exchange (exchange = "paper") stays on loopback: refused before anything starts...
    own = parse_config(b'[paper]\nhost = "10.1.2.3"\nremote_clients = true\n')
    assert validate.config_problem(own) == (
        "paper.host: naived's own paper exchange (exchange = \"paper\") serves this host alone, on loopback, got "
        "'10.1.2.3'; remote_clients is for `naived paper-exchange`")
    assert validate.config_problem(parse_config(b"[paper]\nremote_clients = true\n")) is None
    # ...and a listener the root hands down is never served off loopback, whatever the file says
    # (refused first: its state directory, which it cannot make, is never reached).
    own = parse_config(b'[paper]\nhost = "10.1.2.3"\nremote_clients = true\n[paths]\nstate_dir = "/dev/null/x"\n')
    with socket.create_server(("0.0.0.0", 0)) as listener, pytest.raises(SystemExit, match="not a loopback address"):
        paper_main.run(own, listener)
