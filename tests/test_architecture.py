"""The layout's rules, read from the code's own imports (every `import` / `from ... import` in src/,
also those inside functions): packages import only layers below their own, no import cycles between
files, data imports no model, and inference imports no Lightning. Also the size rule: no source file
under src/ (Python, and the CUDA extension's .cu / .cuh / .cpp) is over 360 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

SRC = ROOT / "src"
# a package may import its own files and packages of a LOWER rank only (docs/architecture.md)
RANK = {"utils": 0, "config": 1, "ops": 2, "data": 3, "stylegan": 3, "networks": 4, "losses": 4, "inversion": 5,
        "embedded": 5, "identity": 6, "pipeline": 7, "eval": 8, "systems": 9, "demo": 9}
NO_LIGHTNING = ("utils", "config", "ops", "stylegan", "networks", "losses", "inversion", "identity", "pipeline",
                "demo")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return out


FILES = sorted(SRC.rglob("*.py"))
MODULES = {module_name(f): f for f in FILES}


def project_imports(path: Path) -> set[str]:
    return {m for m in imports(path) if m in MODULES and m != module_name(path)}


def package_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_every_package_has_a_layer():
    assert {package_of(m) for m in MODULES if m != "src"} <= set(RANK)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path):
    own = package_of(module_name(path))
    if own not in RANK:
        return
    upward = sorted(m for m in project_imports(path)
                    if package_of(m) != own and RANK.get(package_of(m), -1) >= RANK[own])
    assert not upward, f"{path.relative_to(ROOT)} ({own}, layer {RANK[own]}) imports {upward}"


def test_no_import_cycles_between_files():
    # package __init__ files that only re-export are edges to their modules; a cycle through one is real
    graph = {m: project_imports(f) for m, f in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if n.startswith(m + "."):  # a package importing its own modules is no cycle
                continue
            if state.get(n) == 1 and not m.startswith(n + "."):
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("package", NO_LIGHTNING)
def test_inference_layers_import_no_lightning(package):
    found = {str(f.relative_to(ROOT)): sorted(m for m in imports(f) if m.split(".")[0] in ("lightning", "pytorch_lightning"))
             for f in (SRC / package).rglob("*.py")}
    assert not {f: m for f, m in found.items() if m}


def test_data_imports_no_model():
    models = ("stylegan", "networks", "losses", "inversion", "embedded", "identity", "pipeline", "eval", "systems")
    bad = {str(f.relative_to(ROOT)): sorted(m for m in project_imports(f) if package_of(m) in models)
           for f in (SRC / "data").rglob("*.py")}
    assert not {f: m for f, m in bad.items() if m}


def test_files_stay_small():
    sources = FILES + sorted(f for pattern in ("*.cu", "*.cuh", "*.cpp") for f in SRC.rglob(pattern))
    long = {str(f.relative_to(ROOT)): n for f in sources if (n := len(f.read_text().splitlines())) > 360}
    assert not long, f"split these files by purpose: {long}"
