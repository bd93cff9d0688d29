"""The house: no module of trajgen or invwnn imports one that imports it back (directly or through
others, late imports inside functions included), trajgen never imports invwnn, and no shipped file
records a machine's paths."""
from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trajgen", "invwnn")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (``from a import b`` counts as
    ``a.b`` when that is a module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


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


def test_the_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_late_and_relative_imports():
    edges = graph()
    assert "trajgen.store" in edges["trajgen.collect"] and "invwnn.rewind.predictor" in edges["invwnn.train.fit"]
    assert len(edges) > 40


def test_no_import_circles():
    assert cycles(graph()) == []


def test_trajgen_never_imports_invwnn():
    offenders = {m: sorted(d for d in deps if d.startswith("invwnn"))
                 for m, deps in graph().items() if m.startswith("trajgen")}
    assert not any(offenders.values()), offenders


MACHINE_PATH = re.compile(r"(?<![\w.~])/(work|root|home|Users|tmp)/")


def shipped_texts() -> dict[str, str]:
    """Every tracked text file, and the JSON records inside every shipped predictor checkpoint."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    texts = {}
    for name in tracked:
        path = ROOT / name
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
