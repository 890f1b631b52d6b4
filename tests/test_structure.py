"""The package's shape, checked: no import cycle, no module over 400 lines."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diffmm"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """diffmm modules imported anywhere in the file (functions too), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("diffmm"):
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in modules}


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [module, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if not state.get(target):
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [module])


def test_a_planted_cycle_is_found(tmp_path, monkeypatch):
    """The check above can fail: two modules importing each other are reported."""
    (tmp_path / "diffmm").mkdir()
    (tmp_path / "diffmm" / "a.py").write_text("from diffmm.b import x\n")
    (tmp_path / "diffmm" / "b.py").write_text("def f():\n    from diffmm import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "diffmm")
    try:
        test_the_import_graph_has_no_cycle()
    except AssertionError as error:
        assert "diffmm.a -> diffmm.b -> diffmm.a" in str(error) or "diffmm.b -> diffmm.a -> diffmm.b" in str(error)
    else:
        raise AssertionError("the planted cycle was not found")


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines (split them by concern): {long}"


def _repeated_blocks(package: Path, size: int = 6) -> list[str]:
    """Runs of ``size`` non-blank lines (compared with indentation stripped) that occur twice in ``package``;
    a run of import lines only is not counted (modules importing the same names is no repetition)."""
    seen: dict[tuple[str, ...], str] = {}
    found = []
    for path in sorted(package.rglob("*.py")):
        numbered = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
        for start in range(len(numbered) - size + 1):
            window = tuple(text for _, text in numbered[start:start + size])
            if all(text.startswith(("import ", "from ")) for text in window):
                continue
            where = f"{path.relative_to(package.parent)}:{numbered[start][0]}"
            if window in seen:
                found.append(f"{where} repeats {seen[window]}")
            seen.setdefault(window, where)
    return found


def test_no_block_of_six_lines_is_repeated():
    assert _repeated_blocks(PACKAGE) == []


def test_a_planted_repeat_is_found(tmp_path):
    block = "".join(f"x{i} = {i}\n" for i in range(6))
    (tmp_path / "diffmm").mkdir()
    (tmp_path / "diffmm" / "a.py").write_text(block)
    (tmp_path / "diffmm" / "b.py").write_text("y = 1\n" + block)
    assert _repeated_blocks(tmp_path / "diffmm") == ["diffmm/b.py:2 repeats diffmm/a.py:1"]
