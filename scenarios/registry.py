"""Which worlds a server can build, by name, and the guard that keeps clients from naming anything else.

A scenario name is one of:

- a registered name (``foraging_v0``): our own worlds and any the operator registers;
- ``module:callable`` for a PettingZoo environment (``mpe2.simple_spread_v3:parallel_env``); AEC environments are
  converted with PettingZoo's ``aec_to_parallel``;
- ``gymnasium:ENV_ID`` for a single-agent gymnasium environment, hosted as a one-seat world; ``ENV_ID`` may name a
  module to import first, as gymnasium allows (``gymnasium:MODULE:Env-v0``).

Clients send names over the network, so :func:`make_env` only imports modules inside the allowed packages (the one
inside a gymnasium id too) and only calls the conventional PettingZoo constructors (``parallel_env``, ``env``,
``raw_env``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pettingzoo import AECEnv, ParallelEnv
from pettingzoo.utils.conversions import aec_to_parallel

#: Packages whose environments any server hosts unless told otherwise.
DEFAULT_ALLOWED_PACKAGES = ("agora_marl.scenarios", "pettingzoo", "mpe2", "gymnasium")
#: The only attribute names a ``module:callable`` scenario may name: PettingZoo's constructor conventions.
ALLOWED_CALLABLES = ("parallel_env", "env", "raw_env")

_MAX_NAME_LENGTH = 200
#: What an unregistered name is made of: dotted module names, gymnasium ids (``ALE/Pong-v5``), and the colons between.
_NAME_CHARACTERS = re.compile(r"[A-Za-z0-9_.:/-]+")
#: A gymnasium id after its optional module part: ``[namespace/]name[-vN]`` (gymnasium's own form, ASCII only).
_GYMNASIUM_ID = re.compile(r"(?:[A-Za-z0-9_-]+/)?[A-Za-z0-9_.-]+")


class ScenarioNotAllowed(Exception):
    """The name is not a registered scenario, or points outside the allowed packages."""


@dataclass(frozen=True)
class ScenarioEntry:
    """A registered scenario.

    Attributes:
        name: versioned name (``foraging_v0``); bump the version when dynamics or rewards change.
        factory: ``factory(**config) -> ParallelEnv``.
        description: one line for ``agora scenarios list``.
        vector_factory: optional ``vector_factory(num_copies, **config)`` returning the vectorised form that steps
            many copies with numpy arrays (see scenarios/vector.py); ``None`` if the scenario has none.
        defaults: keyword config used when the client sends none.
    """

    name: str
    factory: Callable[..., ParallelEnv]
    description: str = ""
    vector_factory: Callable[..., Any] | None = None
    defaults: dict = field(default_factory=dict)


_REGISTRY: dict[str, ScenarioEntry] = {}


def register(
    name: str,
    factory: Callable[..., ParallelEnv],
    description: str = "",
    vector_factory: Callable[..., Any] | None = None,
    defaults: dict | None = None,
) -> None:
    """Make ``name`` buildable by every server in this process. Re-registering a name replaces it."""
    if ":" in name:
        raise ValueError(f"scenario name {name!r} must not contain ':' (that form means module:callable)")
    _REGISTRY[name] = ScenarioEntry(name, factory, description, vector_factory, dict(defaults or {}))


def registered() -> dict[str, ScenarioEntry]:
    """Every registered scenario by name (a copy).

    The built-in worlds are among them: they register themselves like any operator's module, when
    ``agora_marl.scenarios`` (which imports them) is imported, and Python imports it before any of its modules.
    """
    return dict(_REGISTRY)


def load_scenario_module(spec: str) -> list[str]:
    """Import a module of the operator's own scenarios so that its ``register(...)`` calls run.

    Args:
        spec: a module name or a ``.py`` file, found as :func:`import_module_or_file` finds it (so ``agora serve
            --scenario-module my_worlds`` finds ./my_worlds.py).

    Returns:
        The names the module registered (empty if it was imported before).

    Raises:
        ModuleNotFoundError / FileNotFoundError: nothing of that name; whatever the module raises on import.
    """
    before = set(_REGISTRY)
    import_module_or_file(spec)
    return sorted(set(_REGISTRY) - before)


def import_module_or_file(spec: str) -> ModuleType:
    """The user's module ``spec``: every command that imports a user's code (scenarios, policies) finds it this way.

    Args:
        spec: a module name (``my_worlds``, ``lab.worlds``), looked up on ``sys.path`` and then in the current
            directory, or the path of a ``.py`` file (imported under its file name).

    Raises:
        ModuleNotFoundError / FileNotFoundError: nothing of that name; whatever the module raises on import.
    """
    if spec.endswith(".py") or os.sep in spec or (os.altsep and os.altsep in spec):
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no file {spec!r}")
        name = os.path.splitext(os.path.basename(path))[0]
        if name not in sys.modules or getattr(sys.modules[name], "__file__", None) != path:
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        return sys.modules[name]
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        # A console script's sys.path lacks the working directory; `python -m` and scripts have it.
        if exc.name != spec.split(".", 1)[0] or os.getcwd() in sys.path:
            raise
        sys.path.insert(0, os.getcwd())
        return importlib.import_module(spec)


def check_allowed(name: str, allowed_packages: Iterable[str] = DEFAULT_ALLOWED_PACKAGES) -> None:
    """Raise :class:`ScenarioNotAllowed` unless ``name`` is registered or lives in an allowed package."""
    _parse(name, tuple(allowed_packages))


def _parse(name: Any, allowed: tuple[str, ...]) -> tuple[str, str] | None:
    """``None`` for a registered name, else ``(module, attr)``: a PettingZoo constructor, or ``("gymnasium", ID)``.

    Parsed strictly, since a name comes from the network and the parts before a colon get imported: an unregistered
    name is short and ASCII, every module part is a public identifier inside an allowed package, and so is the module
    a gymnasium id may name before its own colon (``gymnasium:mod.ule:Env-v0``: gymnasium imports ``mod.ule``).
    """
    if not isinstance(name, str) or not name:
        raise ScenarioNotAllowed("the scenario must be a non-empty string")
    if name in _REGISTRY:
        return None
    if len(name) > _MAX_NAME_LENGTH or not _NAME_CHARACTERS.fullmatch(name):
        raise ScenarioNotAllowed(
            f"scenario name {name[:80]!r} is not a registered name, and unregistered names are at most "
            f"{_MAX_NAME_LENGTH} characters of A-Z a-z 0-9 _ . - / :"
        )
    if ":" not in name:
        raise ScenarioNotAllowed(f"{name!r} is not a registered scenario (registered: {sorted(_REGISTRY)})")
    module, attr = name.split(":", 1)
    if module == "gymnasium":
        if "gymnasium" not in allowed:
            raise ScenarioNotAllowed("this server does not host gymnasium environments")
        env_module, _, env_name = attr.rpartition(":")
        if env_module:
            _check_module(env_module, allowed)
        if not _GYMNASIUM_ID.fullmatch(env_name):
            raise ScenarioNotAllowed(
                f"gymnasium id {attr!r} is not [module:][namespace/]name[-vN] (module a dotted name inside an allowed "
                "package; namespace and name of A-Z a-z 0-9 _ . -)"
            )
        return module, attr
    _check_module(module, allowed)
    if attr not in ALLOWED_CALLABLES:
        raise ScenarioNotAllowed(f"{attr!r} is not a scenario constructor; use one of {list(ALLOWED_CALLABLES)}")
    return module, attr


def _check_module(module: str, allowed: tuple[str, ...]) -> None:
    # A package is allowed with everything under it (`agora_marl.scenarios` allows `agora_marl.scenarios.x`, never
    # `agora_marl.launch`). Private modules (`_x`, `__init__`, `__main__`) are never constructors' homes; refusing
    # them narrows what a client reaches.
    inside = any(module == package or module.startswith(package + ".") for package in allowed)
    if not inside or not all(p.isidentifier() and not p.startswith("_") for p in module.split(".")):
        raise ScenarioNotAllowed(f"module {module!r} is outside the allowed packages {list(allowed)}")


def make_env(name: str, config: dict | None = None, allowed_packages: Iterable[str] = DEFAULT_ALLOWED_PACKAGES):
    """Build one instance of scenario ``name`` as a PettingZoo ParallelEnv.

    Raises:
        ScenarioNotAllowed: the name is not hostable here (checked before anything is imported).
        Exception: whatever the scenario's constructor raises for a bad config.
    """
    parsed = _parse(name, tuple(allowed_packages))
    config = dict(config or {})
    if parsed is None:
        entry = _REGISTRY[name]
        return as_parallel(entry.factory(**{**entry.defaults, **config}))
    module, attr = parsed
    if module == "gymnasium":
        import gymnasium

        from agora_marl.scenarios.adapters import GymnasiumParallelEnv

        return GymnasiumParallelEnv(gymnasium.make(attr, **config))
    factory = getattr(importlib.import_module(module), attr)
    return as_parallel(factory(**config))


def make_vector(name: str, num_copies: int, config: dict | None = None):
    """The vectorised form of a registered scenario with ``num_copies`` copies, or ``None`` if it has none."""
    entry = _REGISTRY.get(name)
    if entry is None or entry.vector_factory is None:
        return None
    return entry.vector_factory(num_copies, **{**entry.defaults, **(config or {})})


def as_parallel(env: Any) -> ParallelEnv:
    """A ParallelEnv for a ParallelEnv or an AEC env (converted with PettingZoo's own ``aec_to_parallel``)."""
    if isinstance(env, ParallelEnv):
        return env
    if isinstance(env, AECEnv):
        if not env.metadata.get("is_parallelizable", False):
            raise ValueError(
                f"{type(env).__name__} is a turn-based AEC environment that PettingZoo marks as not parallelizable; "
                "agora hosts simultaneous-move worlds only"
            )
        return aec_to_parallel(env)
    raise TypeError(f"scenario constructor returned {type(env).__name__}, not a PettingZoo ParallelEnv or AECEnv")
