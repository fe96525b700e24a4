"""The package's layers import only downward: theory < engine (``growth`` itself) < models <
recipes | formats | tasks < apps. Sibling packages of one layer do not import each other, and
``growth/__init__.py`` (the public face) is the only module allowed to reach every layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package prefix -> layer; the longest matching prefix wins
LAYERS = {
    "theory": 0,
    "growth": 1,  # the engine: spec, width, depth, methods, engine, errors
    "growth.models": 2,
    "growth.recipes": 3,
    "growth.formats": 3,
    "growth.tasks": 3,
    "growth.apps": 4,
}
FACE = {"growth", "growth.__main__"}


def layer_of(module: str) -> tuple[int, str]:
    """``(layer, package prefix)`` of a dotted module name."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best], best


def imported_modules(source: str, module: str) -> list[str]:
    """Every ``growth``/``theory`` module that ``source`` (the text of ``module``) imports,
    including imports inside functions (lazy imports count too)."""
    out = []
    package = module if module.endswith("__init__") else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            out += [base] + [f"{base}.{a.name}" for a in node.names]
    return [m for m in out if m.split(".")[0] in ("growth", "theory")]


def violations(module: str, source: str) -> list[str]:
    """Imports of ``module`` that point upward, or sideways into a sibling package."""
    if module in FACE:
        return []
    own, own_pkg = layer_of(module)
    bad = []
    for target in imported_modules(source, module):
        if target in FACE and target != "growth":
            continue
        layer, pkg = layer_of(target)
        if target == "growth" and module != "growth":
            bad.append(f"{module} imports the package face 'growth' (import the module itself)")
        elif layer > own or (layer == own and pkg != own_pkg):
            bad.append(f"{module} (layer {own}, {own_pkg}) imports {target} (layer {layer}, {pkg})")
    return sorted(set(bad))


def package_modules() -> dict[str, str]:
    mods = {}
    for top in ("growth", "theory"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts)
            mods[name.removesuffix(".__init__")] = path.read_text()
    return mods


def test_every_import_points_downward():
    bad = [v for m, src in package_modules().items() for v in violations(m, src)]
    assert not bad, "\n".join(bad)


def test_every_layer_is_populated():
    layers = {layer_of(m)[1] for m in package_modules()}
    assert layers == set(LAYERS)


@pytest.mark.parametrize(
    "module, source",
    [
        ("growth.engine", "from growth.formats.checkpoint import save_checkpoint"),
        ("growth.models.mlp", "import growth.tasks.train"),
        ("growth.recipes.msg", "def f():\n    from growth.apps.commands import load_model"),
        ("growth.formats.stream", "from growth.tasks import data"),
        ("theory.measure", "from growth.spec import NeuronSpec"),
        ("growth.width", "from growth import grow"),
    ],
)
def test_upward_or_sideways_imports_are_caught(module, source):
    assert violations(module, source)


@pytest.mark.parametrize(
    "module, source",
    [
        ("growth.apps.cli", "from growth.formats.hf import grow_hf"),
        ("growth.recipes.ligo", "from growth.models import get_family"),
        ("growth.formats.hf.bert", "from growth.formats.hf.io import CONFIG"),
        ("growth.formats.hf.decoder", "from .layout import LAYOUT"),
        ("growth.engine", "from theory.measure import SpaceMap"),
    ],
)
def test_downward_imports_are_allowed(module, source):
    assert violations(module, source) == []


def test_oracles_live_in_tests_not_in_the_package():
    assert not list((ROOT / "growth").rglob("*reference*.py"))
    assert (ROOT / "tests" / "oracles" / "hf_reference.py").is_file()
