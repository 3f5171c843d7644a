"""The package's layout: one import namespace, imports that flow one way, no cycles, and what a wheel holds.

The flow (an arrow: "is imported by"): scenarios <- envserver <- agents <- learners <- launch. Every import counts,
at module level and inside functions (a function-level import that dodges a cycle is still a cycle); only
``if TYPE_CHECKING:`` blocks, which never run, are left out.
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "agora_marl"
#: Each subpackage's place in the flow: a module may import its own layer and the layers below it.
LAYERS = {"scenarios": 0, "envserver": 1, "agents": 2, "learners": 3, "launch": 4}
#: Modules that sit above everything: entry points.
ENTRY_POINTS = {f"{PACKAGE}.__main__": LAYERS["launch"]}
#: What a built-in algorithm (learners/algorithms/) may import of agora: the learner API and the public building
#: blocks, as a plugin would (docs/learners.md, 'Writing a learner').
BUILDING_BLOCKS = ("api", "networks", "policy", "rollout", "replay", "targets", "schedules", "mpi")


def _modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name (found through the import system, as users find it)."""
    found: dict[str, Path] = {}
    top = importlib.util.find_spec(PACKAGE)
    roots = [(PACKAGE, Path(top.submodule_search_locations[0]))]
    roots += [
        (f"{PACKAGE}.{sub}", Path(importlib.util.find_spec(f"{PACKAGE}.{sub}").submodule_search_locations[0]))
        for sub in LAYERS
    ]
    for name, folder in roots:
        for path in sorted(folder.rglob("*.py")):
            if name == PACKAGE and path.parent != folder:
                continue  # the top package's own folder holds only its __init__ and __main__
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([name, *parts])] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """``(imported module, names taken from it, line)`` for every import statement of ``module``."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                # `from pkg import module` imports the module; `from module import name` imports the module.
                out.append((target, [], node.lineno) if target in modules else (base, [alias.name], node.lineno))
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.args[0].value, [], node.lineno))
    return [(target, names, line) for target, names, line in out if target.split(".")[0] == PACKAGE]


def _layer(module: str) -> int | None:
    if module in ENTRY_POINTS:
        return ENTRY_POINTS[module]
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, list[str], int]]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_subpackage_is_found_under_the_one_namespace(graph):
    for sub in LAYERS:
        assert f"{PACKAGE}.{sub}" in graph
    assert f"{PACKAGE}.envserver.protocol.wire" in graph and f"{PACKAGE}.learners.mpi" in graph


def test_imports_flow_one_way(graph):
    against = []
    for module, imports in graph.items():
        mine = _layer(module)
        for target, _names, line in imports:
            theirs = _layer(target)
            if mine is not None and theirs is not None and theirs > mine:
                against.append(f"{module}:{line} imports {target}")
            if mine is None and theirs is not None:  # the top package imports nothing of its subpackages
                against.append(f"{module}:{line} imports {target}")
    assert not against, "imports against scenarios <- envserver <- agents <- learners <- launch:\n" + "\n".join(against)


def test_no_import_cycles(graph):
    edges = {m: sorted({t for t, _, _ in imports if t in graph and t != m}) for m, imports in graph.items()}
    cycles = _strongly_connected(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(sorted(c)) for c in cycles)


def test_private_names_stay_inside_their_module(graph):
    leaks = [
        f"{module}:{line} imports {name} from {target}"
        for module, imports in graph.items()
        for target, names, line in imports
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not leaks, "\n".join(leaks)


def test_built_in_algorithms_use_only_the_public_learner_api(graph):
    """If a built-in needs a private name or the harness, the public API is missing something."""
    algorithms = [m for m in graph if m.startswith(f"{PACKAGE}.learners.algorithms.")]
    assert {f"{PACKAGE}.learners.algorithms.ppo", f"{PACKAGE}.learners.algorithms.idqn"} <= set(algorithms)
    allowed = tuple(f"{PACKAGE}.learners.{block}" for block in BUILDING_BLOCKS)
    against = [
        f"{module}:{line} imports {target}" + (f" ({', '.join(names)})" if names else "")
        for module in algorithms
        for target, names, line in graph[module]
        if not any(target == a or target.startswith(a + ".") for a in allowed)
    ]
    assert not against, (
        "built-in algorithms import only agora_marl.learners.api and the building blocks "
        f"{', '.join(BUILDING_BLOCKS)}:\n" + "\n".join(against)
    )


def test_bare_top_level_names_are_not_importable(tmp_path):
    # -I: no working directory and no PYTHONPATH on sys.path, as in any researcher's environment.
    for name in ("agents", "launch", "scenarios", "learners", "envserver"):
        done = subprocess.run([sys.executable, "-I", "-c", f"import {name}"], cwd=tmp_path, capture_output=True)
        assert done.returncode != 0, f"`import {name}` works: the package leaks a top-level module"
    done = subprocess.run(
        [sys.executable, "-I", "-c", "import agora_marl, agora_marl.launch.cli; print(agora_marl.__version__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == _version()


def test_the_command_reports_the_package_version(tmp_path):
    agora = Path(sys.executable).parent / "agora"
    done = subprocess.run([str(agora), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["agora", _version()], done.stdout + done.stderr


@pytest.mark.slow
def test_a_built_wheel_installs_the_one_namespace(tmp_path):
    """The wheel holds agora_marl/ with every subpackage and its data files, and nothing at the top level else."""
    # Built from a copy of the sources: setuptools leaves a build/ folder beside what it builds.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".venv", ".git", "build", "runs", "__pycache__", "*.egg-info")
    shutil.copytree(ROOT, source, ignore=skip)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = tmp_path.glob("agora_marl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {PACKAGE, f"agora_marl-{_version()}.dist-info"}, tops
    missing = sorted(set(_source_files()) - set(names))
    assert not missing, f"missing from the wheel (pyproject.toml's packages or package-data): {missing}"
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    code = (
        f"import sys; sys.path.insert(0, {str(target)!r}); "
        "import agora_marl.envserver.protocol as p, agora_marl.scenarios.registry as r; "
        f"assert p.__file__.startswith({str(target)!r}) and r.__file__.startswith({str(target)!r}), p.__file__; "
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def _source_files() -> list[str]:
    """The wheel paths of every module of every package folder and of every package-data file pyproject.toml names."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = setuptools["package-data"]
    files = []
    for package, folder in setuptools["package-dir"].items():
        for path in (ROOT / folder).rglob("*"):
            inside = path.relative_to(ROOT / folder)
            if not path.is_file() or "__pycache__" in inside.parts:
                continue
            if path.suffix == ".py" or any(path.match(str(ROOT / folder / glob)) for glob in data.get(package, [])):
                files.append("/".join([*package.split("."), *inside.parts]))
    return files


def _version() -> str:
    namespace: dict = {}
    exec((ROOT / PACKAGE / "__init__.py").read_text(), namespace)
    return namespace["__version__"]


def _strongly_connected(edges: dict[str, list[str]]) -> list[set[str]]:
    """The cycles of a graph: its strongly connected components of more than one node (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[set[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(component)
    return cycles
