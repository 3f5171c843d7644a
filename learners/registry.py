"""Which algorithm ``algo=`` names, and the reference that every later process loads it by.

``algo`` is one of:

- a built-in name (:data:`BUILTIN`: ``mappo``, ``ippo``, ``idqn``...);
- ``MODULE:ATTR``: a class in an importable module (looked up on ``sys.path``, then in the working directory);
- ``path/to/file.py:ATTR``: a class in a file anywhere (relative paths are taken from the working directory);
- the name of an entry point in the group ``agora.learners`` (a pip-installed package's ``pyproject.toml``:
  ``[project.entry-points."agora.learners"] vdn = "my_pkg.vdn:VDN"``).

:func:`resolve` returns the class and its *reference*: the text that finds the same class from any process and any
working directory (a built-in or entry-point name, ``MODULE:ATTR`` of an installed module, or the absolute path of
a file). The run's config.toml records ``algo = <reference>``, so ``--resume``, ``agora eval``, ``play``,
``record``, the opponent processes and every MPI rank load the same algorithm with no flag repeated.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from functools import cache
from importlib.metadata import entry_points

from agora_marl.learners.api import ACTION_KINDS, STATE_MODES, Algorithm
from agora_marl.scenarios.registry import import_module_or_file

#: Built-in algorithm name -> ``MODULE:ATTR`` of its class.
BUILTIN: dict[str, str] = {
    "mappo": "agora_marl.learners.algorithms.ppo:MAPPO",
    "ippo": "agora_marl.learners.algorithms.ppo:IPPO",
    "idqn": "agora_marl.learners.algorithms.idqn:IDQN",
    "vdn": "agora_marl.learners.algorithms.value_decomposition:VDN",
    "qmix": "agora_marl.learners.algorithms.value_decomposition:QMIX",
    "maddpg": "agora_marl.learners.algorithms.maddpg:MADDPG",
}
#: The entry-point group of installed algorithms.
ENTRY_POINT_GROUP = "agora.learners"


class AlgorithmError(ValueError):
    """``algo`` names nothing loadable, or a class that breaks the declarations of ``api.Algorithm``."""


def resolve(algo: str) -> tuple[type[Algorithm], str]:
    """The algorithm class ``algo`` names and its reference (see the module docstring).

    Raises:
        AlgorithmError: nothing of that name, or not a valid algorithm class (the message says what to fix).
    """
    if not isinstance(algo, str) or not algo.strip():
        raise AlgorithmError(f"algo must be a name or MODULE:ATTR, not {algo!r}")
    reference = _absolute(algo.strip())
    module = reference.rpartition(":")[0]
    if _is_path(module) and not os.path.isfile(module):  # checked before the cache: the file may have moved since
        raise AlgorithmError(f"algo {algo!r}: no file {module!r}")
    return _resolve(reference)


def builtin_tables() -> set[str]:
    """The TOML tables of the built-in algorithms (a config file may carry several; the unused are ignored)."""
    return {resolve(name)[0].settings_table() for name in BUILTIN}


def _absolute(algo: str) -> str:
    """A file reference with its path made absolute (the cache's key must not depend on the working directory)."""
    module, sep, attr = algo.rpartition(":")
    if sep and _is_path(module):
        return f"{os.path.abspath(module)}:{attr}"
    return algo


def _is_path(module: str) -> bool:
    return module.endswith(".py") or os.sep in module or bool(os.altsep and os.altsep in module)


@cache
def _resolve(algo: str) -> tuple[type[Algorithm], str]:
    if algo in BUILTIN:
        return _checked(_load(BUILTIN[algo], algo), algo), algo
    if ":" not in algo:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == algo]
        if not found:
            installed = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
            names = ", ".join([*sorted(BUILTIN), *installed])
            raise AlgorithmError(
                f"unknown algo {algo!r}; choose one of {names}, or name your own class as MODULE:ATTR or "
                "path/to/file.py:ATTR (docs/learners.md, 'Writing a learner')"
            )
        try:
            cls = found[0].load()
        except Exception as exc:
            raise AlgorithmError(f"algo {algo!r} (entry point {found[0].value}): {exc}") from exc
        return _checked(cls, algo), algo
    cls = _load(algo, algo)
    module_name, _, attr = algo.rpartition(":")
    if _is_path(module_name):
        return _checked(cls, algo), algo
    # A module that only the working directory provides is recorded by its file, so that a process started
    # elsewhere (agora eval from another folder) finds it too.
    file = getattr(importlib.import_module(cls.__module__), "__file__", None) or ""
    here = os.getcwd() + os.sep
    local = "." not in module_name and file.startswith(here) and os.path.basename(file) != "__init__.py"
    return _checked(cls, algo), (f"{file}:{attr}" if local else algo)


def _load(reference: str, algo: str) -> type:
    module_name, _, attr = reference.rpartition(":")
    try:
        module = import_module_or_file(module_name)
    except FileNotFoundError:
        raise AlgorithmError(f"algo {algo!r}: no file {module_name!r}") from None
    except ModuleNotFoundError as exc:
        raise AlgorithmError(f"algo {algo!r}: cannot import {module_name!r} ({exc})") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Algorithm))
        raise AlgorithmError(
            f"algo {algo!r}: {module_name} has no {attr!r}"
            + (f" (its algorithms: {', '.join(found)})" if found else "")
        ) from None


def _checked(cls: object, algo: str) -> type[Algorithm]:
    """``cls`` if it declares what ``api.Algorithm`` asks for; else an error that names the fix."""
    where = f"algo {algo!r}"
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise AlgorithmError(f"{where} is {cls!r}, not a subclass of agora_marl.learners.api.Algorithm")
    problems = []
    if not isinstance(cls.name, str) or not cls.name.replace("_", "").replace("-", "").isalnum():
        problems.append(f"name = {cls.name!r}: give it a short identifier (e.g. name = 'vdn')")
    settings = getattr(cls, "Settings", None)
    if not (isinstance(settings, type) and dataclasses.is_dataclass(settings)):
        problems.append("Settings must be a dataclass (@dataclass class Settings: ...)")
    else:
        missing = [
            f.name
            for f in dataclasses.fields(settings)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            problems.append(f"every field of Settings needs a default; {missing} have none")
    table = cls.settings_table()
    if table in ("algo", "env", "run", "selfplay") or not table.replace("_", "").isalnum():
        problems.append(f"table = {table!r} is not a usable TOML table name (nor algo, env, run, selfplay)")
    unknown = sorted(set(cls.actions) - set(ACTION_KINDS))
    if not cls.actions or unknown:
        problems.append(f"actions = {sorted(cls.actions)}: declare a non-empty subset of {list(ACTION_KINDS)}")
    if cls.state not in STATE_MODES:
        problems.append(f"state = {cls.state!r} is not one of {list(STATE_MODES)}")
    if not cls.layouts or not set(cls.layouts) <= {"agents", "stacked"}:
        problems.append(f"layouts = {cls.layouts!r}: give 'agents', 'stacked' or both, preferred first")
    for method in ("make_policy", "train"):
        if getattr(cls, method) is getattr(Algorithm, method):
            problems.append(f"implement {method}()")
    if problems:
        raise AlgorithmError(f"{where} ({cls.__module__}.{cls.__qualname__}): " + "; ".join(problems))
    return cls
