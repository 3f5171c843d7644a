"""A bare DEALER for server tests: sends exactly the frames a test builds, with no client library in between.

It says hello when made (``hello=False``: not) and puts the session secret in every message that has no ``secret`` of
its own (``"secret": None`` sends none); ``send_frames`` sends the frames exactly as given.
"""

from __future__ import annotations

import itertools

import zmq

from agora_marl.envserver.protocol import pack, unpack


class RawClient:
    def __init__(self, address: str, timeout_s: float = 10.0, curve_serverkey: bytes | None = None, hello: bool = True):
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve_serverkey:
            self.socket.curve_serverkey = curve_serverkey
            self.socket.curve_publickey, self.socket.curve_secretkey = zmq.curve_keypair()
        self.socket.connect(address)
        self.timeout_ms = int(timeout_s * 1000)
        self._ids = itertools.count(1)
        self.secret: str | None = None
        if hello:
            self.secret = self.ok({"op": "hello", "name": "raw"})["secret"]

    def send(self, message: dict) -> int:
        message = {"id": next(self._ids), **message}
        if "secret" not in message and self.secret is not None:
            message["secret"] = self.secret
        elif message.get("secret", "") is None:
            del message["secret"]
        self.socket.send_multipart(pack(message))
        return message["id"]

    def send_frames(self, frames: list) -> None:
        self.socket.send_multipart(frames)

    def recv(self, timeout_ms: int | None = None) -> dict:
        if not self.socket.poll(self.timeout_ms if timeout_ms is None else timeout_ms):
            raise TimeoutError("no reply from the server")
        return unpack(self.socket.recv_multipart())

    def request(self, message: dict) -> dict:
        request_id = self.send(message)
        reply = self.recv()
        assert reply["id"] == request_id, f"reply {reply} does not answer request {request_id}"
        return reply

    def ok(self, message: dict) -> dict:
        reply = self.request(message)
        assert reply["op"] != "error", reply
        return reply

    def close(self) -> None:
        self.socket.close(linger=0)
