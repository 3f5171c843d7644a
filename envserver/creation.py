"""``create``: check a request whole, build its worlds' envs (a large create a chunk per loop turn), register them.

:func:`op_create` is the handler (handlers.py's table names it). A create of more than :data:`CREATE_CHUNK` per-copy
worlds becomes a :class:`DeferredCreate`, which the server loop runs one chunk per turn between other clients'
requests (``EnvServer.defer``): the reply comes when the last copy is built, and nothing is registered before then,
so a build that fails midway leaves the server as it was.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agora_marl import scenarios
from agora_marl.envserver.fields import field, plain_field, seed_field
from agora_marl.envserver.groups import check_patterns
from agora_marl.envserver.protocol import WorldSpec, to_wire
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import (
    BAD_REQUEST,
    FILL_KINDS,
    NO_SESSION,
    SCENARIO_ERROR,
    SCENARIO_NOT_ALLOWED,
    TOO_MANY_WORLDS,
)
from agora_marl.envserver.vector import CopyObs, CopyView, VectorBlock
from agora_marl.envserver.world import World, WorldOptions

if TYPE_CHECKING:
    from agora_marl.envserver.identity import Session
    from agora_marl.envserver.server import EnvServer

#: Per-copy envs a large ``create`` builds before the loop serves others again (what one costs: docs/performance.md,
#: 'Figures behind the code').
CREATE_CHUNK = 16

#: The render modes a client may ask a served world for: none, or frames as arrays (never a window on the server).
SERVED_RENDER_MODES = (None, "rgb_array")


@dataclass
class _Creation:
    """A validated ``create``: what to build, and for whom."""

    name: str
    scenario_config: dict
    seed: int | None
    copies: int
    join: bool
    options: WorldOptions
    public: bool
    group: str | None
    """The named group the worlds join (``groups.py``)."""
    invite_only: tuple[str, ...]
    share_state: bool


def op_create(server: EnvServer, session: Session, message: dict) -> dict | None:
    """Create worlds. A large create of per-copy worlds is built a chunk at a time between other clients' requests
    (the reply comes when the last copy is built), so that one create cannot hold the loop for everyone."""
    creation = _validate_create(server, session, message)
    build = _build(server, creation)
    if creation.copies <= CREATE_CHUNK:
        built = _run_to_end(build, creation.name)
        return _register(server, session, creation, built)
    server.defer(DeferredCreate(server, session, message["id"], creation, build))
    return None


class DeferredCreate:
    """A large ``create`` the server loop builds one chunk per turn (:meth:`step`), between other requests."""

    def __init__(
        self,
        server: EnvServer,
        session: Session,
        request_id: int,
        creation: _Creation,
        build: Generator[None, None, _Built],
    ):
        self.server, self.session, self.request_id = server, session, request_id
        self.creation, self.build = creation, build
        session.pending_worlds += creation.copies  # counted against the quotas while they are built
        server.pending_worlds += creation.copies

    def step(self) -> dict | None:
        """Build the next chunk; the ``created`` reply once the last is built, else None. Raises ProtocolError
        (the build failed, or the session was forgotten meanwhile) after releasing what was built."""
        try:
            next(self.build)
            return None
        except StopIteration as done:
            built = done.value
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            self._release()
            name = self.creation.name
            raise ProtocolError(
                SCENARIO_ERROR, f"building {name!r} failed: {type(exc).__name__}: {exc}", "check the scenario's config"
            ) from None
        self._release()
        if self.server.sessions.get(self.session.identity) is not self.session:  # nobody left to own them
            built.close()
            raise ProtocolError(NO_SESSION, "the session was forgotten while its worlds were built", "hello again")
        return _register(self.server, self.session, self.creation, built)

    def _release(self) -> None:
        self.session.pending_worlds -= self.creation.copies
        self.server.pending_worlds -= self.creation.copies


def _validate_create(server: EnvServer, session: Session, message: dict) -> _Creation:
    config = server.config
    name = field(message, "scenario", str)
    scenario_config = plain_field(message, "config", {})
    render_mode = scenario_config.get("render_mode")
    if render_mode not in SERVED_RENDER_MODES:
        # "human" opens a window and sleeps to its frame rate inside the one loop every client shares.
        raise ProtocolError(
            BAD_REQUEST,
            f"'config.render_mode' must be one of {list(SERVED_RENDER_MODES)}, got {render_mode!r:.40}",
            "render in your own process; a served world draws only to arrays (rgb_array)",
        )
    seed = seed_field(message)
    copies = field(message, "copies", int, 1)
    join = field(message, "join", bool, False)
    deadline_ms = field(message, "deadline_ms", (int, float), config.default_deadline_ms)
    fill = field(message, "fill", str, "noop")
    auto_reset = field(message, "auto_reset", bool, True)
    wait_for_seats = field(message, "wait_for_seats", bool, not join)
    public = field(message, "public", bool, False)
    render = field(message, "render", bool, False)
    group = field(message, "group", str, None)
    invite_only = check_patterns(field(message, "invite_only", list, []), "invite_only")
    share_state = field(message, "share_state", bool, False)
    if group is not None:
        server.groups.check_add(group, b"", session.identity, server.worlds)
    if render and render_mode is None:
        scenario_config = {**scenario_config, "render_mode": "rgb_array"}
    if not 1 <= copies <= config.max_batch:
        raise ProtocolError(BAD_REQUEST, f"'copies' must be 1..{config.max_batch}, got {copies}", "create in chunks")
    if not 0 < deadline_ms <= 3_600_000:
        raise ProtocolError(
            BAD_REQUEST, f"'deadline_ms' must be in (0, 3600000], got {deadline_ms}", "send milliseconds"
        )
    if fill not in FILL_KINDS:
        raise ProtocolError(
            BAD_REQUEST, f"'fill' must be one of {list(FILL_KINDS)}, got {fill!r:.40}", "see the step rule"
        )
    owned = len(session.owned) + session.pending_worlds
    if owned + copies > config.max_worlds_per_client:
        raise ProtocolError(
            TOO_MANY_WORLDS,
            f"this session owns {owned} worlds; {copies} more would pass the limit of {config.max_worlds_per_client}",
            "close worlds you no longer use",
        )
    if len(server.worlds) + server.pending_worlds + copies > config.max_worlds:
        raise ProtocolError(TOO_MANY_WORLDS, f"the server is at its limit of {config.max_worlds} worlds", "try later")
    try:
        scenarios.check_allowed(name, config.allowed_packages)
    except scenarios.ScenarioNotAllowed as exc:
        raise ProtocolError(SCENARIO_NOT_ALLOWED, str(exc), "ask the operator to --allow the package") from None
    options = WorldOptions(deadline_ms / 1000.0, fill, auto_reset, wait_for_seats)
    return _Creation(name, scenario_config, seed, copies, join, options, public, group, tuple(invite_only), share_state)


@dataclass
class _Built:
    """What a create built: every world ready, none registered yet (no id, no owner, no tokens)."""

    worlds: list[World]
    block: VectorBlock | None
    spec: WorldSpec
    wire_spec: dict
    spec_key: bytes
    renders: bool
    first_obs: list[dict]
    """Each world's first observations on the wire (with ``join``)."""

    def close(self) -> None:
        """Close the envs of a build that will not be registered."""
        for world in self.worlds:
            with contextlib.suppress(Exception):
                world.env.close()


def _build(server: EnvServer, c: _Creation) -> Generator[None, None, _Built]:
    """Build the worlds, pausing (``yield``) after every CREATE_CHUNK of them: each env, its first reset, its spaces
    and its World. Nothing is registered here: a build that raises leaves the server as it was, and the turn that
    registers the worlds has little left to do."""
    block = None
    vectorise = c.join and c.copies >= 2 and c.options.auto_reset  # the batched training path; see vector.py
    vector = scenarios.make_vector(c.name, c.copies, c.scenario_config) if vectorise else None
    if vector is not None:
        block = VectorBlock(vector)
        block.rate_mark = (time.monotonic(), 0)
        block.last_obs = vector.reset(seed=c.seed)
    envs: list = []  # made so far: closed if the build fails
    built: _Built | None = None
    try:
        for i in range(c.copies):
            if block is not None:
                env, first = CopyView(block, i), (CopyObs(block, i), {})
            else:
                env = scenarios.make_env(c.name, c.scenario_config, server.config.allowed_packages)
                envs.append(env)
                first = env.reset(seed=None if c.seed is None else c.seed + i)
            if built is None:
                spec = WorldSpec.of_env(c.name, c.scenario_config, env)
                wire_spec = spec.to_wire()
                renders = block.renders if block is not None else getattr(env, "render_mode", None) == "rgb_array"
                built = _Built([], block, spec, wire_spec, server.spec_key(wire_spec), renders, [])
            built.worlds.append(_world(built, c, env, i, first))
            if (i + 1) % CREATE_CHUNK == 0 and i + 1 < c.copies:
                yield
    except BaseException:
        for env in envs:
            with contextlib.suppress(Exception):
                env.close()
        raise
    return built


def _world(built: _Built, c: _Creation, env: Any, i: int, first: tuple) -> World:
    """Copy ``i``'s World (everything that asks the scenario something), not yet registered."""
    agents = built.spec.possible_agents
    world = World(
        world_id=0,
        env=env,
        spec=built.wire_spec,
        spec_key=built.spec_key,
        obs_spaces={a: env.observation_space(a) for a in agents},
        act_spaces={a: env.action_space(a) for a in agents},
        state_space=built.spec.state_space,
        options=c.options,
        owner=None,
        owner_token="",
        seed=None if c.seed is None else c.seed + i,
        public=c.public,
        renders=built.renders,
        named_group=c.group,
        invite_only=c.invite_only,
        share_state=c.share_state,
    )
    world.obs, world.infos = first
    if c.join:
        built.first_obs.append({a: to_wire(world.obs_spaces[a], world.obs[a]) for a in agents if a in world.obs})
    return world


def _run_to_end(build: Generator[None, None, _Built], name: str) -> _Built:
    """Run a build to its end; a scenario that raises (``SystemExit`` too) costs this request, never the server."""
    try:
        while True:
            next(build)
    except StopIteration as done:
        return done.value
    except KeyboardInterrupt:
        raise
    except ProtocolError:
        raise
    except BaseException as exc:
        raise ProtocolError(
            SCENARIO_ERROR, f"building {name!r} failed: {type(exc).__name__}: {exc}", "check the scenario's config"
        ) from None


def _register(server: EnvServer, session: Session, c: _Creation, built: _Built) -> dict:
    """Give the built worlds their ids, owner and tokens, and register them (the one turn in which they appear)."""
    if c.group is not None:
        try:  # again: another create may have taken the name while these were built
            server.groups.check_add(c.group, built.spec_key, session.identity, server.worlds)
        except ProtocolError:
            built.close()
            raise
    owner_token = secrets.token_hex(16)  # one for all the copies created together
    observer_token = secrets.token_hex(16)
    # Every world of a group shares the group's invitation, whichever create made it.
    invite_token = (server.groups.invite_token(c.group) if c.group else None) or secrets.token_hex(16)
    now = time.monotonic()
    for i, world in enumerate(built.worlds):
        world.world_id = server.new_world_id()
        world.owner, world.owner_token = session.identity, owner_token
        world.observer_token, world.invite_token = observer_token, invite_token
        world.rate_mark = (now, 0)
        if built.block is not None:
            world.block, world.index = built.block, i
            built.block.add(world)
        server.worlds[world.world_id] = world
        session.owned.add(world.world_id)
    ids = [w.world_id for w in built.worlds]
    if c.group is not None:
        server.groups.add(c.group, built.spec_key, invite_token, ids)
    reply = {
        "op": "created",
        "worlds": ids,
        "spec": built.wire_spec,
        "owner_token": owner_token,
        "observer_token": observer_token,
        "invite_token": invite_token,
        "group": c.group,
        "render": built.renders,
    }
    if c.join:
        reply["tokens"] = [
            {a: server.seat_table.take(world, a, session.identity) for a in world.agents} for world in built.worlds
        ]
        reply["obs"] = {str(i): obs for i, obs in zip(ids, built.first_obs, strict=True)}
    return reply
