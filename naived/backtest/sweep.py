"""`--set key=v1,v2 ...`: the settings a backtest sweeps, and a configuration with one of them."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import msgspec

from naived.backtest.errors import BacktestError
from naived.core.config import Config, TradingSettings
from naived.core.symbols import quote_assets


def apply_settings(config: Config, changes: dict[str, str]) -> Config:
    """`--set key=value` on the trading settings of every symbol (defaults and overrides),
    checked as the config file's are."""
    if not changes:
        return config
    allowed = set(TradingSettings.__struct_fields__)
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise BacktestError(f"--set {unknown[0]}: not a trading setting (one of {', '.join(sorted(allowed))})")
    raw = msgspec.to_builtins(config.trading)
    if "budget" in changes:  # every symbol's budget, each in its own quote asset
        raw["budgets"] = dict.fromkeys(quote_assets(), changes["budget"])
    raw["defaults"].update({k: v for k, v in changes.items() if k != "budget"})
    for overrides in raw["symbols"].values():
        overrides.update(changes)
    try:
        trading = msgspec.convert(raw, type(config.trading), strict=False)
    except msgspec.ValidationError as exc:
        raise BacktestError(f"--set: {exc}") from None
    return msgspec.structs.replace(config, trading=trading)


def parse_sets(values: Iterable[str]) -> list[dict[str, str]]:
    """`--set a=1,2 --set b=3` → every combination, in order: [{a:1,b:3}, {a:2,b:3}]."""
    axes: list[tuple[str, list[str]]] = []
    for text in values:
        key, sep, rhs = text.partition("=")
        options = [v.strip() for v in rhs.split(",") if v.strip()]
        if not sep or not key.strip() or not options:
            raise BacktestError(f"--set {text!r}: expected key=value[,value...], e.g. profit_interval=0.001,0.002")
        axes.append((key.strip(), options))
    return [dict(zip([k for k, _ in axes], combo, strict=True)) for combo in itertools.product(*[v for _, v in axes])]
