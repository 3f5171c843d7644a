"""The env server: one ROUTER socket, one single-threaded event loop, many worlds.

The loop receives a request, handles it inside its own ``try`` (so a bad request becomes an error reply and never
touches another client), and sends replies. Between requests it fires the worlds' deadlines and sweeps silent
connections. docs/protocol.md is the specification of every operation handled here.
"""

from __future__ import annotations

import collections
import hashlib
import heapq
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from agora_marl import scenarios
from agora_marl.envserver.groups import Groups
from agora_marl.envserver.handlers import OPERATIONS
from agora_marl.envserver.identity import (
    Session,
    allow_list,
    exposed,
    peer_key,
    unpredictable_routing_ids,
)
from agora_marl.envserver.protocol import pack, unpack
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import (
    BAD_REQUEST,
    BUSY,
    INTERNAL,
    NO_SESSION,
    SCENARIO_ERROR,
    SESSIONLESS,
    TOO_LARGE,
    UNKNOWN_OP,
    UNKNOWN_WORLD,
)
from agora_marl.envserver.world import World

log = logging.getLogger("agora.server")

# Frames up to this size are copied into libzmq's message rather than lent to it: a lent (zero-copy) frame costs a
# Frame object and a release message back from libzmq's I/O thread, dearer than the copy up to ~1 MiB. A bare ROUTER
# replying over ipc, server CPU per round trip (main thread + I/O thread): 88 KB 64 µs copied, 90 lent; 256 KB 88
# against 186; 1 MiB 217 against 258 (2 cores, December 2026).
_ZERO_COPY_BYTES = 1 << 21
# libzmq's constants as plain ints: pyzmq's enum members cost an enum operation (~0.5 µs) each time they are combined.
_SNDMORE, _RCVTIMEO = int(zmq.SNDMORE), int(zmq.RCVTIMEO)


@dataclass
class ServerConfig:
    """Settings of one server process (``agora serve`` flags)."""

    bind: str = "tcp://127.0.0.1:5555"
    """ZeroMQ endpoint to bind: ``tcp://HOST:PORT`` (port 0 picks a free one) or ``ipc://PATH``."""
    max_message_bytes: int = 16 << 20
    """Requests larger than this are refused with ``too_large``; a single frame larger than this closes the
    connection."""
    max_queued_requests: int = 64
    """Whole requests libzmq queues per connection before it stops reading from it (ZMQ_RCVHWM)."""
    max_queued_replies: int = 64
    """Replies queued per connection for a client that does not read them; past it, its newest replies are dropped
    (ZMQ_SNDHWM)."""
    max_worlds_per_client: int = 4096
    """How many live worlds one session may own."""
    max_sessions: int = 65536
    """How many sessions the server keeps at once (one per ``hello``; an idle one is forgotten after the heartbeat
    timeout). Past it, ``hello`` is refused with ``busy``."""
    max_worlds: int = 65536
    """How many live worlds the server hosts in all."""
    max_batch: int = 4096
    """Most worlds in one ``create`` (copies) or ``step_batch``."""
    heartbeat_timeout_s: float = 10.0
    """A connection silent this long (and with no act in flight) loses its seats, unless it asked for longer."""
    max_keep_alive_s: float = 600.0
    """The longest silence a connection may ask for at ``hello`` (``keep_alive_s``) before it loses its seats."""
    default_deadline_ms: float = 1000.0
    """Lockstep deadline of worlds whose creator sends none."""
    allowed_packages: tuple[str, ...] = scenarios.DEFAULT_ALLOWED_PACKAGES
    """Packages whose PettingZoo/gymnasium constructors clients may name (registered scenarios always allowed)."""
    curve_secret_key: bytes | None = None
    """Z85 CurveZMQ secret key: when set, the socket is a CURVE server and clients must know its public key."""
    curve_client_keys: tuple[bytes, ...] | None = None
    """Z85 public keys of the clients allowed in (CURVE only); None: any client that knows the server's key."""
    operator_secret: str | None = None
    """The operator credential: a ``hello`` that carries it may list and observe every world (tools such as
    ``agora watch``). None: the server makes a random one (``EnvServer.operator_secret``; ``agora serve`` writes it
    to a file only its user can read)."""


class EnvServer:
    """Hosts worlds for agent clients and learners.

    Use ``serve_forever()`` in a process of its own (``agora serve``), or ``start_in_thread()`` / ``stop()`` in
    tests. Construction binds the socket, so ``address`` is known (with the real port) right away.
    """

    def __init__(self, config: ServerConfig | None = None, context: zmq.Context | None = None):
        self.config = config or ServerConfig()
        self._authenticator = None
        self._private_context: zmq.Context | None = None
        if self.config.curve_client_keys is not None:
            if not self.config.curve_secret_key:
                raise ValueError("an allow-list of client keys needs the server's CURVE secret key too")
            # A ZAP handler answers for every server socket of its context: give this server a context of its own.
            context = self._private_context = zmq.Context()
            self._authenticator = allow_list(context, self.config.curve_client_keys)
        self.context = context or zmq.Context.instance()
        unpredictable_routing_ids()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # Memory per connection: libzmq drops a connection that sends a frame over MAXMSGSIZE before buffering it
        # (no frame of an acceptable request is larger than the request); it queues at most RCVHWM whole requests
        # per connection (then stops reading that socket: TCP pushes back on the client) and SNDHWM replies (a
        # client that never reads loses its newest replies, not the server its memory). What libzmq cannot bound
        # is a multipart message that is never finished: see docs/security.md.
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        self.socket.setsockopt(zmq.RCVHWM, self.config.max_queued_requests)
        self.socket.setsockopt(zmq.SNDHWM, self.config.max_queued_replies)
        if self.config.curve_secret_key:
            self.socket.curve_secretkey = self.config.curve_secret_key
            self.socket.curve_publickey = zmq.curve_public(self.config.curve_secret_key)
            self.socket.curve_server = True
        bind = self.config.bind
        if bind.startswith("tcp://") and bind.endswith(":0"):
            bind = bind[:-2] + ":*"
        self.socket.bind(bind)
        self.address: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if exposed(self.address) and not self.config.curve_secret_key:
            log.warning(
                "SERVING WITHOUT AUTHENTICATION on %s, which other machines can reach: anyone who can connect may "
                "create, join and close worlds. On a network, run with --curve-secret (CurveZMQ), or bind "
                "tcp://127.0.0.1 or ipc:// and reach the server through the job's own nodes only.",
                self.address,
            )
        self.worlds: dict[int, World] = {}
        self.groups = Groups()
        """Named groups of worlds (``create``'s ``group``, ``join_group``)."""
        self.sessions: dict[bytes, Session] = {}
        self._by_secret: dict[str, Session] = {}
        self.request_route: bytes = b""
        self.pending_worlds = 0
        self._jobs: collections.deque = collections.deque()
        self.request_header: Any = None
        self.operator_secret: str = self.config.operator_secret or secrets.token_urlsafe(32)
        self._next_world = 1
        self._deadlines: list[tuple[float, int]] = []
        self._scheduled: dict[int, float] = {}  # each world's deadline in the heap: every act of a tick arms it once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "errors": 0, "steps": 0}

    # ---- running --------------------------------------------------------------------------------------------

    def start_in_thread(self) -> EnvServer:
        """Serve from a daemon thread (for tests and notebooks); returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="agora-envserver", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to stop, wait for it, and close the socket and every world."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> EnvServer:
        return self.start_in_thread()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self) -> None:
        socket = self.socket
        serve_one, recv_multipart = self.serve_one, socket.recv_multipart
        # Frames as bytes: a zmq.Frame (copy=False) costs ~2 µs more per message than copying a request's few KB.
        # Only the CURVE allow-list needs them, to read the key a message came over (identity.peer_key).
        copy = self._authenticator is None
        next_sweep = time.monotonic()
        receive_timeout = None
        served = 0  # messages served since deferred work last had a turn
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                timeout = 0 if self._jobs else 100
                if self._deadlines:
                    timeout = min(timeout, max(0, int((self._deadlines[0][0] - now) * 1000)))
                if timeout != receive_timeout:
                    socket.setsockopt(_RCVTIMEO, timeout)
                    receive_timeout = timeout
                # A blocking receive with a timeout, as a bare ROUTER loop does: no poll call, no events check.
                try:
                    frames = recv_multipart(copy=copy)
                except zmq.Again:
                    served = 256
                else:
                    serve_one(frames)
                    served += 1
                # Deferred work gets a turn once the queue is drained, or after 256 messages, as before.
                if self._jobs and served >= 256:
                    self.run_deferred()
                    served = 0
                now = time.monotonic()
                if self._deadlines and self._deadlines[0][0] <= now:
                    self._fire_deadlines(now)
                if now >= next_sweep:
                    self._sweep_silent(now)
                    next_sweep = now + min(1.0, self.config.heartbeat_timeout_s / 4)
        finally:
            for job in self._jobs:
                job.build.close()  # a create still being built closes the envs it made
            for world in list(self.worlds.values()):
                self.close_world(world, "the server is shutting down")
            self.socket.close(linger=0)
            if self._authenticator is not None:
                self._authenticator.stop()
                self._authenticator = None
            if self._private_context is not None:
                self._private_context.term()

    # ---- one request ------------------------------------------------------------------------------------------

    def serve_one(self, frames: list) -> None:
        """Serve one received message (routing id, header, array frames: bytes, or zmq.Frame): what the loop does with
        each; its replies go out through the socket. Benchmarks replay requests through it (bench/replay.py)."""
        route = frames[0] if type(frames[0]) is bytes else frames[0].bytes
        frames = frames[1:]
        self.stats["requests"] += 1
        request_id = 0
        try:
            size = sum(map(len, frames))
            if size > self.config.max_message_bytes:
                request_id = _peek_id(frames[0])
                raise ProtocolError(
                    TOO_LARGE,
                    f"message of {size} bytes is over this server's limit of {self.config.max_message_bytes}",
                    "split the batch over several requests, or start the server with a larger --max-message-bytes",
                )
            message = unpack(frames)
            request_id = message["id"]
            op = message["op"]
            handler = OPERATIONS.get(op)
            if handler is None:
                raise ProtocolError(UNKNOWN_OP, f"unknown operation {op!r:.80}", f"use one of {sorted(OPERATIONS)}")
            session = self._session(message, route, frames[0], required=op not in SESSIONLESS)
            self.request_route, self.request_header = route, frames[0]  # for hello's new_session
            reply = handler(self, session, message)
            if reply is not None:
                reply["id"] = request_id
                self.send(route, reply, session is not None and session.joined)
        except ProtocolError as exc:
            self.stats["errors"] += 1
            self.send(route, exc.to_header(exc.request_id or request_id))
        except KeyboardInterrupt:  # the server's stop signal
            raise
        except BaseException as exc:  # a bug of ours or a scenario's SystemExit costs one request, never the server
            self.stats["errors"] += 1
            log.exception("internal error while serving a request")
            error = ProtocolError(INTERNAL, f"{type(exc).__name__}: {exc}", "please report this bug")
            self.send(route, error.to_header(request_id))

    def send(self, route: bytes, message: dict, joined: bool = False) -> None:
        """Send a message to the connection with this routing id (replies to the request being served); ``joined``:
        its arrays in one frame, as the session asked at ``hello``."""
        frames = pack(message, joined)
        send = self.socket.send
        try:
            send(route, _SNDMORE)
            for frame in frames[:-1]:
                # Zero-copy only pays for very large frames (see _ZERO_COPY_BYTES).
                send(frame, _SNDMORE, copy=type(frame) is bytes or frame.nbytes < _ZERO_COPY_BYTES)
            frame = frames[-1]
            send(frame, 0, copy=type(frame) is bytes or frame.nbytes < _ZERO_COPY_BYTES)
        except zmq.ZMQError as exc:  # the peer is gone or its queue is full: its loss, not the server's
            log.warning("dropping a reply: %s", exc)

    def defer(self, job) -> None:
        """Queue work that answers its request later, a slice per loop turn (``job.step()`` returns the reply when
        done, None for more; a ProtocolError is the reply)."""
        self._jobs.append(job)

    def run_deferred(self) -> bool:
        """Give the next deferred job (``defer``) its turn; returns whether any is left. The loop calls it between
        messages."""
        if not self._jobs:
            return False
        self._run_job()
        return bool(self._jobs)

    def _run_job(self) -> None:
        job = self._jobs.popleft()
        try:
            reply = job.step()
        except ProtocolError as exc:
            self.stats["errors"] += 1
            self.send(job.session.route, exc.to_header(job.request_id))
            return
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a bug of ours: it costs this request, never the server
            self.stats["errors"] += 1
            log.exception("internal error in deferred work")
            error = ProtocolError(INTERNAL, f"{type(exc).__name__}: {exc}", "please report this bug")
            self.send(job.session.route, error.to_header(job.request_id))
            return
        if reply is None:
            self._jobs.append(job)  # round robin: the next job gets the next turn
        else:
            reply["id"] = job.request_id
            self.send(job.session.route, reply, job.session.joined)

    def send_to(self, replies: list[tuple[bytes, dict]]) -> None:
        """Send messages to sessions (by ``Session.identity``), wherever each last connected from; a session that is
        gone gets nothing."""
        for identity, message in replies:
            session = self.sessions.get(identity)
            if session is not None:
                self.send(session.route, message, session.joined)

    def _session(self, message: dict, route: bytes, header, required: bool) -> Session | None:
        """The session whose secret the request carries (its replies now go to ``route``), or None for a sessionless
        request that carries none."""
        secret = message.get("secret")
        if secret is None and not required:
            return None
        session = self._by_secret.get(secret) if isinstance(secret, str) else None
        if session is None:
            if secret is None:
                raise ProtocolError(
                    NO_SESSION,
                    f"'{message['op']}' needs a session: it carries no 'secret'",
                    "send hello first and put its welcome's 'secret' in every request",
                )
            raise ProtocolError(
                NO_SESSION,
                "no session has that secret: it was never issued, or the session was forgotten after a silence "
                "longer than its keep_alive_s (or the server restarted)",
                "send hello again (without a secret) and reclaim your seats with their tokens",
            )
        if route != session.route:  # the client reconnected (or another connection shows the secret)
            if session.peer_key and peer_key(header) != session.peer_key:
                raise ProtocolError(
                    NO_SESSION, "that session belongs to another CURVE key", "send hello over your own connection"
                )
            session.route = route
        session.last_seen = time.monotonic()
        return session

    def new_session(self) -> Session:
        """A session for the ``hello`` being served; refused with ``busy`` when the server keeps as many as it may."""
        route, header = self.request_route, self.request_header
        if len(self.sessions) >= self.config.max_sessions:
            raise ProtocolError(
                BUSY, f"the server keeps {len(self.sessions)} sessions, its limit", "try again in a few seconds"
            )
        while True:
            identity, secret = os.urandom(16), secrets.token_urlsafe(24)
            if identity not in self.sessions and secret not in self._by_secret:
                break
        key = peer_key(header) if self._authenticator is not None else ""
        session = Session(identity, route, secret, time.monotonic(), peer_key=key)
        self.sessions[identity] = self._by_secret[secret] = session
        return session

    def holder_name(self, identity: bytes | None) -> str | None:
        """What ``list`` calls a seat's holder: the name it gave at ``hello``, else its public session label."""
        session = self.sessions.get(identity) if identity is not None else None
        if session is None:
            return None
        return session.name or session.label

    def forget_session(self, session: Session) -> None:
        self.sessions.pop(session.identity, None)
        self._by_secret.pop(session.secret, None)

    # ---- worlds -----------------------------------------------------------------------------------------------

    def new_world_id(self) -> int:
        world_id = self._next_world
        self._next_world += 1
        return world_id

    def world(self, world_id: Any) -> World:
        if not isinstance(world_id, int) or isinstance(world_id, bool):
            raise ProtocolError(BAD_REQUEST, f"'world' must be an int, got {world_id!r:.40}", "see list")
        world = self.worlds.get(world_id)
        if world is None:
            raise ProtocolError(UNKNOWN_WORLD, f"no world {world_id} on this server", "list the worlds")
        return world

    @staticmethod
    def spec_key(spec: dict) -> bytes:
        return hashlib.sha1(msgpack.packb(spec, use_bin_type=True)).digest()

    def schedule(self, world: World) -> None:
        """Remember a world's deadline so the loop wakes for it."""
        at = world.deadline_at
        if at is not None and self._scheduled.get(world.world_id) != at:
            self._scheduled[world.world_id] = at
            heapq.heappush(self._deadlines, (at, world.world_id))

    def try_step(self, world: World) -> None:
        """Step the world if the step rule says so, and answer its waiters; else make sure a waiting act has a deadline.

        Called after every change that can make a world ready or start it (an act, a join, a leave, a lost seat).
        """
        if world.ready():
            self._step_and_reply(world)
        else:
            world.arm_deadline(time.monotonic())
            self.schedule(world)

    def _step_and_reply(self, world: World) -> None:
        try:
            # The replies are built here too: an observation that does not fit its space fails like a step.
            replies = world.replies(world.step())
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a scenario's SystemExit too
            log.exception("world %d raised while stepping", world.world_id)
            cancelled = world.cancel_waiters(f"world {world.world_id} raised {exc!r}; it is closed")
            for _, header in cancelled:
                header["code"] = SCENARIO_ERROR
            self.send_to(cancelled)
            self.close_world(world, "the scenario raised")
            return
        self.stats["steps"] += 1
        self.send_to(replies)

    def _fire_deadlines(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            at, world_id = heapq.heappop(self._deadlines)
            if self._scheduled.get(world_id) == at:
                del self._scheduled[world_id]
            world = self.worlds.get(world_id)
            if world is not None and world.deadline_at is not None and world.deadline_at <= now and world.waiters:
                self._step_and_reply(world)

    def close_world(self, world: World, reason: str) -> None:
        """Close a world: its waiters get ``interrupted``, its seats and ownership are released, its env closed."""
        if world.group is not None:
            world.group.intact = False
        self.send_to(world.cancel_waiters(f"world {world.world_id} was closed: {reason}"))
        for agent, seat in world.seats.items():
            session = self.sessions.get(seat.holder) if seat.holder else None
            if session:
                session.seats.discard((world.world_id, agent))
        owner = self.sessions.get(world.owner) if world.owner else None
        if owner:
            owner.owned.discard(world.world_id)
        self.worlds.pop(world.world_id, None)
        if world.named_group is not None:
            self.groups.discard(world.named_group, world.world_id)
        try:
            world.env.close()
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.exception("world %d raised while closing", world.world_id)

    # ---- liveness ---------------------------------------------------------------------------------------------

    def close_if_abandoned(self, world: World) -> bool:
        """Close a world that has no owner and no held seat: nobody could act in it or close it any more.

        A world loses its owner when the owner goes silent; it is then closed as soon as its last holder leaves or
        goes silent too. Returns whether it was closed.
        """
        if world.owner is not None or any(s.holder is not None for s in world.seats.values()):
            return False
        if world.world_id in self.worlds:
            self.close_world(world, "it has no owner and nobody holds a seat in it")
        return True

    def _sweep_silent(self, now: float) -> None:
        """Connections silent past the heartbeat timeout lose their seats and their worlds' ownership; a world left
        with no owner and no held seat closes."""
        for identity, session in list(self.sessions.items()):
            silence = session.keep_alive_s if session.keep_alive_s is not None else self.config.heartbeat_timeout_s
            if session.last_seen >= now - silence or self._has_waiters(identity, session):
                continue
            log.info("session %r (%s) went silent; releasing its seats", session.name, session.identity.hex()[:8])
            touched = set()
            for world_id, agent in list(session.seats):
                world = self.worlds.get(world_id)
                if world is not None:
                    world.release_seat(agent, lost=True)
                    touched.add(world_id)
            session.seats.clear()
            for world_id in list(session.owned):
                world = self.worlds.get(world_id)
                if world is not None and world.owner == identity:  # not reclaimed with the owner token meanwhile
                    world.owner = None
                    touched.add(world_id)
            session.owned.clear()
            self.forget_session(session)
            for world_id in touched:
                world = self.worlds.get(world_id)
                if world is not None and not self.close_if_abandoned(world):
                    self.try_step(world)

    def _has_waiters(self, identity: bytes, session: Session) -> bool:
        world_ids = {w for w, _ in session.seats}
        return any(
            any(waiter.identity == identity for waiter in self.worlds[w].waiters) for w in world_ids if w in self.worlds
        )


def _peek_id(header_frame) -> int:
    """The request id of a message refused before decoding, so that even that refusal can be matched."""
    if len(header_frame) > 1 << 16:
        return 0
    try:
        request_id = msgpack.unpackb(getattr(header_frame, "buffer", header_frame), raw=False).get("id", 0)
    except Exception:
        return 0
    return request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else 0
