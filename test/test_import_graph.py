"""Layering of the package: no import cycle at module level, and the evaluation harness (eval/)
sits above what it evaluates (tracking/, the core) with no import going back up."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ssm_perception"


def _imports(lazy: bool) -> dict[str, set[str]]:
    mods: dict[str, set[str]] = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(p.read_text())
        nodes = ast.walk(tree) if lazy else tree.body
        deps = set()
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ssm_perception"):
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("ssm_perception")}
        mods[name] = deps
    return {m: {d for d in ds if d in mods and d != m} for m, ds in mods.items()}


def test_no_module_level_import_cycle():
    mods = _imports(lazy=False)
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(mods[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join(path[path.index(d):] + [d]) if d in path \
                else f"import cycle through {d}"
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m, [m])


def test_core_and_tracking_do_not_import_the_evaluation_harness():
    mods = _imports(lazy=True)
    core = [m for m in mods if not m.startswith(("ssm_perception.eval", "ssm_perception.nodes", "ssm_perception.cli",
                                                 "ssm_perception.bench", "ssm_perception.demo",
                                                 "ssm_perception.__main__", "ssm_perception.train"))]
    bad = sorted((m, d) for m in core for d in mods[m] if d.startswith("ssm_perception.eval"))
    assert not bad, bad
    assert "ssm_perception.eval.tracking" in mods and "ssm_perception.tracking.evaluation" not in mods
