"""Play a policy in seats of a shared world, as a custom client would (``agora play``).

Joins an existing world (``world``) or creates one (``scenario``), then acts for its seats in lockstep until stopped
or after ``episodes`` episodes, printing each episode's return. A seat the server gave up (the client was silent
past the heartbeat timeout) is reclaimed with its token; a seat someone else took over with the token ends play.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agora_marl.agents.client import AgentClient, ServerError
from agora_marl.agents.policies import RunLoader, named_policy
from agora_marl.agents.types import StepResult
from agora_marl.envserver.protocol import noop_value, resolve_address
from agora_marl.envserver.protocol.vocabulary import (
    EPISODE_OVER,
    INTERRUPTED,
    NO_SESSION,
    NOT_YOUR_SEAT,
    SEAT_TAKEN,
    UNKNOWN_WORLD,
)


@dataclass
class PlaySettings:
    """What ``agora play`` does."""

    connect: str
    """The server's address, or the path of the JSON connection file ``agora serve --addr-file`` writes."""
    world: int | None = None
    """Join this world (exclusive with ``scenario``)."""
    scenario: str | None = None
    """Create a world of this scenario and play it (exclusive with ``world``)."""
    config: dict = field(default_factory=dict)
    """The created scenario's keyword config."""
    seats: list[str] | None = None
    """The seats to play; None: every free seat."""
    tokens: dict[str, str] = field(default_factory=dict)
    """Seat tokens from an earlier session, to reclaim those seats."""
    policy: str = "random"
    """``random``, ``noop``, ``scripted``, ``module:callable`` or a training run directory (see agents.policies)."""
    episodes: int | None = None
    """Stop after this many episodes; None: until interrupted."""
    seed: int | None = None
    """Seed of a created world."""
    fill: str = "noop"
    """What a created world's unheld or late seats do: ``noop``, ``random`` or ``repeat``."""
    deadline_ms: int | None = None
    """Lockstep deadline of a created world (server default if None)."""
    timeout_s: float = 30.0
    """How long to wait for any one reply."""
    server_key: str | None = None
    """The server's CurveZMQ public key (Z85), for a server run with ``--curve-secret``."""
    client_key: str | None = None
    """This client's secret certificate (``NAME.key_secret``), for a server that lets in only listed clients."""


def play(settings: PlaySettings, out: Callable[[str], Any] = print, run_loader: RunLoader | None = None) -> list[float]:
    """Play until ``settings.episodes`` episodes ended (or Ctrl-C); returns each finished episode's team return.

    ``run_loader`` loads a trained run when ``settings.policy`` names a run directory (see agents.policies).
    """
    if (settings.world is None) == (settings.scenario is None):
        raise ValueError("give exactly one of a world to join or a scenario to create")
    address = resolve_address(settings.connect)
    client = AgentClient(
        address,
        timeout_s=settings.timeout_s,
        name="agora play",
        server_key=settings.server_key,
        client_key=settings.client_key,
    )
    created_world = None
    try:
        client.hello()
        world = settings.world
        if settings.scenario is not None:
            created = client.create(
                settings.scenario,
                settings.config,
                seed=settings.seed,
                fill=settings.fill,
                deadline_ms=settings.deadline_ms,
                wait_for_seats=False,
            )
            world = created_world = created.worlds[0]
            out(f"created world {world} ({settings.scenario}) on {client.address}")
        return _Player(client, world, settings, out, run_loader).run()
    finally:
        if created_world is not None:
            with contextlib.suppress(ServerError, TimeoutError):
                client.close_world(created_world)
        client.close()


class _Player:
    """The play loop of one connection in one world."""

    def __init__(
        self,
        client: AgentClient,
        world: int,
        settings: PlaySettings,
        out: Callable[[str], Any],
        run_loader: RunLoader | None,
    ):
        self.client, self.world, self.settings, self.out = client, world, settings, out
        seats = settings.seats or ("all" if not settings.tokens else list(settings.tokens))
        joined = client.join(world, seats=seats, tokens=settings.tokens or None)
        if not joined.seats:
            raise ValueError(f"world {world} has no free seat to play (its seats: {joined.spec.possible_agents})")
        self.tokens = dict(joined.seats)
        spec = joined.spec
        self.policies = {
            s: named_policy(settings.policy, spec.observation_spaces[s], spec.action_spaces[s], s, run_loader)
            for s in self.tokens
        }
        self.noops = {s: noop_value(spec.action_spaces[s]) for s in self.tokens}
        self.obs = dict(joined.obs)
        self.alive = set(joined.agents) & set(self.tokens)
        self.episode = joined.episode
        self.returns = dict.fromkeys(self.tokens, 0.0)
        tokens = ", ".join(f"{s}={t}" for s, t in self.tokens.items())
        out(f"playing {sorted(self.tokens)} of world {world} with policy {settings.policy!r} (tokens: {tokens})")

    def run(self) -> list[float]:
        finished: list[float] = []
        try:
            self._loop(finished)
        except KeyboardInterrupt:
            self.out(f"stopped after {len(finished)} episodes")
        return finished

    def _loop(self, finished: list[float]) -> None:
        while self.settings.episodes is None or len(finished) < self.settings.episodes:
            actions = {s: self.policies[s](self.obs[s]) if s in self.alive else self.noops[s] for s in self.tokens}
            result = self._act(actions)
            if result is None:
                continue
            for seat, reward in result.rewards.items():
                self.returns[seat] += reward
            if result.episode != self.episode:
                finished.append(self._end_episode(len(finished) + 1))
                self.episode = result.episode
            self.obs.update(result.obs)
            self.alive = set(result.agents) & set(self.tokens)

    def _end_episode(self, number: int) -> float:
        total = sum(self.returns.values())
        seats = ", ".join(f"{s} {r:.2f}" for s, r in self.returns.items())
        self.out(f"episode {number}: return {total:.2f}" + (f" ({seats})" if len(self.returns) > 1 else ""))
        self.returns = dict.fromkeys(self.tokens, 0.0)
        return total

    def _act(self, actions: dict[str, Any]) -> StepResult | None:
        """One step, or None when play must resynchronise with the world first."""
        try:
            return self.client.act(self.world, actions)
        except ServerError as exc:
            if exc.code in (NOT_YOUR_SEAT, NO_SESSION):
                self._reclaim()
            elif exc.code in (INTERRUPTED, EPISODE_OVER):
                self._resync(wait=exc.code == EPISODE_OVER)
            else:
                raise
            return None

    def _reclaim(self) -> None:
        # A silent connection loses all its seats at once (they become "lost"); a seat still "held" is someone else's.
        # Reclaim with takeover=False: a seat someone took over with its token meanwhile stays theirs.
        self.out(f"the server gave up seats {sorted(self.tokens)} (this client was silent too long); reclaiming them")
        try:
            self.client.join(self.world, tokens=self.tokens, takeover=False)
        except ServerError as exc:
            if exc.code == UNKNOWN_WORLD:
                raise RuntimeError(f"world {self.world} is gone: its owner closed it") from None
            if exc.code == SEAT_TAKEN:
                raise RuntimeError(f"seats of world {self.world} were taken over with their tokens") from None
            raise

    def _resync(self, wait: bool) -> None:
        # The owner reset the world, or its episode is over and only the owner can start the next: wait for it.
        if wait:
            time.sleep(0.1)
        observation = self.client.observe(self.world)
        if observation.episode != self.episode:
            self.out(f"world {self.world} was reset by its owner; the episode in progress is not counted")
            self.returns = dict.fromkeys(self.tokens, 0.0)
            self.episode = observation.episode
        self.obs.update(observation.obs)
        self.alive = set(observation.agents) & set(self.tokens)
