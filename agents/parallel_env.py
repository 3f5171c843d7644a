"""A remote world as a PettingZoo ``ParallelEnv``: this client holds every seat and steps the world in lockstep."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from agora_marl.agents.client import HELLO_TIMEOUT_S, AgentClient
from agora_marl.agents.reclaim import HeldSeats
from agora_marl.agents.types import Observation
from agora_marl.envserver.protocol import WorldSpec


class RemoteParallelEnv(ParallelEnv):
    """A world on an agora server, driven through the PettingZoo parallel API.

    The constructor creates a new world (``auto_reset`` off, so episodes end as in process and :meth:`reset` starts
    the next) and takes all its seats; :meth:`attach` wraps a world that already exists. The same seed and the same
    actions give the same trajectory as the scenario stepped in process.

    Args:
        address: the server's endpoint.
        scenario: a scenario name the server allows (``mpe2.simple_spread_v3:parallel_env``, ``foraging_v0``, ...).
        config: keyword arguments of the scenario's constructor.
        seed: seed of the world's first reset.
        timeout_s: how long to wait for any reply.
        deadline_ms: the world's lockstep deadline (server default if None).
        render_mode: only None: frames do not travel over the protocol; render the scenario in process instead.
        client: an existing client to use (kept open on :meth:`close`); by default the env opens its own.
        keep_alive_s: how long the env may go without a call (a training framework's update between episodes) and
            keep its world; the server grants at most its ``max_keep_alive_s``. Only for the env's own client.
            If the seats are lost all the same, the next step takes them back with their tokens.
    """

    metadata = {"name": "agora_remote", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        address: str,
        scenario: str,
        config: dict | None = None,
        seed: int | None = None,
        timeout_s: float = 30.0,
        deadline_ms: int | None = None,
        render_mode: str | None = None,
        client: AgentClient | None = None,
        keep_alive_s: float | None = 300.0,
    ):
        self._check_render_mode(render_mode)
        self._recipe = {
            "address": address,
            "scenario": scenario,
            "config": config,
            "seed": seed,
            "timeout_s": timeout_s,
            "deadline_ms": deadline_ms,
            "keep_alive_s": keep_alive_s,
        }
        self._connect(address, timeout_s, client, keep_alive_s)
        created = self.client.create(
            scenario, config, seed=seed, join=True, deadline_ms=deadline_ms, auto_reset=False, wait_for_seats=False
        )
        world = created.worlds[0]
        self._setup(world, created.spec, created.tokens[0], created.owner_token, owns_world=True)
        self.agents = list(created.spec.possible_agents)

    @classmethod
    def attach(
        cls,
        address: str,
        world: int,
        owner_token: str | None = None,
        tokens: dict[str, str] | None = None,
        timeout_s: float = 30.0,
        client: AgentClient | None = None,
        keep_alive_s: float | None = 300.0,
    ) -> RemoteParallelEnv:
        """Take every free seat of an existing world (or reclaim seats with ``tokens``) and drive it as a ParallelEnv.

        Without ``owner_token``, :meth:`reset` cannot reset the world: it returns the current observations (or the
        next episode's first ones, if the world auto-reset). Closing an attached env leaves its seats, not the world.
        """
        env = cls.__new__(cls)
        env._attach(address, world, owner_token, tokens, timeout_s, client, keep_alive_s)
        return env

    def _attach(
        self,
        address: str,
        world: int,
        owner_token: str | None,
        tokens: dict[str, str] | None,
        timeout_s: float,
        client: AgentClient | None = None,
        keep_alive_s: float | None = 300.0,
    ) -> None:
        self._recipe = None
        self._attached = {
            "address": address,
            "world": world,
            "owner_token": owner_token,
            "timeout_s": timeout_s,
            "keep_alive_s": keep_alive_s,
        }
        self._connect(address, timeout_s, client, keep_alive_s)
        joined = self.client.join(world, tokens=tokens, owner_token=owner_token)
        self._setup(world, joined.spec, joined.seats, owner_token, owns_world=False)
        self.agents = list(joined.agents)

    def _connect(self, address: str, timeout_s: float, client: AgentClient | None, keep_alive_s: float | None) -> None:
        self.client = client or AgentClient(address, timeout_s=timeout_s, name="RemoteParallelEnv")
        self._owns_client = client is None
        self._closed = False
        if self._owns_client:
            self.client.hello(keep_alive_s=keep_alive_s, timeout_s=min(timeout_s, HELLO_TIMEOUT_S))

    def _setup(self, world: int, spec: WorldSpec, tokens: dict, owner_token: str | None, owns_world: bool) -> None:
        self.world = world
        self.world_spec = spec
        self.tokens = dict(tokens)
        self.owner_token = owner_token
        self._owns_world = owns_world
        # If the server gives the seats up (a silence past the keep-alive), the next request takes them back.
        again = f"RemoteParallelEnv.attach({self.client.address!r}, {world})"
        self._seats = HeldSeats(self.client, world, self.tokens, owner_token, owns_world, again)
        self._next_episode: Observation | None = None  # set when an auto-resetting world started a new episode
        self.possible_agents = list(spec.possible_agents)
        self.observation_spaces = spec.observation_spaces
        self.action_spaces = spec.action_spaces
        self.state_space = spec.state_space
        self.render_mode = None
        self.metadata = {**type(self).metadata, "name": spec.scenario}

    def __getstate__(self) -> dict:
        """What a copy needs to connect again (vectorising wrappers pickle their envs into worker processes).

        A copy of an env that created its world creates a world of its own, with the same scenario, config and seed
        (so it replays the same episodes). A copy of an attached env takes the same seats over with their tokens: the
        seats move to the copy, and the original's pending requests are interrupted.
        """
        if self._recipe is not None:
            return {"create": self._recipe}
        return {"attach": {**self._attached, "tokens": dict(self.tokens)}}

    def __setstate__(self, state: dict) -> None:
        if "create" in state:
            self.__init__(**state["create"])
        else:
            self._attach(**state["attach"])

    @staticmethod
    def _check_render_mode(render_mode: str | None) -> None:
        if render_mode is not None:
            raise ValueError(
                f"render_mode={render_mode!r}: frames do not travel over the agora protocol; "
                "build the scenario in process to render it"
            )

    def observation_space(self, agent: str) -> spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an episode: the owner resets the world; an attached non-owner joins the running one."""
        if self._next_episode is not None and seed is None and not options:
            observation = self._next_episode
        elif self.owner_token is not None:
            observation = self._seats.call(lambda: self.client.reset(self.world, seed=seed, options=options))
        elif seed is None and not options:
            observation = self._seats.call(lambda: self.client.observe(self.world))
        else:
            raise ValueError(
                f"only the owner of world {self.world} can reset it with a seed or options; attach with its owner_token"
            )
        self._next_episode = None
        self.agents = list(observation.agents)
        infos = {a: dict(observation.infos.get(a, {})) for a in self.agents}
        return {a: observation.obs[a] for a in self.agents}, infos

    def step(self, actions: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        """Act for every live agent and return PettingZoo's five maps, keyed by the agents that were live."""
        if not self.agents:
            raise RuntimeError(f"the episode of world {self.world} is over: call reset() before step()")
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"step() needs an action for every live agent; missing {missing}")
        result = self._seats.call(lambda: self.client.act(self.world, {a: actions[a] for a in self.agents}))
        obs = result.obs
        if result.final_obs is not None:
            # The world auto-reset (an attached shared world): end this episode here and start the next on reset().
            obs = result.final_obs
            self._next_episode = Observation(self.world, result.tick, result.episode, result.agents, result.obs, {})
            self.agents = []
        else:
            self.agents = list(result.agents)
        return obs, result.rewards, result.terminated, result.truncated, result.infos

    def state(self) -> np.ndarray:
        """The world's global state."""
        return self.client.state(self.world)

    def render(self) -> None:
        """Nothing to render over the wire (see ``render_mode``); warns and returns None, as gymnasium does."""
        gymnasium.logger.warn("RemoteParallelEnv cannot render: frames do not travel over the agora protocol")

    def close(self) -> None:
        """Close the world (if this env created it) or leave its seats, then the connection. Idempotent."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            if self._owns_world:
                self.client.close_world(self.world)
            else:
                self.client.leave(self.world)
        except Exception as exc:  # the server may be gone already; closing must still succeed
            gymnasium.logger.warn(f"could not release world {self.world} on {self.client.address}: {exc}")
        finally:
            if self._owns_client:
                self.client.close()

    def __del__(self) -> None:
        if getattr(self, "_owns_client", False) and not getattr(self, "_closed", True):
            self.client.close()
