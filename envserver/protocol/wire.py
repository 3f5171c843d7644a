"""The frame layout of every agora message, both ways.

A message is a ZeroMQ multipart::

    frame 0      msgpack map: the header {"v": 2, "op": str, "id": int, ...fields..., "arrays": [...]}
    frame 1..n   raw bytes of n arrays, C order, little-endian

or, when the header says ``"joined": true``, every array in one frame::

    frame 0      the header, whose ``arrays`` entries are [path, dtype, shape, offset]
    frame 1      the raw bytes of all n arrays, each at its byte offset (a multiple of 8)

``header["arrays"]`` has one entry per array frame, in frame order: ``[path, dtype, shape]``, where ``path`` is a
list of map keys (strings) saying where the array sits in the message (``["obs", "agent_0"]`` puts it at
``msg["obs"]["agent_0"]``), ``dtype`` is one of :data:`DTYPES` and ``shape`` a list of non-negative ints. Arrays
therefore cross without being copied into msgpack, and nothing is ever unpickled: a frame is only ever read as a
buffer of one of the numeric dtypes below. The joined form costs one copy of the arrays and saves a frame each: a
frame costs both ends and libzmq's I/O thread more than copying a few KB does (a batch reply holds 6–8 arrays;
docs/performance.md, 'Figures behind the code').

:func:`pack` turns a dict whose leaves may be numpy arrays into frames; :func:`unpack` does the reverse and checks
everything a hostile peer could get wrong, raising :class:`ProtocolError` with code ``bad_message``.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import BAD_MESSAGE, BAD_VERSION, PROTOCOL_VERSION

#: dtype names on the wire and the (little-endian) numpy dtypes they stand for.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in {
        "bool": "|b1",
        "int8": "|i1",
        "int16": "<i2",
        "int32": "<i4",
        "int64": "<i8",
        "uint8": "|u1",
        "uint16": "<u2",
        "uint32": "<u4",
        "uint64": "<u8",
        "float16": "<f2",
        "float32": "<f4",
        "float64": "<f8",
    }.items()
}
_NAME_OF_DTYPE = {dtype: name for name, dtype in DTYPES.items()}

_MAX_PATH_DEPTH = 8
_MAX_NDIM = 16


def dtype_name(dtype: np.dtype) -> str:
    """The wire name of a numpy dtype; raises ValueError for dtypes the protocol cannot carry."""
    dtype = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).byteorder == ">" else np.dtype(dtype)
    try:
        return _NAME_OF_DTYPE[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot travel on the agora wire; use one of {sorted(DTYPES)}") from None


def _msgpack_default(value: Any) -> Any:
    # Only numpy scalars reach here in practice (a reward computed with numpy, an info value).
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot send a {type(value).__name__} in a message header")


class Packed:
    """A top-level header value packed once, for a value sent unchanged in many messages (a vector-backed batch's
    world ids, in every reply to its steps). :func:`pack` splices its bytes into the header's map; anywhere but at
    the top level it is refused (``TypeError``: the header's packer knows no Packed)."""

    __slots__ = ("data",)

    def __init__(self, value: Any):
        self.data = msgpack.packb(value, use_bin_type=True)


class Stacked:
    """An array given as its slices along axis 1 (a stacked batch reply's observations, one slice per agent): written
    straight into a joined frame, so that it costs one copy, not two; made whole for a frame of its own."""

    __slots__ = ("parts", "shape", "dtype", "nbytes")

    def __init__(self, parts: list[np.ndarray]):
        if not parts or any(p.shape != parts[0].shape for p in parts):
            raise ValueError(f"Stacked needs one or more slices of one shape, got {[p.shape for p in parts]}")
        self.parts = parts
        self.dtype = np.result_type(*parts)
        self.shape = (parts[0].shape[0], len(parts), *parts[0].shape[1:])
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize

    def write(self, out: np.ndarray) -> None:
        for i, part in enumerate(self.parts):  # cheaper than np.stack (docs/performance.md, 'Figures behind the code')
            out[:, i] = part

    def array(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        self.write(out)
        return out


def _map_header(size: int) -> bytes:
    if size < 16:
        return bytes([0x80 | size])
    return (b"\xde" + size.to_bytes(2, "big")) if size < 1 << 16 else (b"\xdf" + size.to_bytes(4, "big"))


def _packb_with(header: dict, packed: list[tuple[str, Packed]], default: Any) -> bytes:
    """``header`` packed as a map that also holds the ``packed`` entries (their bytes appended, not packed again)."""
    body = msgpack.packb(header, use_bin_type=True, default=default)
    skip = 1 if body[0] & 0xF0 == 0x80 else 3 if body[0] == 0xDE else 5 if body[0] == 0xDF else 0  # its size prefix
    if not skip:
        raise ValueError(f"a header packs as a msgpack map, not as one starting with byte {body[0]:#x}")
    tail = b"".join(msgpack.packb(key, use_bin_type=True) + value.data for key, value in packed)
    return _map_header(len(header) + len(packed)) + body[skip:] + tail


class _Placed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "wire.PLACED"


#: A message key (not a string, so it never reaches the wire) under which a sender hands :func:`pack` the message's
#: arrays already placed, as ``(path, array)`` pairs, when the rest of the message holds plain values only: the walk
#: for arrays is skipped (a lockstep step reply, whose only arrays are its observations; docs/performance.md). Both
#: conditions are checked: an array left in the rest of the message, or a path under a key the message already has,
#: is refused (``ValueError``).
PLACED = _Placed()


def _plain_only(value: Any) -> Any:
    # The header packer's fallback for a message with placed arrays: numpy scalars become numbers, an array is a bug.
    if isinstance(value, np.ndarray | Stacked):
        raise ValueError("a message with placed arrays (wire.PLACED) holds an array outside them; place it too")
    return _msgpack_default(value)


#: Header values that are never walked: looked up by exact type, they skip the isinstance tests.
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None), list, bytes})


def _add_array(path: list[str], value: np.ndarray, table: list, frames: list) -> None:
    # np.ascontiguousarray would make a 0-d array 1-d: copy only what is not contiguous already.
    array = value if value.flags.c_contiguous else np.ascontiguousarray(value).reshape(value.shape)
    name = _NAME_OF_DTYPE.get(array.dtype)  # every native little-endian dtype; dtype_name does the rest
    if name is None:
        name = dtype_name(array.dtype)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
    table.append([path, name, list(array.shape)])
    frames.append(array)


def _extract_arrays(node: dict, path: list[str], table: list, frames: list) -> dict:
    out = {}
    for key, value in node.items():
        kind = type(value)
        if kind in _PLAIN_TYPES:
            out[key] = value
        elif kind is Stacked:
            table.append([[*path, key], dtype_name(value.dtype), list(value.shape)])
            frames.append(value)
        elif isinstance(value, np.ndarray):
            _add_array([*path, key], value, table, frames)
        elif isinstance(value, dict):
            if _PLAIN_TYPES.issuperset(map(type, value.values())):  # plain values only (a reply's per-seat rewards)
                out[key] = value
                continue
            arrays_before = len(table)
            sub = _extract_arrays(value, [*path, key], table, frames)
            # A map that held only arrays travels as its arrays' paths alone; an empty map stays a map.
            if sub or len(table) == arrays_before:
                out[key] = sub
        else:
            out[key] = value
    return out


_ALIGN = 8  # a joined array starts at a multiple of this: every dtype's items are aligned in the frame


def _join(table: list, frames: list) -> np.ndarray:
    """The arrays in one buffer, each at an aligned offset appended to its table entry."""
    offsets, end = [], 0
    for array in frames:
        offsets.append(end)
        end += -(-array.nbytes // _ALIGN) * _ALIGN
    joined = np.empty(end, np.uint8)
    for entry, array, offset in zip(table, frames, offsets, strict=True):
        entry.append(offset)
        if type(array) is Stacked:
            array.write(joined[offset : offset + array.nbytes].view(array.dtype).reshape(array.shape))
        else:
            joined[offset : offset + array.nbytes] = array.reshape(-1).view(np.uint8)
    return joined


def pack(message: dict, joined: bool = False) -> list:
    """Frames for a message: every numpy array anywhere in the (nested) dict becomes its own frame, or, with
    ``joined`` and two arrays or more, all of them one frame (the header then says ``"joined": true``).

    ``message`` must hold ``"op"``; ``"v"`` is filled in. Returns a list for ``socket.send_multipart``: the header
    bytes, then the arrays themselves (ZeroMQ reads their buffers; large ones are not copied).
    """
    table: list = []
    frames: list = []
    default = _msgpack_default
    if PLACED in message:
        header = dict(message)
        for path, array in header.pop(PLACED):
            if path[0] in header:
                raise ValueError(f"placed array {list(path)} would overwrite the message's {path[0]!r}")
            _add_array(list(path), array, table, frames)
        default = _plain_only
    else:
        header = _extract_arrays(message, [], table, frames)
    header["v"] = PROTOCOL_VERSION
    if table:
        header["arrays"] = table
        if joined and len(frames) > 1:
            frames = [_join(table, frames)]
            header["joined"] = True
        else:
            frames = [array.array() if type(array) is Stacked else array for array in frames]
    packed = [(key, value) for key, value in header.items() if type(value) is Packed]
    if packed:
        for key, _ in packed:
            del header[key]
        return [_packb_with(header, packed, default), *frames]
    return [msgpack.packb(header, use_bin_type=True, default=default), *frames]


def _as_bytes_like(frame: Any) -> Any:
    # zmq.Frame (recv with copy=False) exposes .buffer; bytes and memoryview are buffers already.
    return getattr(frame, "buffer", frame)


def _fail(message: str, request_id: int = 0) -> ProtocolError:
    return ProtocolError(BAD_MESSAGE, message, "see docs/protocol.md, 'Frames'", request_id)


def _where(path: list[str]) -> str:
    # A path's keys are the peer's strings: long ones are cut so that a refusal stays small.
    where = "/".join(path)
    return where if len(where) <= 100 else where[:100] + "..."


def _check_array_entry(
    entry: Any, frame: Any, request_id: int, joined: memoryview | None = None
) -> tuple[list[str], np.ndarray]:
    # Every part is checked for its type before it is used (hashed, compared, multiplied): a list where the dtype's
    # name is due must get bad_message, never a TypeError.
    if joined is not None:
        if not (isinstance(entry, list | tuple) and len(entry) == 4):
            raise _fail("each entry of 'arrays' of a joined message must be [path, dtype, shape, offset]", request_id)
        path, dtype, shape, offset = entry
    elif not (isinstance(entry, list | tuple) and len(entry) == 3):
        raise _fail("each entry of 'arrays' must be [path, dtype, shape]", request_id)
    else:
        path, dtype, shape = entry
    if not (isinstance(path, list | tuple) and 1 <= len(path) <= _MAX_PATH_DEPTH):
        raise _fail(f"array path must be a list of 1 to {_MAX_PATH_DEPTH} strings", request_id)
    if not all(isinstance(part, str) for part in path):
        raise _fail(f"array path {path!r:.100} must hold only strings", request_id)
    if not (isinstance(dtype, str) and dtype in DTYPES):
        raise _fail(f"array {_where(path)}: dtype {dtype!r:.40} is not one of {sorted(DTYPES)}", request_id)
    if not (isinstance(shape, list | tuple) and len(shape) <= _MAX_NDIM):
        raise _fail(f"array {_where(path)}: shape must be a list of at most {_MAX_NDIM} ints", request_id)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise _fail(f"array {_where(path)}: shape {shape!r:.100} must hold non-negative ints", request_id)
    expected = math.prod(shape) * DTYPES[dtype].itemsize  # exact ints: a hostile huge shape cannot overflow
    if joined is not None:
        if not (type(offset) is int and 0 <= offset <= joined.nbytes - expected):
            raise _fail(
                f"array {_where(path)}: offset {offset!r:.40} with {expected} bytes does not lie in the joined frame's "
                f"{joined.nbytes}",
                request_id,
            )
        array = np.frombuffer(joined, dtype=DTYPES[dtype], count=math.prod(shape), offset=offset).reshape(shape)
        return list(path), array
    buffer = memoryview(_as_bytes_like(frame))
    if buffer.nbytes != expected:
        raise _fail(
            f"array {_where(path)}: frame has {buffer.nbytes} bytes, dtype {dtype} and shape {list(shape)} need "
            f"{expected}",
            request_id,
        )
    array = np.frombuffer(buffer, dtype=DTYPES[dtype]).reshape(shape)
    return list(path), array


def _insert(message: dict, path: list[str], array: np.ndarray, request_id: int) -> None:
    node = message
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise _fail(f"array path {_where(path)} runs through a non-map field {part[:100]!r}", request_id)
        node = child
    if path[-1] in node:
        raise _fail(f"array path {_where(path)} names a field that is already set", request_id)
    node[path[-1]] = array


_ABSENT = object()


def unpack(frames: list, max_header_bytes: int = 1 << 20) -> dict:
    """The message carried by ``frames`` (header fields with the arrays put in place at their paths).

    Checks the header is a msgpack map with an int ``id``, an int ``v`` equal to :data:`PROTOCOL_VERSION`, a string
    ``op``, and an ``arrays`` table that matches the frames exactly, each of its parts of the right type. Arrays are
    read-only views of the frames.

    Raises:
        ProtocolError: ``bad_message`` or ``bad_version``; its ``request_id`` is the header's ``id`` when known.
    """
    if not frames:
        raise _fail("empty message")
    raw = _as_bytes_like(frames[0])
    if (len(raw) if type(raw) is bytes else memoryview(raw).nbytes) > max_header_bytes:
        raise _fail(f"header is over {max_header_bytes} bytes")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for corrupt input
        raise _fail(f"header frame is not valid msgpack ({type(exc).__name__}: {exc})") from None
    # msgpack makes exact ints, strs, lists and dicts, so exact type tests stand for isinstance (and keep bools out).
    if type(header) is not dict:
        raise _fail(f"header must be a msgpack map, got {type(header).__name__}")
    request_id = header.setdefault("id", 0)
    if type(request_id) is not int:
        raise _fail("'id' must be an integer")
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # `True == 1` in Python, not on the wire
        what = "the header has no 'v'" if version is None else f"protocol version {version!r:.40} is not supported"
        raise ProtocolError(
            BAD_VERSION,
            f"{what}; this server speaks version {PROTOCOL_VERSION}",
            f'send "v": {PROTOCOL_VERSION} in every header, or upgrade the client',
            request_id,
        )
    if type(header.get("op")) is not str:
        raise _fail("header needs a string field 'op'", request_id)
    table = header.pop("arrays", _ABSENT)
    joined = header.pop("joined", False)
    if joined is not False and joined is not True:
        raise _fail("'joined' must be true or false", request_id)
    if table is _ABSENT:
        if len(frames) > 1:
            raise _fail(f"'arrays' describes 0 arrays but {len(frames) - 1} array frames came", request_id)
        return header
    if type(table) is not list:
        raise _fail("'arrays' must be a list", request_id)
    if joined:
        if len(frames) != 2:
            raise _fail(f"a joined message has one array frame, but {len(frames) - 1} came", request_id)
        buffer = memoryview(_as_bytes_like(frames[1]))
        for entry in table:
            path, array = _check_array_entry(entry, None, request_id, buffer)
            _insert(header, path, array, request_id)
        return header
    if len(table) != len(frames) - 1:
        raise _fail(f"'arrays' describes {len(table)} arrays but {len(frames) - 1} array frames came", request_id)
    for entry, frame in zip(table, frames[1:], strict=True):
        path, array = _check_array_entry(entry, frame, request_id)
        _insert(header, path, array, request_id)
    return header


def peek_id(header_frame: Any) -> int:
    """The request id of a message refused before decoding, so that even that refusal can be matched."""
    if len(header_frame) > 1 << 16:
        return 0
    try:
        request_id = msgpack.unpackb(getattr(header_frame, "buffer", header_frame), raw=False).get("id", 0)
    except Exception:
        return 0
    return request_id if isinstance(request_id, int) and not isinstance(request_id, bool) else 0
