"""Host faults under trading, long: a cluster loses hosts (killed, frozen, cut off) or its database while its symbols cycle.

The same run as `tests/test_cluster_chaos.py` (see `tests/cluster_chaos.py`), as long and as wide
as you like: `--hosts` naived hosts on one PostgreSQL (started here, as the tests start it), one
shared paper exchange and a simulated market, `--symbols` USDT symbols cycling every few seconds,
`--faults` host faults (a host's whole tree killed and started again later, or frozen past its
leases and resumed; with `--net`, every host in a network namespace of its own, and a host can
also be cut off and healed, and the database killed and started again: needs root). Prints the
faults survived, the time until every symbol traded again on one host after each (p50/p99; after
a database fault, from its return), cycles and orders, and orders lost or duplicated (both must be
0; the account's balances are checked against every fill). Exits 1 when an invariant broke.

    .venv/bin/python bench/cluster_chaos.py [--net] [--hosts 3] [--symbols 30] [--faults 20] [--rate 50]
                                            [--lease 3 1 0.5] [--seed 1] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import cluster_chaos
from hosts import usable_symbols
from pg import running_server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", action="store_true", help="hosts in network namespaces; cuts too (root only)")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=30)
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--rate", type=float, default=50.0, help="simulated trades per second per symbol (--net)")
    parser.add_argument("--lease", type=float, nargs=3, default=(3.0, 1.0, 0.5), metavar=("TTL", "RENEW", "MARGIN"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the hosts' directories and logs (printed)")
    args = parser.parse_args()
    symbols = usable_symbols(args.symbols)
    lease = tuple(args.lease)
    names = [f"h{i + 1}" for i in range(args.hosts)]
    directory = Path(tempfile.mkdtemp(prefix="nd-b-"))  # short: the hosts' Unix sockets live under it
    try:
        with contextlib.ExitStack() as stack:
            if args.net:
                fleet = stack.enter_context(cluster_chaos.net_fleet(directory, args.hosts, symbols, args.seed, lease,
                                                                    args.rate))
            else:
                # a connection per leader, twice (a frozen host's stay open), per keeper, a few for workers and checks
                server = stack.enter_context(running_server(max_connections=2 * args.symbols + 10 * args.hosts + 20))
                fleet = stack.enter_context(cluster_chaos.local_fleet(directory, server.dsn(), names, symbols,
                                                                      args.seed, lease))
            report = cluster_chaos.run(fleet, args.faults, args.seed, ttl=args.lease[0], symbols=symbols)
    finally:
        if args.keep:
            print(f"logs kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"{args.hosts} hosts{' in network namespaces' if args.net else ''}, {args.symbols} symbols, "
          f"lease {args.lease[0]:g}s")
    print(report.summary())
    return 1 if report.checks.problems else 0


if __name__ == "__main__":
    sys.exit(main())
