"""The agora wire protocol: its words, frames, spaces, world spec, errors and connection files.

Needs only msgpack, numpy and gymnasium. This is the one part of the server a client may import (docs/protocol.md is
the full specification):

- :mod:`.vocabulary`: the version, operations, error codes, layouts, fill kinds, seat states and roles;
- :mod:`.wire`: the frame layout (:func:`pack`, :func:`unpack`);
- :mod:`.spaces`: gymnasium spaces and their values on the wire;
- :mod:`.spec`: :class:`WorldSpec`, a world's agents and spaces, both ways;
- :mod:`.errors`: :class:`ProtocolError`, a refusal and its reply;
- :mod:`.connection`: the JSON connection file a server writes once bound.
"""

from agora_marl.envserver.protocol import vocabulary
from agora_marl.envserver.protocol.connection import read_connection_file, resolve_address, write_connection_file
from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.spaces import (
    check_value,
    decode_space,
    encode_space,
    from_wire,
    noop_value,
    rows_of,
    to_wire,
    write_row,
    zeros_like_space,
)
from agora_marl.envserver.protocol.spec import WorldSpec
from agora_marl.envserver.protocol.vocabulary import PROTOCOL_VERSION
from agora_marl.envserver.protocol.wire import DTYPES, dtype_name, pack, unpack

__all__ = [
    "DTYPES",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "WorldSpec",
    "check_value",
    "decode_space",
    "dtype_name",
    "encode_space",
    "from_wire",
    "noop_value",
    "pack",
    "read_connection_file",
    "resolve_address",
    "rows_of",
    "to_wire",
    "unpack",
    "vocabulary",
    "write_connection_file",
    "write_row",
    "zeros_like_space",
]
