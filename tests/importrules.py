"""What the import rules of tests/test_import_graph.py read from the source: every import
statement with where it stands (module level or inside a function), and which heavy
third-party packages a module pulls in when it is imported (its module-level imports,
followed through the project's own modules)."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROJECT = ("core", "trainer", "desktop")
# Heavy optional dependencies: slow to import (seconds) or absent from some installations
# (the CPU installer has no CUDA torch; a headless worker needs no Qt). Only for one of these
# may a project module be imported inside a function.
HEAVY = frozenset({"torch", "openvino", "nncf", "sklearn", "scipy", "imblearn", "matplotlib", "PySide6",
                   "shiboken6", "pyqtgraph", "torchvision"})


@dataclass(frozen=True)
class ImportStmt:
    module: str  # the importing module
    target: str  # the module imported (absolute)
    names: tuple[str, ...]  # for "from X import a, b": a, b (a may be a submodule)
    line: int
    in_function: bool
    comment: str  # the comment on the statement's last line, "" if none


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, lines: list[str]):
        self.module, self.is_package, self.lines = module, is_package, lines
        self.depth = 0
        self.found: list[ImportStmt] = []

    def _comment(self, node) -> str:
        line = self.lines[(node.end_lineno or node.lineno) - 1]
        return line.split("#", 1)[1].strip() if "#" in line else ""

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node):
        for a in node.names:
            self.found.append(ImportStmt(self.module, a.name, (), node.lineno, self.depth > 0, self._comment(node)))

    def visit_ImportFrom(self, node):
        if node.level:
            base = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        self.found.append(ImportStmt(self.module, target, tuple(a.name for a in node.names), node.lineno,
                                     self.depth > 0, self._comment(node)))


def module_files(root: Path, packages=PROJECT) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for p in (root / pkg).rglob("*.py"):
            parts = list(p.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def imports(root: Path, packages=PROJECT) -> list[ImportStmt]:
    found = []
    for module, path in module_files(root, packages).items():
        text = path.read_text()
        c = _Collector(module, path.name == "__init__.py", text.splitlines())
        c.visit(ast.parse(text))
        found += c.found
    return found


def heavy_pulled(root: Path, packages=PROJECT) -> dict[str, frozenset[str]]:
    """module -> the HEAVY packages importing it brings in (module-level imports only,
    followed through project modules and their parent packages)."""
    stmts = imports(root, packages)
    modules = set(module_files(root, packages))
    top: dict[str, set[str]] = {m: set() for m in modules}
    for s in stmts:
        if s.in_function:
            continue
        for t in [s.target, *(f"{s.target}.{n}" for n in s.names)]:
            top[s.module].add(t)

    def project_targets(t: str) -> list[str]:
        parts = t.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules]

    @lru_cache(maxsize=None)
    def pulled(m: str, seen: frozenset = frozenset()) -> frozenset[str]:
        out = set()
        for t in top.get(m, ()):
            if t.split(".")[0] in HEAVY:
                out.add(t.split(".")[0])
            for p in project_targets(t):
                if p != m and p not in seen:
                    out |= pulled(p, seen | {m})
        return frozenset(out)

    return {m: pulled(m) for m in modules}
