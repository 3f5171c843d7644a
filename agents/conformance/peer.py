"""One client of the conformance suite: a DEALER socket that speaks the frames of docs/protocol.md and checks every
reply it reads (``v``, ``op``, ``id`` present; an error's ``code``, ``message`` and ``hint``; an ``id`` that answers
a request in flight).

Nothing here knows the server: a :class:`Peer` sends headers built from the protocol's words and reads replies with
:func:`~agora_marl.envserver.protocol.unpack`, the frame layout and nothing more.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import zmq

from agora_marl.envserver.protocol import ProtocolError, pack, unpack
from agora_marl.envserver.protocol.vocabulary import ERROR_CODES, ERROR_OP, REQUESTS, SCENARIO_NOT_ALLOWED


class Failure(Exception):
    """The server broke the protocol; the message says how."""


class Skip(Exception):
    """The check cannot run against this server (its scenario is not hosted here, a limit is too large to test)."""


def expect(condition: Any, message: str) -> None:
    """Raise :class:`Failure` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise Failure(message)


def short(value: Any, limit: int = 300) -> str:
    """A reply or value for a failure message, cut to ``limit`` characters (arrays by their shape)."""
    if isinstance(value, dict):
        value = {
            k: (f"<array {v.dtype} {list(v.shape)}>" if isinstance(v, np.ndarray) else v) for k, v in value.items()
        }
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_error_shape(name: str, reply: dict) -> None:
    for key in ("code", "message", "hint"):
        expect(isinstance(reply.get(key), str), f"{name}: an error reply without a string {key!r}: {short(reply)}")
    expect(reply["code"] in ERROR_CODES, f"{name}: error code {reply['code']!r} is not one of the protocol's codes")
    expect(reply["message"], f"{name}: an error reply with an empty message: {short(reply)}")


class Peer:
    """A client of the server under test, with its own connection and (after :meth:`hello`) its own session.

    Args:
        context: the ZeroMQ context of the run (destroyed by the runner when it ends).
        address: the server's endpoint.
        name: how failure messages and the ``hello`` name call this peer.
        ids: the run's request ids (shared by all peers, so a reply with another peer's id is caught too).
        timeout_s: the longest wait for any one reply.
        scenario: what :meth:`create` creates unless told otherwise.
    """

    def __init__(
        self, context: zmq.Context, address: str, name: str, ids: Iterator[int], timeout_s: float, scenario: str
    ):
        self.name = name
        self.timeout_s = timeout_s
        self.scenario = scenario
        self.secret: str | None = None
        self.welcome: dict = {}
        self.created: list[int] = []
        """Worlds this peer created, closed when its check ends."""
        self._ids = ids
        self._in_flight: dict[int, str] = {}
        self._stash: dict[int, dict] = {}
        self.frame_counts: dict[int, int] = {}
        """How many frames the reply to each request id came in (the joined-frames check reads it)."""
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)

    # ---- sending ------------------------------------------------------------------------------------------------

    def send(self, op: str, *, session: bool = True, request_id: int | None = None, **fields) -> int:
        """Send one request, with this peer's secret unless ``session=False`` or ``fields`` holds a ``secret``;
        returns its id."""
        request_id = next(self._ids) if request_id is None else request_id
        message = {"op": op, "id": request_id, **fields}
        if session and self.secret is not None and "secret" not in fields:
            message["secret"] = self.secret
        self.socket.send_multipart(pack(message))
        self._in_flight[request_id] = op
        return request_id

    def send_frames(self, frames: list, reply_id: int, what: str) -> None:
        """Send frames exactly as given; the reply is expected to carry ``reply_id``."""
        self.socket.send_multipart(frames)
        self._in_flight[reply_id] = what

    def send_header(self, header: dict, *frames: bytes, what: str = "") -> int:
        """Send a header packed as given (no ``v`` filled in) and raw frames; returns the header's id (or 0)."""
        reply_id = header.get("id", 0) if isinstance(header.get("id", 0), int) else 0
        self.send_frames([msgpack.packb(header, use_bin_type=True), *frames], reply_id, what or short(header, 80))
        return reply_id

    # ---- receiving ----------------------------------------------------------------------------------------------

    def _read(self, frames: list) -> dict:
        try:
            header = msgpack.unpackb(frames[0], raw=False)
        except Exception as exc:  # msgpack raises several unrelated types for corrupt input
            raise Failure(f"{self.name}: a reply whose header is not msgpack ({type(exc).__name__})") from None
        expect(isinstance(header, dict), f"{self.name}: a reply whose header is not a map: {short(header)}")
        for key in ("v", "op", "id"):
            expect(key in header, f"{self.name}: a reply without {key!r} (every reply has v, op, id): {short(header)}")
        try:
            reply = unpack(frames)
        except ProtocolError as exc:
            raise Failure(f"{self.name}: a reply that is not an agora message ({exc.code}: {exc.message})") from None
        if reply["op"] == ERROR_OP:
            _check_error_shape(self.name, reply)
        request_id = reply["id"]
        if request_id not in self._in_flight:
            raise Failure(
                f"{self.name}: a reply ({reply['op']}) with id {request_id!r}, which answers no request in flight "
                f"(ids in flight: {sorted(self._in_flight)[:8]}); a reply echoes its request's id: {short(reply)}"
            )
        del self._in_flight[request_id]
        self.frame_counts[request_id] = len(frames)
        return reply

    def reply(self, request_id: int, timeout_s: float | None = None) -> dict:
        """The reply to request ``request_id``; replies to other requests in flight are kept for later.

        Raises:
            Failure: no reply within the timeout, or a reply that breaks the protocol.
        """
        wait = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait
        while request_id not in self._stash:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(max(1, int(remaining * 1000))):
                what = self._in_flight.get(request_id, "request")
                raise Failure(f"{self.name}: no reply to {what} (id {request_id}) within {wait:g} s")
            reply = self._read(self.socket.recv_multipart())
            self._stash[reply["id"]] = reply
        return self._stash.pop(request_id)

    def quiet(self, request_id: int, seconds: float, why: str) -> None:
        """Fail if request ``request_id`` is answered within ``seconds`` (``why``: what an answer would mean)."""
        deadline = time.monotonic() + seconds
        while request_id not in self._stash:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(max(1, int(remaining * 1000))):
                return
            reply = self._read(self.socket.recv_multipart())
            self._stash[reply["id"]] = reply
        raise Failure(f"{self.name}: {why}; got {short(self._stash[request_id])}")

    # ---- request and reply --------------------------------------------------------------------------------------

    def request(self, op: str, **fields) -> dict:
        """Send a request and return its reply, whatever it is."""
        return self.reply(self.send(op, **fields))

    def ok(self, op: str, **fields) -> dict:
        """Send a request and return its reply, which must be the success reply of ``op``."""
        return self.answer(op, self.send(op, **fields))

    def answer(self, op: str, request_id: int) -> dict:
        """The reply to request ``request_id`` (an ``op``), which must be its success reply."""
        reply = self.reply(request_id)
        if reply["op"] == ERROR_OP:
            if op == "create" and reply["code"] == SCENARIO_NOT_ALLOWED:
                raise Skip(f"the server does not host this scenario ({reply['message']})")
            raise Failure(f"{self.name}: {op} was refused: {reply['code']}: {reply['message']}")
        expect(
            reply["op"] == REQUESTS[op],
            f"{self.name}: {op} was answered with {reply['op']!r}, not {REQUESTS[op]!r}: {short(reply)}",
        )
        return reply

    def refused(self, op: str, code: str, why: str = "", **fields) -> dict:
        """Send a request that must be refused with ``code``; returns the error reply."""
        return self.refusal(op, self.send(op, **fields), code, why)

    def refusal(self, op: str, request_id: int, code: str, why: str = "") -> dict:
        """The reply to request ``request_id``, which must be an error ``code`` (``why``: the protocol's rule)."""
        reply = self.reply(request_id)
        because = f" ({why})" if why else ""
        expect(
            reply["op"] == ERROR_OP and reply.get("code") == code,
            f"{self.name}: {op} should get {code}{because}, got {short(reply)}",
        )
        return reply

    # ---- the usual requests -------------------------------------------------------------------------------------

    def hello(self, **fields) -> dict:
        """Open (or with ``secret``, renew) a session; its secret goes into every later request."""
        welcome = self.ok("hello", session=False, **{"name": self.name, **fields})
        expect(
            isinstance(welcome.get("secret"), str) and welcome["secret"],
            f"{self.name}: welcome carries no secret: {short(welcome)}",
        )
        self.secret, self.welcome = welcome["secret"], welcome
        return welcome

    def create(self, **fields) -> dict:
        """Create worlds of this peer's scenario (unless ``scenario`` is given); skips if the server hosts none."""
        fields.setdefault("scenario", self.scenario)
        created = self.ok("create", **fields)
        worlds = created.get("worlds")
        expect(
            isinstance(worlds, list) and worlds and all(type(w) is int for w in worlds),
            f"{self.name}: created.worlds is not a list of world ids: {short(created)}",
        )
        self.created += worlds
        return created

    def close_all(self, timeout_s: float) -> None:
        """Close the worlds this peer created (errors ignored: some are closed already), then the socket."""
        try:
            pending = [self.send("close", world=w) for w in self.created]
            deadline = time.monotonic() + timeout_s
            for request_id in pending:
                self.reply(request_id, max(0.0, deadline - time.monotonic()))
        except (Failure, zmq.ZMQError):
            pass
        finally:
            self.created = []
            self.socket.close(linger=0)
