"""No import circle anywhere in core/, trainer/ or desktop/, counting imports inside functions
(grimp reads every import statement of a module, at any depth). An import inside a function
is kept only for a heavy optional dependency (torch, openvino) and says so."""
from __future__ import annotations

import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "trainer", "desktop")


def import_circles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    circles: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in edges:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        circles.append(sorted(component))
    return circles


def _build(root: Path, packages=PACKAGES):
    sys.path.insert(0, str(root))
    try:
        return grimp.build_graph(*packages, include_external_packages=False, cache_dir=None)
    finally:
        sys.path.remove(str(root))


def test_no_import_circle():
    circles = import_circles(_build(ROOT))
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_finds_a_circle(tmp_path, monkeypatch):
    """The check itself: a package whose modules import each other only inside functions is
    a circle."""
    pkg = tmp_path / "circlepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from circlepkg import b\n    return b\n")
    (pkg / "b.py").write_text("def g():\n    from circlepkg.a import f\n    return f\n")
    (pkg / "c.py").write_text("from circlepkg import a\n")
    for name in [m for m in sys.modules if m.startswith("circlepkg")]:
        monkeypatch.delitem(sys.modules, name)
    circles = import_circles(_build(tmp_path, ("circlepkg",)))
    assert circles == [["circlepkg.a", "circlepkg.b"]]


def test_at_most_six_modules_directly_in_core():
    direct = sorted(p.name for p in (ROOT / "core").glob("*.py"))
    assert len(direct) <= 6, direct


def light_imports_in_functions(root: Path, packages=PACKAGES) -> list[str]:
    """Imports of a project module inside a function that bring in no heavy dependency the
    importing module does not already have, or that do not say why on their line."""
    from tests.importrules import PROJECT, heavy_pulled, imports

    pulled = heavy_pulled(root, packages)
    found = []
    for s in imports(root, packages):
        if not s.in_function or s.target.split(".")[0] not in (*PROJECT, *packages):
            continue
        targets = [s.target, *(f"{s.target}.{n}" for n in s.names)]
        heavy = set().union(*(pulled.get(t, frozenset()) for t in targets)) - pulled.get(s.module, frozenset())
        if not heavy:
            found.append(f"{s.module}:{s.line} imports {s.target} inside a function (nothing heavy: move it up)")
        elif not s.comment:
            found.append(f"{s.module}:{s.line} imports {s.target} inside a function without saying why")
    return found


def test_imports_inside_functions_are_only_for_heavy_dependencies():
    found = light_imports_in_functions(ROOT)
    assert not found, "\n".join(found)


def test_the_rule_finds_a_light_import_inside_a_function(tmp_path, monkeypatch):
    pkg = tmp_path / "lazypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "light.py").write_text("X = 1\n")
    (pkg / "heavy.py").write_text("import torch\n")
    (pkg / "user.py").write_text("def f():\n    from lazypkg import light\n    from lazypkg import heavy  # heavy: torch\n"
                                 "    from lazypkg.heavy import torch\n    return light, heavy, torch\n")
    found = light_imports_in_functions(tmp_path, ("lazypkg",))
    assert found == ["lazypkg.user:2 imports lazypkg inside a function (nothing heavy: move it up)",
                     "lazypkg.user:4 imports lazypkg.heavy inside a function without saying why"]
