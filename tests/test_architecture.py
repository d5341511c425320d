"""The folders are layers: every fer_edge import, at module level or inside a function, goes down a layer.

Lowest first: runtime (with runtime/tensorrt) <- pipeline <- data <- models <- export, calibration, training
(siblings: none imports another) <- benchmarks <- cli. The package root (fer_edge/__init__.py, only the
version) sits below all; fer_edge.cli_support (the shared parser and error handler of every command and
`python -m` script) sits just above runtime. docs/architecture.md explains each layer.
"""
from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

REPO = Path(__file__).resolve().parents[1]

LAYERS: Dict[str, int] = {
    "fer_edge": 0,
    "fer_edge.runtime": 1,
    "fer_edge.cli_support": 2,
    "fer_edge.pipeline": 3,
    "fer_edge.data": 4,
    "fer_edge.models": 5,
    "fer_edge.export": 6, "fer_edge.calibration": 6, "fer_edge.training": 6,
    "fer_edge.benchmarks": 7,
    "fer_edge.cli": 8,
}


def package_dirs() -> Dict[str, Path]:
    """fer_edge.<folder> -> folder, read from setup.cfg's package_dir (the one place the mapping lives)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    pairs = [line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines()]
    return {name.strip(): REPO / folder.strip() for name, folder in pairs}


def modules() -> Iterator[Tuple[str, Path]]:
    for package, folder in package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join([package] + parts), path


def imports_of(module: str, path: Path) -> List[Tuple[int, str]]:
    """(line, imported module) for every fer_edge import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = anchor + ("." + base if base else "")
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]  # may name a module
            found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == "fer_edge" or name.startswith("fer_edge.")]


def owner(module: str) -> str:
    """The layer package a module belongs to: the longest LAYERS key that is a prefix of it."""
    best = ""
    for package in LAYERS:
        if (module == package or module.startswith(package + ".")) and len(package) > len(best):
            best = package
    return best


def violations() -> List[str]:
    problems = []
    for module, path in modules():
        home = owner(module)
        for line, target in imports_of(module, path):
            there = owner(target)
            if there in ("", home):
                continue
            if LAYERS[there] > LAYERS[home]:
                problems.append(f"{path.relative_to(REPO)}:{line}: {home} imports {target}, a higher layer ({there})")
            elif LAYERS[there] == LAYERS[home]:
                problems.append(f"{path.relative_to(REPO)}:{line}: {home} imports {target} from its sibling {there}")
    return problems


def test_every_package_has_a_layer():
    assert set(package_dirs()) <= set(LAYERS), "add the new folder to LAYERS and to docs/architecture.md"


def test_imports_only_go_down_a_layer():
    problems = violations()
    assert not problems, "imports that break the layering:\n" + "\n".join(problems)


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    """The checker itself: a lazy upward import and a relative sibling import are both caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from fer_edge.cli.export import main\nfrom ..export import exporter\n")
    found = imports_of("fer_edge.calibration.bad", bad)
    assert (2, "fer_edge.cli.export") in found and (3, "fer_edge.export") in found


def test_runtime_and_pipeline_import_without_torch_timm_or_onnx():
    code = ("import sys, fer_edge.runtime, fer_edge.pipeline, fer_edge.runtime.tensorrt.backend; "
            "print(sorted(m for m in ('torch', 'timm', 'onnx', 'onnxslim') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_runtime_reads_in_one_sitting():
    """The core a robot embeds (contract, preprocessing, load/predict) and each backend stay small on their own."""
    runtime = package_dirs()["fer_edge.runtime"]
    lines = {p.name: len(p.read_text().splitlines()) for p in runtime.glob("*.py")}
    core = sum(n for name, n in lines.items() if not name.endswith("_backend.py"))
    assert core <= 800, f"runtime core has {core} lines"
    backends = {name: n for name, n in lines.items() if name.endswith("_backend.py")}
    backends["tensorrt/"] = sum(len(p.read_text().splitlines()) for p in (runtime / "tensorrt").glob("*.py"))
    too_long = {name: n for name, n in backends.items() if n > BACKEND_LINES.get(name, 300)}
    assert not too_long, f"runtime backends over their budget {BACKEND_LINES}: {too_long}"


# The TensorRT backend owns engines, CUDA buffers, graphs and version checks; the others wrap one library call each.
BACKEND_LINES = {"tensorrt/": 900}


def module_cycles() -> List[List[str]]:
    """Cycles between modules (any import, lazy or not): strongly connected groups of more than one module."""
    known = dict(modules())
    graph = {m: set() for m in known}
    for module, path in known.items():
        for _, target in imports_of(module, path):
            while target and target not in known:  # `from pkg.mod import name` names a module or an attribute
                target = target.rpartition(".")[0]
            if target and target != module and not known[target].name == "__init__.py":
                graph[module].add(target)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycles_between_modules():
    """Inside a folder too: a cycle hidden by a function-local import is still a cycle."""
    assert module_cycles() == []
