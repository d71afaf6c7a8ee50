"""Dependency direction (design.md §4): every module has a layer number and imports only its layer or lower ones.

The table is the layout: a new package needs a row, and an upward import fails with the module and the name.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "openic"

# package or module (dotted, relative to openic; the longest matching prefix wins) → layer
LAYERS = {
    "": 0,  # openic/__init__.py: __version__ and lazy re-exports by name only
    "errors": 0, "fileio": 0, "logs": 0, "settings": 0,
    "hyperparams": 1, "models.depths": 1, "formats": 1, "storage": 1,
    "prep": 2, "models": 2, "tracking": 2,
    "artifacts": 3, "data": 3,
    "train": 4, "serving": 4,
    "sdk": 5, "sagemaker": 5,
    "cli": 6, "__main__": 6,
}
# third-party imports a layer must not make (the file formats and the schema stay light and torch-free)
NO_TORCH = ("errors", "fileio", "logs", "settings", "hyperparams", "models.depths", "formats", "prep", "storage")
FORBIDDEN_THIRD_PARTY = {**{m: ("torch",) for m in NO_TORCH}, "formats.recordio": ("torch", "numpy")}
# same-layer imports that are still wrong: serving never imports training or tracking
FORBIDDEN_SIDEWAYS = {"serving": ("train", "tracking")}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("").as_posix().replace("/", ".")
        rel = rel.removesuffix("__init__").rstrip(".")
        yield rel, path


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use absolute openic.… imports)"
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _matches(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _lookup(table: dict, rel: str):
    best = max((p for p in table if _matches(rel, p)), key=len, default=None)
    return None if best is None else table[best]


def _internal(name: str) -> str | None:
    if name == "openic":
        return ""
    return name[len("openic."):] if name.startswith("openic.") else None


@pytest.mark.parametrize("rel,path", list(_modules()), ids=lambda v: str(v))
def test_module_imports_only_its_layer_or_lower(rel, path):
    layer = _lookup(LAYERS, rel)
    assert layer is not None, f"openic.{rel} has no row in LAYERS"
    upward, banned = [], []
    for name in sorted(_imports(path)):
        target = _internal(name)
        if target is None:
            if any(_matches(name, bad) for bad in _lookup(FORBIDDEN_THIRD_PARTY, rel) or ()):
                banned.append(name)
            continue
        target_layer = _lookup(LAYERS, target)
        if target_layer > layer or any(_matches(target, bad) for bad in _lookup(FORBIDDEN_SIDEWAYS, rel) or ()):
            upward.append(f"{name} (layer {target_layer})")
    assert not upward, f"openic.{rel} (layer {layer}) imports {upward}"
    assert not banned, f"openic.{rel} must not import {banned}"


def test_the_rules_catch_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from openic.train.loop import fit\nimport torch\n")
    names = _imports(bad)
    assert _lookup(LAYERS, _internal("openic.train.loop.fit")) == 4 > _lookup(LAYERS, "formats.recordio")
    assert "torch" in names and _lookup(FORBIDDEN_THIRD_PARTY, "formats.lst") == ("torch",)
    assert _lookup(LAYERS, "models.depths") == 1 and _lookup(LAYERS, "models.resnet") == 2
