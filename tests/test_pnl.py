"""Positions and profit (naived/core/pnl.py): figures worked out by hand, exact Decimals."""

from __future__ import annotations

import os
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
from harness import Tree, running_tree, wait_for
from test_end_to_end import CYCLING
from test_strategy import state

from naived import ctl
from naived.core import pnl, strategy
from naived.core.messages import CycleResult, LeaderStatus, Order, ProcessInfo, SymbolStatus, TraderState, TreeStatus

D = Decimal
BUY = Order("nvq7x2k9-3-17B", "BUY", "0.5", "40", "NEW", 11)
SELL = Order("nvq7x2k9-3-17S", "SELL", "0.52", "39", "NEW", 12)


def bought(**changes: object) -> TraderState:
    """40 XRP bought at 0.5 for 20 USDT, the commission as `changes` say (default: 0.04 XRP, worth 0.02)."""
    order = msgspec.structs.replace(BUY, status="FILLED", executed_qty="40", quote_qty="20",
                                    **{"fees": {"XRP": "0.04"}, "fees_quote": "0.02", **changes})
    return state(buy_order=order, status="selling")


def test_a_partially_filled_buy_holds_what_it_executed_at_what_it_spent() -> None:
    partial = msgspec.structs.replace(BUY, status="PARTIALLY_FILLED", executed_qty="10", quote_qty="5")
    c = pnl.cycle(state(buy_order=partial, status="buying"))
    # its commission is known once the order is final: none yet
    assert (c.position, c.cost, c.sold, dict(c.fees)) == (D(10), D(5), D(0), {})
    assert c.unrealised(D("0.52")) == D("0.2")  # 10 × 0.52 − 5


def test_a_commission_in_the_base_asset_costs_units_not_money() -> None:
    c = pnl.cycle(bought())
    assert (c.position, c.cost, dict(c.fees)) == (D("39.96"), D(20), {"XRP": D("0.04")})
    assert c.unrealised(D("0.51")) == D("0.3796")  # 39.96 × 0.51 − 20


def test_a_commission_in_the_quote_asset_is_part_of_the_cost() -> None:
    c = pnl.cycle(bought(fees={"USDT": "0.02"}))
    assert (c.position, c.cost) == (D(40), D("20.02"))
    assert c.unrealised(D("0.51")) == D("0.38")  # 40 × 0.51 − 20.02


def test_a_commission_in_a_third_asset_is_listed_not_converted() -> None:
    c = pnl.cycle(bought(fees={"BNB": "0.00005"}, fees_quote="0"))
    assert (c.position, c.cost, dict(c.fees)) == (D(40), D(20), {"BNB": D("0.00005")})
    assert c.unrealised(D("0.51")) == D("0.4")


def test_a_partly_executed_sell_leaves_the_rest_held_and_its_profit_unrealised() -> None:
    sell = msgspec.structs.replace(SELL, status="PARTIALLY_FILLED", executed_qty="13", quote_qty="6.76")
    c = pnl.cycle(msgspec.structs.replace(bought(), sell_order=sell))
    assert c.position == D("26.96")  # 39.96 received − 13 sold
    assert pnl.text(c.cost) == "13.49349349"  # 20 × 26.96 / 39.96
    assert pnl.text(c.sold) == "0.25349349"  # 6.76 − 20 × 13 / 39.96
    assert pnl.text(c.unrealised(D("0.52"))) == "0.7792"  # 26.96 × 0.52 + 6.76 − 20


def test_nothing_bought_yet_holds_nothing() -> None:
    assert pnl.cycle(state()) == pnl.Cycle()
    assert pnl.cycle(state(buy_order=BUY, status="buying")).position == 0


def finished() -> TraderState:
    """bought(), then 39 sold at 0.52 for 20.28, 0.02028 USDT commission; 0.96 XRP of dust."""
    sell = msgspec.structs.replace(SELL, status="FILLED", executed_qty="39", quote_qty="20.28",
                                   fees={"USDT": "0.02028"}, fees_quote="0.02028")
    done = msgspec.structs.replace(bought(), sell_order=sell, status="done")
    return msgspec.structs.replace(done, result=strategy.cycle_result(done))


def test_a_done_cycle_is_realised_as_its_books_say() -> None:
    c = pnl.cycle(finished())
    assert c.done and c.position == 0 and c.result is not None
    assert c.result.pnl == "0.74020048"  # 20.28 − 0.02028 − 39 × 20 / 39.96
    r = pnl.Realised().add(c.result)
    assert (r.cycles, r.pnl, r.fees_quote) == (1, D("0.74020048"), D("0.04028"))
    assert dict(r.fees) == {"XRP": D("0.04"), "USDT": D("0.02028")}


EARLIER = CycleResult(bought="40", cost="20", sold="40", proceeds="20.1", fees={"BNB": "0.0001"}, fees_quote="0",
                      pnl="0.1", dust="0", dust_cost="0")


def test_a_symbol_sums_its_traders_and_finished_cycles_and_returns_on_its_budget() -> None:
    earlier = msgspec.structs.replace(finished(), cycle=3, result=EARLIER)
    realised = pnl.Realised.of([earlier, msgspec.structs.replace(earlier, cycle=4, result=None)])  # one before books
    assert (realised.cycles, realised.pnl) == (2, D("0.1"))
    partial = msgspec.structs.replace(BUY, status="PARTIALLY_FILLED", executed_qty="10", quote_qty="5")
    traders = [bought(), state(buy_order=partial, status="buying"), finished(), state()]
    cycles = [pnl.cycle(s) for s in traders]
    p = pnl.profit(cycles, realised, D("0.51"), D(100), "XRP", "USDT")
    assert (p.base, p.quote, p.budget, p.price) == ("XRP", "USDT", "100", "0.51")
    assert (p.position, p.cost) == ("49.96", "25")
    assert p.unrealised == "0.4796"  # 49.96 × 0.51 − 25
    assert (p.realised, p.cycles) == ("0.84020048", 3)  # 0.1 + 0 + the done cycle's 0.74020048
    assert p.fees == {"BNB": "0.0001", "USDT": "0.02028", "XRP": "0.04"} and p.fees_quote == "0.04028"
    assert p.open_fees == {"XRP": "0.04"}
    assert p.return_on_budget == "0.013198"  # (0.84020048 + 0.4796) / 100, to 8 places


def test_a_position_without_a_price_has_no_value_and_no_return() -> None:
    p = pnl.profit([pnl.cycle(bought())], pnl.Realised(), None, D(100), "XRP", "USDT")
    assert (p.position, p.cost, p.price, p.unrealised, p.return_on_budget) == ("39.96", "20", None, None, None)
    flat = pnl.profit([pnl.cycle(state())], pnl.Realised().add(EARLIER), None, D(100), "XRP", "USDT")
    assert (flat.position, flat.unrealised, flat.realised, flat.return_on_budget) == ("0", "0", "0.1", "0.001")


def test_figures_are_plain_decimals_to_eight_places() -> None:
    assert [pnl.text(D(v)) for v in ("100.000", "0.0000000049", "-0.000000004", "-0.5", "1E+2", "12.345678915")] == [
        "100", "0", "0", "-0.5", "100", "12.34567892"]


def test_status_text_gives_a_symbols_profit_on_a_line_of_its_own() -> None:
    p = pnl.profit([pnl.cycle(bought(fees={"BNB": "0.00005"}, fees_quote="0"))], pnl.Realised().add(EARLIER), D("0.51"),
                   D(100), "XRP", "USDT")
    assert ctl.profit_line(p) == ("profit  position 40 XRP (cost 20 USDT), unrealised +0.4 USDT, realised +0.1 USDT "
                                  "after 0 USDT + 0.0001 BNB fees, return +0.5% on 100 USDT")  # (0.1 + 0.4) / 100
    unpriced = msgspec.structs.replace(p, price=None, unrealised=None, return_on_budget=None, realised="-0.25")
    assert ctl.profit_line(unpriced) == ("profit  position 40 XRP (cost 20 USDT), unrealised unknown (no market trade "
                                         "seen yet), realised -0.25 USDT after 0 USDT + 0.0001 BNB fees")
    leader = LeaderStatus("XRPUSDT", 5022, 0.0, [], cycles_finished=1, profit=p)
    symbol = SymbolStatus("XRPUSDT", "running", ProcessInfo(7, 0.0, 0), leader)
    tree = TreeStatus(1, 0.0, "paper", "tcp://127.0.0.1:5680", [symbol])
    lines = ctl.render(tree, 60.0).splitlines()
    assert lines[1].startswith("└── XRPUSDT [running]") and lines[2] == "    " + ctl.profit_line(p)
    assert lines[3].startswith("    └── leader  pid 5022") and "(pnl" not in lines[3]  # the books are on the profit line


# --- on a real tree: the leader's figures in `naivectl status` ----------------------------------


def profit(tree: Tree, symbol: str = "XRPUSDT") -> dict[str, Any] | None:
    sym = tree.symbol(symbol)
    return sym["leader"]["profit"] if sym and sym.get("leader") else None


def as_history(tree: Tree, leader_pid: int | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The profit status shows and the finished cycles history lists, once they speak of the same
    cycles (none finished between the two reads); `leader_pid`: only from a leader other than this one."""
    sym = tree.symbol("XRPUSDT")
    leader = sym["leader"] if sym else None
    if not leader or leader["pid"] == leader_pid or not leader["profit"]["cycles"]:
        return None
    cycles = tree.history("XRPUSDT")
    return (leader["profit"], cycles) if leader["profit"]["cycles"] == len(cycles) else None


def summed(cycles: list[dict[str, Any]]) -> tuple[Decimal, dict[str, Decimal], Decimal]:
    pnl_total, fees, fees_quote = D(0), {}, D(0)
    for c in cycles:
        pnl_total += D(c["result"]["pnl"])
        fees_quote += D(c["result"]["fees_quote"])
        for asset, amount in c["result"]["fees"].items():
            fees[asset] = fees.get(asset, D(0)) + D(amount)
    return pnl_total, fees, fees_quote


def test_a_finished_cycle_moves_the_realised_profit_in_status(tmp_path: Path) -> None:
    with running_tree(tmp_path, CYCLING) as tree:
        assert tree.ctl("start-trading", "XRPUSDT").returncode == 0
        first = wait_for("XRPUSDT's profit in status", lambda: profit(tree))
        assert (first["base"], first["quote"], first["budget"]) == ("XRP", "USDT", "100")
        # Cycles here can finish within a second of the start: under load the first look may come after one.
        if first["cycles"] == 0:
            assert (first["realised"], first["fees"]) == ("0", {})
        else:
            assert D(first["realised"]) != 0 and first["fees"]

        held = wait_for("a position", lambda: (p := profit(tree)) and D(p["position"]) > 0 and p["price"] and p)
        assert D(held["cost"]) > 0 and held["open_fees"].keys() <= {"XRP", "USDT"}
        unrealised = D(held["unrealised"])
        assert D(held["return_on_budget"]) == ((D(held["realised"]) + unrealised) / 100).quantize(pnl.EIGHT)

        shown, cycles = wait_for("a finished cycle in status and history", lambda: as_history(tree), timeout=60)
        realised, fees, fees_quote = summed(cycles)
        assert realised != 0 and D(shown["realised"]) == realised
        assert {a: D(v) for a, v in shown["fees"].items()} == fees and "XRP" in fees  # the paper exchange's buy fee
        assert D(shown["fees_quote"]) == fees_quote
        text = tree.ctl("status", "XRPUSDT").stdout
        assert "    profit  position " in text and " (cost " in text and ", return " in text, text

        # A new leader takes the finished cycles' totals from the store, not from its memory.
        pid = tree.symbol("XRPUSDT")["leader"]["pid"]
        os.kill(pid, signal.SIGKILL)
        again, cycles = wait_for("a new leader's profit agreeing with history", lambda: as_history(tree, pid), timeout=60)
        realised, fees, fees_quote = summed(cycles)
        assert D(again["realised"]) == realised and {a: D(v) for a, v in again["fees"].items()} == fees
        assert D(again["fees_quote"]) == fees_quote
