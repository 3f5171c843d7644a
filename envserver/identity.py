"""Who a request comes from, and who may connect at all: sessions proved by their secret, CurveZMQ's allow-list, and
the transport details that must never carry authority (routing ids, exposed binds).

A :class:`Session` is made by ``hello`` and proved by its secret in every later request (the server keeps them,
``EnvServer.sessions``); a ZeroMQ routing id only says where replies go.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
from dataclasses import dataclass, field

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
    seats: set[tuple[int, str]] = field(default_factory=set)
    name: str = ""
    joined: bool = False
    """Asked at ``hello`` for every reply's arrays in one frame (docs/protocol.md, 'Frames')."""
    keep_alive_s: float | None = None
    """How long this connection may be silent before it loses its seats (``hello``'s ``keep_alive_s``); None: the
    server's heartbeat timeout."""
    label: str = field(default_factory=lambda: secrets.token_hex(8))
    """What the client is told its session is called (``welcome.session``): random, unrelated to the routing id."""


def peer_key(header) -> str:
    """The CURVE public key (Z85) a message came over, as the ZAP handler named it (``User-Id``); "" when none."""
    try:
        return header.get("User-Id") or ""
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
