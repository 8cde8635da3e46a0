"""The PostgreSQL store's schema, created and migrated by naive itself, versioned.

`MIGRATIONS` holds the steps by number, applied in that order; `schema_version` records each step
applied. A step is never edited once released: a change is a new step with a higher number.
`migrate` applies the steps not recorded yet (a gap in the numbers, a step merged after a later one,
is filled in when it comes) in one transaction under a transaction-level advisory lock, so hosts
starting together queue there and the later ones find the work done; a database written by a newer
naive (a version past the last step) is refused untouched.

Every table is keyed by symbol and shared by all hosts (docs/architecture.md, "PostgreSQL store").
"""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

Conn = psycopg.Connection[TupleRow]

# pg_advisory_xact_lock's key for migrations: "naive" in ASCII, any constant every host agrees on.
MIGRATION_LOCK = 0x6E61697665

MIGRATIONS: dict[int, str] = {
    # 1: hosts, fenced leases, the symbol stores' tables, the id prefix registry, the trading set
    1: """
    CREATE TABLE hosts (
        host_id    text PRIMARY KEY,
        pid        integer NOT NULL,
        started_at timestamptz NOT NULL,
        last_seen  timestamptz NOT NULL
    );
    -- Fencing tokens: a sequence only ever grows (never cycles, never rolls back: a token handed
    -- out by a transaction that then failed is skipped, not reused).
    CREATE SEQUENCE lease_tokens AS bigint NO CYCLE;
    CREATE TABLE leases (
        symbol      text PRIMARY KEY,
        holder      text NOT NULL,
        token       bigint NOT NULL,
        acquired_at timestamptz NOT NULL,
        expires_at  timestamptz NOT NULL
    );
    CREATE TABLE traders (
        symbol     text NOT NULL,
        trader_id  integer NOT NULL,
        state      text NOT NULL,  -- msgspec's JSON of a TraderState, the same bytes as in SQLite
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (symbol, trader_id)
    );
    CREATE TABLE cycles (
        symbol      text NOT NULL,
        cycle       bigint NOT NULL,
        trader_id   integer NOT NULL,
        state       text NOT NULL,
        finished_at timestamptz NOT NULL,
        PRIMARY KEY (symbol, cycle)
    );
    CREATE TABLE meta (
        symbol text NOT NULL,
        key    text NOT NULL,
        value  text NOT NULL,
        PRIMARY KEY (symbol, key)
    );
    CREATE TABLE id_prefixes (
        prefix    text PRIMARY KEY,
        symbol    text NOT NULL,
        minted_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE trading (
        symbol text PRIMARY KEY,
        mode   text NOT NULL CHECK (mode IN ('running', 'shutting-down'))
    );
    """,
    # 2: the account's order limits shared by the hosts (naived/store/order_counts.py)
    2: """
    -- Each host's latest counts, one row per kind of window: its orders in the window that starts
    -- at window_start (epoch seconds, UTC) and its allowance (per 10 s: the share it reserves).
    CREATE TABLE order_counts (
        host_id      text NOT NULL,
        kind         text NOT NULL CHECK (kind IN ('10s', 'day')),
        window_start bigint NOT NULL,
        count        bigint NOT NULL,
        allowance    bigint NOT NULL,
        updated_at   timestamptz NOT NULL,
        PRIMARY KEY (host_id, kind)
    );
    -- One row: bumped by every write of a share, so a host writes its share only if no other host
    -- wrote one since it read them (a compare-and-set: the reservations never add up past the limit).
    CREATE TABLE order_share_epoch (
        one   boolean PRIMARY KEY DEFAULT true CHECK (one),
        epoch bigint NOT NULL
    );
    INSERT INTO order_share_epoch (epoch) VALUES (0);
    """,
    # 3: the fence as one statement that fails the transaction (naived/store/postgres.py, PgStore): a
    # write can then be sent with its fence in one round trip (a pipeline), its COMMIT included,
    # since a fence that does not hold aborts what follows it on the server
    3: """
    CREATE FUNCTION naive_fence(p_symbol text, p_holder text, p_token bigint) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM 1 FROM leases WHERE symbol = p_symbol AND holder = p_holder AND token = p_token
            AND expires_at > now() FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'fenced: % no longer held by % with token %', p_symbol, p_holder, p_token
                USING ERRCODE = 'NVFNC';
        END IF;
    END
    $$;
    """,
    # 4: when each host last held a lease (naived/store/leases.py sets it with every grant and
    # renewal): a host alone in that sense takes its order share at once (naived/store/order_counts.py)
    4: """
    -- NULL: never held a lease. A host places orders only under a lease and stops before it
    -- expires, so this bounds the last moment the host could have placed an order.
    ALTER TABLE hosts ADD COLUMN leased_until timestamptz;
    -- the leases held when a naive of this version first migrates: their holders counted at once
    UPDATE hosts h SET leased_until = l.until
    FROM (SELECT holder, max(expires_at) AS until FROM leases GROUP BY holder) l WHERE l.holder = h.host_id;
    """,
    # 5: the start requests in the trading set (naived/store/postgres.py, PgTradingSet.request): every
    # start-trading draws a new `generation` (a failed run is started afresh by its holder when it
    # moves); a row a start adds also takes it as its `run` (a stop-trading and a start-trading within
    # one keeper round leave the row in place, but under a new run: its holder starts it afresh).
    # Rows from before keep 0 for both.
    5: """
    CREATE SEQUENCE trading_generations AS bigint NO CYCLE;
    ALTER TABLE trading ADD COLUMN generation bigint NOT NULL DEFAULT 0,
                        ADD COLUMN run bigint NOT NULL DEFAULT 0;
    """,
}

LATEST = max(MIGRATIONS)


class SchemaError(Exception):
    """The database's schema is not one this naive can use (newer, or not migrated yet)."""


def applied(conn: Conn) -> set[int]:
    """The steps the database has had (none: naive never migrated it)."""
    with conn.transaction():
        row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if row is None or not row[0]:
            return set()
        return {int(v) for (v,) in conn.execute("SELECT version FROM schema_version")}


def version(conn: Conn) -> int:
    """The schema version of the database: its highest step (0: naive never migrated it)."""
    return max(applied(conn), default=0)


def current(conn: Conn) -> bool:
    """The database has every step of this naive's and none past its last (else `migrate` applies
    what is missing, or refuses a newer schema)."""
    done = applied(conn)
    return not MIGRATIONS.keys() - done and max(done, default=0) == LATEST


def migrate(conn: Conn) -> tuple[int, int]:
    """Bring the schema to `LATEST`: (the version found, the version left). Raises SchemaError for a
    database of a newer naive, psycopg.Error for a database that fails; either way nothing changes."""
    with conn.transaction():
        # Held to the end of the transaction: a second host waits here, then finds the steps applied.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                     "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        done = {int(v) for (v,) in conn.execute("SELECT version FROM schema_version")}
        found = max(done, default=0)
        if found > LATEST:
            raise SchemaError(f"the database's schema is version {found}, newer than this naive's {LATEST}: "
                              "upgrade naive on this host")
        for step in sorted(MIGRATIONS.keys() - done):
            conn.execute(MIGRATIONS[step])  # several statements: no parameters, so the simple query protocol
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (step,))
    return found, LATEST


def check(conn: Conn) -> None:
    """Raise SchemaError unless the database has every step of this naive's and none past its last."""
    done = applied(conn)
    found, missing = max(done, default=0), sorted(MIGRATIONS.keys() - done)
    if found > LATEST:
        raise SchemaError(f"the database's schema is version {found}, newer than this naive's {LATEST}")
    if missing:
        behind = f"older than this naive's {LATEST}" if found < LATEST else \
            f"without step {', '.join(map(str, missing))} of this naive's"
        raise SchemaError(f"the database's schema is version {found}, {behind}: naived migrates it when it starts")
