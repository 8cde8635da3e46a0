"""One check of a configuration, shared by `naived check-config`, `naived start`, `start-trading`
(and autostart) and SIGHUP reloads, so that none of them accepts what another refuses.

Parsing (`config.parse_config`) refuses what a file can get wrong on its own. This module adds
what needs more than the file: the API keys of a real exchange, the log file's directory, the
runtime directory's length (for its sockets), and
for each symbol to trade,
that the symbol table lists it, that its budget is in a named asset (its quote asset, see
`config.Trading`) and that a trader's share of it reaches the symbol's minimum notional.
Every problem is one line for the user; nothing here creates a file or talks to the exchange.
"""

from __future__ import annotations

import os
from pathlib import Path

from naived.core.config import SOCKET_PATH_MAX, Config, ConfigError, NoBudget, ipc_path, is_loopback
from naived.core.credentials import check_keys
from naived.core.symbols import SymbolFilters, lookup, table_path
from naived.ops.log import file_problem


def symbol_problem(config: Config, symbol: str, filters: SymbolFilters | None = None) -> str | None:
    """Why `symbol` cannot trade under `config`, in one line; None when it can. `filters`: the
    exchange's own when the caller has them (the root's exchange-info), else the symbol table's."""
    for endpoint in (config.leader_endpoint(symbol), config.leader_pub_endpoint(symbol)):
        if problem := socket_problem(config, endpoint):
            return f"{symbol}: {problem}"
    filters = filters or lookup(symbol)
    if filters is None:
        return f"unknown symbol {symbol}: the symbol table does not list it ({table_path()})"
    quote = filters.quote
    try:
        trading = config.trading.for_symbol(symbol, quote)
    except NoBudget as exc:
        return str(exc)
    assert trading.budget is not None  # for_symbol resolves it or raises
    per_trader = trading.budget / trading.chunks
    if per_trader < filters.min_notional:
        # A buy costs at most a trader's share: below the minimum, every buy would be refused.
        found = config.trading.budget_for(symbol, quote)
        key = found[1] if found else "budget"
        return (f"{symbol}: {key} = {trading.budget} {quote} over {trading.chunks} chunks is {per_trader.normalize():f} {quote} "
                f"per trader, below the minimum notional {filters.min_notional} {quote}: set at least "
                f"{filters.min_notional * trading.chunks} or fewer chunks")
    return None


def config_problem(config: Config) -> str | None:
    """What `naived start` refuses before it forks anything (exit status 2)."""
    try:
        check_keys(config)
    except ConfigError as exc:
        return str(exc)
    if config.naived.log.file and (problem := file_problem(config.naived.log.file)):
        return f"naived.log.file: {problem}"
    for endpoint in (config.control_endpoint, config.reports_endpoint, config.workers_endpoint,
                     config.account_stream_endpoint, config.observer_endpoint):
        if problem := socket_problem(config, endpoint):
            return problem
    if config.naived.exchange == "paper" and not is_loopback(config.paper.host):
        return (f"paper.host: naived's own paper exchange (exchange = \"paper\") serves this host alone, on loopback, "
                f"got {config.paper.host!r}; remote_clients is for `naived paper-exchange`")
    return store_problem(config)


def store_problem(config: Config) -> str | None:
    """The PostgreSQL store needs a DSN and its client library; both are known before anything starts
    (whether the database answers is the lease keeper's to find out, and to retry)."""
    if not config.store.shared:
        return None
    if not config.store.resolved_dsn():
        return 'store.dsn: backend = "postgresql" needs a DSN: set store.dsn or $NAIVE_STORE_DSN'
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return "store.backend: postgresql needs psycopg 3: pip install 'naive[postgresql]'"
    try:
        conninfo_to_dict(config.store.resolved_dsn())
    except psycopg.Error:  # libpq's message quotes the DSN around the mistake: maybe the password
        return "store.dsn: the PostgreSQL DSN does not parse (not shown: it may hold a password)"
    return None


def socket_problem(config: Config, endpoint: str) -> str | None:
    """An ipc endpoint whose path the kernel cannot bind (longer than sockaddr_un allows): found
    here, at start or start-trading, not when a process binds it and fails, restarted, again."""
    path = ipc_path(endpoint)
    if path is None or len(os.fsencode(path)) <= SOCKET_PATH_MAX:
        return None
    fix = "a shorter paths.runtime_dir" + ("" if config.paths.runtime_dir else " (or TMPDIR)")
    if Path(path).parent != config.runtime_dir:
        fix = "a shorter endpoint"
    return f"the socket {path} would be {len(os.fsencode(path))} bytes, more than a Unix socket path may have " \
           f"({SOCKET_PATH_MAX}): set {fix}"


def named_symbols(config: Config) -> list[str]:
    """Every symbol the file names for trading: autostart, then per-symbol settings."""
    return list(dict.fromkeys([*config.naived.autostart, *config.trading.symbols]))


def problems(config: Config) -> list[str]:
    """Everything `check-config` refuses: what `start` refuses, and for every symbol the file
    names what `start` (autostart) or `start-trading` would refuse it for."""
    found = [p for p in [config_problem(config)] if p is not None]
    for symbol in named_symbols(config):
        problem = symbol_problem(config, symbol)
        if problem is not None:
            where = "naived.autostart" if symbol in config.naived.autostart else f"trading.symbols.{symbol}"
            found.append(problem if problem.startswith(f"{symbol}:") else f"{where}: {problem}")
    return found
