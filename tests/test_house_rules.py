"""Rules about the tests themselves: no test asserts a wall-clock figure (a loaded CI machine
fails it; speed is shown by benchmarks in bench/, and a hang by the per-test timeout in
pyproject.toml)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCKS = {"perf_counter", "monotonic", "time", "perf_counter_ns", "monotonic_ns", "time_ns"}


def _reads_clock(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in CLOCKS
               and isinstance(n.func.value, ast.Name) and n.func.value.id == "time" for n in ast.walk(node))


def _elapsed(node: ast.AST) -> bool:
    """A clock reading minus something: an elapsed time (``deadline = now + 10`` is not one)."""
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and _reads_clock(n) for n in ast.walk(node))


def wall_clock_asserts(source: str, filename: str = "<test>") -> list[str]:
    """``assert``s comparing an elapsed time, or a name assigned from one. Waiting for a
    condition until a deadline (``assert time.monotonic() < deadline`` in a polling loop) is
    not a figure and is allowed."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        timed = {t.id for n in ast.walk(fn) if isinstance(n, ast.Assign) and _elapsed(n.value)
                 for t in n.targets if isinstance(t, ast.Name)}
        for n in ast.walk(fn):
            if not isinstance(n, ast.Assert):
                continue
            for cmp in (c for c in ast.walk(n.test) if isinstance(c, ast.Compare)):
                if _elapsed(cmp) or any(isinstance(x, ast.Name) and x.id in timed for x in ast.walk(cmp)):
                    found.append(f"{filename}:{n.lineno}")
                    break
    return found


def test_no_test_asserts_a_wall_clock_figure():
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        found += wall_clock_asserts(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "wall-clock asserts (make them benchmarks): " + ", ".join(found)


def test_the_rule_finds_elapsed_time_asserts():
    src = ("import time\n"
           "def test_a():\n    t0 = time.perf_counter()\n    f()\n    assert time.perf_counter() - t0 < 0.2\n"
           "def test_b():\n    t0 = time.monotonic()\n    f()\n    took = time.monotonic() - t0\n    assert took < 5\n"
           "def test_c():\n    deadline = time.monotonic() + 10\n    while f():\n        assert time.monotonic() < deadline\n")
    assert wall_clock_asserts(src) == ["<test>:5", "<test>:10"]
