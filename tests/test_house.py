"""The house's rules: no module of trajgen or invwnn imports one that imports it back (late imports
inside functions included); trajgen never imports invwnn; importing invwnn.unlearn's guard and
methods does not import invwnn.train; no module over 400 lines; scripts and tests stay apart (no
script imports tests/, no test loads a script by path); every script names the doc or make target it
serves; no shipped file records a machine's paths."""
from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trajgen", "invwnn")
MAX_LINES = 400
LOADERS = re.compile(r"\b(spec_from_file_location|run_path|SourceFileLoader)\b")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def import_nodes(tree: ast.AST, late: bool) -> list[ast.AST]:
    """Import statements of a module; with ``late=False`` only those run at import time (not inside
    a function's body)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif late or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return out


def imports_of(name: str, source: str, known: set[str], late: bool = True) -> set[str]:
    """The project modules ``name`` (whose text is ``source``) imports: ``from a import b`` counts as
    ``a.b`` when that is a module, else ``a``; relative imports resolved."""
    package = name if name in {m.rpartition(".")[0] for m in known} else name.rpartition(".")[0]
    found = set()
    for node in import_nodes(ast.parse(source), late):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
            continue
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        for alias in node.names:
            found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph(late: bool = True) -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path.read_text(), set(modules), late) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def reached(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module importing ``start`` runs, its packages' ``__init__`` included."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m in seen or m not in edges:
            continue
        seen.add(m)
        parts = m.split(".")
        todo.extend(edges[m] | {".".join(parts[:i]) for i in range(1, len(parts))})
    return seen


def test_the_import_readers_on_planted_modules():
    known = {"p", "p.a", "p.b", "p.c"}
    source = "from . import a\nfrom .b import thing\nimport p.c as c\ndef f():\n    from p import c\n"
    assert imports_of("p.x", source, known) == {"p.a", "p.b", "p.c"}
    assert imports_of("p.x", "def f():\n    import p.c\n", known, late=False) == set()
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert reached({"p.a": {"q"}, "q": set(), "p": set(), "r": set()}, "p.a") == {"p.a", "q", "p"}


def test_no_import_circles():
    assert cycles(graph()) == []


def test_trajgen_never_imports_invwnn():
    offenders = {m: sorted(d for d in deps if d.startswith("invwnn"))
                 for m, deps in graph().items() if m.startswith("trajgen")}
    assert not any(offenders.values()), offenders


def test_unlearning_methods_and_the_guard_do_not_import_training_at_import_time():
    """A user who unlearns should not load the predictor's training code (the apply command's own
    import is the rewinders' test)."""
    edges = graph(late=False)
    starts = [m for m in edges if m == "invwnn.unlearn.guard" or m.startswith("invwnn.unlearn.methods")]
    offenders = {m: sorted(d for d in reached(edges, m) if d.startswith("invwnn.train")) for m in starts}
    assert starts and not any(offenders.values()), offenders


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in project_modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_scripts_and_tests_stay_apart():
    """Scripts share code through the packages, not through tests/; tests reach scripts' logic
    through the packages too, never by loading a script file."""
    test_modules = {p.stem for p in (ROOT / "tests").glob("*.py")}
    offenders = []
    for script in sorted((ROOT / "scripts").glob("*.py")):
        text = script.read_text()
        names = {a.name.split(".")[0] for n in import_nodes(ast.parse(text), True) if isinstance(n, ast.Import)
                 for a in n.names}
        names |= {n.module.split(".")[0] for n in import_nodes(ast.parse(text), True)
                  if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        if names & test_modules or re.search(r"""ROOT\s*/\s*["']tests["']""", text):
            offenders.append(f"{script.name} imports tests/")
    for test in sorted((ROOT / "tests").glob("*.py")):
        text = test.read_text()
        if test.name != "test_house.py" and LOADERS.search(text) and re.search(r"""["']scripts["']""", text):
            offenders.append(f"{test.name} loads a script by path")
    assert not offenders, offenders


SERVES = re.compile(r"docs/[\w/.-]+\.md|\bmake [a-z][\w-]*|README\.md")


def opening(text: str) -> str:
    """The first paragraph of a script's docstring, or of its first comments (after a shebang)."""
    try:
        doc = ast.get_docstring(ast.parse(text))
    except SyntaxError:  # a shell script
        doc = None
    if doc is None:
        lines = [ln for ln in text.splitlines() if not ln.startswith("#!")]
        doc = "\n".join(ln.lstrip("#").strip() for ln in lines[:next(
            (i for i, ln in enumerate(lines) if not ln.startswith("#")), len(lines))])
    return doc.strip().split("\n\n")[0]


def test_every_script_names_the_doc_or_make_target_it_serves():
    assert SERVES.search(opening('"""The table of docs/results.md, section Panel."""\nx = 1\n'))
    assert SERVES.search(opening("#!/usr/bin/env bash\n# Behind `make yardstick`.\nset -e\n"))
    assert not SERVES.search(opening('"""A probe."""\nprint("docs/results.md")\n'))
    assert not SERVES.search(opening('"""A probe.\n\nIts figure went to docs/results.md once."""\n'))
    silent = sorted(p.name for p in (ROOT / "scripts").iterdir()
                    if p.suffix in {".py", ".sh"} and not SERVES.search(opening(p.read_text())))
    assert not silent, f"scripts whose opening names no docs/*.md or make target: {silent}"


MACHINE_PATH = re.compile(r"(?<![\w.~])/(work|root|home|Users|tmp)/")


def shipped_texts() -> dict[str, str]:
    """Every tracked text file, and the JSON records inside every shipped predictor checkpoint."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    texts = {}
    for name in tracked:
        path = ROOT / name
        if not path.is_file():  # moved or deleted in the working tree, not yet committed
            continue
        if path.suffix == ".pt":
            payload = torch.load(path, map_location="cpu", weights_only=True)
            texts[name] = json.dumps({k: v for k, v in payload.items() if k != "state_dict"})
        elif path.suffix in {".py", ".md", ".json", ".sh", ".toml", ".txt", ".cfg"} or path.name in {"Makefile", "run"}:
            texts[name] = path.read_text()
    return texts


def test_the_machine_path_pattern():
    assert MACHINE_PATH.search('"store": "/work/main/data/traj.zarr"')
    assert MACHINE_PATH.search("--state /root/x") and not MACHINE_PATH.search("OUT/work/out")
    assert not MACHINE_PATH.search("/usr/share/datasets/fashion-mnist")


def test_no_machine_paths_in_shipped_files():
    texts = shipped_texts()
    assert any(name.endswith(".pt") for name in texts) and "README.md" in texts
    offenders = {name: MACHINE_PATH.search(text).group(0) for name, text in texts.items()
                 if name != "tests/test_house.py" and MACHINE_PATH.search(text)}
    assert not offenders, offenders
