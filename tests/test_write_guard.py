"""Every write a run makes opens its store through one guard (segbatch.owner): the package is searched for any other way.

A function that opens a store or a group for writing (a write mode, or one of
the store's creating/emptying/reopening functions) anywhere but in the guard
and the few store functions it calls is a write that holds no lease: this
test names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import segbatch

PACKAGE = Path(segbatch.__file__).parent
# store functions that write: called only by the guard (and by each other, inside the module that defines them)
WRITERS = {"create_store", "clear_store", "create_job_root", "reopen_for_resume", "build_aside"}
OPENERS = {"open_store", "open_group", "open", "open_array", "open_consolidated"}  # zarr's and ours: a write `mode` is a write
# (module, function) where a write-mode open or a writer call is the guard's own implementation
ALLOWED = {
    ("owner.py", "*"),  # the guard: Owner (driver) and Fence (workers, stitch tasks)
    ("store.py", "create_store"),
    ("store.py", "build_aside"),
    ("store.py", "reopen_for_resume"),
    ("store.py", "open_store"),  # forwards the mode it is given (the guard's)
    ("jobstore.py", "create_job_root"),
}


def write_opens(source: str, module: str) -> list[str]:
    """`module:line function(call)` for every write-mode open and writer call in `source` outside ALLOWED."""
    found: list[str] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and function == "<module>":
                name = child.name  # a function or a method; a function nested in it counts as its own
            if isinstance(child, ast.Call):
                called = child.func.attr if isinstance(child.func, ast.Attribute) else getattr(child.func, "id", "")
                mode = next((k.value for k in child.keywords if k.arg == "mode"), None)
                writes = called in WRITERS or (called in OPENERS and mode is not None and not (isinstance(mode, ast.Constant) and mode.value == "r"))
                if writes and (module, "*") not in ALLOWED and (module, function) not in ALLOWED:
                    found.append(f"{module}:{child.lineno} {function}() calls {called}")
            visit(child, name)

    visit(ast.parse(source), "<module>")
    return found


def test_every_write_open_in_the_package_goes_through_the_guard():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in write_opens(path.read_text(), str(path.relative_to(PACKAGE)))]
    assert found == [], "writes that bypass segbatch.owner (open stores for writing through Owner or Fence):\n" + "\n".join(found)


def test_the_search_finds_a_bypass():
    bypass = """
def repair(path):
    root = open_store(path, mode="r+")
    zarr.open_group(str(path), mode=how)
    clear_store(path)
    open_store(path)  # reading is fine
    zarr.open_group(str(path), mode="r")
"""
    assert write_opens(bypass, "verify.py") == [
        "verify.py:3 repair() calls open_store",
        "verify.py:4 repair() calls open_group",
        "verify.py:5 repair() calls clear_store",
    ]
    assert write_opens(bypass, "owner.py") == []
    assert write_opens(bypass.replace("def repair", "def create_store"), "store.py") == []  # the guard's own implementation
    assert len(write_opens(bypass.replace("def repair", "def describe_store"), "store.py")) == 3  # but nothing else in store.py
