"""The settings of one server process (``agora serve``'s flags, envserver/serve.py): where it binds, what it hosts,
and every bound it keeps (docs/security.md lists them with what happens at each)."""

from __future__ import annotations

from dataclasses import dataclass

from agora_marl import scenarios


@dataclass
class ServerConfig:
    """Settings of one server process (``agora serve`` flags)."""

    bind: str = "tcp://127.0.0.1:5555"
    """ZeroMQ endpoint to bind: ``tcp://HOST:PORT`` (port 0 picks a free one) or ``ipc://PATH``."""
    max_message_bytes: int = 16 << 20
    """Requests larger than this are refused with ``too_large``; a single frame larger than this, or a message still
    arriving that passes it (TCP), closes the connection."""
    max_queued_requests: int = 64
    """Whole requests libzmq queues per connection before it stops reading from it (ZMQ_RCVHWM)."""
    max_unread_bytes: int = 8 << 20
    """Bytes of replies a client may leave unread (per session, or per connection for requests made without one);
    a reply that would take them past it is dropped (a reply alone always goes). A client that keeps its unread
    replies under it never loses one."""
    max_connections: int = 4096
    """Connections the socket keeps at once (at most the descriptor limit less a reserve); past it, a newcomer
    replaces the longest idle connection that holds nothing, or is closed."""
    max_connections_per_peer: int = 1024
    """Connections from one peer (one IP address; one user over ``ipc://``) at once, the same way."""
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
