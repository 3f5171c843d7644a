"""The learner API: the one module an algorithm imports to plug into agora (docs/learners.md, 'Writing a learner').

An algorithm is a class: what it *declares* (class attributes) and what it *implements* (two methods)::

    from dataclasses import dataclass
    from agora_marl.learners import api

    @dataclass
    class Settings:
        lr: float = 3e-4
        \"\"\"Adam learning rate.\"\"\"

    class MyAlgo(api.Algorithm):
        name = "my_algo"                 # its identity: the run directory's name, the checkpoint's algorithm
        Settings = Settings              # a dataclass; its TOML table is [my_algo] (``table`` to change it)
        actions = {"discrete"}           # the action-space kinds it handles (api.ACTION_KINDS)
        state = "never"                  # reads the world's global state: "never", "optional" or "required"
        partial_seats = True             # can train env.seats while other clients hold the other seats
        self_play = False                # can train against snapshots of its own acting policy
        on_policy = True                 # documentation: off-policy learners register their replay memory

        def make_policy(self, spec, seats, settings): ...   # the acting policy, untrained (api.Policy)
        def train(self, session): ...                       # the whole loop, top to bottom

``train`` gets a :class:`Session`, the harness's side of the contract: this rank's worlds, the settings, the device
and random streams, and four calls (:meth:`Session.register`, :meth:`Session.begin_update`,
:meth:`Session.end_update`, :meth:`Session.logs`). Everything that is not the algorithm is the harness's job:
opening the worlds, opponents and the self-play pool, heartbeats, episode statistics and the return metrics (over
every rank), reseeding and resetting the worlds at checkpoint boundaries so that a resumed run repeats the
uninterrupted one bit for bit, the checkpoint (its schema checked on load), logging, the parameter-sync check
across MPI ranks, and stopping. ``make_policy`` is the only constructor of the acting policy: training, evaluation,
``agora play``, ``agora record``, opponents and self-play snapshots all rebuild it with it.

``algo=`` names an algorithm as a built-in name (``mappo``), ``MODULE:ATTR``, ``path/to/file.py:ATTR`` or an entry
point of the group ``agora.learners``; the resolved reference is recorded in the run, so every later process loads
the same class (learners.registry).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
from gymnasium import spaces

from agora_marl.agents.batched import BatchResult, PendingStep
from agora_marl.envserver.protocol import WorldSpec

__all__ = [
    "ACTION_KINDS",
    "STATE_MODES",
    "Algorithm",
    "BatchResult",
    "Counters",
    "PendingStep",
    "Policy",
    "Session",
    "Stateful",
    "WorldSpec",
    "Worlds",
    "action_kind",
]

#: The action-space kinds an algorithm may declare in ``actions``, one per gymnasium space class.
ACTION_KINDS = ("discrete", "multi_discrete", "box", "multi_binary")
#: What ``state`` may declare: the world's global state is ``never`` read, used where granted (``optional``: the
#: algorithm documents its fallback) or ``required`` (the harness refuses runs that grant none).
STATE_MODES = ("never", "optional", "required")


def action_kind(space: spaces.Space) -> str:
    """The kind of an action space, as ``Algorithm.actions`` names it (``"discrete"``, ``"box"``...)."""
    kinds = {
        spaces.Discrete: "discrete",
        spaces.MultiDiscrete: "multi_discrete",
        spaces.Box: "box",
        spaces.MultiBinary: "multi_binary",
    }
    return kinds.get(type(space), type(space).__name__.lower())


@runtime_checkable
class Stateful(Protocol):
    """Anything a checkpoint can hold: networks, optimizers, replay buffers, :class:`Counters`."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


@runtime_checkable
class Policy(Protocol):
    """The acting policy: an ``nn.Module`` that acts for its seats in many worlds at once.

    ``act`` takes ``{agent: (B, *obs_shape)}`` for any of ``possible_agents`` and returns ``{agent: (B, ...)}``:
    values of the agent's action space (what the server takes). ``greedy=False`` is the exploring behaviour
    (sampled, epsilon-greedy...), which self-play snapshots use. Its ``state_dict`` is what checkpoints keep.
    """

    possible_agents: list[str]
    observation_spaces: dict[str, spaces.Space]
    action_spaces: dict[str, spaces.Space]

    def act(self, obs: dict[str, np.ndarray], greedy: bool = True) -> dict[str, np.ndarray]: ...

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any: ...


class Worlds(Protocol):
    """This rank's ``K`` worlds as the algorithm sees them: its own seats only, stepped as arrays.

    Served worlds (``agents.BatchedWorlds``) and self-play's (the other side played by snapshots) look the same.
    Rows are worlds, columns follow ``possible_agents``. The harness resets them (:meth:`Session.begin_update`); an
    algorithm only steps them. Every step is counted, and its rewards and episode ends make the return metrics.
    """

    possible_agents: list[str]
    """The learner's seats (``env.seats``, default every agent of the world)."""
    observation_spaces: dict[str, spaces.Space]
    action_spaces: dict[str, spaces.Space]
    state_space: spaces.Space | None
    """The global state's space, or None where the run grants no state (the algorithm declared ``never``, the
    scenario has none, or the learner holds some seats only: ``partial``)."""
    spec: WorldSpec
    """The whole world: every agent's spaces, scenario and config."""
    num_worlds: int
    layout: str
    """``"agents"``: observations and actions as ``{agent: (K, ...)}``; ``"stacked"``: one ``(K, N, ...)`` array
    (every agent shares its spaces), the first of the algorithm's ``layouts`` the world allows."""
    partial: bool
    """Other clients hold the other seats (``env.seats`` with an opponent): no global state is granted."""

    def step(self, actions: dict[str, np.ndarray] | np.ndarray) -> BatchResult:
        """Step every world with the seats' actions; the result of the step (auto-reset worlds: ``final_obs``)."""
        ...

    def step_async(self, actions: dict[str, np.ndarray] | np.ndarray, rows: slice | None = None) -> PendingStep:
        """Send one step of the worlds ``rows`` (default all) without waiting: pipelined rollouts keep several
        parts of the worlds in flight (``Algorithm.world_parts``)."""
        ...

    def step_wait(self, pending: PendingStep) -> BatchResult:
        """The result of a step sent with :meth:`step_async` (for its rows only)."""
        ...


class Session(Protocol):
    """What ``Algorithm.train`` is handed: one rank's training run (learners.session implements it).

    The loop's shape::

        policy = self.make_policy(session.spec, session.seats, session.settings).to(session.device)
        session.register(policy, optimizer=optimizer)       # restored on resume, else rank 0's broadcast
        while not session.done:
            reset = session.begin_update()                  # a BatchResult when the worlds were reset, else None
            ...                                             # step session.worlds, learn
            session.end_update(metrics)                     # log, check, checkpoint, stop (raises to stop)
    """

    config: Any
    """The run's whole config (``learners.config.Config``: ``env``, ``run``, ``selfplay``), to read only."""
    settings: Any
    """The algorithm's settings (its ``Settings`` dataclass, filled from its TOML table and overrides)."""
    worlds: Worlds
    spec: WorldSpec
    seats: list[str]
    """The agents this learner trains (``worlds.possible_agents``)."""
    device: torch.device
    rng: np.random.Generator
    """This rank's numpy generator; reseeded, with torch's, at every reset of the worlds (exact resume)."""
    rank: int
    ranks: int
    total_steps: int
    """``run.total_steps``: environment steps to train for, summed over ranks."""

    @property
    def step(self) -> int:
        """Environment steps so far, summed over ranks (one world advancing one tick is one step)."""
        ...

    @property
    def update(self) -> int:
        """The latest update begun (1 for the first; 0 before it); a resumed run continues the count."""
        ...

    @property
    def done(self) -> bool:
        """The run reached ``total_steps``: stop beginning updates."""
        ...

    @property
    def resumed(self) -> bool:
        """:meth:`register` restored the objects from a checkpoint."""
        ...

    def register(self, policy: Policy, per_rank: Mapping[str, Stateful] | None = None, **shared: Stateful) -> None:
        """Hand the harness the acting policy and the other stateful objects, once, before the first update.

        ``policy`` is the module that ``make_policy`` built (its ``state_dict`` is what eval and play load);
        ``shared`` are the same on every rank (critics, target networks, optimizers, :class:`Counters`);
        ``per_rank`` differ by rank (a replay memory of the rank's own worlds). On resume they are loaded from the
        checkpoint; on a fresh run every rank takes rank 0's parameters (modules in ``shared`` and the policy).
        Every checkpoint writes them. In self-play the pool starts from ``policy`` here. Collective.
        """
        ...

    def begin_update(self) -> BatchResult | None:
        """Begin the next update. At a checkpoint boundary (and the first update of a process) the harness reseeds
        torch and :attr:`rng` from (seed, rank, update) and resets the worlds: it returns that reset's result (start
        from its ``obs``, forget unfinished episodes); otherwise None (continue from the last step's result)."""
        ...

    def ends_at_boundary(self, update: int) -> bool:
        """``update`` is checkpointed or ends the run: it must end (:meth:`end_update`) before the next begins. An
        algorithm that overlaps an update's learning with the next rollout asks before overlapping."""
        ...

    def logs(self, update: int | None = None) -> bool:
        """:meth:`end_update` of ``update`` (default the latest) writes a metrics row: compute costly metrics then."""
        ...

    def end_update(self, metrics: Mapping[str, float] | None = None, update: int | None = None) -> None:
        """End ``update`` (default the latest begun; updates end in order, each once) on every rank.

        ``metrics`` are this rank's (loss, q values...): at logged updates the harness averages them over ranks and
        writes them with its own (``return``, ``return/<team>``, ``return_recent``, ``episode_length``, ``episodes``,
        ``steps_per_s``, ``opponent_late``/``own_late``, self-play's). Then it checks that the ranks' parameters
        agree (every ``run.sync_every``), checkpoints when due and raises ``TrainingStopped`` when the ranks agreed
        to stop: let it propagate. Collective.
        """
        ...


class Counters(dict):
    """Named numbers that a checkpoint keeps (gradient steps taken...): a dict with ``state_dict``."""

    def state_dict(self) -> dict[str, Any]:
        return dict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clear()
        self.update(state)


class Algorithm:
    """The base of every algorithm: override the declarations and the two methods (see the module docstring).

    The harness makes one instance per process (``cls()``) and calls ``make_policy`` and ``train`` on it.
    """

    name: ClassVar[str] = ""
    """Identity: the run directory's name, the checkpoint's algorithm."""
    Settings: ClassVar[type]
    """A dataclass of the settings, a docstring under every field; every field has a default."""
    table: ClassVar[str] = ""
    """Its TOML table (default: ``name``; ``ippo`` and ``mappo`` share ``ppo``)."""
    actions: ClassVar[frozenset[str] | set[str]] = frozenset({"discrete"})
    """The action-space kinds it acts in (:data:`ACTION_KINDS`); the harness refuses worlds with others."""
    state: ClassVar[str] = "never"
    """Whether it reads the world's global state (:data:`STATE_MODES`)."""
    partial_seats: ClassVar[bool] = False
    """It can train ``env.seats`` while other clients play the rest (its policy acts for any subset of agents)."""
    self_play: ClassVar[bool] = False
    """It can train against snapshots of its own policy (``env.opponent = "self-play"``)."""
    on_policy: ClassVar[bool] = True
    """On-policy (learns from its latest rollout) or off-policy (learns from a replay memory, which it registers
    with ``per_rank`` so that resume is exact)."""
    layouts: ClassVar[tuple[str, ...]] = ("agents",)
    """The worlds' layouts it reads, preferred first (``"stacked"`` where every agent shares its spaces)."""
    check_settings: ClassVar[dict[str, Any]] = {}
    """Settings that ``agora learners check`` trains with: small updates that take a fraction of a second on a tiny
    world and still learn in the first four (a replay learner's ``learning_starts`` within them)."""

    @classmethod
    def settings_table(cls) -> str:
        """The TOML table of its settings."""
        return cls.table or cls.name

    def world_parts(self, settings: Any) -> int:
        """Parts of rows the worlds are created in, for an algorithm that keeps several in flight with
        ``step_async`` (a vector-backed world steps only whole parts). Default 1."""
        return 1

    def make_policy(self, spec: WorldSpec, seats: list[str], settings: Any) -> Policy:
        """The acting policy for ``seats`` of worlds of ``spec``, untrained. The same constructor serves training
        and every rebuild from a checkpoint (which then loads its ``state_dict``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_policy(spec, seats, settings)")

    def train(self, session: Session) -> None:
        """Train until ``session.done``, ending every update with ``session.end_update``."""
        raise NotImplementedError(f"{type(self).__name__} must implement train(session)")
