"""Replies on their way to clients: never dropped while a client reads them, weighed in bytes when it does not.

A ROUTER socket drops a message silently when the peer's queue looks full, and it judges fullness by a count that
lags behind what the peer has read (credit comes back every half queue, and only when the socket processes its
commands): a busy server dropped replies of clients with 16 requests in flight. So the socket is made to refuse
instead (``ZMQ_ROUTER_MANDATORY``: EAGAIN for a full queue, EHOSTUNREACH for a gone connection), and a refused reply
waits in an :class:`Outbox` of its own, tried again until it goes.

What a client has not read is weighed: on a TCP connection, the bytes handed to libzmq less those the kernel shows
it has written (``Connection.handed - Connection.written``, read from the kernel only when the bound comes near),
plus the bytes waiting in the outbox. A reply that would take that past ``max_unread_bytes`` is dropped (and
logged): that client does not read. Over ``ipc://`` the kernel keeps no such count: libzmq holds at most
:data:`LIBZMQ_QUEUE` replies, and the outbox is weighed.

Replies to a session follow the session: they go to the connection that last proved its secret, and wait in the
session's outbox while that connection is gone, until the client proves its secret from a new one. Replies to
requests made without a session go to the connection that sent them, and are lost with it.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import zmq

from agora_marl.envserver.connections import Connection, queued_out, tcp_counters, wire_bytes

if TYPE_CHECKING:
    from agora_marl.envserver.identity import Session

log = logging.getLogger("agora.server")

#: Replies libzmq queues per connection (ZMQ_SNDHWM) before the socket refuses more; weighed on TCP, counted on ipc.
LIBZMQ_QUEUE = 64
#: The first and the longest wait before a refused reply is tried again.
RETRY_S, MAX_RETRY_S = 0.0005, 0.05
#: Frames up to this size are copied into libzmq's message rather than lent to it: a lent (zero-copy) frame costs a
#: Frame object and a release message back from libzmq's I/O thread, dearer than the copy up to about a MiB
#: (docs/performance.md).
ZERO_COPY_BYTES = 1 << 21
#: At most one warning about dropped replies per this many seconds.
WARN_EVERY_S = 10.0
_SNDMORE, _SNDMORE_NOBLOCK = int(zmq.SNDMORE), int(zmq.SNDMORE | zmq.NOBLOCK)


class Outbox:
    """Replies that the socket refused for now, oldest first, with their weight in bytes."""

    __slots__ = ("items", "bytes", "retry_at", "wait")

    def __init__(self, now: float) -> None:
        self.items: deque[tuple[list, int]] = deque()
        self.bytes = 0
        self.wait = RETRY_S
        self.retry_at = now + RETRY_S


class Delivery:
    """Sends replies through the ROUTER socket (set up here: MANDATORY, a short libzmq queue)."""

    def __init__(self, socket: zmq.Socket, max_unread_bytes: int):
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.SNDHWM, LIBZMQ_QUEUE)
        self.socket = socket
        self.max_unread_bytes = max_unread_bytes
        self.waiting: dict[int, Session | Connection] = {}
        """The owners (sessions, or connections for replies to requests made without one) whose outbox holds
        replies, by id()."""
        self.next_retry = float("inf")
        self.dropped = 0
        """Replies dropped at the byte bound, since the server started."""
        self._warned_at = -WARN_EVERY_S

    # ---- sending ------------------------------------------------------------------------------------------------

    def send(self, owner: Session | Connection, frames: list) -> None:
        """Send a reply to its owner: a session, wherever it last connected from (or, while that connection is gone,
        when it comes back), or the connection a request made without a session came over."""
        conn = owner.connection
        if owner.outbox is None and conn.alive:
            if not conn.tcp:  # nothing to weigh: libzmq counts (LIBZMQ_QUEUE)
                if self._send(owner.route, frames):
                    return
            else:
                wire = wire_bytes(frames)
                fits = conn.handed - conn.written + wire <= self.max_unread_bytes or self._room(conn, wire)
                if fits and self._send(owner.route, frames):
                    conn.handed += wire
                    return
        self._keep(owner, conn, frames, wire_bytes(frames))

    def _room(self, conn: Connection, wire: int) -> bool:
        """Whether libzmq may take ``wire`` more bytes for a TCP connection, its unread bytes read from the kernel:
        they stay within the bound, or nothing else is unread (a reply larger than the bound goes alone)."""
        held = _held(conn)
        return held == 0 or held + wire <= self.max_unread_bytes

    def send_refusal(self, route: bytes, frames: list) -> None:
        """Send a refusal to a connection the server does not serve (its peer chose its own routing id): once, if
        the socket takes it."""
        self._send(route, frames)

    def _send(self, route: bytes, frames: list) -> bool:
        """Hand a message to libzmq; False when the socket refuses it (the peer's queue is full, or it is gone)."""
        send = self.socket.send
        try:
            send(route, _SNDMORE_NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EHOSTUNREACH):
                raise
            return False
        # Past the routing id, the parts of a message are never refused. Zero-copy only pays for very large frames.
        for frame in frames[:-1]:
            send(frame, _SNDMORE, copy=type(frame) is bytes or frame.nbytes < ZERO_COPY_BYTES)
        frame = frames[-1]
        send(frame, 0, copy=type(frame) is bytes or frame.nbytes < ZERO_COPY_BYTES)
        return True

    # ---- waiting replies ----------------------------------------------------------------------------------------

    def _keep(self, owner, conn: Connection | None, frames: list, wire: int) -> None:
        """Keep a refused reply in its owner's outbox, unless its client's unread bytes would pass the bound (or the
        reply answers a request made without a session over a connection that is gone)."""
        if owner is conn and not conn.alive:  # a request made without a session: nobody to wait for
            return
        unread = owner.outbox.bytes if owner.outbox is not None else 0
        if conn is not None and conn.alive and conn.tcp:
            unread += _held(conn)
        if unread and unread + wire > self.max_unread_bytes:
            self._drop(owner, unread + wire)
            return
        if owner.outbox is None:
            owner.outbox = Outbox(time.monotonic())
            self.waiting[id(owner)] = owner
            self.next_retry = min(self.next_retry, owner.outbox.retry_at)
        # The arrays may be buffers their owner writes again at its next step: keep copies.
        owner.outbox.items.append(
            ([f if type(f) is bytes else np.ascontiguousarray(f).tobytes() for f in frames], wire)
        )
        owner.outbox.bytes += wire

    def _drop(self, owner, unread: int) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            who = f"session {owner.name or owner.label!r}" if owner is not owner.connection else f"{owner.peer}"
            log.warning(
                "dropping a reply to %s: %d bytes of its replies are unread, past the bound of %d (--max-unread-bytes)"
                "; %d replies dropped so far",
                who,
                unread,
                self.max_unread_bytes,
                self.dropped,
            )

    def retry(self, now: float) -> None:
        """Try again the waiting replies whose wait is over (the loop calls it once ``next_retry`` has come)."""
        self.next_retry = float("inf")
        for owner in list(self.waiting.values()):
            if owner.outbox.retry_at <= now:
                self.flush(owner, now)
            if owner.outbox is not None:
                self.next_retry = min(self.next_retry, owner.outbox.retry_at)

    def flush(self, owner, now: float | None = None) -> None:
        """Send an owner's waiting replies, oldest first, as far as the socket takes them."""
        outbox = owner.outbox
        if outbox is None:
            return
        conn = owner.connection
        sent = 0
        while outbox.items and conn is not None and conn.alive:
            frames, wire = outbox.items[0]
            fits = not conn.tcp or conn.handed - conn.written + wire <= self.max_unread_bytes or self._room(conn, wire)
            if not fits or not self._send(owner.route, frames):
                break
            outbox.items.popleft()
            outbox.bytes -= wire
            if conn.tcp:
                conn.handed += wire
            sent += 1
        if not outbox.items or (owner is conn and not conn.alive):
            self.forget(owner)  # all sent, or a connection gone with the replies of requests made without a session
            return
        now = time.monotonic() if now is None else now
        outbox.wait = RETRY_S if sent else min(MAX_RETRY_S, outbox.wait * 2)
        outbox.retry_at = now + outbox.wait
        self.next_retry = min(self.next_retry, outbox.retry_at)

    def forget(self, owner) -> None:
        """Drop an owner's outbox (its replies all went, or the session was forgotten)."""
        if owner.outbox is not None:
            owner.outbox = None
            self.waiting.pop(id(owner), None)


def _held(conn: Connection) -> int:
    """Bytes of replies that libzmq still holds for a TCP connection, from the kernel's counters (what libzmq has
    written = acknowledged by the peer + still in the socket's send queue)."""
    counters = tcp_counters(conn.fd)
    if counters is not None:
        conn.written = max(conn.written, counters[1] + queued_out(conn.fd))
    return max(0, conn.handed - conn.written)
