"""The packages' import direction (docs/architecture.md, "Layout"): a package imports only the
packages below it, never one above it or beside it, and naived never imports streamerd. A lower
package importing a higher one fails here, naming the module and the line."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Each part and its layer; a module may import its own part and any part of a lower layer.
LAYER = {
    "naived.ops": 0,  # logging, sd_notify, metrics, progress: the standard library only
    "naived.core": 1,  # config, symbols, messages, the pure strategy
    "naived.market": 2,  # the market gate, tapes and trade decoding
    "naived.exchange": 2,  # the Binance client, HTTP/1.1, the host's rate budget
    "naived.store": 2,  # durable state: SQLite files, the state directory's owner
    "naived.paper": 3,  # the paper exchange
    "naived.web": 3,  # the web observer (the root forks it)
    "naived.tree": 4,  # the supervising loop and every process of the tree
    "streamerd": 4,  # the market-data daemon (never imported by naived)
    "naived.backtest": 5,  # the backtest, in process and through the tree
    "naived": 6,  # entry points: naived, naivectl, the demo
}


def part_of(module: str) -> str:
    for part in sorted(LAYER, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    raise AssertionError(f"{module}: in no part; add it to LAYER")


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from naived import paper` imports naived.paper, not the entry layer
            found += [(node.lineno, f"{node.module}.{a.name}") if node.module in LAYER else (node.lineno, node.module)
                      for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in ("naived", "streamerd")]


def modules() -> list[tuple[Path, str]]:
    return [(p, ".".join(p.relative_to(REPO).with_suffix("").parts))
            for top in ("naived", "streamerd") for p in sorted((REPO / top).rglob("*.py"))]


def test_every_import_points_down() -> None:
    wrong = []
    for path, module in modules():
        mine = part_of(module)
        for line, name in imports(path, module):
            theirs = part_of(name)
            upward = theirs != mine and LAYER[theirs] >= LAYER[mine]
            if upward or (theirs == "streamerd" and mine != "streamerd"):
                wrong.append(f"{path.relative_to(REPO)}:{line}: {mine} (layer {LAYER[mine]}) imports {name} "
                             f"({theirs}, layer {LAYER[theirs]})")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path: Path) -> None:
    """The check itself: an upward import in a core module is caught."""
    bad = tmp_path / "strategy.py"
    bad.write_text("from naived.tree import trader\nfrom naived.core import symbols\n")
    found = imports(bad, "naived.core.strategy")
    assert [(line, part_of(name)) for line, name in found] == [(1, "naived.tree"), (2, "naived.core")]
    assert LAYER[part_of(found[0][1])] > LAYER["naived.core"]
