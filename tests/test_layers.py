"""Dependency direction (design.md §4): lower layers never import higher ones; the file formats know no torch."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "openic"

# module (relative dotted name, prefix match) → imports it must never make (prefix match)
FORBIDDEN = {
    "recordio": ("torch", "numpy", "openic.images", "openic.data", "openic.train", "openic.cli"),
    "errors": ("torch", "numpy", "openic."),
    "fileio": ("torch", "numpy", "openic."),
    "hyperparams": ("torch", "numpy", "openic.data", "openic.train", "openic.models", "openic.cli"),
    "images": ("torch", "openic.data", "openic.train", "openic.cli"),
    "lst": ("torch", "openic.train", "openic.cli"),
    "manifest": ("torch", "openic.train", "openic.cli"),
    "inspect": ("torch", "openic.train", "openic.cli"),
    "im2rec": ("torch", "openic.train", "openic.data", "openic.cli"),
    "datasets": ("torch", "openic.train", "openic.data", "openic.cli"),
    "download": ("torch", "openic.train", "openic.cli"),
    "models": ("openic.data", "openic.train", "openic.artifacts", "openic.tracking", "openic.cli"),
    "checkpoint": ("openic.data", "openic.train", "openic.models", "openic.cli"),
    "tracking": ("torch", "openic.data", "openic.train", "openic.models", "openic.cli"),
    "artifacts": ("openic.train", "openic.data", "openic.tracking", "openic.cli"),
    "data": ("openic.train", "openic.artifacts", "openic.tracking", "openic.cli"),
    "serving": ("openic.train", "openic.cli"),
    "train": ("openic.cli", "openic.serving"),
}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("").as_posix().replace("/", ".")
        yield rel, path


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


@pytest.mark.parametrize("rel,path", list(_modules()), ids=lambda v: str(v))
def test_module_respects_layers(rel, path):
    rules = [bad for layer, bad in FORBIDDEN.items() if rel == layer or rel.startswith(layer + ".")]
    imported = _imports(path)
    offending = sorted({name for bad in rules for prefix in bad for name in imported if _matches(name, prefix)})
    assert not offending, f"openic.{rel} imports {offending}"


def test_nothing_outside_cli_imports_cli():
    for rel, path in _modules():
        if rel.startswith("cli") or rel == "__main__":
            continue
        assert not any(_matches(n, "openic.cli") for n in _imports(path)), rel


def test_every_module_is_known_to_the_layer_table():
    for rel, _ in _modules():
        top = rel.split(".")[0]
        assert top in FORBIDDEN or top in ("__init__", "__main__", "cli", "logs"), f"add openic.{rel} to FORBIDDEN"
