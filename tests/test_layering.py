"""The house rules of the layout, read from the imports themselves (``ast``), so they stay true:

* a module under ``scratchvision/ops/`` imports only the standard library, numpy, numba,
  scipy, ``scratchvision._checks``, ``_dispatch``, ``_threads`` and other modules under
  ``ops/`` -- never anything above the ops (layers, verification material, the commands);
* no module under ``ops/`` imports a name starting with ``_`` from another op package: a tier
  uses another op's public names only;
* an op package holds ``__init__.py``, its tiers and their helpers, but no verification
  material (check or bench cases live in ``scratchvision/verify/``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "scratchvision"
OPS = PACKAGE / "ops"
ALLOWED_THIRD_PARTY = {"numpy", "numba", "scipy"}
ALLOWED_GROUND_FLOOR = {"scratchvision._checks", "scratchvision._dispatch",
                        "scratchvision._threads"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, source: str | None = None):
    """``(absolute module, imported names)`` for every import statement of ``path`` (or of
    ``source``, read as if it were the file ``path``)."""
    if source is None:
        source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield module, [alias.name for alias in node.names]


def _op_package(module: str) -> str | None:
    """``scratchvision.ops.<op>`` for a module inside an op package, else None."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["scratchvision", "ops"]:
        return ".".join(parts[:3])
    return None


OP_MODULES = sorted(OPS.rglob("*.py"))


def test_the_rule_reads_real_files():
    assert len(OP_MODULES) > 20
    names = {m for path in OP_MODULES for m, _ in _imports(path)}
    assert "scratchvision" in names and "numba" in names and "scratchvision.ops.bilinear" in names


def _allowed_in_ops(module: str) -> bool:
    top = module.split(".")[0]
    return (top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY
            or top == "__future__" or module in ALLOWED_GROUND_FLOOR
            or module == "scratchvision.ops" or module.startswith("scratchvision.ops."))


@pytest.mark.parametrize("path", OP_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_ops_import_only_downward(path):
    for module, names in _imports(path):
        # ``from scratchvision import _checks`` imports the module scratchvision._checks
        targets = [module] if _allowed_in_ops(module) or not names else [
            f"{module}.{name}" for name in names]
        for target in targets:
            assert _allowed_in_ops(target), (
                f"{path.relative_to(PACKAGE)} imports {target}: modules under ops/ import "
                f"only the standard library, numpy, numba, scipy, _checks, _dispatch, _threads "
                f"and "
                f"other ops")


@pytest.mark.parametrize("path", OP_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_names_from_another_op(path):
    own = _op_package(_module_name(path))
    for module, names in _imports(path):
        other = _op_package(module)
        if other is None or other == own:
            continue
        private = [name for name in names if name.startswith("_")]
        assert not private, (f"{path.relative_to(PACKAGE)} imports the private name(s) "
                             f"{private} from {module}")


def test_op_packages_hold_no_verification_material():
    for package in (p for p in OPS.iterdir() if (p / "__init__.py").exists()):
        stray = [p.name for p in package.glob("*.py") if "case" in p.stem]
        assert not stray, f"{package.name} holds {stray}: cases live in scratchvision/verify/"


def test_the_rule_resolves_relative_imports():
    """The checker can fail: an upward import and a private name, written as a tier of
    bilinear would write them, resolve to the modules the rules reject."""
    fake = OPS / "bilinear" / "some_tier.py"
    source = "from ...nn import Linear\nfrom ..conv2d.loop import _secret\nfrom . import cell\n"
    found = list(_imports(fake, source))
    assert ("scratchvision.nn", ["Linear"]) in found
    assert ("scratchvision.ops.conv2d.loop", ["_secret"]) in found
    assert ("scratchvision.ops.bilinear", ["cell"]) in found
    assert not _allowed_in_ops("scratchvision.nn") and _allowed_in_ops("scratchvision._checks")
    assert _op_package("scratchvision.ops.conv2d.loop") != _op_package(_module_name(fake))
