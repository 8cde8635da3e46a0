"""`naived`: the trading daemon's command line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from naived.core.config import Config, ConfigError, find_config, load_config, with_log_options
from naived.ops.log import LEVELS, setup_logging

if TYPE_CHECKING:
    from naived.backtest.orders import OrderLog
    from naived.backtest.plot import Books

config_option = click.option(
    "--config", "config_path", metavar="PATH", help="TOML file (default: $NAIVE_CONFIG, /etc/naive/naive.toml, embedded)."
)


def log_options(command: Callable[..., None]) -> Callable[..., None]:
    """--log-level and --log-file, over the config's [naived.log] (streamerd's: [streamer.log])."""
    command = click.option("--log-file", metavar="PATH",
                           help="Append the log here (default: stderr, or [naived.log] file).")(command)
    return click.option("--log-level", type=click.Choice(list(LEVELS)),
                        help="Log this level and above (default: info, or [naived.log] level).")(command)


def open_log(program: str, title: str, level: str, file: str) -> int | None:
    """setup_logging, or one line and exit 2 when the log file cannot be opened (before any fork)."""
    try:
        return setup_logging(title, level, file)
    except OSError as exc:
        click.echo(f"{program}: cannot open log file {file}: {exc.strerror}", err=True)
        sys.exit(2)


def _load(config_path: str | None) -> Config:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(f"naived: {exc}", err=True)
        sys.exit(2)
    from naived.core import symbols

    symbols.use_state_dir(config.state_dir)  # a table `refresh-symbols` wrote there wins over the shipped one
    return config


@click.group()
@click.version_option(package_name="naive", prog_name="naived")
def main() -> None:
    """naive: fault-tolerant trading of Binance spot symbols on a tree of OS processes."""


@main.command(short_help="Run the tree in the foreground (as systemd does).")
@config_option
@log_options
def start(config_path: str | None, log_level: str | None, log_file: str | None) -> None:
    """Run the root of the tree in the foreground (as systemd runs it)."""
    config = with_log_options(_load(config_path), log_level, log_file)
    from naived.core import validate
    from naived.store import ownership
    from naived.tree import process, root

    # Before anything else touches the state directory (the control socket, the paper exchange's
    # store, the symbols' stores): one tree per state directory, held until its last process ends.
    owner = ownership.StateDirLock(config.state_dir)
    try:
        held = owner.acquire()
    except ownership.Held as exc:
        click.echo(f"naived: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"naived: cannot lock {owner.path}: {exc.strerror}", err=True)
        sys.exit(1)
    assert owner.fd is not None
    process.inherit_in_tree(owner.fd)
    problem = validate.config_problem(config)  # check-config refuses the same, by the same function
    if problem is not None:  # e.g. no usable keys: refused before forking anything
        click.echo(f"naived: {_origin(config_path)}: {problem}", err=True)
        sys.exit(2)
    log_fd = open_log("naived", "naived", config.naived.log.level, config.naived.log.file)
    if log_fd is not None:
        process.inherit_in_tree(log_fd)  # every process of the tree appends to the same file

    sys.exit(root.run(config, held))


@main.command("paper-exchange", short_help="Run the paper exchange alone, for other clients.")
@config_option
@log_options
def paper_exchange_command(config_path: str | None, log_level: str | None, log_file: str | None) -> None:
    """Run the paper exchange alone (naived starts its own when exchange = "paper")."""
    config = with_log_options(_load(config_path), log_level, log_file)
    from naived.paper import main as paper
    from naived.store import ownership

    owner = ownership.StateDirLock(config.state_dir)  # its store is in the state directory: one owner
    try:
        owner.acquire()
    except (ownership.Held, OSError) as exc:
        click.echo(f"naived paper-exchange: {exc}", err=True)
        sys.exit(1)
    open_log("naived paper-exchange", "paper-exchange", config.naived.log.level, config.naived.log.file)
    paper.run(config)


@main.command("check-config", short_help="Check the configuration as start does, then exit.")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration as `start` does, and every symbol it names as `start-trading`
    does (budget, minimum notional); exit 0 valid, 2 invalid (one line per problem)."""
    config = _load(config_path)
    from naived.core import validate

    found = validate.problems(config)
    for problem in found:
        click.echo(f"naived: {_origin(config_path)}: {problem}", err=True)
    if found:
        sys.exit(2)
    click.echo(f"configuration OK: {_origin(config_path)}")


def _origin(config_path: str | None) -> str:
    """The file a command read, for its messages."""
    path = find_config(config_path)
    return str(path) if path is not None else "no file (the embedded defaults)"


@main.command("refresh-symbols", short_help="Regenerate the symbol table from exchangeInfo.")
@config_option
@click.option("--from", "source", metavar="FILE", help="A saved exchangeInfo answer (JSON) instead of asking the exchange.")
@click.option("--output", metavar="PATH", help="Write here instead of <state_dir>/symbols.csv (e.g. naived/core/symbols.csv).")
def refresh_symbols(config_path: str | None, source: str | None, output: str | None) -> None:
    """Regenerate the symbol table from exchangeInfo: every TRADING symbol, all quote assets.

    Without --from it asks GET /api/v3/exchangeInfo of Binance (of the testnet when exchange =
    "binance-testnet"; public, no keys). The table goes to <state_dir>/symbols.csv, replaced
    atomically, which naived prefers over the shipped table from its next start."""
    config = _load(config_path)
    import msgspec

    from naived.core import symbols

    if source:
        origin = source
        try:
            raw = Path(source).read_bytes()
        except OSError as exc:
            click.echo(f"naived refresh-symbols: cannot read {source}: {exc.strerror}", err=True)
            sys.exit(2)
    else:
        import requests

        base = config.exchange.testnet_url if config.naived.exchange == "binance-testnet" else config.exchange.binance_url
        origin = f"{base.rstrip('/')}/api/v3/exchangeInfo"
        try:
            response = requests.get(origin, timeout=config.exchange.timeout_seconds * 6)  # a ~4 MB answer
            response.raise_for_status()
        except requests.RequestException as exc:
            click.echo(f"naived refresh-symbols: {origin}: {exc}", err=True)
            sys.exit(1)
        raw = response.content
    try:
        info = msgspec.json.decode(raw)
        rows = symbols.trading_filters(info)
    except (msgspec.DecodeError, symbols.TableError) as exc:
        click.echo(f"naived refresh-symbols: {origin}: {exc}", err=True)
        sys.exit(2)
    path = Path(output) if output else config.state_dir / symbols.TABLE_NAME
    try:
        symbols.write_table(path, symbols.render_table(rows, Path(origin).name if source else origin, info.get("serverTime")))
    except OSError as exc:
        click.echo(f"naived refresh-symbols: cannot write {path}: {exc.strerror}", err=True)
        sys.exit(1)
    quotes = sorted({f.quote for f in rows})
    click.echo(f"{len(rows)} TRADING symbols, {len(quotes)} quote assets ({' '.join(quotes)}) -> {path}")


@main.command(short_help="Run the strategy over recorded trades.")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@config_option
@click.option("--json", "as_json", is_flag=True, help="The report as JSON (byte-identical for the same input and settings).")
@click.option("--set", "sets", multiple=True, metavar="KEY=V1[,V2...]",
              help="Override a trading setting for every symbol; several values sweep (one row each).")
@click.option("--symbol", "symbols", multiple=True,
              help="Only these symbols (default: every symbol in the input); one names a CSV whose file name does not.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="A sweep's settings in this many processes (default: the cores this process may use).")
@click.option("--every-trade", is_flag=True,
              help="Hand every trade to the strategy (the reference path; the same report, slower).")
@click.option("--plot", "plot_path", metavar="FILE.png", help="Draw equity, price with fills, and drawdown (needs .[plot]).")
@click.option("--orders", "orders_path", metavar="FILE.csv",
              help="Write every order and fill of the run (time, price, quantity, fee) as CSV.")
@click.option("--through-tree", is_flag=True, help="Replay through streamerd, naived and the paper exchange instead.")
@click.option("--speed", default=20.0, show_default=True, type=click.FloatRange(min=0.01),
              help="--through-tree: replay this many times faster than the tape's own time.")
@click.option("--keep", metavar="DIR", help="--through-tree: run the tree in DIR and keep its logs and state.")
def backtest(files: tuple[str, ...], config_path: str | None, as_json: bool, sets: tuple[str, ...],
             symbols: tuple[str, ...], jobs: int | None, every_trade: bool, plot_path: str | None,
             orders_path: str | None, through_tree: bool, speed: float, keep: str | None) -> None:
    """Run the naive strategy over recorded trades (tapes or data.binance.vision CSVs) and report
    cycles, fees, realised and unrealised P&L, return on budget and maximum drawdown."""
    config = _load(config_path)
    from naived.backtest import engine, render, sweep
    from naived.backtest.errors import BacktestError

    try:
        combos = sweep.parse_sets(sets)
        if plot_path and len(combos) > 1:
            raise BacktestError("--plot draws one run: give one value per --set")
        if orders_path and len(combos) > 1:
            raise BacktestError("--orders lists one run's orders: give one value per --set")
        if orders_path and through_tree:
            raise BacktestError("--orders lists the in-process run's orders: not with --through-tree")
        if plot_path:
            from naived.backtest import plot as backtest_plot

            backtest_plot.check_available()
        wanted = [s.upper() for s in symbols] or None
        drawn: Books  # what --plot draws: the tree's books or the in-process run's
        orders: OrderLog | None = None  # the in-process run's orders and fills (--orders, --plot)
        breaks: list[int] = []  # where the input has a long gap: a new period in the plot
        if through_tree:
            if len(combos) > 1:
                raise BacktestError("--through-tree runs one setting: give one value per --set")
            from naived.backtest import through_tree as backtest_tree

            result = backtest_tree.run(sweep.apply_settings(config, combos[0]), list(files), wanted, speed, keep)
            reports = [(combos[0], result.report)]
            drawn = result.backtest
        else:
            cores = jobs or len(os.sched_getaffinity(0))
            outcome = engine.run(config, list(files), combos, keep_samples=bool(plot_path), symbols=wanted,
                                 every_trade=every_trade, csv_symbol=wanted[0] if wanted and len(wanted) == 1 else None,
                                 jobs=cores, keep_orders=bool(plot_path or orders_path))
            reports = outcome.reports
            if outcome.backtest is not None:
                drawn = outcome.backtest
                orders = outcome.backtest.orders
            breaks = outcome.breaks
            parallel = f" in {min(cores, len(combos))} processes" if cores > 1 and len(combos) > 1 else ""
            click.echo(f"{outcome.trades:,} trades in {outcome.seconds:.2f}s "
                       f"({outcome.trades / max(outcome.seconds, 1e-9):,.0f} trades/s"
                       f"{f' × {len(combos)} settings{parallel}' if len(combos) > 1 else ''})", err=True)
            read = outcome.input
            if read.duplicates or read.gaps or read.malformed or read.truncated:
                marked = f", {read.recorded_gaps:,} marked in the tapes" if read.recorded_gaps else ""
                click.echo(f"input: {read.duplicates:,} duplicate trades dropped, {read.gaps:,} gaps "
                           f"({read.missing_trades:,} trade ids missing{marked}), {read.malformed:,} malformed lines, "
                           f"{read.truncated} files cut short", err=True)
        if plot_path:
            backtest_plot.plot(drawn, plot_path, reports[0][1], orders, breaks)
        if orders_path:
            assert orders is not None
            try:
                rows = orders.write_csv(orders_path)
            except OSError as exc:
                raise BacktestError(f"--orders: cannot write {orders_path}: {exc.strerror}") from None
    except BacktestError as exc:
        click.echo(f"naived backtest: {exc}", err=True)
        sys.exit(2)
    if len(reports) == 1:
        click.echo(render.encode(reports[0][1]) if as_json else render.render(reports[0][1]))
    elif as_json:
        click.echo(render.encode([{"set": changes, "report": report} for changes, report in reports]))
    else:
        click.echo(render.render_sweep(reports))
    if plot_path:
        click.echo(f"plot: {plot_path}", err=True)
    if orders_path:
        click.echo(f"orders: {orders_path} ({rows:,} rows)", err=True)


@main.command(short_help="A simulated market, the paper exchange and naived.")
@click.option("--seconds", default=30.0, show_default=True, help="How long to run; 0 runs until Ctrl-C.")
@click.option("--symbol", "symbols", multiple=True, default=["XRPUSDT", "BTCUSDT"], show_default=True,
              help="A symbol to trade (repeat for several).")
@click.option("--keep", is_flag=True, help="Keep the temporary directory (configuration, logs, state) at the end.")
def demo(seconds: float, symbols: tuple[str, ...], keep: bool) -> None:
    """Simulated market + paper exchange + naived in a temporary directory, with status every few seconds."""
    from naived import demo as demo_module

    sys.exit(demo_module.run(seconds, [s.upper() for s in symbols], keep))


if __name__ == "__main__":
    main()
