"""`naived`: the trading daemon's command line."""

from __future__ import annotations

import sys

import click

from naived.config import Config, ConfigError, load_config
from naived.log import setup_logging

config_option = click.option(
    "--config", "config_path", metavar="PATH", help="TOML file (default: $NAIVE_CONFIG, /etc/naive/naive.toml, embedded)."
)


def _load(config_path: str | None) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        click.echo(f"naived: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(package_name="naive", prog_name="naived")
def main() -> None:
    """naive: fault-tolerant trading of Binance spot symbols on a tree of OS processes."""


@main.command()
@config_option
def start(config_path: str | None) -> None:
    """Run the root of the tree in the foreground (as systemd runs it)."""
    config = _load(config_path)
    setup_logging("naived")
    from naived import exchange, root

    if config.naived.exchange != "paper":
        try:
            exchange.client_for(config)  # refuse to start without usable keys, before forking anything
        except ConfigError as exc:
            click.echo(f"naived: {exc}", err=True)
            sys.exit(2)

    sys.exit(root.run(config))


@main.command("paper-exchange")
@config_option
def paper_exchange_command(config_path: str | None) -> None:
    """Run the paper exchange alone (naived starts its own when exchange = "paper")."""
    config = _load(config_path)
    setup_logging("paper-exchange")
    from naived import paper_exchange

    paper_exchange.run(config)


@main.command("check-config")
@config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration and exit (0 valid, 2 invalid)."""
    _load(config_path)
    click.echo("configuration OK")


@main.command()
@click.option("--seconds", default=30.0, show_default=True, help="How long to run; 0 runs until Ctrl-C.")
@click.option("--symbol", "symbols", multiple=True, default=["XRPUSDT", "BTCUSDT"], show_default=True)
def demo(seconds: float, symbols: tuple[str, ...]) -> None:
    """Simulated market + paper exchange + naived in a temporary directory, with status every few seconds."""
    from naived import demo as demo_module

    sys.exit(demo_module.run(seconds, [s.upper() for s in symbols]))


if __name__ == "__main__":
    main()
