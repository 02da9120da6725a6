"""Layering: the pure parts import neither torch nor the layers above them.

Checked twice: what a fresh interpreter holds after importing the module,
and every import statement in its source, those inside functions included
(a lazy import is still a dependency).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import segbatch

PACKAGE = Path(segbatch.__file__).parent

LAYERS = [
    # a stitch task never loads the model
    ("segbatch.stitch", ("torch", "segbatch.engine", "segbatch.model", "segbatch.mc", "segbatch.train")),
    ("segbatch.tilestore", ("torch", "segbatch.engine", "segbatch.model", "segbatch.mc", "segbatch.train")),
    # audits read stores; IoU and confusion live in segbatch.audit.metrics, which `segbatch train` uses
    ("segbatch.audit", ("torch", "segbatch.train", "segbatch.engine", "segbatch.model", "segbatch.mc")),
]


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _imported(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing `module`."""
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def _sources(module: str) -> list[Path]:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def _import_statements(source: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]  # `from segbatch import train`
    return found


@pytest.mark.parametrize(("module", "forbidden"), LAYERS)
def test_importing_a_pure_module_loads_none_of_the_layers_above(module, forbidden):
    modules = _imported(module)
    assert module in modules
    assert not sorted(m for m in modules if _within(m, forbidden)), f"importing {module} loads a forbidden module"


@pytest.mark.parametrize(("module", "forbidden"), LAYERS)
def test_no_import_statement_in_a_pure_module_reaches_the_layers_above(module, forbidden):
    sources = _sources(module)
    assert sources and all(s.exists() for s in sources)
    bad = [f"{s.relative_to(PACKAGE.parent)}:{line}: {name}" for s in sources for line, name in _import_statements(s) if _within(name, forbidden)]
    assert not bad, "\n".join(bad)
