"""One seat of a remote world as a single-agent ``gymnasium.Env``; the world's other seats are someone else's."""

from __future__ import annotations

import time
from typing import Any

import gymnasium

from agora_marl.agents.client import HELLO_TIMEOUT_S, AgentClient, ServerError
from agora_marl.agents.reclaim import HeldSeats
from agora_marl.agents.types import StepResult
from agora_marl.envserver.protocol import noop_value
from agora_marl.envserver.protocol.vocabulary import EPISODE_OVER, INTERRUPTED


class SeatEnv(gymnasium.Env):
    """A single seat of an agora world, driven through the gymnasium API.

    Two ways to get a seat:

    - ``SeatEnv(address, scenario="gymnasium:CartPole-v1")`` creates a world (this env owns it, so ``reset`` resets
      it) and takes one seat (``seat``, default the first agent); the seats nobody holds get the world's ``fill``
      action, so they never make the world wait.
    - ``SeatEnv(address, world=W, seat="agent_1", token=T)`` takes (or with ``token`` reclaims) a seat of a shared
      world. ``reset`` cannot reset a world this env does not own: it waits for the seat's next episode instead.

    The env asks the server for a keep-alive (``keep_alive_s``), so that a library's long update between two steps
    costs it neither its seat nor its world; if the seat is lost all the same, the next step takes it back with its
    token. A copy of the env (pickled into a worker, or ``copy.deepcopy``) connects again: see :meth:`__getstate__`.

    Args:
        address: the server's endpoint.
        scenario: create a world of this scenario (mutually exclusive with ``world``).
        config: the scenario's keyword config.
        world: join this existing world instead.
        seat: the agent to play (default: the first of ``possible_agents``).
        token: the seat's token, to reclaim a seat held before.
        seed: seed of a created world's first reset.
        fill: what the unheld seats of a created world do: ``noop``, ``random`` or ``repeat``.
        deadline_ms: a created world's lockstep deadline.
        timeout_s: how long to wait for a reply (and for a shared world's next episode).
        client: an existing client to use (kept open on :meth:`close`).
        keep_alive_s: how long the env may go without a call and keep its seat and world; the server grants at
            most its ``max_keep_alive_s``. Only for the env's own client (a given ``client`` keeps its own).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        address: str,
        scenario: str | None = None,
        config: dict | None = None,
        world: int | None = None,
        seat: str | None = None,
        token: str | None = None,
        seed: int | None = None,
        fill: str = "noop",
        deadline_ms: int | None = None,
        timeout_s: float = 30.0,
        client: AgentClient | None = None,
        keep_alive_s: float | None = 300.0,
    ):
        if (scenario is None) == (world is None):
            raise ValueError("give exactly one of scenario= (create a world) or world= (join an existing one)")
        self._recipe = {
            "address": address,
            "scenario": scenario,
            "config": config,
            "world": world,
            "seat": seat,
            "token": token,
            "seed": seed,
            "fill": fill,
            "deadline_ms": deadline_ms,
            "timeout_s": timeout_s,
            "keep_alive_s": keep_alive_s,
        }
        self.client = client or AgentClient(address, timeout_s=timeout_s, name="SeatEnv")
        self._owns_client = client is None
        self._closed = False
        if self._owns_client:
            self.client.hello(keep_alive_s=keep_alive_s, timeout_s=min(timeout_s, HELLO_TIMEOUT_S))
        self.timeout_s = timeout_s
        self.owns_world = scenario is not None
        owner_token = None
        if scenario is not None:
            created = self.client.create(
                scenario, config, seed=seed, fill=fill, deadline_ms=deadline_ms, auto_reset=False, wait_for_seats=False
            )
            world, owner_token = created.worlds[0], created.owner_token
        self.world = int(world)
        spec = self.client.spec(self.world) if scenario is not None else None
        self.seat = seat or (spec.possible_agents[0] if spec else None)
        joined = self.client.join(self.world, seats=[self.seat] if self.seat else "all", tokens=self._tokens(token))
        if self.seat is None:
            self.seat = next(iter(joined.seats))
            if len(joined.seats) > 1:
                self.client.leave(self.world, [a for a in joined.seats if a != self.seat])
        self.token = joined.seats[self.seat]
        # If the server gives the seat up (a silence past the keep-alive), the next request takes it back.
        again = f"SeatEnv({address!r}, world={self.world}, seat={self.seat!r})"
        self._seats = HeldSeats(self.client, self.world, {self.seat: self.token}, owner_token, self.owns_world, again)
        self.world_spec = joined.spec
        self.observation_space = joined.spec.observation_spaces[self.seat]
        self.action_space = joined.spec.action_spaces[self.seat]
        self.render_mode = None
        self._episode = joined.episode
        alive = self.seat in joined.agents
        self._next_obs: tuple[Any, dict] | None = (joined.obs[self.seat], {}) if alive else None

    def __getstate__(self) -> dict:
        """What a copy needs to connect again (vectorising wrappers pickle their envs into worker processes).

        A copy of an env that created its world creates its own (same scenario, config and seed); a copy of an env
        in a shared world reclaims the same seat with its token, so the seat moves to the copy.
        """
        recipe = dict(self._recipe)
        if not self.owns_world:
            recipe.update(seat=self.seat, token=self.token)
        return recipe

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def _tokens(self, token: str | None) -> dict[str, str] | None:
        if token is None:
            return None
        if self.seat is None:
            raise ValueError("a token needs the seat it belongs to: pass seat= as well")
        return {self.seat: token}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        """Start an episode: reset the world if this env owns it, else wait for the seat's next episode."""
        super().reset(seed=seed)
        if self.owns_world:
            observation = self._seats.call(lambda: self.client.reset(self.world, seed=seed, options=options))
            self._episode = observation.episode
            self._next_obs = None
            return observation.obs[self.seat], dict(observation.infos.get(self.seat, {}))
        if seed is not None or options:
            raise ValueError(f"this env does not own world {self.world}: it cannot reset it with a seed or options")
        if self._next_obs is None:
            self._next_obs = self._wait_for_next_episode()
        obs, info = self._next_obs
        self._next_obs = None
        return obs, info

    def _wait_for_next_episode(self) -> tuple[Any, dict]:
        # An act from a seat whose agent is not alive is ignored; its reply comes at the world's next step, and the
        # one that starts a new episode (auto-reset, or the owner's reset) carries the seat's first observation.
        noop = noop_value(self.action_space)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                result = self._act(noop)
            except ServerError as exc:
                if exc.code not in (EPISODE_OVER, INTERRUPTED):
                    raise
                time.sleep(0.05)  # the world waits for its owner's reset
                observation = self.client.observe(self.world)
                if observation.episode != self._episode and self.seat in observation.agents:
                    self._episode = observation.episode
                    return observation.obs[self.seat], dict(observation.infos.get(self.seat, {}))
                continue
            if result.episode != self._episode and self.seat in result.obs:
                self._episode = result.episode
                return result.obs[self.seat], dict(result.infos.get(self.seat, {}))
        raise TimeoutError(f"world {self.world} started no new episode for seat {self.seat} within {self.timeout_s} s")

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """Act for the seat and wait for the world to step."""
        try:
            result = self._act(action)
        except ServerError as exc:
            if exc.code != INTERRUPTED or self.owns_world:
                raise
            # The owner reset the world under us: end this episode as truncated; the next starts on reset().
            observation = self.client.observe(self.world)
            self._episode = observation.episode
            self._next_obs = (observation.obs[self.seat], dict(observation.infos.get(self.seat, {})))
            return self._next_obs[0], 0.0, False, True, {"interrupted": True}
        seat = self.seat
        obs = result.obs[seat]
        if result.final_obs is not None:
            obs = result.final_obs[seat]
            self._next_obs = (result.obs[seat], {})
        self._episode = result.episode
        terminated, truncated = result.terminated.get(seat, False), result.truncated.get(seat, False)
        return obs, float(result.rewards.get(seat, 0.0)), bool(terminated), bool(truncated), result.infos.get(seat, {})

    def _act(self, action: Any) -> StepResult:
        return self._seats.call(lambda: self.client.act(self.world, {self.seat: action}))

    def render(self) -> None:
        """Nothing to render over the wire: warns and returns None, as gymnasium does without a render mode."""
        gymnasium.logger.warn("SeatEnv cannot render: frames do not travel over the agora protocol")

    def close(self) -> None:
        """Close the world (if this env created it) or leave the seat, then the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.owns_world:
                self.client.close_world(self.world)
            else:
                self.client.leave(self.world, [self.seat])
        except Exception as exc:  # the server may be gone already; closing must still succeed
            gymnasium.logger.warn(f"could not release world {self.world} on {self.client.address}: {exc}")
        finally:
            if self._owns_client:
                self.client.close()
