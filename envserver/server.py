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
import secrets
import threading
import time
from typing import Any

import msgpack
import zmq

from agora_marl.envserver import liveness
from agora_marl.envserver.config import ServerConfig
from agora_marl.envserver.connections import Connection, Connections
from agora_marl.envserver.delivery import Delivery
from agora_marl.envserver.groups import Groups
from agora_marl.envserver.handlers import OPERATIONS, op_hello
from agora_marl.envserver.identity import Session, allow_list, peer_key, secure_and_bind, unpredictable_routing_ids
from agora_marl.envserver.protocol import pack, unpack
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import (
    BAD_REQUEST,
    INTERNAL,
    NO_SESSION,
    SCENARIO_ERROR,
    SESSIONLESS,
    TOO_LARGE,
    UNKNOWN_OP,
    UNKNOWN_WORLD,
)
from agora_marl.envserver.protocol.wire import peek_id
from agora_marl.envserver.seats import SeatTable
from agora_marl.envserver.sessions import Origin, SessionTable
from agora_marl.envserver.world import World

log = logging.getLogger("agora.server")

# libzmq's constants as plain ints: pyzmq's enum members cost an enum operation each time they are combined.
_RCVTIMEO = int(zmq.RCVTIMEO)
#: The longest the loop waits for a message before it looks at its connections, deadlines and waiting replies (and
#: at its stop flag): with connections open, and with none.
IDLE_WAKE_MS, NO_CONNECTION_WAKE_MS = 10, 100
#: How often the loop looks at its connections (accepted and closed ones, unfinished messages) and silent sessions.
CHORES_S = 0.01


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
        # (no frame of an acceptable request is larger than the request), and queues at most RCVHWM whole requests
        # per connection (then stops reading that socket: TCP pushes back on the client). What it cannot bound, the
        # frames of a message never finished and the bytes of unread replies, connections.py and delivery.py do.
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        self.socket.setsockopt(zmq.RCVHWM, self.config.max_queued_requests)
        self.delivery = Delivery(self.socket, self.config.max_unread_bytes)
        self.connections = Connections(
            self.socket,
            self.config.max_connections,
            self.config.max_connections_per_peer,
            self.config.max_message_bytes,
            replaceable=lambda conn: liveness.replaceable(self, conn),
        )
        self.address: str = secure_and_bind(self.socket, self.config.bind, self.config.curve_secret_key)
        self.worlds: dict[int, World] = {}
        self.groups = Groups()
        """Named groups of worlds (``create``'s ``group``, ``join_group``)."""
        self.sessions = SessionTable(self.config.max_sessions)
        """Every live session (sessions.py owns them); who holds which seat is the seat table's."""
        self.seat_table = SeatTable()
        self.pending_worlds = 0
        self._jobs: collections.deque = collections.deque()
        self.operator_secret: str = self.config.operator_secret or secrets.token_urlsafe(32)
        self._next_world = 1
        self._deadlines: list[tuple[float, int]] = []
        self._scheduled: dict[int, float] = {}  # each world's deadline in the heap: every act of a tick arms it once
        self._stopping = False  # a plain flag: set from signal handlers, which must take no lock
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "errors": 0, "steps": 0}

    # ---- running --------------------------------------------------------------------------------------------

    def start_in_thread(self) -> EnvServer:
        """Serve from a daemon thread (for tests and notebooks); returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="agora-envserver", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to stop, wait for it (when it serves from a thread), and close the socket and every world."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def request_stop(self, *_: object) -> None:
        """Ask the loop to stop after its current turn. Safe in a signal handler (it sets a plain flag, takes no lock:
        a handler that waits for a lock its own thread holds never returns) and callable as one."""
        self._stopping = True

    def __enter__(self) -> EnvServer:
        return self.start_in_thread()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self) -> None:
        socket, delivery, connections = self.socket, self.delivery, self.connections
        serve_one, recv, recv_multipart = self.serve_one, socket.recv, socket.recv_multipart
        # The routing-id frame as a zmq.Frame, for its metadata (the connection it came over, a CURVE key); the rest
        # as bytes: a Frame costs more than copying a request's few KB.
        next_sweep = next_chores = time.monotonic()
        receive_timeout = None
        served = 0  # messages served since deferred work last had a turn
        try:
            while not self._stopping:
                now = time.monotonic()
                timeout = 0 if self._jobs else IDLE_WAKE_MS if connections.by_fd else NO_CONNECTION_WAKE_MS
                if self._deadlines:
                    timeout = min(timeout, max(0, int((self._deadlines[0][0] - now) * 1000)))
                if delivery.next_retry - now < 0.01:
                    timeout = min(timeout, max(0, int((delivery.next_retry - now) * 1000)))
                if timeout != receive_timeout:
                    socket.setsockopt(_RCVTIMEO, timeout)
                    receive_timeout = timeout
                # A blocking receive with a timeout, as a bare ROUTER loop does: no poll call, no events check.
                try:
                    route = recv(copy=False)
                except zmq.Again:
                    served = 256
                    connections.poll()
                else:
                    serve_one([route, *recv_multipart()] if route.more else [route])
                    served += 1
                # Deferred work gets a turn once the queue is drained, or after 256 messages, as before.
                if self._jobs and served >= 256:
                    self.run_deferred()
                    served = 0
                now = time.monotonic()
                if self._deadlines and self._deadlines[0][0] <= now:
                    self._fire_deadlines(now)
                if delivery.next_retry <= now:
                    delivery.retry(now)
                if now >= next_chores:  # the connections' unfinished messages, silent sessions
                    connections.poll()
                    connections.check_unfinished(now)
                    if now >= next_sweep:
                        liveness.sweep_silent(self, now)
                        next_sweep = now + min(1.0, self.config.heartbeat_timeout_s / 4)
                    next_chores = now + CHORES_S
        finally:
            for job in self._jobs:
                job.build.close()  # a create still being built closes the envs it made
            for world in list(self.worlds.values()):
                self.close_world(world, "the server is shutting down")
            self.connections.shut()
            self.socket.close(linger=0)
            if self._authenticator is not None:
                self._authenticator.stop()
                self._authenticator = None
            if self._private_context is not None:
                self._private_context.term()

    # ---- one request ------------------------------------------------------------------------------------------

    def serve_one(self, frames: list) -> None:
        """Serve one received message (routing-id frame as a zmq.Frame, or bytes when replayed in process; header;
        array frames: bytes, or zmq.Frame): what the loop does with each; its replies go out through the socket.
        Benchmarks replay requests through it (bench/replay.py)."""
        route_frame = frames[0]
        route = route_frame if type(route_frame) is bytes else route_frame.bytes
        frames = frames[1:]
        self.stats["requests"] += 1
        request_id = 0
        session = conn = None
        try:
            size = sum(map(len, frames))
            try:
                conn = self.connections.admit(route_frame, route, frames, size)
            except ProtocolError:
                request_id = peek_id(frames[0]) if frames else 0
                raise
            if size > self.config.max_message_bytes:
                request_id = peek_id(frames[0])
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
            session = self._session(message, route, route_frame, conn, required=op not in SESSIONLESS)
            if op == "hello":  # told where it comes from: a new session is opened there
                reply = op_hello(self, session, message, Origin(route, route_frame, conn))
            else:
                reply = handler(self, session, message)
            if reply is not None:
                reply["id"] = request_id
                self._reply(route, conn, session, reply)
        except ProtocolError as exc:
            self.stats["errors"] += 1
            self._reply(route, conn, session, exc.to_header(exc.request_id or request_id))
        except KeyboardInterrupt:  # the server's stop signal
            raise
        except BaseException as exc:  # a bug of ours or a scenario's SystemExit costs one request, never the server
            self.stats["errors"] += 1
            log.exception("internal error while serving a request")
            error = ProtocolError(INTERNAL, f"{type(exc).__name__}: {exc}", "please report this bug")
            self._reply(route, conn, session, error.to_header(request_id))

    def _reply(self, route: bytes, conn: Connection | None, session: Session | None, message: dict) -> None:
        """Answer the request being served: through its session (unless the request ended it: then over its
        connection), or over the connection it came from."""
        if session is not None and not session.ended:
            self.delivery.send(session, pack(message, session.joined_frames))
        elif conn is not None:
            self.delivery.send(conn, pack(message))
        else:  # refused before the server serves its connection at all
            self.delivery.send_refusal(route, pack(message))

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
            self.send_to([(job.session.identity, exc.to_header(job.request_id))])
            return
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a bug of ours: it costs this request, never the server
            self.stats["errors"] += 1
            log.exception("internal error in deferred work")
            error = ProtocolError(INTERNAL, f"{type(exc).__name__}: {exc}", "please report this bug")
            self.send_to([(job.session.identity, error.to_header(job.request_id))])
            return
        if reply is None:
            self._jobs.append(job)  # round robin: the next job gets the next turn
        else:
            reply["id"] = job.request_id
            self.send_to([(job.session.identity, reply)])

    def send_to(self, replies: list[tuple[bytes, dict]]) -> None:
        """Send messages to sessions (by ``Session.identity``), wherever each last connected from (or, while its
        connection is gone, when it comes back); a session that was forgotten gets nothing."""
        for identity, message in replies:
            session = self.sessions.get(identity)
            if session is not None:
                self.delivery.send(session, pack(message, session.joined_frames))

    def _session(self, message: dict, route: bytes, route_frame, conn: Connection, required: bool) -> Session | None:
        """The session whose secret the request carries (its replies now go over ``conn``), or None for a
        sessionless request that carries none."""
        secret = message.get("secret")
        if secret is None and not required:
            return None
        if secret is not None and type(secret) is not str:
            raise ProtocolError(
                BAD_REQUEST, f"'secret' must be a string, got {type(secret).__name__}", "send welcome's 'secret'"
            )
        session = self.sessions.by_secret(secret)
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
                "longer than its keep_alive_s, or it said bye (or the server restarted)",
                "send hello again (without a secret) and reclaim your seats with their tokens",
            )
        if conn is not session.connection:  # the client reconnected (or another connection shows the secret)
            if session.peer_key and peer_key(route_frame) != session.peer_key:
                raise ProtocolError(
                    NO_SESSION, "that session belongs to another CURVE key", "send hello over your own connection"
                )
            if conn.alive:  # not a message read after its connection closed
                session.route, session.connection = route, conn
        conn.session = session.identity
        session.last_seen = conn.last_active = time.monotonic()
        if session.outbox is not None:
            self.delivery.flush(session)
        return session

    def open_session(self, origin: Origin, operator: bool = False) -> Session:
        """A session for a ``hello`` from ``origin`` (made over its CURVE key where the server has an allow-list);
        refused with ``busy`` when the server keeps as many as it may (sessions.py)."""
        key = peer_key(origin.route_frame) if self._authenticator is not None else ""
        return self.sessions.open(origin, key, operator)

    def holder_name(self, identity: bytes | None) -> str | None:
        """What ``list`` calls a seat's holder: the name it gave at ``hello``, else its public session label."""
        session = self.sessions.get(identity)
        if session is None:
            return None
        return session.name or session.label

    def forget_session(self, session: Session) -> None:
        self.sessions.forget(session)
        self.delivery.forget(session)
        if session.observer:
            for world in self.worlds.values():
                world.observers.discard(session.identity)

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
        if world.block is not None:
            world.block.intact = False
        self.send_to(world.cancel_waiters(f"world {world.world_id} was closed: {reason}"))
        self.seat_table.forget_world(world)
        owner = self.sessions.get(world.owner)
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
