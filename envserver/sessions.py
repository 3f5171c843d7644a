"""The server's sessions: the one owner of which sessions exist and how a secret names one.

A session is opened by ``hello`` (given where the hello came from: its :class:`Origin`), found by its secret in every
later request, and forgotten once (``bye``, or a silence past its keep-alive: liveness.py decides when). The table
bounds how many there are, with room kept for operators.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from agora_marl.envserver.identity import Session
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import BUSY

#: Sessions kept beyond ``max_sessions`` for operators only (agora watch, agora worlds), so that a flood of hellos
#: never locks the operator out.
OPERATOR_SESSIONS = 8


class Origin(NamedTuple):
    """Where a request came from: the ROUTER routing id, its frame (CURVE's ``User-Id`` is read from it) and the
    connection (``connections.Connection``; None when refused before the server serves it)."""

    route: bytes
    route_frame: Any
    connection: Any


class SessionTable:
    """The live sessions, by the server's own identity key and by secret (``EnvServer.sessions``)."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._by_identity: dict[bytes, Session] = {}
        self._by_secret: dict[str, Session] = {}

    def open(self, origin: Origin, peer_key: str, operator: bool) -> Session:
        """A new session for a ``hello`` from ``origin``.

        Raises:
            ProtocolError: ``busy`` when the table holds ``max_sessions`` (``OPERATOR_SESSIONS`` more for an
                operator).
        """
        limit = self.max_sessions + (OPERATOR_SESSIONS if operator else 0)
        if len(self._by_identity) >= limit:
            raise ProtocolError(
                BUSY, f"the server keeps {len(self._by_identity)} sessions, its limit", "try again in a few seconds"
            )
        while True:
            identity, secret = os.urandom(16), secrets.token_urlsafe(24)
            if identity not in self._by_identity and secret not in self._by_secret:
                break
        session = Session(identity, origin.route, origin.connection, secret, time.monotonic(), peer_key=peer_key)
        if origin.connection is not None:
            origin.connection.session = identity
        self._by_identity[identity] = self._by_secret[secret] = session
        return session

    def by_secret(self, secret: Any) -> Session | None:
        return self._by_secret.get(secret)

    def get(self, identity: bytes | None) -> Session | None:
        return self._by_identity.get(identity) if identity is not None else None

    def forget(self, session: Session) -> None:
        """The session ends: its secret no longer names it."""
        session.ended = True
        self._by_identity.pop(session.identity, None)
        self._by_secret.pop(session.secret, None)

    def values(self) -> list[Session]:
        return list(self._by_identity.values())

    def __iter__(self) -> Iterator[Session]:
        return iter(self.values())

    def __len__(self) -> int:
        return len(self._by_identity)
