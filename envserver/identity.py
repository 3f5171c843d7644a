"""Who a request comes from, and who may connect at all: sessions proved by their secret, CurveZMQ's allow-list, and
the transport details that must never carry authority (routing ids, exposed binds).

A :class:`Session` is made by ``hello`` and proved by its secret in every later request (sessions.py keeps them,
``EnvServer.sessions``); a ZeroMQ routing id only says where replies go.
"""

from __future__ import annotations

import ctypes
import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

import zmq

log = logging.getLogger("agora.server")


@dataclass
class Session:
    """What the server knows of one client: made by ``hello``, proved by its secret in every later request.

    Authority never comes from the transport: a ZeroMQ routing id is chosen by the peer (``ZMQ_ROUTING_ID``) and can
    be reused by anyone once its connection is gone, so it only says where replies go. Worlds record their owner and
    seat holders by the session's ``identity``, a key of the server's own that no client ever sees.
    """

    identity: bytes
    """The server's own key for this session (worlds' owner and holders); never shown to any client."""
    route: bytes
    """The ROUTER routing id of the connection that last proved the secret: where replies go."""
    connection: Any
    """That connection (``connections.Connection``): a session whose connection is gone is kept alive by nothing but
    its keep-alive."""
    secret: str
    """Sent once, in ``welcome``; every later request carries it as ``secret``."""
    last_seen: float
    pending_worlds: int = 0
    """Worlds of this session's large creates still being built (they count against its quota)."""
    operator: bool = False
    """Proved the operator credential at ``hello``: may list and observe every world."""
    peer_key: str = ""
    """The CURVE public key the session was made over (the ZAP ``User-Id``), when the server has an allow-list: a
    secret shown over another key's connection is refused."""
    owned: set[int] = field(default_factory=set)
    """The worlds it owns. The seats it holds are the server's seat table's (seats.py)."""
    name: str = ""
    joined_frames: bool = False
    """Asked at ``hello`` for every reply's arrays in one frame (docs/protocol.md, 'Frames')."""
    keep_alive_s: float | None = None
    """How long this connection may be silent before it loses its seats (``hello``'s ``keep_alive_s``); None: the
    server's heartbeat timeout."""
    label: str = field(default_factory=lambda: secrets.token_hex(8))
    """What the client is told its session is called (``welcome.session``): random, unrelated to the routing id."""
    outbox: Any = None
    """Replies waiting for the socket, or for the client to come back (``delivery.Outbox``)."""
    observer: bool = False
    """Joined a world as an observer at least once (forgetting the session then looks for it among observers)."""
    ended: bool = False
    """Forgotten (bye, or a silence past its keep-alive): its secret no longer names it."""


def same_secret(given: str, issued: str) -> bool:
    """Whether a secret or token a client sent is the one the server issued: compared as UTF-8 bytes, in constant
    time (``secrets.compare_digest`` refuses str with non-ASCII characters, and ``==`` leaks timing)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), issued.encode("utf-8", "surrogatepass"))


def peer_key(frame) -> str:
    """The CURVE public key (Z85) a message came over, as the ZAP handler named it (``User-Id``, read from any frame
    of the message as received); "" when none."""
    try:
        return frame.get("User-Id") or ""
    except (AttributeError, zmq.ZMQError):
        return ""


class AllowedKeys:
    """pyzmq's ZAP credentials provider: a client gets in when its public key is one of the allowed."""

    def __init__(self, keys: tuple[bytes, ...]):
        self.keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.keys
        if not allowed:
            log.warning("refused a CURVE client whose key is not on the allow-list: %s", key.decode(errors="replace"))
        return allowed


def allow_list(context: zmq.Context, keys: tuple[bytes, ...]):
    """Start a ZAP handler on ``context`` that lets in only the CURVE clients with these public keys."""
    from zmq.auth.thread import ThreadAuthenticator

    authenticator = ThreadAuthenticator(context, log=logging.getLogger("agora.server.auth"))
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=AllowedKeys(tuple(keys)))
    return authenticator


def secure_and_bind(socket: zmq.Socket, bind: str, curve_secret_key: bytes | None) -> str:
    """Make the socket a CURVE server when given its secret key, bind it, and return the bound address (port 0: a
    free one). Warns loudly when other machines can reach it without CURVE."""
    if curve_secret_key:
        socket.curve_secretkey = curve_secret_key
        socket.curve_publickey = zmq.curve_public(curve_secret_key)
        socket.curve_server = True
    if bind.startswith("tcp://") and bind.endswith(":0"):
        bind = bind[:-2] + ":*"
    socket.bind(bind)
    address = socket.getsockopt_string(zmq.LAST_ENDPOINT)
    if exposed(address) and not curve_secret_key:
        log.warning(
            "SERVING WITHOUT AUTHENTICATION on %s, which other machines can reach: anyone who can connect may "
            "create, join and close worlds. On a network, run with --curve-secret (CurveZMQ), or bind "
            "tcp://127.0.0.1 or ipc:// and reach the server through the job's own nodes only.",
            address,
        )
    return address


def exposed(address: str) -> bool:
    """Whether a bound endpoint is reachable from other machines: tcp:// on anything but a loopback address."""
    if not address.startswith("tcp://"):
        return False
    host = address.removeprefix("tcp://").rpartition(":")[0].strip("[]")
    return not (host.startswith("127.") or host in ("localhost", "::1"))


def unpredictable_routing_ids() -> None:
    """Seed the C library's ``rand()`` from the OS before a ROUTER socket is made.

    libzmq numbers the connections that bring no routing id of their own ``0x00`` + a 32-bit counter starting at
    ``rand()``, which nothing seeds: every server would hand out the same ids in the same order (the first is
    ``006b8b4567``). A client that sets its own ``ZMQ_ROUTING_ID`` to the next of them makes libzmq abort the whole
    server (an assertion in ``add_out_pipe``) when the next ordinary client connects. A random start, with routing
    ids never shown to clients, leaves such a client a guess of one in 2**32 per connection it holds.
    """
    try:
        ctypes.CDLL(None).srand(int.from_bytes(os.urandom(4), "little"))
    except (OSError, AttributeError):  # no C library to reach (not on Linux/macOS): libzmq's own order stands
        log.warning("could not seed libzmq's routing ids; clients could predict them")
