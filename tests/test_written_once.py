"""The trading rules are written once: the strategy's actions are carried out only by
`naived.core.actions` and the cycle bookkeeping is decided only in `naived.core.cycles`, and
the daemon's traders and leader and the backtest all call them. A second copy anywhere in
`naived/` (a backtest that grows its own interpreter again, a leader that counts chunks itself)
fails here, naming the file and line."""

from __future__ import annotations

import ast
import types
import typing
from pathlib import Path

from naived.core import strategy

REPO = Path(__file__).resolve().parent.parent
INTERPRETER = "naived/core/actions.py"
BOOKKEEPING = "naived/core/cycles.py"
# The strategy's action types, as it declares them: a new one is guarded too.
ACTIONS = {t.__name__ for t in typing.get_args(strategy.Action) if t is not types.NoneType}
# Type tests of an action allowed outside the interpreter, and why.
ALLOWED_TESTS = {
    # the trade loop skips a price check while the account stream pushes the order's changes
    ("naived/tree/trader.py", "Check"),
}
COUNTER_KEYS = {"orders_placed", "orders_filled", "intents_unknown"}
# The rules' inputs: comparing or ranging over these is the bookkeeping's job.
BOOKKEEPING_NAMES = {"chunks", "traders_at_start"}
# Who must call the one copy, and what.
CALLERS = {
    "naived/tree/trader.py": {"actions.carry_out", "actions.answer", "cycles.rebuy_possible"},
    "naived/tree/leader.py": {"cycles.starting", "cycles.fresh", "cycles.continues", "cycles.rebuy_starts", "cycles.counts"},
    "naived/backtest": {"actions.carry_out", "cycles.starting", "cycles.fresh", "cycles.continues", "cycles.rebuy_starts",
                        "cycles.counts"},
}


def _name(node: ast.expr) -> str | None:
    """`Place` or `strategy.Place` -> "Place"."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _mentions(node: ast.AST, names: set[str]) -> bool:
    return any(_name(n) in names for n in ast.walk(node) if isinstance(n, (ast.Name, ast.Attribute)))


def action_tests(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, action type) of every test of an action's type: `isinstance` and `match` cases."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) == "isinstance" and len(node.args) == 2:
            kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            found += [(node.lineno, n) for k in kinds if (n := _name(k)) in ACTIONS]
        elif isinstance(node, ast.MatchClass) and (n := _name(node.cls)) in ACTIONS:
            found.append((node.lineno, n))
    return sorted(found)


def bookkeeping(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of every piece of the cycle bookkeeping: a comparison with `chunks` or
    `traders_at_start`, a range over them, a trader state made, a counter of orders bumped."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and _mentions(node, BOOKKEEPING_NAMES):
            found.append((node.lineno, "compares with chunks"))
        elif isinstance(node, ast.Call) and _name(node.func) == "range" and _mentions(node, BOOKKEEPING_NAMES):
            found.append((node.lineno, "ranges over chunks"))
        elif isinstance(node, ast.Call) and _name(node.func) == "TraderState":
            found.append((node.lineno, "makes a trader state"))
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and t.slice.value in COUNTER_KEYS
                   for t in targets):
                found.append((node.lineno, "bumps an order counter"))
        elif isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value in COUNTER_KEYS for k in node.keys):
            found.append((node.lineno, "counts orders"))
    return sorted(found)


def calls(tree: ast.AST) -> set[str]:
    """`module.function` of every call through a module name (`actions.carry_out(...)`)."""
    return {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)}


def sources() -> dict[str, ast.AST]:
    return {str(p.relative_to(REPO)): ast.parse(p.read_text(), str(p)) for p in sorted((REPO / "naived").rglob("*.py"))}


def test_only_the_interpreter_tests_which_action_it_has() -> None:
    wrong = [f"{path}:{line}: tests for {kind}: carry it out with naived.core.actions instead"
             for path, tree in sources().items() if path != INTERPRETER
             for line, kind in action_tests(tree) if (path, kind) not in ALLOWED_TESTS]
    assert not wrong, "\n".join(wrong)


def test_only_the_cycle_rules_compare_chunks_make_states_or_count_orders() -> None:
    wrong = [f"{path}:{line}: {what}: a rule of naived/core/cycles.py" for path, tree in sources().items()
             if path != BOOKKEEPING for line, what in bookkeeping(tree)]
    assert not wrong, "\n".join(wrong)


def test_the_daemon_and_the_backtest_call_the_one_copy() -> None:
    trees = sources()
    for where, wanted in CALLERS.items():
        called = set().union(*(calls(t) for p, t in trees.items() if p == where or p.startswith(where + "/")))
        assert wanted <= called, f"{where} does not call {sorted(wanted - called)}"


# What this scan must catch: the backtest's own interpreter and leader bookkeeping as they were
# written before naived.core.actions and naived.core.cycles (issue 21).
OLD_BACKTEST = '''
class _Trader:
    def act(self, action):
        while action is not None:
            if isinstance(action, strategy.Place):
                self.state, action = strategy.placed(self.state, self.client.new_order(action.intent))
                self.placed += 1
            elif isinstance(action, strategy.Finish):
                return True
        return False

class SymbolRun:
    def start(self, trader_id):
        self.traders[trader_id] = TraderState(self.symbol, trader_id, self.next_cycle, self.settings)

    def rebuy(self):
        if len(self.traders) >= self.trading.chunks:
            return
        self.start(next(i for i in range(self.trading.chunks) if i not in self.traders))
'''
OLD_LEADER = '''
def counts(old, new):
    result = {}
    result["orders_placed"] = result.get("orders_placed", 0) + 1
    return result

def act(self, action):
    match action:
        case strategy.Check(client_order_id):
            pass
'''


def test_the_scan_sees_a_second_copy() -> None:
    old = ast.parse(OLD_BACKTEST)
    assert [kind for _, kind in action_tests(old)] == ["Place", "Finish"]
    assert sorted({what for _, what in bookkeeping(old)}) == [
        "compares with chunks", "makes a trader state", "ranges over chunks"]
    old = ast.parse(OLD_LEADER)
    assert [kind for _, kind in action_tests(old)] == ["Check"]
    assert [what for _, what in bookkeeping(old)] == ["bumps an order counter"]
