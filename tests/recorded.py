"""Where the recorded market data is: the sample shipped in `samples/` (samples/README.md says
where each file came from and how it was cut), and the larger recordings it was cut from, which
a benchmark uses when they sit beside the repository and never needs."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
BTC_TAPE = SAMPLES / "btcusdt_20240809.gz"
ETH_TAPE = SAMPLES / "ethusdt_20240809.gz"
EXCHANGE_INFO = SAMPLES / "exchangeInfo.json"

# ~11 minutes of BTCUSDT and ETHUSDT, `<symbol>_20240808.gz` and `<symbol>_20240809.gz`.
LARGER_TAPES = REPO.parent / "shared" / "data" / "binance-spot-tapes"


def tapes() -> Path:
    """The larger recordings' directory when it is there, else `samples/` (same file names, one day)."""
    return LARGER_TAPES if LARGER_TAPES.is_dir() else SAMPLES
