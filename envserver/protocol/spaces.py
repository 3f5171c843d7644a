"""Gymnasium spaces as plain maps on the wire, and values of a space to and from their wire form.

Encoding (docs/protocol.md, 'Spaces'):

- ``{"type": "Box", "shape": [..], "dtype": "float32", "low": x, "high": y}`` (low/high a number when uniform,
  else a nested list of the box's shape; infinities are IEEE floats)
- ``{"type": "Discrete", "n": 5, "start": 0}``
- ``{"type": "MultiDiscrete", "nvec": [..], "start": [..], "dtype": "int64"}``
- ``{"type": "MultiBinary", "n": 4}`` (``n`` a list for an n-d MultiBinary)
- ``{"type": "Dict", "spaces": {"key": space, ...}}`` and ``{"type": "Tuple", "spaces": [space, ...]}``

Values: a Box/MultiDiscrete/MultiBinary value is an array of the space's dtype and shape; a Discrete value an int64
(a 0-d array, or a plain int in a header); a Dict value a map; a Tuple value a map with keys "0", "1", ... (so
that every leaf has a path of strings). ``batch_shape`` leading dims may precede every leaf (batched stepping).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from agora_marl.envserver.protocol.wire import DTYPES, dtype_name


def _bound(values: np.ndarray) -> Any:
    flat = values.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return flat[0].item()
    return values.tolist()


def encode_space(space: spaces.Space) -> dict:
    """The wire map of a gymnasium space. Raises ValueError for space types the protocol does not carry."""
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": dtype_name(space.dtype),
            "low": _bound(space.low),
            "high": _bound(space.high),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "nvec": space.nvec.tolist(),
            "start": space.start.tolist(),
            "dtype": dtype_name(space.dtype),
        }
    if isinstance(space, spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else [int(x) for x in n]}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {str(k): encode_space(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [encode_space(s) for s in space.spaces]}
    raise ValueError(
        f"space {space} ({type(space).__name__}) has no wire encoding; use Box, Discrete, "
        "MultiDiscrete, MultiBinary, Dict or Tuple"
    )


def decode_space(wire: Any) -> spaces.Space:
    """The gymnasium space of a wire map. Raises ValueError (with the offending part) if the map is malformed."""
    if not isinstance(wire, dict) or not isinstance(wire.get("type"), str):
        raise ValueError(f"a space must be a map with a string 'type', got {wire!r:.80}")
    kind = wire["type"]
    try:
        if kind == "Box":
            dtype = DTYPES[wire["dtype"]]
            shape = tuple(int(n) for n in wire["shape"])
            low = np.broadcast_to(np.asarray(wire["low"], dtype=np.float64), shape).astype(dtype)
            high = np.broadcast_to(np.asarray(wire["high"], dtype=np.float64), shape).astype(dtype)
            return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
        if kind == "Discrete":
            return spaces.Discrete(int(wire["n"]), start=int(wire.get("start", 0)))
        if kind == "MultiDiscrete":
            dtype = DTYPES[wire.get("dtype", "int64")]
            return spaces.MultiDiscrete(np.asarray(wire["nvec"]), dtype=dtype, start=np.asarray(wire.get("start", 0)))
        if kind == "MultiBinary":
            return spaces.MultiBinary(wire["n"])
        if kind == "Dict":
            return spaces.Dict({k: decode_space(s) for k, s in wire["spaces"].items()})
        if kind == "Tuple":
            return spaces.Tuple([decode_space(s) for s in wire["spaces"]])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed {kind} space {wire!r:.200}: {exc}") from None
    raise ValueError(f"unknown space type {kind!r}")


def to_wire(space: spaces.Space, value: Any) -> Any:
    """A value of ``space`` (optionally batched) as arrays in maps, ready for :func:`wire.pack`."""
    if isinstance(space, spaces.Dict):
        return {str(k): to_wire(s, value[k]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return {str(i): to_wire(s, value[i]) for i, s in enumerate(space.spaces)}
    return np.asarray(value, dtype=space.dtype)


def from_wire(space: spaces.Space, value: Any) -> Any:
    """A wire value (arrays, or plain numbers and lists from a header) as a value of ``space``.

    Only reshapes the containers (maps back to dicts and tuples); :func:`check_value` does the validation.
    """
    if isinstance(space, spaces.Dict):
        return {k: from_wire(s, value[k]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(from_wire(s, value[str(i)]) for i, s in enumerate(space.spaces))
    if isinstance(space, spaces.Discrete) and (type(value) is np.int64 or np.ndim(value) == 0):
        return int(value) if type(value) is np.int64 else int(np.asarray(value).item())
    return np.asarray(value, dtype=space.dtype)


def _kind_ok(array: np.ndarray, kinds: str) -> bool:
    return array.dtype.kind in kinds


def check_value(space: spaces.Space, value: Any, batch_shape: tuple[int, ...] = (), name: str = "action") -> Any:
    """``value`` converted to the space's dtype, or ValueError saying exactly what is wrong with it.

    Works on one value or a stack of values with leading ``batch_shape`` dims, with a handful of numpy calls per
    leaf (never a Python loop over the batch). Accepts plain ints, floats and (nested) lists as sent in a header.
    Rejects: a missing key, a wrong shape, a non-numeric or bool dtype where numbers are due, fractional values for
    integer spaces, NaN or infinity, and anything outside the space's bounds.
    """
    if isinstance(space, (spaces.Dict, spaces.Tuple)):  # a tuple: `A | B` would build a union on every call
        keys = list(space.spaces) if isinstance(space, spaces.Dict) else [str(i) for i in range(len(space.spaces))]
        subspaces = list(space.spaces.values()) if isinstance(space, spaces.Dict) else list(space.spaces)
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be a map with keys {keys}, got {type(value).__name__}")
        missing = [k for k in keys if k not in value]
        extra = [k for k in value if k not in keys]
        if missing or extra:
            raise ValueError(f"{name} has keys {sorted(value)}; the space needs exactly {keys}")
        checked = {
            k: check_value(s, value[k], batch_shape, f"{name}/{k}") for k, s in zip(keys, subspaces, strict=True)
        }
        return checked if isinstance(space, spaces.Dict) else tuple(checked[k] for k in keys)
    if type(value) is int and not batch_shape and isinstance(space, spaces.Discrete):
        # The lockstep hot path: one Discrete action inline in a header. Skip numpy for a plain int.
        if not space.start <= value < space.start + space.n:
            raise ValueError(f"{name} is outside {space}")
        return np.int64(value)
    if isinstance(value, dict | str | bytes) or value is None:
        raise ValueError(f"{name} must be a number or an array, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except Exception:
        raise ValueError(f"{name} is not a rectangular array of numbers") from None
    want_shape = (*batch_shape, *space.shape) if space.shape is not None else None
    if array.shape != want_shape:
        raise ValueError(f"{name} has shape {array.shape}; {space} needs {want_shape}")
    if isinstance(space, spaces.Box):
        if not _kind_ok(array, "iuf"):
            raise ValueError(f"{name} has dtype {array.dtype}; {space} needs numbers")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinity")
        if not (np.all(array >= space.low) and np.all(array <= space.high)):
            raise ValueError(f"{name} is outside the bounds of {space}")
        return array.astype(space.dtype, copy=False)
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        if _kind_ok(array, "f"):
            if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
                raise ValueError(f"{name} must hold integers, got {array.dtype} with fractional or non-finite values")
        elif not _kind_ok(array, "iu" if not isinstance(space, spaces.MultiBinary) else "iub"):
            raise ValueError(f"{name} has dtype {array.dtype}; {space} needs integers")
        ints = array.astype(np.int64, copy=False)  # the frame's read-only view when it is int64 already
        if isinstance(space, spaces.MultiDiscrete):
            outside = not (np.all(ints >= space.start) and np.all(ints <= space.start + space.nvec - 1))
        else:  # one bound pair for every value: two reductions instead of two comparisons and two reductions
            low, high = (
                (int(space.start), int(space.start + space.n - 1)) if isinstance(space, spaces.Discrete) else (0, 1)
            )
            outside = ints.size > 0 and (ints.min() < low or ints.max() > high)
        if outside:
            raise ValueError(f"{name} is outside {space}")
        return ints.astype(space.dtype, copy=False)
    raise ValueError(f"space {space} is not supported by agora")


def noop_value(space: spaces.Space, batch_shape: tuple[int, ...] = ()) -> Any:
    """The space's neutral value: zeros clipped into the bounds, the first Discrete value, maps of those."""
    if isinstance(space, spaces.Dict):
        return {k: noop_value(s, batch_shape) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(noop_value(s, batch_shape) for s in space.spaces)
    if isinstance(space, spaces.Discrete):
        return np.full(batch_shape, space.start, dtype=space.dtype) if batch_shape else int(space.start)
    if isinstance(space, spaces.Box):
        zero = np.clip(np.zeros(space.shape, dtype=space.dtype), space.low, space.high).astype(space.dtype)
        return np.broadcast_to(zero, (*batch_shape, *space.shape)).copy()
    if isinstance(space, spaces.MultiDiscrete):
        return np.broadcast_to(space.start, (*batch_shape, *space.shape)).astype(space.dtype)
    if isinstance(space, spaces.MultiBinary):
        return np.zeros((*batch_shape, *space.shape), dtype=space.dtype)
    raise ValueError(f"space {space} is not supported by agora")


def rows_of(value: Any, index: Any) -> Any:
    """Rows ``index`` (an int, a slice, a tuple of them) of a value in wire form: an array, or a map of them (Dict
    and Tuple spaces), nested."""
    if isinstance(value, dict):
        return {key: rows_of(v, index) for key, v in value.items()}
    return value[index]


def write_row(out: Any, index: Any, value: Any) -> None:
    """Write one value (an array or a scalar; a dict for a Dict space, a tuple for a Tuple space) into rows ``index``
    of storage made by :func:`zeros_like_space` (a Tuple's members are keyed ``"0"``, ``"1"``... there).

    Raises:
        ValueError: ``value`` lacks a member ``out`` has (it is not a value of the storage's space).
    """
    if isinstance(out, dict):
        for key, sub in out.items():
            try:
                member = value[key] if isinstance(value, dict) else value[int(key)]
            except (KeyError, IndexError, TypeError, ValueError):
                raise ValueError(f"a value with no member {key!r} for storage of members {list(out)}") from None
            write_row(sub, index, member)
    else:
        out[index] = value


def zeros_like_space(space: spaces.Space, batch_shape: tuple[int, ...] = ()) -> Any:
    """Zero-filled storage for values of ``space`` with leading ``batch_shape`` (the rows of inactive agents)."""
    if isinstance(space, spaces.Dict):
        return {k: zeros_like_space(s, batch_shape) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return {str(i): zeros_like_space(s, batch_shape) for i, s in enumerate(space.spaces)}
    return np.zeros((*batch_shape, *space.shape), dtype=space.dtype)
