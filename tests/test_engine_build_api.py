"""API conformance: every TensorRT name the engine code uses exists in the real Python bindings of TensorRT 10.3
(JetPack 6), 10.8 and 11.4, or is guarded by a capability check.

The bindings wheels (`tensorrt-cu12-bindings`, `tensorrt-cu13-bindings`, about 1 MB each, on PyPI) hold the
pybind module `tensorrt.so`; its NUL-terminated strings name every class, enum member, method and property it
registers. Linkers merge a string into the tail of a longer one ("INT8" into "UINT8", "num_errors" into
"get_num_errors"), so a name counts as present when it ends an identifier-like string. This checks names, not
which class they belong to: a name present anywhere passes.

Uses are collected from the sources by AST: attribute chains on TensorRT objects, recognised by name (`trt`,
`builder`, `network`, `config`, `parser`, `profile`, `runtime`, `inspector`, their `self.` forms, `self.engine`,
`self.context`, and `<anything>.module`, the TrtFlavour's module), getattr/hasattr with a literal name, getattr with a
variable name (every UPPER_CASE string literal of the enclosing top-level definition counts as used), and the
method names of classes derived from a TensorRT class. A name is guarded when the same top-level definition
checks it with hasattr(x, "NAME") or getattr(x, "NAME", default); names used only inside an
`if ... == "tensorrt_rtx":` block are checked against the installed TensorRT-RTX instead.

Wheels are downloaded once into $FER_EDGE_TEST_CACHE or ~/.cache/fer-edge-tests (skipped with the reason when
pip cannot fetch them).
"""
from __future__ import annotations

import ast
import bisect
import importlib.util
import os
import re
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
# label -> (PyPI package, version pattern): JetPack 6.1/6.2, the last 10.x without SAME_COMPUTE_CAPABILITY, and
# what `pip install tensorrt` resolves to today.
BINDINGS = {"10.3": ("tensorrt-cu12-bindings", "10.3.*"), "10.8": ("tensorrt-cu12-bindings", "10.8.*"),
            "11.4": ("tensorrt-cu13-bindings", "11.4.*")}
# Variables holding TensorRT objects, by name. `engine` and `context` only as attributes of self: as plain names
# they hold sidecar dicts elsewhere (runtime/tensorrt/engine_compat.py).
RECEIVERS = {"trt", "builder", "network", "config", "parser", "profile", "runtime", "inspector"}
SELF_RECEIVERS = RECEIVERS | {"engine", "context", "_runtime"}
UPPER = re.compile(r"^[A-Z][A-Z0-9_]+$")
IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")


def cache_dir() -> Path:
    return Path(os.environ.get("FER_EDGE_TEST_CACHE") or Path.home() / ".cache" / "fer-edge-tests") / "trt-bindings"


def fetch_wheel(package: str, version: str) -> Path:
    """The cached wheel, else `pip download --no-deps` into the cache; pytest.skip with pip's reason on failure."""
    folder = cache_dir() / f"{package}-{version.rstrip('.*')}"
    found = sorted(folder.glob("*.whl"))
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    # Pinned to one x86_64 CPython 3.11 wheel: the strings do not depend on the interpreter, and every release
    # checked has this build, whatever Python or machine runs the tests.
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
           "--platform", "manylinux_2_17_x86_64", "--dest", str(folder), f"{package}=={version}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot download {package}=={version} ({exc}); the TensorRT API check needs it once")
    found = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not found:
        tail = " ".join((done.stderr or done.stdout).split())[-300:]
        pytest.skip(f"cannot download {package}=={version} with pip ({tail}); the TensorRT API check needs it once")
    return found[-1]


class NameTable:
    """Identifier strings of a bindings module; `name in table` is True for a whole string or the tail of one
    (linkers store "INT8" as the tail of "UINT8"), found by bisecting the reversed strings."""

    def __init__(self, identifiers: Iterable[str]):
        self.whole = frozenset(identifiers)
        self._reversed = sorted(s[::-1] for s in self.whole)

    def __contains__(self, name: str) -> bool:
        if name in self.whole:
            return True
        key = name[::-1]
        i = bisect.bisect_left(self._reversed, key)
        return i < len(self._reversed) and self._reversed[i].startswith(key)


def identifiers_in_binary(data: bytes) -> Set[str]:
    """NUL-terminated strings that are whole identifiers (class, method, enum member names; not docstrings)."""
    return {piece.decode() for piece in data.split(b"\x00") if IDENTIFIER.fullmatch(piece)}


def _cached_identifiers(cache_file: Path, read: Callable[[], Set[str]]) -> NameTable:
    """The identifier list, extracted once (a 5 MB scan) and kept next to the wheel."""
    if cache_file.exists():
        return NameTable(cache_file.read_text().split())
    names = read()
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("\n".join(sorted(names)))
    os.replace(tmp, cache_file)
    return NameTable(names)


def names_in_python(source: bytes) -> Set[str]:
    """Top-level functions, classes and assignments of the bindings' __init__.py (Python-level helpers)."""
    names: Set[str] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # NVIDIA's file has invalid escapes in docstrings
        tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _wheel_identifiers(wheel_path: Path) -> Set[str]:
    names: Set[str] = set()
    with zipfile.ZipFile(wheel_path) as wheel:
        members = [n for n in wheel.namelist() if n.startswith("tensorrt_bindings/")]
        if not any(n.endswith(".so") for n in members):
            pytest.fail(f"{wheel_path.name}: no tensorrt_bindings/*.so in the wheel; the layout changed")
        for member in members:
            if member.endswith(".so"):
                names |= identifiers_in_binary(wheel.read(member))
            elif member.endswith(".py"):
                names |= names_in_python(wheel.read(member))
    return names


@lru_cache(maxsize=None)
def bindings_names(label: str) -> NameTable:
    wheel = fetch_wheel(*BINDINGS[label])
    return _cached_identifiers(wheel.with_suffix(".names"), lambda: _wheel_identifiers(wheel))


@lru_cache(maxsize=None)
def rtx_names() -> Optional[NameTable]:
    """The installed TensorRT-RTX's bindings (checked for names used only on the TensorRT-RTX path)."""
    spec = importlib.util.find_spec("tensorrt_rtx_bindings")
    if spec is None or not spec.submodule_search_locations:
        return None
    libraries = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.so"))
    if not libraries:
        return None
    stamp = "-".join(f"{p.stat().st_size}" for p in libraries)
    cache = cache_dir() / f"tensorrt_rtx-{stamp}.names"
    cache.parent.mkdir(parents=True, exist_ok=True)
    return _cached_identifiers(cache, lambda: set().union(*(identifiers_in_binary(p.read_bytes()) for p in libraries)))


# ---------------------------------------------------------------- collecting uses from the sources
@dataclass(frozen=True)
class Use:
    name: str
    where: str          # file:line
    guarded: bool
    rtx_only: bool


def _is_receiver(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in RECEIVERS
    if isinstance(node, ast.Attribute):
        if node.attr == "module":       # TrtFlavour.module
            return True
        return isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in SELF_RECEIVERS
    return False


def _is_trt(node: ast.AST) -> bool:
    """A TensorRT object: a receiver, an attribute of one, or what a TensorRT method call returns."""
    if _is_receiver(node):
        return True
    if isinstance(node, ast.Attribute):
        return _is_trt(node.value)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _is_trt(node.func)
    return False


def _literal(node: ast.AST) -> Optional[str]:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _rtx_test(test: ast.AST) -> Optional[bool]:
    """True: the if-body is TensorRT-RTX only; False: the else-body is; None: not a flavour test."""
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and any(
            _literal(c) == "tensorrt_rtx" for c in [test.left] + test.comparators):
        if isinstance(test.ops[0], ast.Eq):
            return True
        if isinstance(test.ops[0], ast.NotEq):
            return False
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, path: Path, top: ast.AST):
        self.path, self.rtx_depth = path, 0
        self.uses: List[Tuple[str, int, bool]] = []   # name, line, rtx_only
        self.guards: Set[str] = set()
        self.candidates = sorted({c.value for c in ast.walk(top) if isinstance(c, ast.Constant)
                                  and isinstance(c.value, str) and UPPER.match(c.value)})

    def use(self, name: str, line: int) -> None:
        if not (name.startswith("__") and name.endswith("__")):
            self.uses.append((name, line, self.rtx_depth > 0))

    def visit_If(self, node: ast.If) -> None:
        rtx = _rtx_test(node.test)
        self.visit(node.test)
        for body, is_rtx in ((node.body, rtx is True), (node.orelse, rtx is False)):
            self.rtx_depth += is_rtx
            for stmt in body:
                self.visit(stmt)
            self.rtx_depth -= is_rtx

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _is_trt(node.value):
            self.use(node.attr, node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("hasattr", "getattr") and len(node.args) >= 2:
            name = _literal(node.args[1])
            names = [name] if name is not None else self.candidates
            if func.id == "hasattr" or len(node.args) == 3:
                self.guards.update(names)
            if func.id == "getattr" and _is_trt(node.args[0]):
                for n in names:
                    self.use(n, node.lineno)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if any(_is_trt(base) for base in node.bases):     # overrides of a TensorRT interface (ILogger, ...)
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    self.use(item.name, item.lineno)
        self.generic_visit(node)


def _touches_tensorrt(path: Path) -> bool:
    """Imports from runtime/tensorrt, or names a `trt` module."""
    text = path.read_text()
    return "fer_edge.runtime.tensorrt" in text or any(
        isinstance(n, ast.Name) and n.id == "trt" for n in ast.walk(ast.parse(text, str(path))))


def scanned_files() -> List[Path]:
    """runtime/tensorrt/*.py, and every export/ or runtime/ module that imports from it or handles a `trt` module."""
    files = sorted((REPO / "runtime" / "tensorrt").glob("*.py"))
    for folder in (REPO / "export", REPO / "runtime"):
        files += [path for path in sorted(folder.glob("*.py")) if path not in files and _touches_tensorrt(path)]
    return files


def collect_uses(paths: Iterable[Path]) -> List[Use]:
    uses: List[Use] = []
    for path in paths:
        tree = ast.parse(path.read_text(), str(path))
        for top in tree.body:  # guards count within one top-level definition (function, class or statement)
            collector = _Collector(path, top)
            collector.visit(top)
            rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
            uses += [Use(name, f"{rel}:{line}", name in collector.guards, rtx) for name, line, rtx in collector.uses]
    return uses


def problems(uses: Iterable[Use], versions: Dict[str, NameTable], rtx: Optional[NameTable]) -> List[str]:
    """Unguarded names missing from a version's bindings (RTX-only names: from TensorRT-RTX), and guarded names
    that exist nowhere (a typo in a capability check would hide a real gap forever)."""
    out = []
    for use in uses:
        if use.rtx_only:
            if rtx is not None and use.name not in rtx and not use.guarded:
                out.append(f"{use.where}: {use.name} (TensorRT-RTX only) is not in the installed tensorrt_rtx")
            continue
        missing = [label for label, names in versions.items() if use.name not in names]
        if use.guarded:
            if len(missing) == len(versions) and (rtx is None or use.name not in rtx):
                out.append(f"{use.where}: {use.name} is guarded but exists in none of {sorted(versions)} nor RTX")
        elif missing:
            out.append(f"{use.where}: {use.name} is missing in TensorRT {', '.join(missing)} and not guarded by a "
                       "hasattr/getattr capability check with a clear error")
    return out


@pytest.fixture(scope="module")
def versions() -> Dict[str, NameTable]:
    return {label: bindings_names(label) for label in BINDINGS}


# ---------------------------------------------------------------- tests
def test_every_tensorrt_name_used_exists_in_10_3_10_8_and_11_4_or_is_guarded(versions, capsys):
    uses = collect_uses(scanned_files())
    assert len({u.name for u in uses}) > 40, "the collector found too few TensorRT names: did the code move?"
    for must in ("build_serialized_network", "execute_async_v3", "STRONGLY_TYPED", "get_tensor_name", "phase_start"):
        assert must in {u.name for u in uses}, f"{must} not collected: the receiver heuristics missed a file"
    guarded = sorted({(u.name, u.where.split(":")[0]) for u in uses if u.guarded})
    with capsys.disabled():
        print(f"\nTensorRT names checked: {len({u.name for u in uses})} in {len(scanned_files())} files; "
              f"guarded by capability checks: {', '.join(f'{n} ({f})' for n, f in guarded)}")
    assert problems(uses, versions, rtx_names()) == []


OLD_HARDWARE_COMPAT = '''
def _configure(trt, config, options):
    if options.hardware_compat != "none":
        level = {"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}[options.hardware_compat]
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
'''
GUARDED_HARDWARE_COMPAT = '''
def level(trt, name):
    if not hasattr(trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY"):
        raise RuntimeError("needs TensorRT >= 10.9")
    return trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
'''


def test_the_check_catches_the_unguarded_same_cc_of_the_old_code_and_accepts_the_guarded_form(versions, tmp_path):
    old, new = tmp_path / "old.py", tmp_path / "new.py"
    old.write_text(OLD_HARDWARE_COMPAT)
    new.write_text(GUARDED_HARDWARE_COMPAT)
    found = problems(collect_uses([old]), versions, None)
    assert any("SAME_COMPUTE_CAPABILITY is missing in TensorRT 10.3, 10.8" in p for p in found), found
    assert not any("AMPERE_PLUS" in p for p in found)              # exists since 8.6
    assert problems(collect_uses([new]), versions, None) == []


def test_bindings_strings_tell_versions_apart(versions):
    """The premise of the check, on facts from the TensorRT release notes and migration guides."""
    assert "SAME_COMPUTE_CAPABILITY" not in versions["10.3"] and "SAME_COMPUTE_CAPABILITY" in versions["11.4"]
    assert "EXPLICIT_BATCH" in versions["10.3"] and "EXPLICIT_BATCH" not in versions["11.4"]  # removed in 11
    assert "FP16" in versions["10.8"] and "FP16" not in versions["11.4"]   # BuilderFlag.FP16: weak typing, gone in 11
    assert "INT8" in versions["11.4"]                                     # DataType.INT8 stays (tail of UINT8)
    assert "num_errors" in versions["10.3"]                               # tail of get_num_errors


def test_rtx_only_block_and_trt_subclass_methods_are_collected(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('''
def target(flavour, config):
    if flavour.name == "tensorrt_rtx":
        return config.num_compute_capabilities
    return config.DLA_core

def monitor(trt):
    class M(trt.IProgressMonitor):
        def phase_start(self, a, b, c):
            self.depth = 1
    return M
''')
    uses = {(u.name, u.rtx_only) for u in collect_uses([src])}
    assert ("num_compute_capabilities", True) in uses and ("DLA_core", False) in uses
    assert ("phase_start", False) in uses and ("IProgressMonitor", False) in uses
    assert "depth" not in {name for name, _ in uses}                      # our own attribute, not TensorRT's
