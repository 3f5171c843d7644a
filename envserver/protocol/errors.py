"""Error codes of the agora protocol and the exception that carries them.

Every failed request is answered with ``{"op": "error", "code": ..., "message": ..., "hint": ...}`` and changes
nothing on the server. The codes below are the whole set; docs/protocol.md explains each one.
"""

from __future__ import annotations

BAD_MESSAGE = "bad_message"  # the frames are not a valid agora message (not msgpack, bad array table, ...)
BAD_VERSION = "bad_version"  # the header's "v" is not the server's protocol version
TOO_LARGE = "too_large"  # the message is over the server's size limit
UNKNOWN_OP = "unknown_op"  # "op" names no operation
BAD_REQUEST = "bad_request"  # a field is missing or of the wrong type
SCENARIO_NOT_ALLOWED = "scenario_not_allowed"  # the server does not host that scenario
SCENARIO_ERROR = "scenario_error"  # the scenario raised while being built, reset or stepped
TOO_MANY_WORLDS = "too_many_worlds"  # the client (or the server) is at its world limit
UNKNOWN_WORLD = "unknown_world"  # no live world has that id
NOT_OWNER = "not_owner"  # only the world's owner may do that
UNKNOWN_SEAT = "unknown_seat"  # the world has no agent of that name
SEAT_TAKEN = "seat_taken"  # another live client holds that seat
BAD_TOKEN = "bad_token"  # the token is not the one issued for that seat
NOT_YOUR_SEAT = "not_your_seat"  # the sender does not hold that seat
BAD_ACTION = "bad_action"  # an action is outside its space (shape, dtype, range, NaN/inf)
ALREADY_ACTED = "already_acted"  # the seat already acted this tick
EPISODE_OVER = "episode_over"  # the episode ended and the world does not auto-reset: the owner must reset it
BATCH_MISMATCH = "batch_mismatch"  # the worlds of a batch differ in agents or spaces, or are not all the sender's
INTERRUPTED = "interrupted"  # a pending act was cancelled (the world was reset, closed, or the seat taken over)
INTERNAL = "internal"  # a bug in the server; the request changed nothing it could roll back

ALL_CODES = (
    BAD_MESSAGE,
    BAD_VERSION,
    TOO_LARGE,
    UNKNOWN_OP,
    BAD_REQUEST,
    SCENARIO_NOT_ALLOWED,
    SCENARIO_ERROR,
    TOO_MANY_WORLDS,
    UNKNOWN_WORLD,
    NOT_OWNER,
    UNKNOWN_SEAT,
    SEAT_TAKEN,
    BAD_TOKEN,
    NOT_YOUR_SEAT,
    BAD_ACTION,
    ALREADY_ACTED,
    EPISODE_OVER,
    BATCH_MISMATCH,
    INTERRUPTED,
    INTERNAL,
)


class ProtocolError(Exception):
    """A request the server refuses. Raised inside the server and turned into an error reply.

    Args:
        code: one of the codes of this module.
        message: what was wrong, naming the offending field or value.
        hint: what the client should do instead.
    """

    def __init__(self, code: str, message: str, hint: str = ""):
        assert code in ALL_CODES, f"unregistered error code {code!r}"
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def to_header(self, request_id: int = 0) -> dict:
        from agora_marl.envserver.protocol.wire import PROTOCOL_VERSION

        return {
            "v": PROTOCOL_VERSION,
            "op": "error",
            "id": request_id,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        }
