"""`streamerd start`: market data from Binance, a replay or a simulation, on a ZeroMQ XPUB."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click
import msgspec
import zmq

from naived.core.config import ConfigError, Streamer, load_config
from naived.market.tape import TapeError, check_files
from naived.ops.log import LEVELS, setup_logging
from streamerd.daemon import Daemon
from streamerd.publisher import Demand
from streamerd.recorder import Recorder

log = logging.getLogger("streamerd")


def _split(values: tuple[str, ...]) -> list[str]:
    """`--symbols A --symbols B` and `--symbols A,B` both work."""
    return [part for value in values for part in value.replace(",", " ").split()]


def streamer_settings(config_path: str | None, overrides: dict[str, Any]) -> Streamer:
    """The config file's [streamer] table with command-line values on top, validated as one."""
    base = msgspec.structs.asdict(load_config(config_path).streamer)
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(base, Streamer)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"command line: {exc}") from None


def make_source(settings: Streamer, recorder: Recorder | None = None) -> Any:
    """A factory for the daemon: sources need the publisher's emit and the counters."""
    if settings.source == "simulate":
        from streamerd.simulate import SimulatedSource

        return lambda emit, stats: SimulatedSource(emit, stats, settings.simulate_seed, settings.simulate_rate,
                                                     settings.simulate_volatility)
    if settings.source == "replay":
        from streamerd.replay import ReplaySource

        files = check_files(settings.replay_files)
        return lambda emit, stats: ReplaySource(emit, stats, files, settings.replay_speed)
    from streamerd.binance import BinanceSource
    from streamerd.gapfill import GapFiller

    def binance(emit: Any, stats: Any) -> BinanceSource:
        gaps = None
        if recorder is not None:  # only a tape has holes to fill; subscribers never get old trades
            gaps = GapFiller(recorder, stats, settings.rest_url if settings.gap_fill else None,
                             settings.gap_fill_weight_per_minute, settings.gap_fill_max_trades)
        return BinanceSource(emit, stats, settings.binance_url, gaps=gaps)

    return binance


@click.group()
@click.version_option(package_name="naive", prog_name="streamerd")
def main() -> None:
    """streamerd: trade events on ZeroMQ topics TRADE_EVENTS:<SYMBOL>."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML file (else $NAIVE_CONFIG, /etc/naive/naive.toml)")
@click.option("--source", type=click.Choice(["binance", "replay", "simulate"]))
@click.option("--symbols", multiple=True, help="always stream these (repeat or comma-separate)")
@click.option("--endpoint", help="XPUB bind endpoint, e.g. tcp://127.0.0.1:5680 or ipc:///run/naive/trades.sock")
@click.option("--replay-file", "replay_files", multiple=True, help="CSV or recorded websocket lines, .gz/.zip ok")
@click.option("--speed", type=float, help="replay speed: 1 = real time, 0 = as fast as possible")
@click.option("--binance-url", help="websocket base URL, e.g. wss://stream.binance.com:9443")
@click.option("--rest-url", help="Binance REST base URL for filling a tape's gaps, e.g. https://api.binance.com")
@click.option("--grace-seconds", type=float, help="keep streaming this long after the last subscriber left")
@click.option("--seed", type=int, help="simulate: random seed")
@click.option("--rate", type=float, help="simulate: trades per second per symbol")
@click.option("--record-dir", help="record what is published as <symbol>_<YYYYMMDD>.gz tapes here")
@click.option("--log-level", type=click.Choice(list(LEVELS)), help="log this level and above (default: info)")
@click.option("--log-file", metavar="PATH", help="append the log here (default: stderr, the journal under systemd)")
def start(
    config_path: str | None,
    source: str | None,
    symbols: tuple[str, ...],
    endpoint: str | None,
    replay_files: tuple[str, ...],
    speed: float | None,
    binance_url: str | None,
    rest_url: str | None,
    grace_seconds: float | None,
    seed: int | None,
    rate: float | None,
    record_dir: str | None,
    log_level: str | None,
    log_file: str | None,
) -> None:
    """Run the market-data daemon until SIGTERM/SIGINT."""
    try:
        settings = streamer_settings(
            config_path,
            {
                "source": source,
                "symbols": _split(symbols) or None,
                "endpoint": endpoint,
                "replay_files": list(replay_files) or None,
                "replay_speed": speed,
                "binance_url": binance_url,
                "rest_url": rest_url,
                "grace_seconds": grace_seconds,
                "simulate_seed": seed,
                "simulate_rate": rate,
                "record_dir": record_dir,
            },
        )
        if settings.source == "replay":
            check_files(settings.replay_files)  # a missing file fails here, in one line, before anything starts
    except (ConfigError, TapeError) as exc:
        click.echo(f"streamerd: {exc}", err=True)
        sys.exit(2)
    chosen = {k: v for k, v in (("level", log_level), ("file", log_file)) if v is not None}
    logs = msgspec.structs.replace(settings.log, **chosen)  # the command line over [streamer.log]
    try:
        setup_logging("streamerd", logs.level, logs.file)
    except OSError as exc:
        click.echo(f"streamerd: cannot open log file {logs.file}: {exc.strerror}", err=True)
        sys.exit(2)

    demand = Demand(always=frozenset(settings.symbols), grace_seconds=settings.grace_seconds)
    recorder = None
    if settings.record_dir:
        recorder = Recorder(Path(settings.record_dir), int(settings.record_budget_mb * 1e6),
                            frozenset(settings.record_symbols))
    factory = make_source(settings, recorder)
    try:
        daemon = Daemon(settings.endpoint, demand, factory, settings.metrics_port, recorder)
    except zmq.ZMQError as exc:
        click.echo(f"streamerd: cannot bind {settings.endpoint}: {exc}", err=True)
        sys.exit(1)
    label = " (SIMULATED market, not real prices)" if settings.source == "simulate" else ""
    log.info(
        "start: source=%s%s endpoint=%s always=%s grace=%gs record=%s",
        settings.source, label, settings.endpoint, ",".join(settings.symbols) or "-", settings.grace_seconds,
        settings.record_dir or "off",
    )
    daemon.run()

if __name__ == "__main__":
    main()
