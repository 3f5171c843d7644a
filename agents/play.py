"""Play a policy in seats of a shared world, as a custom client would (``agora play``).

Joins an existing world (``world``) or creates one (``scenario``), then acts for its seats in lockstep until stopped
or after ``episodes`` episodes, printing each episode's return. With ``wait_for_seats``, play starts only once every
seat of the world is held (by this client or others), waiting a bounded time for the other players; a created world
then does not start before (``wait_for_seats`` at create). Without it, seats nobody holds get the world's fill action
at once. A seat the server gave up (the client was silent past the heartbeat timeout) is reclaimed with its token; a
seat someone else took over with the token ends play, and so does the world's owner closing it.
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
    wait_for_seats: float | None = None
    """Wait at most this many seconds for other clients to take the world's other seats before the first step (a
    created world is made with ``wait_for_seats`` so that it does not start without them); None: play at once, the
    seats nobody holds get the fill action."""
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
                wait_for_seats=settings.wait_for_seats is not None,
            )
            world = created_world = created.worlds[0]
            out(f"created world {world} ({settings.scenario}) on {client.address}")
        player = _Player(client, world, settings, out, run_loader)
        if settings.wait_for_seats is not None:
            _wait_for_seats(client, world, settings, out)
        return player.run()
    finally:
        if created_world is not None:
            with contextlib.suppress(ServerError, TimeoutError):
                client.close_world(created_world)
        client.close()


class PlayError(RuntimeError):
    """Play cannot start or go on (no such world, no free seat, nobody came, seats taken over): the message says why
    and what to do."""


class _WorldClosed(Exception):
    """The world's owner closed it while this client played."""


def _free_seats(client: AgentClient, world: int) -> list[str] | None:
    """The seats of ``world`` nobody ever took, or None when this client sees no such world."""
    listed = next((w for w in client.list_worlds() if w["world"] == world), None)
    return None if listed is None else [seat for seat, state in listed["seats"].items() if state == "free"]


def _wait_for_seats(client: AgentClient, world: int, settings: PlaySettings, out: Callable[[str], Any]) -> None:
    """Return once every seat of ``world`` has been taken, saying which seats are awaited and how to take them.

    Raises:
        PlayError: some seats were still free after ``settings.wait_for_seats`` seconds.
    """
    deadline = time.monotonic() + settings.wait_for_seats
    awaited: list[str] | None = None
    while True:
        free = _free_seats(client, world)
        if free is None:
            raise PlayError(f"world {world} is gone: its owner closed it")
        if not free:
            if awaited:
                out(f"every seat of world {world} is taken: playing")
            return
        if free != awaited:
            flags = "".join(f" --seat {seat}" for seat in free)
            out(
                f"waiting up to {settings.wait_for_seats:g} s for seats {free} of world {world}; another player "
                f"joins with: agora play --connect {settings.connect} --world {world}{flags} --wait-for-seats 300"
            )
            awaited = free
        if time.monotonic() >= deadline:
            raise PlayError(
                f"nobody took seats {free} of world {world} within {settings.wait_for_seats:g} s; "
                "start the other players first, wait longer (--wait-for-seats SECONDS), or play every seat yourself"
            )
        time.sleep(0.1)


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
        try:
            joined = client.join(world, seats=seats, tokens=settings.tokens or None)
        except ServerError as exc:
            if exc.code != UNKNOWN_WORLD:
                raise
            raise PlayError(
                f"there is no world {world} on {client.address}: its owner closed it, or it never existed; "
                f"`agora worlds --connect {settings.connect}` lists the worlds you may see (a creator that should "
                "wait for you plays with --wait-for-seats)"
            ) from None
        if not joined.seats:
            raise PlayError(f"world {world} has no free seat to play (its seats: {joined.spec.possible_agents})")
        self.tokens = dict(joined.seats)
        spec = joined.spec
        try:
            self.policies = {
                s: named_policy(settings.policy, spec.observation_spaces[s], spec.action_spaces[s], s, run_loader)
                for s in self.tokens
            }
        except ValueError as exc:  # the name means no policy for these seats: give them back, and say why
            with contextlib.suppress(ServerError, TimeoutError):
                client.leave(world)
            raise PlayError(f"policy {settings.policy!r}: {exc}") from None
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
        except _WorldClosed:
            self.out(f"world {self.world} was closed by its owner; stopped after {len(finished)} episodes")
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
        except TimeoutError:
            free = _free_seats(self.client, self.world)
            if free and self.settings.wait_for_seats is None:  # a world created to wait for every seat
                raise PlayError(
                    f"world {self.world} did not step within {self.settings.timeout_s:g} s: it waits for seats {free} "
                    "to be taken before it starts; play with --wait-for-seats SECONDS to wait for the other players"
                ) from None
            raise
        except ServerError as exc:
            if exc.code in (NOT_YOUR_SEAT, NO_SESSION):
                self._reclaim()
            elif exc.code in (INTERRUPTED, EPISODE_OVER):
                self._resync(wait=exc.code == EPISODE_OVER)
            elif exc.code == UNKNOWN_WORLD:
                raise _WorldClosed from None
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
                raise PlayError(f"world {self.world} is gone: its owner closed it") from None
            if exc.code == SEAT_TAKEN:
                raise PlayError(f"seats of world {self.world} were taken over with their tokens") from None
            raise

    def _resync(self, wait: bool) -> None:
        # The owner reset the world, or its episode is over and only the owner can start the next: wait for it.
        if wait:
            time.sleep(0.1)
        try:
            observation = self.client.observe(self.world)
        except ServerError as exc:
            if exc.code == UNKNOWN_WORLD:  # an interrupted act: the owner closed the world
                raise _WorldClosed from None
            raise
        if observation.episode != self.episode:
            self.out(f"world {self.world} was reset by its owner; the episode in progress is not counted")
            self.returns = dict.fromkeys(self.tokens, 0.0)
            self.episode = observation.episode
        self.obs.update(observation.obs)
        self.alive = set(observation.agents) & set(self.tokens)
