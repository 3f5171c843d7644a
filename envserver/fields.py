"""Reading a request's fields: each one's type checked, down to its last nested value, before a handler uses it.

Every helper raises ``bad_request`` naming the field and what it must be, so that a handler can read its fields first
and change nothing until all of them passed (docs/protocol.md: "every nested value is type-checked").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import BAD_REQUEST

#: The default of a field that must be present.
REQUIRED = object()


def field(message: dict, name: str, kind: type | tuple, default: Any = REQUIRED) -> Any:
    """``message[name]`` if it has the right type; ``default`` when absent; ``bad_request`` otherwise."""
    if name not in message:
        if default is REQUIRED:
            raise ProtocolError(BAD_REQUEST, f"'{message['op']}' needs the field {name!r}", "see docs/protocol.md")
        return default
    value = message[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = False if isinstance(value, bool) and bool not in kinds else isinstance(value, kinds)
    if not ok:
        names = "/".join(k.__name__ for k in kinds)
        raise ProtocolError(
            BAD_REQUEST, f"field {name!r} must be {names}, got {type(value).__name__}", "see docs/protocol.md"
        )
    return value


#: How deep a plain-data field (``config``, ``options``) may nest: deeper is refused before it is walked.
PLAIN_DEPTH = 32


def plain_field(message: dict, name: str, default: Any = REQUIRED) -> Any:
    """``field(message, name, dict, default)`` whose every nested value is plain msgpack data, else ``bad_request``.

    Plain data is what a scenario's keyword config may hold: maps with string keys, lists, strings, ints, floats,
    booleans and nil, at most :data:`PLAIN_DEPTH` levels deep; never an array frame (the ``arrays`` table can put one
    at any path) nor bytes. Checked before anything is built with it.
    """
    value = field(message, name, dict, default)

    def where(path: tuple) -> str:
        return "/".join(str(p) for p in path)[:100]

    stack = [(value, (name,))]  # a loop, not recursion: a 1 MiB header can nest far past Python's recursion limit
    while stack:
        node, path = stack.pop()
        if len(path) > PLAIN_DEPTH:
            raise ProtocolError(BAD_REQUEST, f"field {where(path)!r} nests deeper than {PLAIN_DEPTH}", "flatten it")
        if isinstance(node, dict):
            for key, sub in node.items():
                if not isinstance(key, str):
                    raise ProtocolError(
                        BAD_REQUEST, f"field {where(path)!r} has a {type(key).__name__} key", "use string keys"
                    )
                stack.append((sub, (*path, key)))
        elif isinstance(node, list):
            stack.extend((sub, (*path, i)) for i, sub in enumerate(node))
        elif not (node is None or isinstance(node, bool | int | float | str)):
            kind = "an array" if isinstance(node, np.ndarray) else f"a {type(node).__name__}"
            raise ProtocolError(
                BAD_REQUEST,
                f"field {where(path)!r} is {kind}; it must be plain data",
                "send maps with string keys, lists, strings, numbers, booleans and nil only",
            )
    return value


def strings(values: Any, name: str) -> None:
    """``bad_request`` unless every one of ``values`` (a list's items, a map's keys or values) is a string."""
    for value in values:
        if not isinstance(value, str):
            raise ProtocolError(
                BAD_REQUEST, f"field {name!r} must hold strings, got a {type(value).__name__}", "see docs/protocol.md"
            )


def seed_field(message: dict) -> int | None:
    """The optional ``seed``: a non-negative int (gymnasium and numpy refuse negative seeds), else ``bad_request``."""
    seed = field(message, "seed", int, None)
    if seed is not None and seed < 0:
        raise ProtocolError(BAD_REQUEST, f"'seed' must be a non-negative int, got {seed}", "send a seed >= 0")
    return seed
