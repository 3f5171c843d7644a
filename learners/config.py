"""A training run's settings: dataclasses filled from defaults, a TOML file and ``key=value`` overrides.

A config file has top-level ``algo`` and four tables::

    algo = "mappo"                      # a built-in name, MODULE:ATTR, path/to/file.py:ATTR or an entry point

    [env]                               # EnvSettings: which worlds, how many, where
    scenario = "mpe2.simple_spread_v3:parallel_env"
    config = { N = 3, max_cycles = 25, continuous_actions = false }
    num_worlds = 64

    [run]                               # RunSettings: budget, seed, device, logging, checkpoints
    total_steps = 3_000_000

    [ppo]                               # the algorithm's own table (its ``settings_table()``)
    lr = 7e-4

    [selfplay]                          # SelfPlaySettings: the snapshot pool, with env.opponent = "self-play"
    sampling = "prioritised"

Overrides use dotted keys with TOML values (``ppo.lr=3e-4``, ``env.config.N=4``, ``algo=ippo``); a value that
is not valid TOML is taken as a string (``env.scenario=gymnasium:CartPole-v1``). ``env.config`` of the default
scenario is merged onto its default config; any other scenario's config starts empty. Unknown keys are errors that
list the valid ones, in a plugin's table as in the built-ins'. :func:`to_toml` writes the resolved config, which
:func:`load_config` reads back unchanged; its ``algo`` is the algorithm's resolved reference (learners.registry), so
that every process that reads the run's config loads the same algorithm.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agora_marl.learners.api import Algorithm
from agora_marl.learners.registry import AlgorithmError, builtin_tables, resolve

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

#: The embedded default world: mpe2's simple_spread with 3 agents, 25-step episodes, discrete actions.
DEFAULT_SCENARIO = "mpe2.simple_spread_v3:parallel_env"
DEFAULT_SCENARIO_CONFIG: dict[str, Any] = {"N": 3, "max_cycles": 25, "continuous_actions": False}


@dataclass
class EnvSettings:
    """Which worlds to train in, how many, and where they run."""

    scenario: str = DEFAULT_SCENARIO
    """Scenario name as the server takes it: registered name, ``module:callable`` or ``gymnasium:ENV_ID``."""
    config: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SCENARIO_CONFIG))
    """Keyword config for the scenario's constructor (for the default scenario, merged onto its default config)."""
    num_worlds: int = 64
    """Worlds stepped together by each rank (one batched request per step per server)."""
    connect: list[str] = field(default_factory=list)
    """Addresses of running env servers (empty: ``agora train`` starts its own). Ranks share them round-robin."""
    servers: int = 0
    """Env server processes ``agora train`` starts when ``connect`` is empty, per node or per rank (``servers_per``);
    0: one per core the learners may run on, at least one per rank and at most one per 8 worlds
    (``learners.training.env_servers``; two on a 2-core machine). A rank spreads its worlds over its share of them."""
    servers_per: str = "node"
    """``node``: each node's local rank 0 starts the node's servers and the node's ranks share them over ipc://;
    ``rank``: every rank starts its own."""
    scenario_modules: list[str] = field(default_factory=list)
    """Modules (names or .py files) the servers ``agora train`` starts import first, so that their scenarios register
    (``agora serve --scenario-module``)."""
    timeout_s: float = 60.0
    """How long a request to a server may take before the learner gives up."""
    server_key: str = ""
    """For servers run with ``--curve-secret``: their CurveZMQ public key (Z85, or the path of ``NAME.key``)."""
    client_key: str = ""
    """For servers run with ``--clients``: this learner's secret certificate (``NAME.key_secret``)."""
    seats: list[str] = field(default_factory=list)
    """The seats the learner trains: agent names or globs (``["predator_*"]``; ``env.seats=predator_*`` on the
    command line). Empty: every seat. Otherwise the other seats are played by ``opponent`` in another process, which
    joins the same worlds as an independent client (docs/learners.md, 'Training against other clients')."""
    opponent: str = "random"
    """Where ``seats`` leaves seats to others: the policy playing them, ``random``, ``noop``, ``scripted``,
    ``module:callable`` (agents/policies.py) or a trained run directory (its greedy policy); ``external``: another
    program takes them (see ``group``), the learner starts nobody and waits; or ``self-play``: snapshots of the learner play them, in process
    (the ``[selfplay]`` table; docs/learners.md, 'Self-play')."""
    opponent_deadline_ms: int = 5000
    """Where ``seats`` leaves seats to others: the worlds' deadline. A world steps when every held seat acted or at
    the deadline, the late seats filled: it bounds what a stalled opponent costs per step, and must exceed the
    learner's update, or the worlds go on without the learner during it (metric ``own_late``)."""
    group: str = ""
    """With ``seats``: name this learner's worlds on their servers, so that another program takes the other seats
    by that name alone (another ``agora train`` with ``env.join``, ``agora play --group``, any client's
    ``join_group``; with several ranks, rank r's worlds are ``NAME.rR``). Pair with ``opponent = "external"``."""
    join: str = ""
    """With ``seats``: instead of creating worlds, hold those seats of the worlds another learner named with
    ``env.group`` (``env.scenario``, ``env.config`` and ``env.num_worlds`` must be the group's; ``env.connect`` its
    servers). The other side owns the worlds: when it closes them, this learner stops."""
    invite_only: bool = False
    """With ``group``: the seats left to others are by invitation (the learner prints the token to pass on)."""
    invite_token: str = ""
    """With ``join``: the owner's invitation, where its seats are invitation-only."""
    external_timeout_s: float = 300.0
    """With ``opponent = "external"``: how long the learner waits for another program to take the other seats."""
    render: bool = False
    """Create the worlds to draw frames for a watcher (``agora watch``; ``agora train --watch`` turns it on): a
    world is drawn only when someone asks for a frame."""


@dataclass
class RunSettings:
    """Budget, reproducibility, hardware and what gets written where."""

    total_steps: int = 1_500_000
    """Environment steps to train for, counted per world step and summed over ranks (about 12 minutes of the default
    run on two cores; launch/configs/ippo_simple_spread_2cores.toml made 1.47M of them in 10 minutes and reached a
    team return of -32.5 on simple_spread: docs/learners.md, 'Learning speed')."""
    seed: int = 1
    """Base seed; rank r uses streams derived from (seed, r)."""
    dir: str = ""
    """Run directory (empty: ``runs/<algo>-<time>``)."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``auto`` (CUDA when available; each rank takes its node-local GPU)."""
    threads: int = 0
    """torch intra-op threads per rank; 0: ``OMP_NUM_THREADS`` if set, else a fair share of the cores this rank may
    run on (divided among the ranks and env servers sharing them, at least 1)."""
    mpi_cuda: str = "auto"
    """Pass CUDA buffers to MPI directly (``on``), stage through host memory (``off``), or detect (``auto``)."""
    log_every: int = 1
    """Updates between metric rows (metrics.csv, TensorBoard)."""
    checkpoint_every: int = 50
    """Updates between checkpoints (a checkpoint is also written at the end)."""
    keep_checkpoints: int = 3
    """Periodic checkpoints kept on disk (the newest ones); the final one is always kept."""
    sync_every: int = 20
    """Updates between checks that all ranks hold identical parameters (a drift is an error)."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""


@dataclass
class SelfPlaySettings:
    """Self-play (``env.opponent = "self-play"``): a pool of the learner's snapshots plays the seats ``env.seats``
    leaves (learners/selfplay.py)."""

    snapshot_every: int = 10
    """Updates between the snapshots of the learner added to the pool (the first is the untrained learner)."""
    capacity: int = 20
    """Snapshots the pool keeps; when full, the oldest leaves."""
    sampling: str = "prioritised"
    """Which snapshot plays a world's next episode: ``latest``; ``uniform`` over the pool; ``prioritised`` by the
    learner's results against each (weight ``(1 - p) ** priority_power``, p its smoothed win rate against it)."""
    priority_power: float = 2.0
    """``prioritised``: how strongly the snapshots the learner beats least are preferred (0: uniform)."""
    eval_every: int = 10
    """Updates between greedy evaluations against ``eval_opponent`` (metric ``selfplay/eval_win_rate``); 0: none."""
    eval_opponent: str = "scripted"
    """The fixed opponent of the evaluations, as ``env.opponent`` names one (``scripted``, ``random``, a run...)."""
    eval_episodes: int = 64
    """Episodes per evaluation (per rank), in worlds of their own seeded the same every time."""


@dataclass
class Config:
    """Everything a run needs; ``algo_settings`` is the chosen algorithm's ``Settings``."""

    algo: str = "mappo"
    """The algorithm: a built-in name (mappo, ippo, idqn), ``MODULE:ATTR``, ``path/to/file.py:ATTR`` or an installed
    entry point (learners.registry); once built, its resolved reference."""
    env: EnvSettings = field(default_factory=EnvSettings)
    run: RunSettings = field(default_factory=RunSettings)
    algo_settings: Any = None
    """The algorithm's settings dataclass (filled from its table, e.g. ``[ppo]``)."""
    selfplay: SelfPlaySettings = field(default_factory=SelfPlaySettings)

    def __post_init__(self) -> None:
        cls, self.algo = _resolve(self.algo)
        if self.algo_settings is None:
            self.algo_settings = cls.Settings()

    @property
    def algorithm(self) -> type[Algorithm]:
        """The algorithm's class."""
        return _resolve(self.algo)[0]

    @property
    def section(self) -> str:
        """The TOML table of the algorithm's settings."""
        return self.algorithm.settings_table()


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


def _resolve(algo: str) -> tuple[type[Algorithm], str]:
    try:
        return resolve(algo)
    except AlgorithmError as exc:
        raise ConfigError(str(exc)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"ppo.lr=3e-4"`` -> ``(["ppo", "lr"], 0.0003)``. The value is read as TOML, else taken as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not key=value (e.g. ppo.lr=3e-4)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return [part.strip() for part in key.split(".")], value


def apply_overrides(table: dict, overrides: list[str]) -> dict:
    """A copy of the raw ``table`` with each ``key=value`` override set (nested tables created as needed)."""
    result = _deep_copy(table)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {key!r} is not a table")
        node[path[-1]] = value
    return result


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """The config from defaults, then the TOML file at ``path`` (if any), then ``overrides``."""
    table: dict = {}
    if path is not None:
        try:
            table = tomllib.loads(Path(path).read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return from_table(apply_overrides(table, list(overrides or [])))


def from_table(table: dict) -> Config:
    """Build a Config from a raw TOML table, checking every key and type.

    The built-in algorithms' tables are ignored when another algorithm trains, so one file can carry settings for
    several.
    """
    cls, reference = _resolve(table.get("algo", Config.algo))
    section = cls.settings_table()
    known = {"algo", "env", "run", "selfplay", section} | builtin_tables()
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; top-level keys are algo, env, run, {section} and selfplay")
    env = dict(table.get("env", {}))
    if env.get("scenario", DEFAULT_SCENARIO) == DEFAULT_SCENARIO and isinstance(env.get("config", {}), dict):
        # A partial config of the default world (env.config.N=4) keeps the rest of its defaults; another scenario
        # starts from an empty config, since the default's keys would mean nothing to it.
        env["config"] = {**DEFAULT_SCENARIO_CONFIG, **env.get("config", {})}
    elif "config" not in env:
        env["config"] = {}
    return Config(
        algo=reference,
        env=_fill(EnvSettings, env, "env"),
        run=_fill(RunSettings, table.get("run", {}), "run"),
        algo_settings=_fill(cls.Settings, table.get(section, {}), section),
        selfplay=_fill(SelfPlaySettings, table.get("selfplay", {}), "selfplay"),
    )


def to_table(config: Config) -> dict:
    """The config as a plain table (what :func:`to_toml` writes)."""
    return {
        "algo": config.algo,
        "env": dataclasses.asdict(config.env),
        "run": dataclasses.asdict(config.run),
        config.section: dataclasses.asdict(config.algo_settings),
        "selfplay": dataclasses.asdict(config.selfplay),
    }


def to_toml(config: Config) -> str:
    """The resolved config as TOML that :func:`load_config` reads back to an equal Config."""
    table = to_table(config)
    lines = [f"algo = {_toml_value(table.pop('algo'))}"]
    for name, section in table.items():
        lines += ["", f"[{name}]"] + [f"{key} = {_toml_value(value)}" for key, value in section.items()]
    return "\n".join(lines) + "\n"


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as TOML."""
    Path(path).write_text(to_toml(config))


def settings_from_table(algorithm: type[Algorithm], values: dict) -> Any:
    """The algorithm's ``Settings`` from a raw table (as in its TOML table or a checkpoint), checked as the config's."""
    return _fill(algorithm.Settings, values, algorithm.settings_table())


def _fill(cls: type, values: dict, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{where}] must be a table, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in [{where}]; valid keys: {', '.join(names)}")
    return cls(**{key: _coerce(value, hints[key], f"{where}.{key}") for key, value in values.items()})


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, str):
            value = [part for part in value.split(",") if part]
        if isinstance(value, (list, tuple)):
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return _deep_copy(value)
    elif origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
    elif hint is type(None) and value is None:
        return None
    raise ConfigError(f"{where} = {value!r} is not a valid {getattr(hint, '__name__', hint)}")


def _deep_copy(table: dict) -> dict:
    return {
        k: _deep_copy(v) if isinstance(v, dict) else (list(v) if isinstance(v, list) else v) for k, v in table.items()
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(str(key))
