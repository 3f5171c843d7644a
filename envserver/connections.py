"""The connections behind the server's one ROUTER socket: who each is, which session last spoke over it, how many
there may be, and how much of a message still arriving each may hold.

libzmq hides a ROUTER's connections from its user: a message names only a routing id. The server learns them from
two sources. The socket's monitor reports every accepted connection and every disconnection by file descriptor; a
received message's metadata names the descriptor it came over (``__fd``) and the routing id its peer chose at the
handshake (``Identity``, empty when libzmq made one). A :class:`Connection` joins the two: its descriptor, its peer
(an IP address, or the uid of an ``ipc://`` peer), the routing id of its messages, whether it is still open.

What the table enforces (docs/security.md has the figures):

- **Routing ids are the server's.** A connection whose peer chose its own id (``ZMQ_ROUTING_ID``) is refused with
  ``not_allowed``, every message of it; except an id of libzmq's own form (5 bytes, the first one zero), which its
  metadata cannot tell from one libzmq made. Replies follow a session's :class:`Connection`, not a routing id: a
  peer that takes a closed connection's id gets nothing that was meant for it.
- **Connections are bounded**, per peer and in all, below the process's descriptor limit (libzmq spins on a
  listening socket it cannot accept from). Past a bound, the newcomer replaces the connection that was idle longest
  among those that hold nothing (no session, or one that holds no seat, world or pending request); when every
  connection holds something, the newcomer is closed.
- **A message still arriving is bounded** (TCP only). libzmq keeps the frames of an unfinished message out of any
  count; the kernel's counters (bytes received, bytes still queued) minus the bytes of the whole messages read give
  what libzmq holds; a connection holding more than ``max_unfinished_bytes`` of it is closed.

Closing a connection shuts its socket down (``shutdown(2)``), which libzmq notices as a disconnection.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import socket as pysocket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import NOT_ALLOWED

log = logging.getLogger("agora.server")

#: How long after closing a connection for its unfinished message the server gives that memory back to the system.
TRIM_AFTER_S = (1.0, 5.0)
#: How long the route of a closed connection still names it (a message already queued is read after the close).
DEAD_ROUTE_S = 10.0
#: Descriptors kept free for the server's own files and the worlds' (of the soft limit, at least this many).
DESCRIPTOR_RESERVE = 32
#: How often the unfinished bytes of every TCP connection are read from the kernel: every UNFINISHED_CHECK_S, or less
#: often with many connections (UNFINISHED_CHECK_PER_CONNECTION_S each), so that the checks cost little
#: (docs/performance.md, 'Figures behind the code').
UNFINISHED_CHECK_S, UNFINISHED_CHECK_PER_CONNECTION_S = 0.01, 0.0003
#: Wire bytes a connection may have received beyond its whole messages for reasons other than an unfinished one: the
#: ZMTP greeting and handshake, and ZMTP commands (a peer's heartbeats).
_WIRE_SLACK = 64 << 10

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
_ACCEPTED, _DISCONNECTED = int(zmq.EVENT_ACCEPTED), int(zmq.EVENT_DISCONNECTED)
_SRCFD = int(zmq.SRCFD)


@dataclass(eq=False)
class Connection:
    """One connection of the ROUTER socket."""

    fd: int
    peer: str
    """What the per-peer bound counts: ``tcp:ADDRESS`` or ``ipc:uid``."""
    tcp: bool
    opened: float
    route: bytes | None = None
    """The routing id of its messages, from its first one."""
    alive: bool = True
    session: bytes | None = None
    """``Session.identity`` of the session that last proved its secret over it."""
    last_active: float = 0.0
    """When its session last proved its secret over it (else when it was opened): the bounds replace the connection
    idle longest."""
    read: int = 0
    """Wire bytes of the whole messages read from it (TCP: what its unfinished bytes are measured against)."""
    handed: int = 0
    """Wire bytes of the replies handed to libzmq for it (``delivery.py`` weighs what libzmq still holds)."""
    written: int = 0
    """Of ``handed``, the bytes known to have left libzmq (the kernel's counters, read when needed)."""
    peer_name: tuple = field(default=())
    """The socket's own peer as ``getpeername`` (TCP) or ``SO_PEERCRED`` (ipc) gave it: a descriptor is shut down
    only while it still names this peer."""
    outbox: Any = None
    """Replies to its requests made without a session that wait for the socket (``delivery.Outbox``)."""

    @property
    def connection(self) -> Connection:
        """Itself: what a reply's owner is reached over (a session's is its last connection; see delivery.py)."""
        return self


class Connections:
    """The table of a ROUTER's connections and the limits on them (see the module docstring).

    Made before the socket binds (so that the monitor sees every connection). ``replaceable(conn)`` says whether
    closing a connection costs nobody anything (the server answers from its sessions).

    A connection is known by its descriptor from the monitor and by its routing id from its messages, and one
    descriptor's number serves another connection once the first is closed: a message's route decides. The routes
    of closed connections are kept for DEAD_ROUTE_S, so that a message read after its connection closed (it was
    already queued) is still that connection's. In the one case the two cannot be told apart (a connection that
    closed before its first message was read, and a new one on the same descriptor), both are kept alive and
    unmeasured: neither is bounded by its bytes.
    """

    def __init__(
        self,
        socket: zmq.Socket,
        max_connections: int,
        max_per_peer: int,
        max_unfinished_bytes: int,
        replaceable: Callable[[Connection], bool],
    ):
        self.socket = socket
        self.max_connections = min(max_connections, _descriptor_room())
        self.max_per_peer = max_per_peer
        self.max_unfinished_bytes = max_unfinished_bytes
        self.replaceable = replaceable
        self.by_fd: dict[int, Connection] = {}
        """The open connections, by descriptor."""
        self.routes: dict[bytes, Connection] = {}
        """Every connection by its routing id: the open ones, and the closed ones for DEAD_ROUTE_S."""
        self._closed: collections.deque[tuple[float, Connection]] = collections.deque()
        self.per_peer: collections.Counter = collections.Counter()
        self._next_check = 0.0
        self._trims: list[float] = []  # when to give the memory of a closed unfinished message back to the system
        endpoint = f"inproc://agora-connections-{id(self):x}-{os.getpid()}"
        socket.monitor(endpoint, _EVENTS)
        self._monitor = socket.context.socket(zmq.PAIR)
        self._monitor.setsockopt(zmq.LINGER, 0)
        self._monitor.setsockopt(zmq.RCVHWM, 0)  # a burst of connections must never stall libzmq's I/O thread
        self._monitor.connect(endpoint)

    # ---- messages -----------------------------------------------------------------------------------------------

    def admit(self, route_frame: zmq.Frame | bytes, route: bytes, frames: list, size: int) -> Connection:
        """The connection a message came over (its routing-id frame as received, that id, its other frames and
        their bytes).

        Raises:
            ProtocolError: ``not_allowed``, for a peer that chose its own routing id.
        """
        conn = self.routes.get(route)
        if conn is None:
            conn = self._first_message(route_frame, route)
        if conn.tcp:
            conn.read += wire_bytes(frames, size)
        return conn

    def _first_message(self, route_frame: zmq.Frame | bytes, route: bytes) -> Connection:
        if type(route_frame) is bytes:  # a message replayed in process (bench/replay.py): no connection behind it
            conn = Connection(-1, "local", False, time.monotonic(), route=route)
            self.routes[route] = conn
            return conn
        try:
            chosen = route_frame.get("Identity")
        except zmq.ZMQError:  # a peer whose handshake carried no Identity property
            chosen = ""
        # libzmq makes ids of 5 bytes, the first one zero. A chosen id that starts with a zero byte reads as ""
        # (metadata are C strings), so only its length can give it away.
        if chosen or (route[:1] == b"\0" and len(route) != 5):
            raise ProtocolError(
                NOT_ALLOWED,
                "this connection chose its own ZeroMQ routing id; the server serves only connections whose ids it "
                "assigns",
                "do not set ZMQ_ROUTING_ID (ZMQ_IDENTITY) on your socket",
            )
        fd = int(route_frame.get(_SRCFD))
        self.poll(force=True)  # its accept event, if it is still in the monitor's queue
        conn = self.by_fd.get(fd)
        if conn is None:  # its connection closed before this message was read
            conn = Connection(fd, "unknown", False, time.monotonic(), alive=False)
        elif conn.route is not None:  # the descriptor's connection has another route: one of the two is closed
            conn.tcp = False
            conn = Connection(fd, conn.peer, False, time.monotonic())
        conn.route = route
        self.routes[route] = conn
        return conn

    # ---- the monitor --------------------------------------------------------------------------------------------

    def poll(self, force: bool = False) -> None:
        """Take in the monitor's events: register accepted connections (enforcing the bounds), forget closed ones.

        ``force``: also process libzmq's pending commands first, so that every event already sent is seen (a
        non-blocking receive alone may miss the last ones for up to a millisecond).
        """
        monitor = self._monitor
        if force:
            monitor.getsockopt(zmq.EVENTS)
        now = time.monotonic()
        while True:
            try:
                event, endpoint = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, fd = struct.unpack("=HI", event[:6])
            if kind == _ACCEPTED:
                self._open(fd, now, enforce=True)
            elif kind == _DISCONNECTED:
                self._gone(fd)

    def _open(self, fd: int, now: float, enforce: bool) -> Connection:
        stale = self.by_fd.get(fd)
        if stale is not None:
            self._gone(fd)
        peer, peer_name, tcp = _peer(fd)
        conn = Connection(fd, peer, tcp, now, last_active=now, peer_name=peer_name)
        self.by_fd[fd] = conn
        self.per_peer[peer] += 1
        if enforce:
            self._enforce(conn)
        return conn

    def _gone(self, fd: int) -> None:
        conn = self.by_fd.pop(fd, None)
        if conn is None:
            return
        conn.alive = False
        self.per_peer[conn.peer] -= 1
        if not self.per_peer[conn.peer]:
            del self.per_peer[conn.peer]
        self._closed.append((time.monotonic() + DEAD_ROUTE_S, conn))

    def _forget_closed(self, now: float) -> None:
        while self._closed and self._closed[0][0] <= now:
            conn = self._closed.popleft()[1]
            if conn.route is not None and self.routes.get(conn.route) is conn:
                del self.routes[conn.route]

    def _enforce(self, newcomer: Connection) -> None:
        """Keep the connections within their bounds: replace the longest idle one that holds nothing, or refuse."""
        while len(self.by_fd) > self.max_connections or self.per_peer[newcomer.peer] > self.max_per_peer:
            crowded = self.per_peer[newcomer.peer] > self.max_per_peer
            candidates = [
                c
                for c in self.by_fd.values()
                if c is not newcomer and (not crowded or c.peer == newcomer.peer) and self.replaceable(c)
            ]
            victim = min(candidates, key=lambda c: c.last_active, default=newcomer)
            bound = f"{self.max_per_peer} per peer ({newcomer.peer})" if crowded else f"{self.max_connections}"
            log.warning(
                "at the bound of %s connections: closing %s",
                bound,
                "the newcomer" if victim is newcomer else f"an idle connection of {victim.peer}",
            )
            self.close(victim)
            if victim is newcomer:
                return

    # ---- closing ------------------------------------------------------------------------------------------------

    def close(self, conn: Connection) -> None:
        """Shut the connection's socket down (libzmq then drops it) and forget it now."""
        # Never a descriptor whose number now serves another peer.
        if conn.alive and conn.peer_name and _peer(conn.fd)[1] == conn.peer_name:
            try:
                with _borrowed(conn.fd) as sock:
                    sock.shutdown(pysocket.SHUT_RDWR)
            except OSError:
                pass
        if self.by_fd.get(conn.fd) is conn:
            self._gone(conn.fd)
        conn.alive = False

    # ---- unfinished messages ------------------------------------------------------------------------------------

    def check_unfinished(self, now: float) -> None:
        """Close the TCP connections that hold more than ``max_unfinished_bytes`` of a message still arriving (read
        from the kernel at most every UNFINISHED_CHECK_S)."""
        self._forget_closed(now)
        if self._trims and now >= min(self._trims):
            # libzmq frees the closed connection's frames (millions of small blocks, in its own thread, within about a
            # second) into the allocator's free lists: the system gets them back only when asked.
            self._trims = [at for at in self._trims if at > now]
            _trim_memory()
        if now < self._next_check:
            return
        tcp = [c for c in self.by_fd.values() if c.tcp]
        self._next_check = now + max(UNFINISHED_CHECK_S, len(tcp) * UNFINISHED_CHECK_PER_CONNECTION_S)
        limit = self.max_unfinished_bytes + _WIRE_SLACK
        for conn in tcp:
            counters = tcp_counters(conn.fd)
            if counters is None or counters[0] - conn.read <= limit:
                continue
            received = counters[0] - queued_in(conn.fd)  # what libzmq has read of it
            if received - conn.read > limit:
                log.warning(
                    "closing a connection of %s: it holds %d bytes of a message still arriving, over the limit of %d",
                    conn.peer,
                    received - conn.read,
                    self.max_unfinished_bytes,
                )
                self.close(conn)
                self._trims += [now + after for after in TRIM_AFTER_S]

    def shut(self) -> None:
        """Stop monitoring (before the socket closes)."""
        self.socket.disable_monitor()
        self._monitor.close(linger=0)


def wire_bytes(frames: list, size: int | None = None) -> int:
    """The bytes ``frames`` (bytes, zmq.Frame or arrays) take on a plain ZMTP connection: each frame's own, plus 2
    (9 past 255 bytes). ``size``: their own bytes, when known."""
    if len(frames) == 1:  # most messages: a header alone
        own = len(frames[0]) if size is None else size
        return own + 2 if own < 256 else own + 9
    total = 0
    for frame in frames:
        own = frame.nbytes if type(frame) is np.ndarray else len(frame)
        total += own + 2 if own < 256 else own + 9
    return total


# ---- the kernel's view of a descriptor ----------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_TCP_INFO = getattr(pysocket, "TCP_INFO", 11)
_FIONREAD, _SIOCOUTQ = 0x541B, 0x5411  # Linux
#: Offsets of ``tcpi_bytes_acked`` and ``tcpi_bytes_received`` in Linux's ``struct tcp_info`` (since 4.1).
_ACKED_AT, _INFO_SIZE = 120, 136


def tcp_counters(fd: int) -> tuple[int, int] | None:
    """(bytes received, bytes acknowledged by the peer) of a TCP socket, from the kernel; None when unknown."""
    info, length = ctypes.create_string_buffer(256), ctypes.c_uint32(256)
    if _libc.getsockopt(fd, pysocket.IPPROTO_TCP, _TCP_INFO, info, ctypes.byref(length)) != 0:
        return None
    if length.value < _INFO_SIZE:
        return None
    acked, received = struct.unpack_from("=QQ", info, _ACKED_AT)
    return received, acked


def queued_in(fd: int) -> int:
    """Bytes the kernel has received on the socket that libzmq has not read yet."""
    return _ioctl_int(fd, _FIONREAD)


def queued_out(fd: int) -> int:
    """Bytes libzmq has written to the socket that the peer has not acknowledged yet."""
    return _ioctl_int(fd, _SIOCOUTQ)


def _trim_memory() -> None:
    """Give the memory the allocator keeps free back to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _ioctl_int(fd: int, request: int) -> int:
    value = ctypes.c_int(0)
    return value.value if _libc.ioctl(fd, request, ctypes.byref(value)) == 0 else 0


class _borrowed:
    """A Python socket over a descriptor libzmq owns, detached (never closed) on the way out."""

    def __init__(self, fd: int):
        self.sock = pysocket.socket(fileno=fd)

    def __enter__(self) -> pysocket.socket:
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.detach()


def _peer(fd: int) -> tuple[str, tuple, bool]:
    """(what the per-peer bound counts, the socket's exact peer, whether it is TCP) of a connection's descriptor."""
    try:
        with _borrowed(fd) as sock:
            if sock.family == pysocket.AF_UNIX:
                pid, uid, _gid = struct.unpack("3i", sock.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_PEERCRED, 12))
                return f"ipc:{uid}", ("unix", pid, uid), False
            name = sock.getpeername()
            return f"tcp:{name[0]}", tuple(name[:2]), sock.type == pysocket.SOCK_STREAM
    except OSError:
        return "unknown", (), False


def _descriptor_room() -> int:
    """How many connections the process's descriptor limit leaves room for (raising the soft limit to the hard one
    first): libzmq spins on a listening socket it cannot accept from, so the bound must stay below the limit."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    except (ImportError, ValueError, OSError):
        return 1 << 16
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(1, soft - max(DESCRIPTOR_RESERVE, soft // 8))
