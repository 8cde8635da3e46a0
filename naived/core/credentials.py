"""The exchange's API keys: where they come from and how they must be kept. Read by the client
(`naived.exchange.binance`) and checked by `naived.core.validate` before anything starts; the keys
themselves never reach argv, a log line or an error message."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from naived.core.config import Config, ConfigError


def credentials(key_file: str) -> tuple[str, str]:
    """Keys from BINANCE_API_KEY/BINANCE_API_SECRET, else from a 0600 file of KEY=value lines."""
    key, secret = os.environ.get("BINANCE_API_KEY"), os.environ.get("BINANCE_API_SECRET")
    if key and secret:
        return key, secret
    if not key_file:
        raise ConfigError("no Binance API key: set BINANCE_API_KEY and BINANCE_API_SECRET, or exchange.key_file")
    path = Path(key_file)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"key file {path} has mode {mode:04o}; it must be 0600 (chmod 600 {path})")
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"key file {path}: cannot read: {exc.strerror}") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and not name.strip().startswith("#"):
            values[name.strip()] = value.strip()
    if not values.get("API_KEY") or not values.get("API_SECRET"):
        raise ConfigError(f"key file {path}: needs API_KEY=... and API_SECRET=... lines")
    return values["API_KEY"], values["API_SECRET"]


def check_keys(config: Config) -> None:
    """Raise ConfigError unless the exchange traded on has usable keys; reads only the key file."""
    if config.naived.exchange != "paper":
        credentials(config.exchange.key_file)
