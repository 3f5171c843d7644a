"""The words of the agora protocol: its version, operations, error codes, layouts, fill kinds, seats and roles.

Every other module, the server's and the clients', names these constants instead of writing the strings again.
docs/protocol.md explains each word; a client in another language copies this page's values.
"""

from __future__ import annotations

#: The protocol version every header carries as ``"v"`` (and the ``welcome`` reply and connection files as
#: ``"protocol"``). Bumped on any change a client written to the previous version would misread.
PROTOCOL_VERSION = 2

#: Each request a client may send, and the ``op`` of the reply it gets when it succeeds.
REQUESTS: dict[str, str] = {
    "hello": "welcome",
    "ping": "pong",
    "list": "worlds",
    "create": "created",
    "join": "joined",
    "leave": "left",
    "close": "closed",
    "reset": "observation",
    "observe": "observation",
    "state": "state",
    "act": "step",
    "step_batch": "batch",
    "reset_batch": "batch",
    "render": "frame",
    "act_batch": "batch",
    "join_group": "joined_group",
    "bye": "bye",
}
#: The requests a client may send without a session: every other request carries ``welcome``'s ``secret``.
SESSIONLESS = ("hello", "ping")
#: The ``op`` of every failure reply.
ERROR_OP = "error"

# ---- error codes: ``{"op": "error", "code": ..., "message": ..., "hint": ...}`` -------------------------------
BAD_MESSAGE = "bad_message"  # the frames are not a valid agora message (not msgpack, bad array table, ...)
BAD_VERSION = "bad_version"  # the header's "v" is not the server's protocol version
TOO_LARGE = "too_large"  # the message is over the server's size limit
UNKNOWN_OP = "unknown_op"  # "op" names no operation
BAD_REQUEST = "bad_request"  # a field is missing or of the wrong type
NO_SESSION = "no_session"  # the request carries no session secret, or one this server did not issue (or forgot)
NOT_ALLOWED = "not_allowed"  # the session may not do that (observe a world it was not admitted to, operator rights)
BUSY = "busy"  # the server is at a limit of its own (sessions); try again later
SCENARIO_NOT_ALLOWED = "scenario_not_allowed"  # the server does not host that scenario
SCENARIO_ERROR = "scenario_error"  # the scenario raised while being built, reset or stepped
TOO_MANY_WORLDS = "too_many_worlds"  # the client (or the server) is at its world limit
UNKNOWN_WORLD = "unknown_world"  # no live world has that id
UNKNOWN_GROUP = "unknown_group"  # no group of worlds has that name on this server
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

#: Every error code, in the order docs/protocol.md lists them.
ERROR_CODES = (
    BAD_MESSAGE,
    BAD_VERSION,
    TOO_LARGE,
    UNKNOWN_OP,
    BAD_REQUEST,
    NO_SESSION,
    NOT_ALLOWED,
    BUSY,
    SCENARIO_NOT_ALLOWED,
    SCENARIO_ERROR,
    TOO_MANY_WORLDS,
    UNKNOWN_WORLD,
    UNKNOWN_GROUP,
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

# ---- fields' values ---------------------------------------------------------------------------------------------
#: ``step_batch``/``reset_batch`` ``layout``: one array per agent, or one per field with the agent axis second.
LAYOUT_AGENTS, LAYOUT_STACKED = "agents", "stacked"
LAYOUTS = (LAYOUT_AGENTS, LAYOUT_STACKED)
#: ``hello`` ``frames``: how the server lays out the arrays of its replies to this session: a frame each, or all in one.
FRAMES_SEPARATE, FRAMES_JOINED = "separate", "joined"
FRAME_LAYOUTS = (FRAMES_SEPARATE, FRAMES_JOINED)
#: ``create`` ``fill``: what a free, lost or late seat does when its world steps.
FILL_KINDS = ("noop", "random", "repeat")
#: A seat's state in ``list``: nobody holds it; a live connection does; its holder went silent (its token reclaims it).
FREE, HELD, LOST = "free", "held", "lost"
SEAT_STATES = (FREE, HELD, LOST)
#: Why a seat got the fill action, in a ``step`` reply's ``filled``: its seat was free or lost, or held but late.
LATE = "late"
FILL_REASONS = (FREE, LOST, LATE)
#: ``join`` ``role``: take seats and act, or only watch.
AGENT, OBSERVER = "agent", "observer"
ROLES = (AGENT, OBSERVER)
