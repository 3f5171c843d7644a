"""The agora wire protocol: frames, spaces and error codes. Needs only msgpack, numpy and gymnasium.

This is the one part of the server a client may import (see docs/protocol.md for the full specification).
"""

from agora_marl.envserver.protocol import errors
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.spaces import (
    check_value,
    decode_space,
    encode_space,
    from_wire,
    noop_value,
    to_wire,
    zeros_like_space,
)
from agora_marl.envserver.protocol.wire import DTYPES, PROTOCOL_VERSION, dtype_name, pack, unpack

__all__ = [
    "DTYPES",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "check_value",
    "decode_space",
    "dtype_name",
    "encode_space",
    "errors",
    "from_wire",
    "noop_value",
    "pack",
    "to_wire",
    "unpack",
    "zeros_like_space",
]
