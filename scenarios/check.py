"""The correctness half of ``agora scenarios check``: is a scenario a correct, deterministic PettingZoo world?

Checks, each reported pass / fail / skip with a reason:

- ``build``: the name builds; agents, cached spaces and metadata are in order.
- ``parallel_api_test`` and ``seed_test``: PettingZoo's own checkers (``seed_test`` on the AEC view of the world,
  ``parallel_seed_test`` on the parallel one); their API warnings count as failures.
- ``values``: every observation lies in its space, rewards are finite numbers, flags are bools, ``state()`` lies in
  ``state_space``.
- ``render``: an ``rgb_array`` render is a uint8 (H, W, 3) picture, in the per-copy form (what ``agora record``
  draws) and in the vectorised one (what a server draws for a vector-backed world), the two agreeing on copy 0; a
  form that renders while the other cannot fails, and a world that renders in neither is skipped with what to add.
- ``determinism``: two worlds with the same seed and the same actions give identical trajectories over several
  episodes (later resets unseeded), and re-seeding a used world replays the first trajectory.
- ``vector``: where a vectorised form exists, K copies seeded ``seed`` step exactly like K per-copy worlds seeded
  ``seed + i``, across partial resets.

Every check fails by raising :class:`CheckFailed` (what is wrong, and the usual fix), never by ``assert``, so that
``python -O`` checks as much as plain ``python``. PettingZoo's own checkers do use ``assert``: under ``-O`` they
only catch crashes and warnings, and their rows say so.

The step rates are measured in scenarios/rates.py; the check over the wire (a served world against the in-process
one) lives in launch/scenario_wire.py, which may import the server and the client; ``agora scenarios check``
composes the three into one report.
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium.utils.env_checker import data_equivalence
from pettingzoo import ParallelEnv
from pettingzoo.test import parallel_api_test, parallel_seed_test, seed_test
from pettingzoo.utils.conversions import parallel_to_aec

from agora_marl.scenarios.registry import DEFAULT_ALLOWED_PACKAGES, make_env, make_vector
from agora_marl.scenarios.vector import VectorScenario


class CheckFailed(Exception):
    """A check found the scenario wrong: ``problem`` says what, ``fix`` the usual remedy."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; fix: {fix}")
        self.problem = problem
        self.fix = fix


class CheckSkipped(Exception):
    """A check that does not apply (no vectorised form...): the row reads skip, with this reason."""


@dataclass
class CheckSettings:
    """What ``check_scenario`` runs (the step rates and the wire check read the same settings)."""

    config: dict = field(default_factory=dict)
    """Keyword config of the scenario's constructor."""
    seed: int = 0
    """Seed of every seeded check."""
    api_cycles: int = 200
    """Steps per episode in PettingZoo's ``parallel_api_test`` (it runs two episodes)."""
    steps: int = 300
    """Steps of the value, determinism, vector and wire trajectory checks (over as many episodes as fit)."""
    vector_copies: int = 4
    """Copies in the vector-vs-per-copy identity check."""
    allowed_packages: tuple[str, ...] = DEFAULT_ALLOWED_PACKAGES
    """Packages whose ``module:callable`` constructors may be named."""

    def build(self, name: str, **overrides: Any) -> ParallelEnv:
        """A fresh world of scenario ``name`` with this config (and ``overrides``)."""
        return make_env(name, {**self.config, **overrides}, self.allowed_packages)


@dataclass
class CheckResult:
    """One row of the report: ``passed`` is None for a skipped check."""

    name: str
    passed: bool | None
    detail: str = ""


@dataclass
class CheckReport:
    """Everything the checks (and the rate measurements) found out about one scenario."""

    scenario: str
    results: list[CheckResult] = field(default_factory=list)
    rates: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No check failed."""
        return all(r.passed is not False for r in self.results)

    @property
    def built(self) -> bool:
        """The ``build`` check passed: the other checks and the rates can run."""
        return any(r.name == "build" and r.passed for r in self.results)

    def run(self, check: str, fn: Callable[[], str | None]) -> bool:
        """Run one check and add its row: pass with ``fn``'s detail, skip on CheckSkipped, fail on any exception."""
        try:
            detail = fn()
        except CheckSkipped as skip:
            self.results.append(CheckResult(check, None, str(skip)))
            return False
        except Exception as exc:
            self.results.append(CheckResult(check, False, describe(exc)))
            return False
        self.results.append(CheckResult(check, True, detail or ""))
        return True

    def table(self) -> str:
        """The report as aligned text: checks, then step rates, then a verdict."""
        mark = {True: "pass", False: "FAIL", None: "skip"}
        width = max([len(r.name) for r in self.results] + [len(k) for k in self.rates] + [5])
        lines = [f"scenario {self.scenario}", f"  {'check':<{width}}  result  detail"]
        lines += [f"  {r.name:<{width}}  {mark[r.passed]:<6}  {r.detail}" for r in self.results]
        if self.rates:
            lines.append(f"  {'step rate':<{width}}")
            lines += [f"  {k:<{width}}  {v}" for k, v in self.rates.items()]
        failed = sum(r.passed is False for r in self.results)
        skipped = sum(r.passed is None for r in self.results)
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"{verdict}: {len(self.results) - failed - skipped} passed, {failed} failed, {skipped} skipped")
        return "\n".join(lines)


def check_scenario(name: str, settings: CheckSettings | None = None) -> CheckReport:
    """Run every in-process correctness check on scenario ``name``. Never raises for a broken scenario.

    A name that does not build stops after the ``build`` row.
    """
    s = settings or CheckSettings()
    report = CheckReport(name)
    if not report.run("build", lambda: _check_build(s.build(name))):
        return report
    report.run("parallel_api_test", lambda: _api_test(s.build(name), s.api_cycles))
    report.run("seed_test", lambda: _check_seed(lambda: s.build(name), s))
    report.run("values", lambda: _check_values(name, s))
    report.run("render", lambda: _check_render(name, s))
    report.run("determinism", lambda: _check_determinism(name, s))
    report.run("vector", lambda: _check_vector(name, s))
    return report


def describe(exc: BaseException) -> str:
    """One line for a failed check: a CheckFailed's own message, else the error with the place it was raised."""
    if isinstance(exc, CheckFailed):
        return str(exc).replace("\n", " ")
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    place = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{place}".replace("\n", " ")


def pettingzoo_check(fn: Callable[[], Any]) -> str:
    """Run a PettingZoo checker; the API warnings it emits are failures, not noise. Returns the row's detail."""
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        fn()
    api = [str(w.message) for w in caught if "pettingzoo" in w.filename.replace("\\", "/")]
    if api:
        raise CheckFailed(f"PettingZoo's checker warned: {'; '.join(sorted(set(api)))}", "do what the warning asks")
    # PettingZoo checks with `assert`, which python -O strips: say so rather than pass silently.
    return "python -O: PettingZoo's asserts are off, only crashes and warnings count" if sys.flags.optimize else ""


def _api_test(env: ParallelEnv, cycles: int) -> str:
    return pettingzoo_check(lambda: parallel_api_test(env, num_cycles=cycles))


def _check_build(env: ParallelEnv) -> str:
    agents = list(env.possible_agents)
    if not agents or len(set(agents)) != len(agents):
        raise CheckFailed(f"possible_agents must be non-empty and unique: {agents}", "name every agent once")
    for agent in agents:
        for kind, space_of in (("observation", env.observation_space), ("action", env.action_space)):
            if space_of(agent) is not space_of(agent):
                raise CheckFailed(
                    f"{agent}'s {kind} space is a new object on every call",
                    "build each space once and return that object (the Scenario adapter caches them for you)",
                )
    if not env.metadata.get("is_parallelizable", True):
        raise CheckFailed(
            "metadata says is_parallelizable False",
            "agora hosts simultaneous-move worlds only; mark the world parallelizable if every agent may act at once",
        )
    spaces = {f"{env.observation_space(a)} -> {env.action_space(a)}" for a in agents}
    env.close()
    return f"{len(agents)} agents; " + " | ".join(sorted(spaces))


def _check_seed(build: Callable[[], ParallelEnv], s: CheckSettings) -> str:
    notes = {pettingzoo_check(lambda: parallel_seed_test(build, num_cycles=s.api_cycles))}
    notes.add(pettingzoo_check(lambda: seed_test(lambda: parallel_to_aec(build()), num_cycles=s.api_cycles)))
    return "; ".join(["parallel_seed_test and seed_test (AEC view)", *sorted(n for n in notes if n)])


def samplers(env: ParallelEnv, seed: int) -> dict[str, Any]:
    """Per-agent copies of the action spaces seeded apart, so sampling never touches the env's own spaces."""
    out = {}
    for i, agent in enumerate(env.possible_agents):
        space = copy.deepcopy(env.action_space(agent))
        space.seed(seed + i)
        out[agent] = space
    return out


def _play(env: ParallelEnv, seed: int, steps: int) -> Iterator[tuple]:
    """Seeded random play as the env returns it: ``("reset", obs, infos)`` and ``("step", obs, rewards, terminated,
    truncated, infos)``, the first reset seeded and later ones not."""
    actions = samplers(env, seed)
    yield ("reset", *env.reset(seed=seed))
    for _ in range(steps):
        if not env.agents:
            yield ("reset", *env.reset())
        yield ("step", *env.step({a: actions[a].sample() for a in env.agents}))


def trajectory(env: ParallelEnv, seed: int, steps: int, with_state: bool = False, with_infos: bool = True) -> list:
    """``steps`` steps of seeded random play: the first reset seeded, later ones not. One entry per reset and step.

    Maps become plain dicts, rewards floats and flags bools, so that forms differing only in container types (a
    ``defaultdict`` of rewards in process, a plain map over the wire) compare equal.
    """
    out: list = []
    for entry in _play(env, seed, steps):
        state = env.state() if with_state else None
        infos = dict(entry[-1]) if with_infos else None
        if entry[0] == "reset":
            out.append(("reset", dict(entry[1]), infos, state))
            continue
        _, obs, rewards, terminated, truncated, _ = entry
        rewards = {a: float(r) for a, r in rewards.items()}
        flags = [{a: bool(t) for a, t in terminated.items()}, {a: bool(t) for a, t in truncated.items()}]
        out.append(("step", dict(obs), rewards, *flags, infos, state))
    return out


def same(a: Any, b: Any) -> bool:
    """gymnasium's ``data_equivalence``, except that NaN equals NaN: a NaN reward fails ``values``, not also
    ``determinism``."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (float, np.floating)) and np.isnan(a) and np.isnan(b):
        return True
    if isinstance(a, np.ndarray) and a.dtype.kind in "fc" and a.shape == b.shape and a.dtype == b.dtype:
        return bool(np.allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True))
    return data_equivalence(a, b)


def first_difference(a: list, b: list) -> str | None:
    """Where two trajectories first differ (entry and fields), or None if they are the same."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if not same(x, y):
            fields = ["kind", "obs", "rewards", "terminated", "truncated", "infos", "state"]
            if x[0] == "reset":
                fields = ["kind", "obs", "infos", "state"]
            bad = [f for f, u, v in zip(fields, x, y, strict=False) if not same(u, v)]
            return f"entry {i} ({x[0]}) differs in {', '.join(bad)}"
    return None if len(a) == len(b) else f"lengths differ: {len(a)} vs {len(b)}"


_IS_FLAG = (bool, np.bool_)


def _check_values(name: str, s: CheckSettings) -> str:
    env = s.build(name)
    state_space = getattr(env, "state_space", None)
    for entry in _play(env, s.seed, s.steps):
        for agent, value in entry[1].items():
            space = env.observation_space(agent)
            if not space.contains(value):
                raise CheckFailed(
                    f"{agent}'s observation {value!r:.120} is outside {space}",
                    "give observations the space's dtype and shape and keep them in its bounds, or widen the space",
                )
        if entry[0] == "step":
            _, _, rewards, terminated, truncated, _ = entry
            for agent in entry[1]:
                try:
                    finite = bool(np.isfinite(float(rewards[agent])))
                except (TypeError, ValueError):
                    finite = False
                if not finite:
                    raise CheckFailed(
                        f"{agent}'s reward {rewards[agent]!r} is not a finite number",
                        "return a finite float from reward() (guard divisions, logs and 0 * inf)",
                    )
                for flag, flags in (("terminated", terminated), ("truncated", truncated)):
                    if not isinstance(flags[agent], _IS_FLAG):
                        raise CheckFailed(
                            f"{agent}'s {flag} flag {flags[agent]!r} is a {type(flags[agent]).__name__}, not a bool",
                            "return True or False",
                        )
        if state_space is not None and not state_space.contains(state := env.state()):
            raise CheckFailed(
                f"state {state!r:.120} is outside {state_space}",
                "give state() the state space's dtype and shape and keep it in its bounds, or widen the space",
            )
    env.close()
    return "observations, rewards, flags" + (", state" if state_space is not None else "")


RENDER_FIX = (
    "give a Scenario a render(self), or a VectorScenario a render(self, copy=0), that returns an RGB picture as "
    "np.uint8 of shape (height, width, 3) (docs/scenarios.md, 'Rendering a vectorised world')"
)


def _frame_problem(frame: Any) -> str | None:
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3:
        return None
    return f"{type(frame).__name__} {getattr(frame, 'dtype', '')} {getattr(frame, 'shape', '')}, not uint8 (H, W, 3)"


def _draw(render: Callable[[], Any], what: str) -> Any:
    try:
        return render()
    except TypeError as exc:  # most often a VectorScenario.render(self) that takes no copy index
        raise CheckFailed(f"{what} raised TypeError: {exc}", RENDER_FIX) from None


def _check_render(name: str, s: CheckSettings) -> str:
    env = s.build(name)
    declared = "rgb_array" in env.metadata.get("render_modes", [])
    env.close()
    vector = make_vector(name, s.vector_copies, s.config)
    vector_draws = vector is not None and type(vector).render is not VectorScenario.render
    if not declared and not vector_draws:
        raise CheckSkipped(
            "does not render (metadata render_modes lacks rgb_array): agora record and the server's render op "
            f"need frames; {RENDER_FIX}"
        )
    if vector is not None and not vector_draws:
        raise CheckFailed(
            "the per-copy form renders but the vectorised form has no render(copy): a served vector-backed world "
            "(create with copies >= 2 and join, as learners make them) cannot draw",
            "add def render(self, copy=0) -> np.ndarray (uint8, (H, W, 3)) of that copy to the VectorScenario",
        )
    if not declared:
        raise CheckFailed(
            "the vectorised form renders but the per-copy form declares no rgb_array render mode, so agora record "
            "cannot draw it",
            "register vector_env(YourVectorScenario) as the per-copy form (its metadata says rgb_array when render "
            "is defined), or give your per-copy form metadata['render_modes'] = ['rgb_array'] and a render()",
        )
    seen = s.build(name, render_mode="rgb_array")
    seen.reset(seed=s.seed)
    frame = _draw(seen.render, "the per-copy form's render()")
    seen.close()
    if problem := _frame_problem(frame):
        raise CheckFailed(f"render() gave {problem}", RENDER_FIX + ", when render_mode is rgb_array")
    detail = f"rgb_array {frame.shape[1]}x{frame.shape[0]}"
    if vector is None:
        return detail
    vector.reset(seed=s.seed)
    for copy_index in (0, vector.num_copies - 1):
        copy_frame = _draw(lambda i=copy_index: vector.render(i), f"the vectorised form's render({copy_index})")
        if problem := _frame_problem(copy_frame):
            raise CheckFailed(f"the vectorised form's render({copy_index}) gave {problem}", RENDER_FIX)
        if copy_index == 0 and not same(copy_frame, frame):
            raise CheckFailed(
                "the vectorised form's render(0) differs from the per-copy form's render() after the same seeded reset",
                "draw copy `copy` from its own arrays only, as the per-copy form draws its world",
            )
    return detail + f"; vectorised render(copy) of {vector.num_copies} copies, copy 0 equal to the per-copy form"


_SEED_FIX = "draw every random number from self.rng (the seeded generator), never np.random, random, time or set order"


def _check_determinism(name: str, s: CheckSettings) -> str:
    env_a, env_b = s.build(name), s.build(name)
    with_state = getattr(env_a, "state_space", None) is not None
    first = trajectory(env_a, s.seed, s.steps, with_state)
    other = trajectory(env_b, s.seed, s.steps, with_state)
    if difference := first_difference(first, other):
        raise CheckFailed(f"two worlds with seed {s.seed} and the same actions diverge: {difference}", _SEED_FIX)
    again = trajectory(env_a, s.seed, s.steps, with_state)
    if difference := first_difference(first, again):
        raise CheckFailed(
            f"re-seeding a used world does not replay its first trajectory: {difference}",
            "reset(seed=...) must reseed every generator the world uses; " + _SEED_FIX,
        )
    episodes = sum(entry[0] == "reset" for entry in first)
    env_a.close()
    env_b.close()
    return f"{s.steps} steps over {episodes} episodes, twice, and re-seeded"


_COPY_FIX = "copy i reset with seed s must replay the per-copy form reset with s + i (see VectorScenario.seed_copies)"


def _check_vector(name: str, s: CheckSettings) -> str:
    k = s.vector_copies
    vector = make_vector(name, k, s.config)
    if vector is None:
        raise CheckSkipped("no vectorised form")
    singles = [s.build(name) for _ in range(k)]
    agents = list(vector.possible_agents)
    if agents != list(singles[0].possible_agents):
        raise CheckFailed("vector and per-copy forms have different agents", "give both forms the same agents")
    actors = [samplers(env, s.seed + 1000 * i) for i, env in enumerate(singles)]
    batch = vector.reset(seed=s.seed)
    obs = [env.reset(seed=s.seed + i)[0] for i, env in enumerate(singles)]
    with_state = vector.state_space is not None
    resets = 0
    for t in range(s.steps):
        for i, env in enumerate(singles):
            for a in agents:
                if not same(batch[a][i], obs[i][a]):
                    raise CheckFailed(
                        f"step {t}: copy {i} observation of {a} differs from the per-copy form", _COPY_FIX
                    )
            if with_state and not same(vector.state()[i], env.state()):
                raise CheckFailed(f"step {t}: copy {i} state differs from the per-copy form", _COPY_FIX)
        actions = [{a: actors[i][a].sample() for a in agents} for i in range(k)]
        stacked = {a: np.stack([np.asarray(actions[i][a]) for i in range(k)]) for a in agents}
        batch, rewards, terminated, truncated = vector.step(stacked)
        if rewards.dtype != np.float32 or rewards.shape != (k, len(agents)):
            raise CheckFailed(f"rewards are {rewards.dtype} {rewards.shape}", "return rewards as float32 (K, N)")
        if terminated.dtype != np.bool_ or truncated.dtype != np.bool_:
            raise CheckFailed("terminated or truncated is not bool", "return both flags as bool (K, N)")
        done = []
        for i, env in enumerate(singles):
            obs[i], rew, term, trunc, _ = env.step(actions[i])
            for j, a in enumerate(agents):
                got = (float(rewards[i, j]), bool(terminated[i, j]), bool(truncated[i, j]))
                want = (float(rew[a]), bool(term[a]), bool(trunc[a]))
                if not same(got, want):
                    raise CheckFailed(
                        f"step {t}: copy {i} {a}: (reward, terminated, truncated) {got} vs per-copy {want}", _COPY_FIX
                    )
            if not env.agents:
                done.append(i)
                obs[i] = env.reset()[0]
        if done:
            resets += len(done)
            batch = vector.reset(copies=np.array(done))
    return f"{k} copies, {s.steps} steps, {resets} partial resets: identical to per-copy worlds seeded seed + i"
