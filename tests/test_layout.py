"""Package layout: no import cycles, small modules, torch-free modules stay torch-free,
and every import inside a function says why it is there."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fcnseg"
MAX_LINES = 450

# Imports that may close a cycle: the package's lazy public attributes (fcnseg.list_models etc.,
# resolved on first use so that `import fcnseg` stays cheap). None today; add (importer, imported).
ALLOWED_LAZY: set[tuple[str, str]] = set()

# Modules that must not import torch: the readers and everything the exported-model prediction paths
# loads (`fcnseg predict --runtime onnx|openvino` runs with numpy, Pillow and onnxruntime or openvino only).
TORCH_FREE = [
    "fcnseg", "fcnseg.constants", "fcnseg.errors", "fcnseg.version", "fcnseg.labels", "fcnseg.sizes",
    "fcnseg.outputs", "fcnseg.jsonl", "fcnseg.optional", "fcnseg.output_set", "fcnseg.engine.loader_errors",
    "fcnseg.cli", "fcnseg.data", "fcnseg.data.image_files",
    "fcnseg.data.mask_255", "fcnseg.data.convert_masks",
    "fcnseg.infer", "fcnseg.infer.arrays", "fcnseg.infer.runner", "fcnseg.infer.segment",
    "fcnseg.infer.crf", "fcnseg.infer.onnx_runner", "fcnseg.infer.openvino_runner", "fcnseg.infer.visualize",
    "fcnseg.api",
    "fcnseg.predict", "fcnseg.serve", "fcnseg.serve.cli", "fcnseg.serve.segmenter", "fcnseg.weights.packaged",
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> dict[str, int]:
    """fcnseg modules that ``name`` imports anywhere (top level, functions, TYPE_CHECKING) -> line."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            if t in MODULES and t != name:
                out.setdefault(t, node.lineno)
    return out


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative DFS, three colours)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in graph:
        if root in state:
            continue
        stack = [(root, iter(graph[root]))]
        state[root] = 1
        path = [root]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(graph[child])))
                path.append(child)
    return None


def test_import_graph_has_no_cycles():
    graph = {m: {t: ln for t, ln in imports_of(m).items() if (m, t) not in ALLOWED_LAZY} for m in MODULES}
    assert sum(len(v) for v in graph.values()) > 100  # the parser really sees the imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"b": 1}}) is None


def test_dependencies_point_one_way():
    """Layers: infer never imports api/engine/bench; models and data never import engine, infer or api;
    the weights catalog (which models.surgery asks for named backbone weights) stays below models."""
    below_models = ("fcnseg.models", "fcnseg.checkpoint", "fcnseg.engine", "fcnseg.infer", "fcnseg.api",
                    "fcnseg.bench")
    rules = {"fcnseg.infer": ("fcnseg.api", "fcnseg.engine", "fcnseg.bench", "fcnseg.predict", "fcnseg.serve"),
             "fcnseg.models": ("fcnseg.engine", "fcnseg.infer", "fcnseg.api", "fcnseg.checkpoint", "fcnseg.data"),
             "fcnseg.data": ("fcnseg.engine", "fcnseg.infer", "fcnseg.api", "fcnseg.models"),
             "fcnseg.weights.catalog": below_models, "fcnseg.weights.hub": below_models,
             "fcnseg.weights.packaged": below_models}
    bad = [f"{m} imports {t}" for m in MODULES for room, banned in rules.items()
           if m == room or m.startswith(room + ".")
           for t in imports_of(m) if any(t == b or t.startswith(b + ".") for b in banned)]
    assert not bad, bad


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    n = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{MODULES[name]} has {n} lines (> {MAX_LINES}): split it by concept"


def test_function_level_imports_say_why():
    """An import inside a function needs a comment (on its line, or above its block of imports)."""
    missing = []
    for name, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for imp in (n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))):
                i = imp.lineno - 1
                while i > 0 and lines[i - 1].strip().startswith(("import ", "from ")):
                    i -= 1  # to the first import of this block
                block = lines[i:imp.end_lineno]
                if "#" not in " ".join(block) and not lines[i - 1].strip().startswith("#"):
                    missing.append(f"{path.relative_to(SRC)}:{imp.lineno}: {lines[imp.lineno - 1].strip()}")
    assert not missing, "function-level imports without a reason:\n" + "\n".join(missing)


_PROBE = """
import json, sys
first = None
for name in sys.argv[1:]:
    __import__(name)
    if first is None and "torch" in sys.modules:
        first = name
print(json.dumps({"first_to_import_torch": first}))
"""


def test_torch_free_modules_do_not_import_torch():
    proc = subprocess.run([sys.executable, "-c", _PROBE, *TORCH_FREE], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"first_to_import_torch": None}


def test_torch_probe_can_fail():
    """The probe above reports a module that does import torch."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, "fcnseg.labels", "fcnseg.checkpoint"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"first_to_import_torch": "fcnseg.checkpoint"}
