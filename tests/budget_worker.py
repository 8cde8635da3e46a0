"""A process of the host for tests/test_budget.py: it builds its exchange client the way every
process of naived does (`client_for`, on the runtime directory's shared budget), does one thing,
and prints one JSON line per result.

    python tests/budget_worker.py <config> place <client order id>
    python tests/budget_worker.py <config> probe          ping, order query and placement, each once
    python tests/budget_worker.py <config> count <n>      n order acquisitions on the shared budget
    python tests/budget_worker.py <config> hold           take the budget's lock and keep it
    python tests/budget_worker.py <config> orders <n> <wall>  n order placements at wall-clock `wall` on the
                                                          configured limits (and the share the file holds)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from naived.core.config import load_config
from naived.exchange import binance as exchange
from naived.exchange import budget


def attempt(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        call()
        return {"ok": True}
    except exchange.RateLimited as exc:
        return {"ok": False, "error": type(exc).__name__, "banned": exc.banned, "retry_after": exc.retry_after}
    except Exception as exc:  # whatever else: the test says what it expected
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)}


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    config = load_config(sys.argv[1])
    command, args = sys.argv[2], sys.argv[3:]
    if command == "count":
        shared = budget.SharedBudget(config.budget_path, budget.Limits(10**12, 10**12, 10**12))
        for _ in range(int(args[0])):
            shared.acquire(1, "order")
        say(done=True)
    elif command == "orders":
        shared = exchange.shared_budget(config)
        placed = 0
        for _ in range(int(args[0])):
            try:
                shared.acquire(1, "order", float(args[1]))
                placed += 1
            except budget.Refused:
                pass
        say(placed=placed)
    elif command == "hold":
        shared = budget.SharedBudget(config.budget_path)

        def forever(state: budget.State) -> None:
            say(holding=True)
            while True:
                time.sleep(60)

        shared._locked(forever)
    else:
        client = exchange.client_for(config)
        client._offset_ms = 0  # same host, same clock: no /api/v3/time request to count
        if command == "place":
            say(**attempt(lambda: client.new_order("XRPUSDT", "BUY", "0.5", "20", args[0])))
        elif command == "probe":
            say(call="ping", **attempt(client.ping))
            say(call="get_order", **attempt(lambda: client.get_order("XRPUSDT", "never-placed")))
            say(call="new_order", **attempt(lambda: client.new_order("XRPUSDT", "BUY", "0.5", "20", "probe")))


if __name__ == "__main__":
    main()
