"""Imports flow one way: no module imports from a layer above its own (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import detector

ROOT = Path(detector.__file__).parent

#: Lowest first. A module may import from its own layer and any layer before it.
LAYERS: list[tuple[str, ...]] = [
    (
        "__init__",
        "errors",
        "controls",
        "timeparse",
        "logging_setup",
        "ratelimit",
        "storage",
        "userfiles",
        "config",
        "warmup",
    ),
    ("events",),
    ("sources",),
    ("lake",),
    ("pipeline",),
    ("features",),
    ("model",),
    ("rules",),
    ("detect",),
    ("incidents",),
    ("delivery",),
    ("report",),
    ("simulate",),
    ("cli", "__main__"),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str:
    """``detector.lake.events`` -> ``lake``; the first component under ``detector``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "detector":
                found.update(
                    f"detector.{a.name}" for a in node.names if not a.name.startswith("__")
                )
            elif node.module.startswith("detector."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("detector."))
    return found


def test_every_module_belongs_to_a_layer():
    tops = {
        _top("detector." + ".".join(p.relative_to(ROOT).with_suffix("").parts))
        for p in ROOT.rglob("*.py")
    }
    assert tops <= set(LAYER_OF), f"add to LAYERS and docs/architecture.md: {tops - set(LAYER_OF)}"


def test_no_module_imports_from_a_layer_above_its_own():
    wrong = []
    for path in ROOT.rglob("*.py"):
        own = _top("detector." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
        for target in _imports(path):
            if LAYER_OF[_top(target)] > LAYER_OF[own]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_docs_architecture_names_every_module():
    """docs/architecture.md has a line for each module (or for its whole folder, `simulate/`)."""
    text = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.name == "__init__.py" or rel.parts[0] == "__main__.py":
            continue
        named = f"`{rel.as_posix()}`" in text or any(
            f"`{'/'.join(rel.parts[:i])}/`" in text for i in range(1, len(rel.parts))
        )
        if not named and not (len(rel.parts) == 3 and rel.parts[:2] == ("cli", "commands")):
            missing.append(rel.as_posix())
    assert not missing, f"add to docs/architecture.md: {sorted(missing)}"


def test_commands_never_import_each_other():
    """Shared CLI code lives in cli/options.py and cli/render.py, not in another command."""
    wrong = [
        f"{path.name} imports {target}"
        for path in (ROOT / "cli" / "commands").glob("*.py")
        for target in _imports(path)
        if target.startswith("detector.cli.commands")
    ]
    assert not wrong, wrong
