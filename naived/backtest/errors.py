"""The backtest's one error: what the user gave it cannot be used."""

from __future__ import annotations


class BacktestError(Exception):
    """An input or setting the backtest cannot use, worded for the user in one line."""
