"""The exception that carries a protocol error code from where a request is refused to its error reply.

Every failed request is answered with ``{"op": "error", "id": ..., "code": ..., "message": ..., "hint": ...}`` and
changes nothing on the server. The codes are the protocol's words (:mod:`.vocabulary`); docs/protocol.md explains
each one.
"""

from __future__ import annotations

from agora_marl.envserver.protocol.vocabulary import ERROR_CODES, ERROR_OP, PROTOCOL_VERSION


class ProtocolError(Exception):
    """A request the server refuses. Raised inside the server and turned into an error reply.

    Args:
        code: one of the protocol's error codes (:data:`.vocabulary.ERROR_CODES`).
        message: what was wrong, naming the offending field or value.
        hint: what the client should do instead.
        request_id: the ``id`` of the refused request, when it is known where the error is raised (a message whose
            header could not be read has none: 0).
    """

    def __init__(self, code: str, message: str, hint: str = "", request_id: int = 0):
        if code not in ERROR_CODES:
            raise ValueError(f"unregistered error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.request_id = request_id

    def to_header(self, request_id: int | None = None) -> dict:
        """The error reply's header; ``request_id`` (when given) names the request it answers."""
        return {
            "v": PROTOCOL_VERSION,
            "op": ERROR_OP,
            "id": self.request_id if request_id is None else request_id,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }
