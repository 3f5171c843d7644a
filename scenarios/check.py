"""``agora scenarios check``: is a scenario a correct, deterministic, fast PettingZoo world, in process and served?

Checks, each reported pass / fail / skip with a reason:

- ``build``: the name builds; agents, cached spaces and metadata are in order.
- ``parallel_api_test`` and ``seed_test``: PettingZoo's own checkers (``seed_test`` on the AEC view of the world,
  ``parallel_seed_test`` on the parallel one); their API warnings count as failures.
- ``values``: every observation lies in its space, rewards are finite, flags are bools, ``state()`` lies in
  ``state_space``, an ``rgb_array`` render is a uint8 (H, W, 3) picture.
- ``determinism``: two worlds with the same seed and the same actions give identical trajectories over several
  episodes (later resets unseeded), and re-seeding a used world replays the first trajectory.
- ``vector``: where a vectorised form exists, K copies seeded ``seed`` step exactly like K per-copy worlds seeded
  ``seed + i``, across partial resets.
- ``wire``: PettingZoo's ``parallel_api_test`` through :class:`agents.RemoteParallelEnv` against a server started
  in this process, and the served trajectory equals the in-process one.

Then it measures step rates: in process, the vectorised batch, and served (one world in lockstep, K worlds batched).
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium.utils.env_checker import data_equivalence
from pettingzoo import ParallelEnv
from pettingzoo.test import parallel_api_test, parallel_seed_test, seed_test
from pettingzoo.utils.conversions import parallel_to_aec

from agora_marl.scenarios.registry import DEFAULT_ALLOWED_PACKAGES, make_env, make_vector


@dataclass
class CheckSettings:
    """What ``check_scenario`` runs, and how long it may take."""

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
    rate_seconds: float = 1.0
    """Time spent measuring each step rate."""
    batch_worlds: int = 256
    """K of the vectorised and served batched step rates."""
    wire: bool = True
    """Also check over the wire (starts an in-process server on a free loopback port)."""
    allowed_packages: tuple[str, ...] = DEFAULT_ALLOWED_PACKAGES
    """Packages whose ``module:callable`` constructors may be named."""


@dataclass
class CheckResult:
    """One row of the report: ``passed`` is None for a skipped check."""

    name: str
    passed: bool | None
    detail: str = ""


@dataclass
class CheckReport:
    """Everything ``check_scenario`` found out about one scenario."""

    scenario: str
    results: list[CheckResult] = field(default_factory=list)
    rates: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No check failed."""
        return all(r.passed is not False for r in self.results)

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
    """Run every check on scenario ``name`` and measure its step rates. Never raises for a broken scenario."""
    s = settings or CheckSettings()
    report = CheckReport(name)

    def build() -> ParallelEnv:
        return make_env(name, s.config, s.allowed_packages)

    def run(check: str, fn: Callable[[], str | None]) -> bool:
        try:
            detail = fn()
        except _Skip as skip:
            report.results.append(CheckResult(check, None, str(skip)))
            return False
        except Exception as exc:
            report.results.append(CheckResult(check, False, _describe(exc)))
            return False
        report.results.append(CheckResult(check, True, detail or ""))
        return True

    if not run("build", lambda: _check_build(build)):
        return report
    run("parallel_api_test", lambda: _pettingzoo_check(lambda: parallel_api_test(build(), num_cycles=s.api_cycles)))
    run("seed_test", lambda: _check_seed(build, s))
    run("values", lambda: _check_values(name, build, s))
    run("determinism", lambda: _check_determinism(build, s))
    run("vector", lambda: _check_vector(name, build, s))
    run("step rates", lambda: _measure_rates(name, build, s, report.rates))
    if s.wire:
        run("wire", lambda: _check_wire(name, build, s, report.rates))
    else:
        report.results.append(CheckResult("wire", None, "not asked for"))
    return report


class _Skip(Exception):
    """A check that does not apply (no vectorised form, no server library...)."""


def _describe(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    place = f" (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{place}".replace("\n", " ")


def _pettingzoo_check(fn: Callable[[], Any]) -> str:
    """Run a PettingZoo checker; the API warnings it emits are failures, not noise."""
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        fn()
    api = [str(w.message) for w in caught if "pettingzoo" in w.filename.replace("\\", "/")]
    if api:
        raise AssertionError("; ".join(sorted(set(api))))
    return ""


def _check_build(build: Callable[[], ParallelEnv]) -> str:
    env = build()
    agents = list(env.possible_agents)
    assert agents and len(set(agents)) == len(agents), f"possible_agents must be non-empty and unique: {agents}"
    for agent in agents:
        assert env.observation_space(agent) is env.observation_space(agent), f"{agent}'s observation space not cached"
        assert env.action_space(agent) is env.action_space(agent), f"{agent}'s action space not cached"
    assert env.metadata.get("is_parallelizable", True), "metadata says is_parallelizable False"
    spaces = {f"{env.observation_space(a)} -> {env.action_space(a)}" for a in agents}
    env.close()
    return f"{len(agents)} agents; " + " | ".join(sorted(spaces))


def _check_seed(build: Callable[[], ParallelEnv], s: CheckSettings) -> str:
    _pettingzoo_check(lambda: parallel_seed_test(build, num_cycles=s.api_cycles))
    _pettingzoo_check(lambda: seed_test(lambda: parallel_to_aec(build()), num_cycles=s.api_cycles))
    return "parallel_seed_test and seed_test (AEC view)"


def _samplers(env: ParallelEnv, seed: int) -> dict[str, Any]:
    """Per-agent copies of the action spaces seeded apart, so sampling never touches the env's own spaces."""
    out = {}
    for i, agent in enumerate(env.possible_agents):
        space = copy.deepcopy(env.action_space(agent))
        space.seed(seed + i)
        out[agent] = space
    return out


def trajectory(env: ParallelEnv, seed: int, steps: int, with_state: bool = False, with_infos: bool = True) -> list:
    """``steps`` steps of seeded random play: the first reset seeded, later ones not. One entry per reset and step.

    Maps become plain dicts, rewards floats and flags bools, so that forms differing only in container types (a
    ``defaultdict`` of rewards in process, a plain map over the wire) compare equal.
    """
    samplers = _samplers(env, seed)

    def reset(seed: int | None) -> tuple:
        obs, infos = env.reset(seed=seed)
        return ("reset", dict(obs), dict(infos) if with_infos else None, env.state() if with_state else None)

    out: list = [reset(seed)]
    for _ in range(steps):
        if not env.agents:
            out.append(reset(None))
        obs, rewards, terminated, truncated, infos = env.step({a: samplers[a].sample() for a in env.agents})
        out.append(
            (
                "step",
                dict(obs),
                {a: float(r) for a, r in rewards.items()},
                {a: bool(t) for a, t in terminated.items()},
                {a: bool(t) for a, t in truncated.items()},
                dict(infos) if with_infos else None,
                env.state() if with_state else None,
            )
        )
    return out


def _first_difference(a: list, b: list) -> str | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if not data_equivalence(x, y):
            fields = ["kind", "obs", "rewards", "terminated", "truncated", "infos", "state"]
            if x[0] == "reset":
                fields = ["kind", "obs", "infos", "state"]
            bad = [f for f, u, v in zip(fields, x, y, strict=False) if not data_equivalence(u, v)]
            return f"entry {i} ({x[0]}) differs in {', '.join(bad)}"
    return None if len(a) == len(b) else f"lengths differ: {len(a)} vs {len(b)}"


def _check_values(name: str, build: Callable[[], ParallelEnv], s: CheckSettings) -> str:
    env = build()
    state_space = getattr(env, "state_space", None)
    for entry in trajectory(env, s.seed, s.steps, with_state=state_space is not None):
        obs, state = entry[1], entry[-1]
        for agent, value in obs.items():
            space = env.observation_space(agent)
            assert space.contains(value), f"{agent}'s observation {value!r:.120} is outside {space}"
        if entry[0] == "step":
            for agent in obs:
                assert np.isfinite(entry[2][agent]), f"{agent}'s reward {entry[2][agent]} is not finite"
                assert isinstance(entry[3][agent], (bool, np.bool_)), f"{agent}'s terminated is not a bool"
                assert isinstance(entry[4][agent], (bool, np.bool_)), f"{agent}'s truncated is not a bool"
        if state_space is not None:
            assert state_space.contains(state), f"state {state!r:.120} is outside {state_space}"
    env.close()
    detail = "observations, rewards, flags" + (", state" if state_space is not None else "")
    if "rgb_array" in env.metadata.get("render_modes", []):
        seen = make_env(name, {**s.config, "render_mode": "rgb_array"}, s.allowed_packages)
        seen.reset(seed=s.seed)
        frame = seen.render()
        seen.close()
        ok = isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        assert ok, f"render() gave {type(frame).__name__} {getattr(frame, 'shape', '')}, not uint8 (H, W, 3)"
        detail += f", rgb_array {frame.shape[1]}x{frame.shape[0]}"
    return detail


def _check_determinism(build: Callable[[], ParallelEnv], s: CheckSettings) -> str:
    env_a, env_b = build(), build()
    with_state = getattr(env_a, "state_space", None) is not None
    first = trajectory(env_a, s.seed, s.steps, with_state)
    other = trajectory(env_b, s.seed, s.steps, with_state)
    difference = _first_difference(first, other)
    assert difference is None, f"two worlds with seed {s.seed} and the same actions diverge: {difference}"
    again = trajectory(env_a, s.seed, s.steps, with_state)
    difference = _first_difference(first, again)
    assert difference is None, f"re-seeding a used world does not replay its first trajectory: {difference}"
    episodes = sum(entry[0] == "reset" for entry in first)
    env_a.close()
    env_b.close()
    return f"{s.steps} steps over {episodes} episodes, twice, and re-seeded"


def _check_vector(name: str, build: Callable[[], ParallelEnv], s: CheckSettings) -> str:
    k = s.vector_copies
    vector = make_vector(name, k, s.config)
    if vector is None:
        raise _Skip("no vectorised form")
    singles = [build() for _ in range(k)]
    agents = list(vector.possible_agents)
    assert agents == list(singles[0].possible_agents), "vector and per-copy forms have different agents"
    samplers = [_samplers(env, s.seed + 1000 * i) for i, env in enumerate(singles)]
    batch = vector.reset(seed=s.seed)
    obs = [env.reset(seed=s.seed + i)[0] for i, env in enumerate(singles)]
    with_state = vector.state_space is not None
    resets = 0
    for t in range(s.steps):
        for i, env in enumerate(singles):
            for a in agents:
                assert data_equivalence(batch[a][i], obs[i][a]), f"step {t}: copy {i} observation of {a} differs"
            if with_state:
                assert data_equivalence(vector.state()[i], env.state()), f"step {t}: copy {i} state differs"
        actions = [{a: samplers[i][a].sample() for a in agents} for i in range(k)]
        stacked = {a: np.stack([np.asarray(actions[i][a]) for i in range(k)]) for a in agents}
        batch, rewards, terminated, truncated = vector.step(stacked)
        assert rewards.dtype == np.float32 and rewards.shape == (k, len(agents)), "rewards must be float32 (K, N)"
        assert terminated.dtype == truncated.dtype == np.bool_, "terminated and truncated must be bool (K, N)"
        done = []
        for i, env in enumerate(singles):
            obs[i], rew, term, trunc, _ = env.step(actions[i])
            for j, a in enumerate(agents):
                got = (float(rewards[i, j]), bool(terminated[i, j]), bool(truncated[i, j]))
                want = (rew[a], term[a], trunc[a])
                assert got == want, f"step {t}: copy {i} {a}: (reward, terminated, truncated) {got} vs per-copy {want}"
            if not env.agents:
                done.append(i)
                obs[i] = env.reset()[0]
        if done:
            resets += len(done)
            batch = vector.reset(copies=np.array(done))
    return f"{k} copies, {s.steps} steps, {resets} partial resets: identical to per-copy worlds seeded seed + i"


def _check_wire(name: str, build: Callable[[], ParallelEnv], s: CheckSettings, rates: dict[str, str]) -> str:
    try:
        from agora_marl.agents import BatchedWorlds, RemoteParallelEnv
        from agora_marl.envserver.server import EnvServer, ServerConfig
    except ImportError as exc:
        raise _Skip(f"the server or client library is not importable: {exc}") from None
    server = EnvServer(ServerConfig(bind="tcp://127.0.0.1:0", allowed_packages=tuple(s.allowed_packages)))
    server.start_in_thread()
    try:
        remote = RemoteParallelEnv(server.address, name, s.config, seed=s.seed, timeout_s=30.0)
        _pettingzoo_check(lambda: parallel_api_test(remote, num_cycles=s.api_cycles))
        remote.close()
        remote = RemoteParallelEnv(server.address, name, s.config, seed=s.seed, timeout_s=30.0)
        served = trajectory(remote, s.seed, s.steps, with_infos=False)
        local = trajectory(build(), s.seed, s.steps, with_infos=False)
        difference = _first_difference(served, local)
        assert difference is None, f"the served trajectory differs from the in-process one: {difference}"
        rates["served, 1 world lockstep"] = _rate_of(lambda: _play(remote, 64), s.rate_seconds, 64, "steps/s")
        remote.close()
        k = s.batch_worlds
        with BatchedWorlds(server.address, name, s.config, num_worlds=k, seed=s.seed) as batched:
            batched.reset()
            samplers = _samplers(build(), s.seed)
            actions = {a: np.stack([sp.sample() for _ in range(k)]) for a, sp in samplers.items()}
            rates[f"served, K={k} batched"] = _rate_of(
                lambda: batched.step(actions), s.rate_seconds, k, "world-steps/s"
            )
    finally:
        server.stop()
    return "parallel_api_test over the wire; served trajectory equals in-process"


def _play(env: ParallelEnv, steps: int) -> None:
    """``steps`` steps of fixed actions (the first sample of each space), resetting as episodes end."""
    actions = {a: env.action_space(a).sample() for a in env.possible_agents}
    for _ in range(steps):
        if not env.agents:
            env.reset()
        env.step({a: actions[a] for a in env.agents})


def _rate_of(fn: Callable[[], Any], seconds: float, per_call: int, unit: str) -> str:
    """Call ``fn`` (which does ``per_call`` steps) for about ``seconds``; the rate as text."""
    fn()  # warm up caches and lazy imports outside the timing
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds and calls < 1_000_000:
        fn()
        calls += 1
    return f"{calls * per_call / max(elapsed, 1e-9):,.0f} {unit}"


def _measure_rates(name: str, build: Callable[[], ParallelEnv], s: CheckSettings, rates: dict[str, str]) -> str:
    env = build()
    env.reset(seed=s.seed)
    n = len(env.possible_agents)
    rates["in process, 1 world"] = _rate_of(lambda: _play(env, 64), s.rate_seconds, 64, "steps/s")
    env.close()
    vector = make_vector(name, s.batch_worlds, s.config)
    if vector is None:
        return f"{n} agents per world"
    vector.reset(seed=s.seed)
    samplers = _samplers(build(), s.seed)
    actions = {a: np.stack([sp.sample() for _ in range(s.batch_worlds)]) for a, sp in samplers.items()}

    def batch_step() -> None:
        # What a server does per batched step: step every copy, reset the finished ones.
        _, _, terminated, truncated = vector.step(actions)
        done = np.flatnonzero((terminated | truncated).any(1))
        if done.size:
            vector.reset(copies=done)

    label = f"in process, vectorised K={s.batch_worlds}"
    rates[label] = _rate_of(batch_step, s.rate_seconds, s.batch_worlds, "world-steps/s")
    return f"{n} agents per world"
