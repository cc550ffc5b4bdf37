"""The library's layout (issue 24): the import graph of minivlm/ has no cycle, a model file imports
another model file only where its model is built from that one (the list in
minivlm/models/__init__.py's docstring), no private name is imported across files, and every
import of the library sits at the top of its file (except where named below, with the reason)."""
import ast
import re
import sys
from pathlib import Path

import minivlm
import minivlm.models

ROOT = Path(minivlm.__file__).resolve().parent
# Imports inside functions that stay, and why: the command line starts without loading torch
# models it does not need, and the grading sandbox imports the library fresh in each process.
LAZY = {"minivlm.cli", "minivlm.grading.sandbox"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]], list[tuple[str, str]]]:
    """(module -> the minivlm modules it imports, private names imported across files, imports of
    minivlm modules inside functions)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges, private, inner = {m: set() for m in modules}, [], []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("minivlm"):
                # `from minivlm.models import albef` imports the module minivlm.models.albef
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = submodules if len(submodules) == len(node.names) else [node.module, *submodules]
                private += [(mod, node.module, a.name) for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("minivlm")]
            else:
                continue
            for target in targets:
                if target in modules and target != mod:
                    edges[mod].add(target)
                    if id(node) not in top:
                        inner.append((mod, target))
    return edges, private, inner


def test_no_import_cycle():
    edges, _, _ = graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n] if n in path else [m, n]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_model_files_import_only_the_models_they_are_built_from():
    edges, _, _ = graph()
    listed = set(re.findall(r"^\s+(\w+) -> (\w+)\s", minivlm.models.__doc__, flags=re.M))
    assert listed, "minivlm/models/__init__.py's docstring lists no 'x -> y' edges"
    actual = {(m.split(".")[-1], n.split(".")[-1]) for m, targets in edges.items() for n in targets
              if m.startswith("minivlm.models.") and n.startswith("minivlm.models.")}
    assert actual - listed == set(), f"model files import other model files not listed as built-from: {actual - listed}"
    assert listed - actual == set(), f"listed built-from imports that the code no longer makes: {listed - actual}"


def test_no_private_name_is_imported_across_files():
    _, private, _ = graph()
    assert private == [], f"private names imported across files: {private}"


def test_library_imports_sit_at_the_top_of_their_files():
    _, _, inner = graph()
    bad = sorted({(m, n) for m, n in inner if m not in LAZY})
    assert bad == [], f"imports of the library inside functions: {bad}"


def test_the_layout_test_sees_a_cycle_and_a_hidden_edge(tmp_path, monkeypatch):
    """The checks above can fail: a fake package with a cycle and an inner import is caught."""
    pkg = tmp_path / "minivlm"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text('"""\n    a -> b   built from\n"""\n')
    (pkg / "models" / "a.py").write_text("from minivlm.models.b import B\n")
    (pkg / "models" / "b.py").write_text("def f():\n    from minivlm.models.a import A\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    edges, _, inner = graph()
    assert edges["minivlm.models.a"] == {"minivlm.models.b"} and edges["minivlm.models.b"] == {"minivlm.models.a"}
    assert inner == [("minivlm.models.b", "minivlm.models.a")]
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: (edges, [], inner))
    try:
        test_no_import_cycle()
    except AssertionError as e:
        assert "cycle" in str(e)
    else:
        raise AssertionError("the cycle a -> b -> a was not caught")


def test_the_readme_layout_names_every_part_of_the_library():
    readme = (ROOT.parent / "README.md").read_text()
    section = readme[readme.index("## Layout"):]
    section = section[:section.index("\n## ", 1)]
    block = section[section.index("minivlm/"):section.index("tests/")]
    named = set(re.findall(r"\b([a-z_]+)(?:/|\.py\b)", block)) - {"minivlm"}
    parts = {p.stem if p.suffix == ".py" else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert parts - named == set(), f"README's layout does not name {sorted(parts - named)}"
    nested = {n for n in named - parts if not list(ROOT.rglob(f"{n}.py")) and not list(ROOT.rglob(n))}
    assert nested == set(), f"README's layout names what the library does not have: {sorted(nested)}"
