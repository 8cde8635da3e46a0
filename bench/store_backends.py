"""What a trader's state save costs on each store backend, in the same run on the same disk.

- SQLite `Store.save`: WAL, `synchronous=NORMAL` (no fsync at a commit: a killed process loses
  nothing, a power cut may lose the last commits); and `next_cycle`, committed with an fsync
  (`synchronous=FULL`), for the cost of a durable SQLite commit.
- PostgreSQL `PgStore.save`, fenced (BEGIN, the lease row FOR SHARE, the upsert, COMMIT: four round
  trips), durable: the commit waits for the WAL's fsync (synchronous_commit on, the default, which
  naive keeps). Beside it the same save without the fence (what the fence itself costs) and the
  fenced save with synchronous_commit off (what the fsync costs; not what naive does).

The server is a real one started as the tests start it (tests/pg.py), over TCP on 127.0.0.1: a
remote database adds its network round trip four times per save.

    .venv/bin/python bench/store_backends.py [--saves 2000] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from figures import percentiles
from pg import running_server

from naived.core.messages import Settings, TraderState
from naived.store import pgschema
from naived.store.leases import Leases
from naived.store.postgres import PgStore, connect
from naived.store.sqlite import Store

SETTINGS = Settings("XRPUSDT", 1, "100", "0", "0.001", "0.01", "0.0001", "1", "1", "5", "XRP", "USDT")


def timed(n: int, call: Callable[[int], object]) -> dict[str, float]:
    """Microseconds per call: p50, p99, mean (after 20 calls of warm-up)."""
    for i in range(20):
        call(i)
    took = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        took.append((time.perf_counter() - start) * 1e6)
    figures = percentiles(took)
    return {"p50_us": figures["p50"], "p99_us": figures["p99"], "mean_us": statistics.fmean(took)}


def state(i: int) -> TraderState:
    return TraderState("XRPUSDT", 0, 1, SETTINGS, status="buying" if i % 2 else "selling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="200 saves each")
    parser.add_argument("--json", action="store_true", help="also print one BENCH-JSON line for bench/run_all")
    args = parser.parse_args()
    n = 200 if args.quick else args.saves
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="nd-bench-") as tmp:
        store = Store(Path(tmp) / "XRPUSDT.sqlite")
        results["sqlite save (WAL, synchronous=NORMAL)"] = timed(n, lambda i: store.save(state(i), {"fills": 1}))
        results["sqlite next_cycle (synchronous=FULL: fsync)"] = timed(max(n // 4, 50), lambda i: store.next_cycle())
        store.close()
    with running_server() as server:
        conn = connect(server.dsn())
        pgschema.migrate(conn)
        lease = Leases(conn).acquire("XRPUSDT", "bench", 3600)
        assert lease is not None
        pg = PgStore(conn, "XRPUSDT", lease)
        results["postgresql save, fenced, durable (naive's)"] = timed(n, lambda i: pg.save(state(i), {"fills": 1}))

        def unfenced(i: int) -> None:
            with conn.transaction():
                conn.execute("INSERT INTO traders (symbol, trader_id, state, updated_at) VALUES (%s, 0, %s, now()) "
                             "ON CONFLICT (symbol, trader_id) DO UPDATE SET state = excluded.state",
                             ("XRPUSDT", str(i)))
                conn.execute("UPDATE meta SET value = (value::bigint + 1)::text WHERE symbol = 'XRPUSDT' AND key = 'fills'")

        results["postgresql save, unfenced, durable"] = timed(n, unfenced)
        conn.execute("SET synchronous_commit = off")
        results["postgresql save, fenced, synchronous_commit=off"] = timed(n, lambda i: pg.save(state(i), {"fills": 1}))
        conn.close()
        startup = server.startup_seconds
    print(f"{n} saves each; test server start-up (initdb + start + role + database) {startup:.2f} s")
    report(results, args.json)


def report(results: dict[str, dict[str, float]], as_json: bool, decimals: int = 0) -> None:
    """The figures as a table; with `as_json`, also the BENCH-JSON line bench/run_all reads."""
    width = max(len(k) for k in results)
    print(f"{'':{width}}  {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9}")
    for name, r in results.items():
        print(f"{name:{width}}  {r['p50_us']:9.{decimals}f} {r['p99_us']:9.{decimals}f} {r['mean_us']:9.{decimals}f}")
    if as_json:
        print("BENCH-JSON: " + json.dumps([{"figure": name, "unit": "µs", "p50": r["p50_us"], "p99": r["p99_us"]}
                                           for name, r in results.items()]))


if __name__ == "__main__":
    main()
