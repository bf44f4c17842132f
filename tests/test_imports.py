"""The package's import graph: no cycles, and layers point one way.

Every ``import`` is counted, function-local ones included: a lazy import that closes a
cycle is still a cycle.  Layers, top to bottom: cli -> pipeline (the commands) -> tasks ->
data, datasets, extractors, heads, stores -> utilities (rows, metrics, video...).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vidattn"


def module_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in its body)."""
    mods = {}
    for p in package.rglob("*.py"):
        name = ".".join(p.relative_to(package.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    edges: dict[str, set[str]] = {m: set() for m in mods}

    def known(name: str) -> str:
        while name not in mods:
            name = name.rpartition(".")[0]
        return name

    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            edges[m] |= {known(t) for t in targets if t.split(".")[0] == package.name}
        edges[m].discard(m)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "vidattn"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from vidattn.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import a\n")
    edges = module_graph(pkg)
    assert edges["vidattn.sub.a"] == {"vidattn.sub.b"}
    assert edges["vidattn.sub.b"] == {"vidattn.sub.a"}
    assert cycles(edges) == [["vidattn.sub.a", "vidattn.sub.b"]]


def test_vidattn_has_no_import_cycle():
    assert cycles(module_graph(PACKAGE)) == []


LOWER = ("vidattn.tasks", "vidattn.data", "vidattn.datasets", "vidattn.extractors",
         "vidattn.heads", "vidattn.stores")


@pytest.mark.parametrize("layer", LOWER)
def test_nothing_below_the_commands_imports_them(layer):
    edges = module_graph(PACKAGE)
    up = sorted((m, t) for m, ts in edges.items() if m.startswith(layer) for t in ts
                if t.startswith(("vidattn.pipeline", "vidattn.cli")))
    assert up == []


def test_heads_and_stores_do_not_import_the_task_layer():
    edges = module_graph(PACKAGE)
    up = sorted((m, t) for m, ts in edges.items()
                if m.startswith(("vidattn.heads", "vidattn.stores", "vidattn.extractors"))
                for t in ts if t.startswith(("vidattn.tasks", "vidattn.data")))
    assert up == []


def _loaded(imports: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` a fresh interpreter has loaded after running ``imports``."""
    code = (f"import json, sys; {imports}; "
            f"print(json.dumps(sorted(m for m in {names!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_imports_no_heavy_library():
    assert _loaded("import vidattn.cli", ("torch", "zarr", "pandas", "transformers")) == []


def test_rgb_extraction_does_not_load_opencv():
    # OpenCV is for the flow stream only: ~0.2 s of every RGB run's start-up otherwise.
    imports = ("import vidattn.extractors.flow, vidattn.extractors.two_stream, "
               "vidattn.pipeline.extract; from vidattn.extractors.flow import default_method; "
               "default_method()")
    assert _loaded(imports, ("cv2",)) == []


def test_the_extract_command_starts_decoding_before_pandas_and_zarr_load():
    # run() starts the decoders' forkserver first: it preloads them on the core that the
    # command's own imports (pandas, zarr, then torch) leave idle.
    imports = ("import vidattn.pipeline.extract, vidattn.pipeline.subdecode, "
               "vidattn.pipeline.decodepool")
    assert _loaded(imports, ("torch", "zarr", "pandas")) == []
