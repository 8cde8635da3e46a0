"""Host faults under trading, long: a cluster loses hosts (killed, frozen) while its symbols cycle.

The same run as `tests/test_cluster_chaos.py` (see `tests/cluster_chaos.py`), as long and as wide
as you like: `--hosts` naived hosts on one PostgreSQL (started here, as the tests start it), one
shared paper exchange and a simulated market, `--symbols` USDT symbols cycling every few seconds,
`--faults` host faults (a host's whole tree killed and started again later, or frozen past its
leases and resumed). Prints the faults survived, the time until every symbol traded again on one
host after each (p50/p99), cycles and orders, and orders lost or duplicated (both must be 0;
the account's balances are checked against every fill). Exits 1 when an invariant broke.

    .venv/bin/python bench/cluster_chaos.py [--hosts 3] [--symbols 30] [--faults 20] [--lease 3 1 0.5] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import cluster_chaos
from hosts import usable_symbols
from pg import running_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=30)
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--lease", type=float, nargs=3, default=(3.0, 1.0, 0.5), metavar=("TTL", "RENEW", "MARGIN"))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    # a connection per leader, per keeper, and a few for workers and the checks
    with running_server(max_connections=args.symbols + 10 * args.hosts + 20) as server, tempfile.TemporaryDirectory() as tmp:
        report = cluster_chaos.run(Path(tmp), server.dsn(), args.faults, args.hosts, args.seed,
                                   lease=tuple(args.lease), symbols=usable_symbols(args.symbols))
    print(f"{args.hosts} hosts, {args.symbols} symbols, lease {args.lease[0]:g}s")
    print(report.summary())
    return 1 if report.checks.problems else 0


if __name__ == "__main__":
    sys.exit(main())
