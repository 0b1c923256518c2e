"""The package's layers show in its imports: a module imports only from its own layer or a lower one,
and ``text/`` and ``core/`` never import Lightning (they are the plain code inference runs on)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "src" / "imdb_transformer"
# lowest first; errors, artifacts and hardware are shared by every layer
LAYERS = {
    "errors": 0, "artifacts": 0, "hardware": 0,
    "text": 1,
    "core": 2,
    "data": 3, "models": 3, "callbacks": 3,
    "embedder": 4, "ensemble": 4, "generation": 4, "predict": 4,
    "search": 5,
    "serve": 6,
    "verbs": 7, "cli": 7,
}  # fmt: skip
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def layer_of(module: str) -> int:
    """The layer of ``imdb_transformer.X...``, by its first part after the package."""
    parts = module.split(".")
    if parts[0] != "imdb_transformer" or len(parts) == 1:
        return -1  # the package's own __init__ (lazy names) and anything outside the package
    return LAYERS[parts[1]]


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def module_name(path: Path) -> str:
    parts = ["imdb_transformer", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_has_a_layer() -> None:
    tops = {module_name(p).split(".")[1] for p in MODULES if module_name(p) != "imdb_transformer"}
    assert tops <= LAYERS.keys(), f"modules without a layer: {tops - LAYERS.keys()}"


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_only_go_down(path: Path) -> None:
    name = module_name(path)
    if name == "imdb_transformer":
        return
    own = layer_of(name)
    upward = [m for m in imports_of(path) if m.startswith("imdb_transformer") and layer_of(m) > own]
    assert not upward, f"{name} (layer {own}) imports from higher layers: {upward}"
    if name.split(".")[1] in ("text", "core"):
        lightning = [m for m in imports_of(path) if m.split(".")[0] in ("lightning", "pytorch_lightning")]
        assert not lightning, f"{name} imports Lightning: {lightning}"


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from imdb_transformer.search import SemanticIndex\nimport lightning\n")
    assert layer_of(imports_of(bad)[0]) > LAYERS["core"] and "lightning" in imports_of(bad)
