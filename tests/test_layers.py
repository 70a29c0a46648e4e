"""The folder tree is the architecture: a lower layer never imports a higher one.

Layers, lowest first: everything else (spec, catalog, data, models, results, statistics…), then
``worker`` and ``report`` (side by side, neither imports the other), then ``backends`` (they run
workers), then ``cli``. Checked on every ``viadk8s`` import in the package, also those inside
functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "viadk8s"
RANK = {"worker": 1, "report": 1, "backends": 2, "cli": 3}


def _layer(module: str) -> str:
    """``viadk8s.worker.execute`` -> ``worker``; a module outside the ranked packages -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else ""


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("viadk8s.")}


def test_no_module_imports_a_higher_layer_or_a_sibling_one() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        if module == "viadk8s.__main__":  # `python -m viadk8s`: the CLI's entry point
            continue
        source = _layer(module)
        for name in _imports(path):
            target = _layer(name)
            if target and target != source and RANK[target] >= RANK.get(source, 0):
                upward.append(f"{module} imports {name}")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from viadk8s.cli import app\n    import viadk8s.worker.execute\n")
    assert _imports(sample) == {"viadk8s.cli", "viadk8s.worker.execute"}
    assert (_layer("viadk8s.worker.execute"), _layer("viadk8s.stats"), _layer("viadk8s")) == ("worker", "", "")
