"""Values of the space maps of docs/protocol.md ('Spaces'), made from the maps alone: a legal action of each space
(inline, or as batch arrays), an illegal one, and the checks of observations against their spaces."""

from __future__ import annotations

from typing import Any

import numpy as np

from agora_marl.agents.conformance.peer import expect, short


def _bounds(space: dict) -> tuple[np.ndarray, np.ndarray]:
    shape = space["shape"]
    return tuple(np.broadcast_to(np.asarray(space[k], dtype=np.float64), shape) for k in ("low", "high"))


def legal(space: dict) -> Any:
    """A fixed legal value of a space (zeros clipped to a Box's bounds, the lowest discrete value), as plain msgpack
    values to send inline."""
    kind = space["type"]
    if kind == "Discrete":
        return int(space.get("start", 0))
    if kind == "Box":
        low, high = _bounds(space)
        value = np.clip(np.zeros(space["shape"]), low, high)
        if not space["dtype"].startswith("float"):
            value = np.ceil(value).astype(np.int64)
        return value.tolist()
    if kind == "MultiDiscrete":
        return np.broadcast_to(np.asarray(space.get("start", 0)), np.shape(space["nvec"])).tolist()
    if kind == "MultiBinary":
        return np.zeros(space["n"], dtype=np.int64).tolist()
    if kind == "Dict":
        return {key: legal(sub) for key, sub in space["spaces"].items()}
    if kind == "Tuple":
        return {str(i): legal(sub) for i, sub in enumerate(space["spaces"])}
    raise ValueError(f"unknown space type {kind!r}")


def _leaf_dtype(space: dict) -> str:
    return {"Discrete": "int64", "MultiBinary": "int8"}.get(space["type"], space.get("dtype", "int64"))


def legal_rows(space: dict, leading: tuple[int, ...]) -> Any:
    """The legal value of :func:`legal` repeated over ``leading`` dimensions, as arrays (frames) of the space's dtype:
    the actions of a batch."""
    if space["type"] == "Dict":
        return {key: legal_rows(sub, leading) for key, sub in space["spaces"].items()}
    if space["type"] == "Tuple":
        return {str(i): legal_rows(sub, leading) for i, sub in enumerate(space["spaces"])}
    value = np.asarray(legal(space), dtype=_leaf_dtype(space))
    return np.ascontiguousarray(np.broadcast_to(value, (*leading, *value.shape)))


def illegal(space: dict) -> Any | None:
    """A value that is not in the space (out of range, or of the wrong shape); None when there is none to make."""
    if space["type"] == "Discrete":
        return int(space.get("start", 0)) + int(space["n"])
    if space["type"] == "Box":
        return [0] * (int(np.prod(space["shape"])) + 1)  # one element too many, whatever the shape
    if space["type"] == "MultiDiscrete":
        return (np.asarray(space.get("start", 0)) + np.asarray(space["nvec"])).tolist()
    return None


def leaf_shape(space: dict) -> list[int] | None:
    """The shape of a Box, MultiDiscrete or MultiBinary value; None for the others."""
    if space["type"] == "Box":
        return list(space["shape"])
    if space["type"] == "MultiDiscrete":
        return list(np.shape(space["nvec"]))
    if space["type"] == "MultiBinary":
        return list(np.atleast_1d(space["n"]))
    return None


def expect_value(space: dict, value: Any, where: str, leading: tuple[int, ...] = ()) -> None:
    """Fail unless ``value`` is a value of ``space`` in shape (and dtype, for a Box), with ``leading`` extra
    dimensions (a batch's worlds and agents); Dict and Tuple values are checked key by key."""
    if space["type"] == "Dict":
        expect(isinstance(value, dict), f"{where} should be a map of {list(space['spaces'])}, got {short(value)}")
        for key, sub in space["spaces"].items():
            expect(key in value, f"{where} lacks key {key!r}")
            expect_value(sub, value[key], f"{where}/{key}", leading)
        return
    if space["type"] == "Tuple":
        expect(isinstance(value, dict), f"{where} should be a map with keys '0', '1', ..., got {short(value)}")
        for i, sub in enumerate(space["spaces"]):
            expect(str(i) in value, f"{where} lacks key '{i}'")
            expect_value(sub, value[str(i)], f"{where}/{i}", leading)
        return
    shape = leaf_shape(space)
    if shape is None:  # Discrete: an int, or an int array of the leading shape
        expect(isinstance(value, int) or np.shape(value) == leading, f"{where} should be an int, got {short(value)}")
        return
    array = np.asarray(value)
    expect(
        list(array.shape) == [*leading, *shape],
        f"{where} has shape {list(array.shape)}, its space {short(space, 120)} needs {[*leading, *shape]}",
    )
    if space["type"] == "Box":
        expect(
            array.dtype == np.dtype(space["dtype"]),
            f"{where} has dtype {array.dtype}, its space says {space['dtype']}",
        )
