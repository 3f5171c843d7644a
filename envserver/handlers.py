"""One function per protocol operation, ``handler(server, session, message) -> reply | None``, and the table of them.

:data:`OPERATIONS` maps every request of the protocol (``vocabulary.REQUESTS``) to its handler; the server loop looks
the ``op`` up there. Each handler checks everything before it changes anything, so a refused request (a raised
ProtocolError) leaves the server as it was. ``None`` means the reply comes later (``act`` waits for its world to step).
The handlers reach the server through its public methods only; the server imports this module, never the reverse.

The stepping requests (``act``, ``step_batch``, ``reset_batch``) live in stepping.py; reading fields in fields.py.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agora_marl import __version__, scenarios
from agora_marl.envserver.fields import field, plain_field, seed_field, strings
from agora_marl.envserver.partial import op_act_batch
from agora_marl.envserver.protocol import WorldSpec, to_wire
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import (
    AGENT,
    BAD_REQUEST,
    BAD_TOKEN,
    FILL_KINDS,
    FREE,
    HELD,
    LOST,
    NO_SESSION,
    NOT_ALLOWED,
    NOT_OWNER,
    NOT_YOUR_SEAT,
    OBSERVER,
    PROTOCOL_VERSION,
    REQUESTS,
    ROLES,
    SCENARIO_ERROR,
    SCENARIO_NOT_ALLOWED,
    SEAT_TAKEN,
    TOO_MANY_WORLDS,
)
from agora_marl.envserver.stepping import op_act, op_reset_batch, op_step_batch
from agora_marl.envserver.vector import CopyObs, CopyView, VectorGroup
from agora_marl.envserver.world import World, WorldOptions

if TYPE_CHECKING:
    from agora_marl.envserver.server import EnvServer, Session

#: Per-copy envs a large ``create`` builds before the loop serves others again (mpe2 spread: ~1 ms each).
CREATE_CHUNK = 16

#: The render modes a client may ask a served world for: none, or frames as arrays (never a window on the server).
SERVED_RENDER_MODES = (None, "rgb_array")


def _owned(server: EnvServer, session: Session, message: dict) -> World:
    world = server.world(message.get("world"))
    if world.owner != session.identity:
        raise ProtocolError(NOT_OWNER, f"only the owner of world {world.world_id} may do that", "create your own world")
    return world


def _member(world: World, session: Session) -> bool:
    return world.owner == session.identity or any(w == world.world_id for w, _ in session.seats)


def _may_watch(world: World, session: Session) -> bool:
    """Whether the session may read the whole world (every agent's observations, its frames): its owner, an
    observer the owner admitted, an operator, anyone for a public world."""
    return world.public or session.operator or world.owner == session.identity or session.identity in world.observers


def _visible(world: World, session: Session) -> bool:
    """Whether ``list`` shows the world to the session."""
    return _may_watch(world, session) or _member(world, session)


# ---- connection ---------------------------------------------------------------------------------------------


def op_hello(server: EnvServer, session: Session | None, message: dict) -> dict:
    """Open a session (or, with its ``secret``, renew one): the secret it returns authorises every later request."""
    name = str(field(message, "name", str, ""))[:200]
    config = server.config
    keep_alive = field(message, "keep_alive_s", (int, float), None)
    operator = field(message, "operator", str, None)
    if keep_alive is not None and not keep_alive >= 0:  # NaN too
        raise ProtocolError(BAD_REQUEST, f"'keep_alive_s' must be >= 0, got {keep_alive}", "send seconds, or omit it")
    if operator is not None and not secrets.compare_digest(operator.encode(), server.operator_secret.encode()):
        raise ProtocolError(
            NOT_ALLOWED, "that is not this server's operator secret", "read it from the server's operator file"
        )
    if session is None:
        session = server.new_session()
    session.name = name
    session.operator = session.operator or operator is not None
    if keep_alive is not None:
        # Never shorter than the server's own timeout, never longer than the operator allows.
        session.keep_alive_s = min(max(float(keep_alive), config.heartbeat_timeout_s), config.max_keep_alive_s)
    return {
        "op": "welcome",
        "server": "agora",
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "session": session.label,
        "secret": session.secret,
        "operator": session.operator,
        "keep_alive_s": session.keep_alive_s if session.keep_alive_s is not None else config.heartbeat_timeout_s,
        "limits": {
            "max_message_bytes": config.max_message_bytes,
            "max_worlds_per_client": config.max_worlds_per_client,
            "heartbeat_timeout_s": config.heartbeat_timeout_s,
            "max_keep_alive_s": config.max_keep_alive_s,
            "max_batch": config.max_batch,
        },
        "scenarios": sorted(scenarios.registered()),
        "allowed_packages": list(config.allowed_packages),
    }


def op_ping(server: EnvServer, session: Session | None, message: dict) -> dict:
    return {"op": "pong", "time": time.time()}


def op_list(server: EnvServer, session: Session, message: dict) -> dict:
    now = time.monotonic()
    worlds = []
    for w in server.worlds.values():
        if not _visible(w, session):
            continue
        w.refresh()
        holders = {a: server.holder_name(s.holder) for a, s in w.seats.items()}
        entry = {
            "world": w.world_id,
            "scenario": w.spec["scenario"],
            "agents": w.agents,
            "seats": {a: s.state for a, s in w.seats.items()},
            "holders": holders,
            "observers": len(w.observers),
            "public": w.public,
            "render": w.renders,
            "tick": w.tick,
            "episode": w.episode,
        }
        entry.update(w.stats(now))
        worlds.append(entry)
    return {"op": "worlds", "worlds": worlds}


# ---- worlds -------------------------------------------------------------------------------------------------


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

    def __init__(self, server: EnvServer, session: Session, request_id: int, creation: _Creation, build: Generator):
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
            for env in built[0]:
                with contextlib.suppress(Exception):
                    env.close()
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
    return _Creation(name, scenario_config, seed, copies, join, options, public)


def _build(server: EnvServer, c: _Creation) -> Generator[None, None, tuple]:
    """Build the worlds' envs, pausing (``yield``) after every CREATE_CHUNK per-copy envs; returns what
    :func:`_register` needs. Nothing is registered here: a build that raises leaves the server as it was."""
    group = None
    vectorise = c.join and c.copies >= 2 and c.options.auto_reset  # the batched training path; see vector.py
    vector = scenarios.make_vector(c.name, c.copies, c.scenario_config) if vectorise else None
    if vector is not None:
        group = VectorGroup(vector)
        group.rate_mark = (time.monotonic(), 0)
        group.last_obs = vector.reset(seed=c.seed)
        envs = [CopyView(group, i) for i in range(c.copies)]
        firsts = [(CopyObs(group, i), {}) for i in range(c.copies)]
    else:
        envs, firsts = [], []
        try:
            for i in range(c.copies):
                env = scenarios.make_env(c.name, c.scenario_config, server.config.allowed_packages)
                envs.append(env)
                firsts.append(env.reset(seed=None if c.seed is None else c.seed + i))
                if (i + 1) % CREATE_CHUNK == 0 and i + 1 < c.copies:
                    yield
        except BaseException:
            for env in envs:
                with contextlib.suppress(Exception):
                    env.close()
            raise
    spec = WorldSpec.of_env(c.name, c.scenario_config, envs[0])
    # Everything else that asks the scenario something, before any world is registered.
    agents = spec.possible_agents
    spaces = [({a: e.observation_space(a) for a in agents}, {a: e.action_space(a) for a in agents}) for e in envs]
    first_obs = (
        [
            {a: to_wire(obs_spaces[a], obs[a]) for a in agents if a in obs}
            for (obs_spaces, _), (obs, _) in zip(spaces, firsts, strict=True)
        ]
        if c.join
        else []
    )
    return envs, firsts, group, spec, spaces, first_obs


def _run_to_end(build: Generator[None, None, tuple], name: str) -> tuple:
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


def _register(server: EnvServer, session: Session, c: _Creation, built: tuple) -> dict:
    envs, firsts, group, spec, spaces, first_obs = built
    wire_spec = spec.to_wire()
    spec_key = server.spec_key(wire_spec)
    owner_token = secrets.token_hex(16)  # one for all the copies created together
    observer_token = secrets.token_hex(16)
    renders = group.renders if group is not None else getattr(envs[0], "render_mode", None) == "rgb_array"
    worlds = []
    now = time.monotonic()
    for i, env in enumerate(envs):
        world = World(
            world_id=server.new_world_id(),
            env=env,
            spec=wire_spec,
            spec_key=spec_key,
            obs_spaces=spaces[i][0],
            act_spaces=spaces[i][1],
            state_space=spec.state_space,
            options=c.options,
            owner=session.identity,
            owner_token=owner_token,
            seed=None if c.seed is None else c.seed + i,
            public=c.public,
            observer_token=observer_token,
            renders=renders,
        )
        world.obs, world.infos = firsts[i]
        world.rate_mark = (now, 0)
        if group is not None:
            world.group, world.index = group, i
            group.add(world)
        server.worlds[world.world_id] = world
        session.owned.add(world.world_id)
        worlds.append(world)
    reply = {
        "op": "created",
        "worlds": [w.world_id for w in worlds],
        "spec": wire_spec,
        "owner_token": owner_token,
        "observer_token": observer_token,
        "render": renders,
    }
    if c.join:
        reply["tokens"] = [_take_all(world, session) for world in worlds]
        reply["obs"] = {str(w.world_id): obs for w, obs in zip(worlds, first_obs, strict=True)}
    return reply


def _take_all(world: World, session: Session) -> dict[str, str]:
    tokens = {a: world.take_seat(a, session.identity) for a in world.agents}
    session.seats.update((world.world_id, a) for a in world.agents)
    return tokens


def op_join(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    role = field(message, "role", str, AGENT)
    tokens = field(message, "tokens", dict, {})
    takeover = field(message, "takeover", bool, True)
    owner_token = field(message, "owner_token", str, None)
    observer_token = field(message, "observer_token", str, None)
    strings(tokens, "tokens")
    strings(tokens.values(), "tokens")
    if role not in ROLES:
        raise ProtocolError(BAD_REQUEST, f"'role' must be one of {list(ROLES)}, got {role!r:.40}", "see join")
    if observer_token is not None and not secrets.compare_digest(observer_token, world.observer_token):
        raise ProtocolError(
            BAD_TOKEN,
            f"that is not the observer token of world {world.world_id}",
            "ask its owner for the created reply's observer_token",
        )
    if role == OBSERVER and observer_token is None and owner_token is None and not _may_watch(world, session):
        raise ProtocolError(
            NOT_ALLOWED,
            f"world {world.world_id} admits only the observers its owner invites",
            "join with the owner's 'observer_token' (or as an operator); public worlds admit anyone",
        )
    if owner_token is not None and owner_token != world.owner_token:
        raise ProtocolError(
            BAD_TOKEN, f"that is not the owner token of world {world.world_id}", "send the created reply's owner_token"
        )
    seats: list[str] = []
    if role == AGENT:
        requested = field(message, "seats", (list, str), list(tokens) if tokens else "all")
        if requested == "all":
            seats = [a for a, s in world.seats.items() if s.state == FREE or s.holder == session.identity]
        elif isinstance(requested, list):
            strings(requested, "seats")
            seats = requested
        else:
            raise ProtocolError(BAD_REQUEST, "'seats' must be a list of agents or \"all\"", "see join")
        for agent in seats:
            seat = world.seat(agent)
            token = tokens.get(agent)
            if token is not None and token != seat.token:
                raise ProtocolError(BAD_TOKEN, f"that is not the token of seat {agent!r}", "join without a token")
            if seat.state == HELD and seat.holder != session.identity and (token is None or not takeover):
                raise ProtocolError(SEAT_TAKEN, f"seat {agent!r} is held by another client", "pick a free seat")
            if seat.state == LOST and token is None:
                raise ProtocolError(SEAT_TAKEN, f"seat {agent!r} was lost by its holder", "reclaim it with its token")
        if len(set(seats)) != len(seats):
            raise ProtocolError(BAD_REQUEST, "'seats' names a seat twice", "name each seat once")
    # Checked: now change state. A takeover interrupts the previous holder's waiting request.
    world.refresh()
    granted = {}
    for agent in seats:
        seat = world.seats[agent]
        previous = seat.holder
        if previous is not None and previous != session.identity:
            server.send_to(world.cancel_waiters(f"seat {agent!r} was taken over with its token", previous))
            old = server.sessions.get(previous)
            if old:
                old.seats.discard((world.world_id, agent))
        granted[agent] = world.take_seat(agent, session.identity)
        session.seats.add((world.world_id, agent))
    if owner_token is not None:
        previous_owner = server.sessions.get(world.owner) if world.owner is not None else None
        if previous_owner is not None:
            previous_owner.owned.discard(world.world_id)
        world.owner = session.identity
        session.owned.add(world.world_id)
    if role == OBSERVER:
        world.observers.add(session.identity)
    server.try_step(world)
    shown = seats if role == AGENT else world.agents
    return {
        "op": "joined",
        "world": world.world_id,
        "seats": granted,
        "spec": world.spec,
        "tick": world.tick,
        "episode": world.episode,
        "agents": world.live_agents,
        "obs": {a: to_wire(world.obs_spaces[a], world.obs[a]) for a in shown if a in world.obs},
    }


def op_leave(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    mine = world.held_by(session.identity)
    seats = field(message, "seats", list, mine)
    strings(seats, "seats")
    for agent in seats:
        world.seat(agent)
        if agent not in mine:
            raise ProtocolError(NOT_YOUR_SEAT, f"you do not hold seat {agent!r}", f"you hold {mine}")
    server.send_to(world.cancel_waiters("you left the world", session.identity))
    for agent in seats:
        world.release_seat(agent, lost=False)
        session.seats.discard((world.world_id, agent))
    world.observers.discard(session.identity)
    if not server.close_if_abandoned(world):
        server.try_step(world)
    return {"op": "left", "world": world.world_id, "seats": seats}


def op_close(server: EnvServer, session: Session, message: dict) -> dict:
    world = _owned(server, session, message)
    server.close_world(world, "its owner closed it")
    return {"op": "closed", "world": world.world_id}


def op_reset(server: EnvServer, session: Session, message: dict) -> dict:
    world = _owned(server, session, message)
    if world.group is not None:
        raise world.group.refuse_single(world.world_id)
    seed = seed_field(message)
    options = plain_field(message, "options", None)
    server.send_to(world.cancel_waiters("the owner reset the world"))
    try:
        world.reset(seed=seed, options=options)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise ProtocolError(
            SCENARIO_ERROR, f"reset raised {type(exc).__name__}: {exc}", "check the seed/options"
        ) from None
    world.episode += 1
    return world.observation_reply(world.live_agents)


def op_observe(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    if _may_watch(world, session):
        return world.observation_reply(world.live_agents)
    mine = world.held_by(session.identity)
    if not mine:
        raise ProtocolError(NOT_YOUR_SEAT, f"you are not in world {world.world_id}", "join it first")
    return world.observation_reply(mine)


def op_state(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    if not (_member(world, session) or _may_watch(world, session)):
        raise ProtocolError(NOT_YOUR_SEAT, f"you are not in world {world.world_id}", "join it first")
    world.refresh()
    try:
        state = world.state()
    except ProtocolError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the scenario's own state() raised: its fault, not the server's
        raise ProtocolError(
            SCENARIO_ERROR, f"the state of world {world.world_id} raised {type(exc).__name__}: {exc}", "fix state()"
        ) from None
    return {"op": "state", "world": world.world_id, "tick": world.tick, "state": state}


def op_render(server: EnvServer, session: Session, message: dict) -> dict:
    world = server.world(message.get("world"))
    if not (_member(world, session) or _may_watch(world, session)):
        raise ProtocolError(NOT_YOUR_SEAT, f"you are not in world {world.world_id}", "join it (as an observer) first")
    world.refresh()
    if world.frame_tick != (world.episode, world.tick) or world.frame is None:
        try:
            world.frame = world.render()
        except ProtocolError:
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise ProtocolError(
                SCENARIO_ERROR, f"rendering world {world.world_id} raised {type(exc).__name__}: {exc}", "fix render()"
            ) from None
        world.frame_tick = (world.episode, world.tick)
    return {"op": "frame", "world": world.world_id, "tick": world.tick, "episode": world.episode, "frame": world.frame}


#: Every operation's handler, by the ``op`` of its request.
OPERATIONS: dict[str, Callable[[EnvServer, Session, dict], dict | None]] = {
    "hello": op_hello,
    "ping": op_ping,
    "list": op_list,
    "create": op_create,
    "join": op_join,
    "leave": op_leave,
    "close": op_close,
    "reset": op_reset,
    "observe": op_observe,
    "state": op_state,
    "act": op_act,
    "step_batch": op_step_batch,
    "reset_batch": op_reset_batch,
    "render": op_render,
    "act_batch": op_act_batch,
}
assert set(OPERATIONS) == set(REQUESTS), "every request of the protocol has exactly one handler"
