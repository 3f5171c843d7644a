"""The watch's side of each server: one thread per server with its own :class:`AgentClient` (an observer client).

A :class:`ServerWatch` lists the server's worlds every ``list_every_s`` (never more often than 50 times its last
round trip, so a slow server is asked less), and renders only the worlds some browser watches, each at most
``fps`` times a second; a frame equal to the last one is not encoded again. Everything it learns goes to two
callbacks, called from its thread.

It speaks only the protocol, through the client library: an operator session (the server's operator secret) lists
and observes every world; without one, ``list`` shows the worlds this client may see (the public ones).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import zmq
from PIL import Image

from agora_marl.agents.client import AgentClient, ServerError
from agora_marl.agents.watch.table import world_row
from agora_marl.envserver.protocol.connection import find_operator_secret, read_connection_file

log = logging.getLogger(__name__)

#: How long after a failed ``render`` (a world that does not draw, a server without the op) the watch asks again.
RETRY_S = 5.0


@dataclass(frozen=True)
class Target:
    """A server to watch: its address and its operator secret, or a file holding it (None: no operator rights)."""

    address: str
    operator: str | None = None


def resolve_servers(connect: list[str], operator: str | None = None) -> list[Target]:
    """The servers that ``--connect`` entries name: addresses, or connection files (each of their addresses).

    The operator secret is ``operator`` (the secret, or a file holding it) when given; else the one the connection
    file holds, or the one ``agora serve`` wrote to the server's operator file, where this user can read it.
    """
    targets = []
    for entry in connect:
        addresses = read_connection_file(entry) if "://" not in entry and os.path.isfile(entry) else [entry]
        secret = operator or find_operator_secret(entry)
        targets += [Target(address, secret) for address in addresses]
    return targets


def encode_frame(frame: np.ndarray, image_format: str = "png") -> bytes:
    """A (H, W, 3) uint8 frame as PNG (fast compression: frames are flat drawings) or JPEG bytes."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(frame[:, :, :3]), "RGB")
    if image_format == "jpeg":
        image.save(buffer, "JPEG", quality=85)
    else:
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


class ServerWatch:
    """Watches one server from a thread of its own (a client is not thread-safe; the web loop never blocks on it).

    Args:
        index: this server's number in the page (world keys are ``"INDEX:WORLD"``).
        target: the server and its operator secret.
        on_worlds: called with ``(index, rows, status)`` after every ``list`` (``rows`` as :func:`world_row` makes
            them; ``status``: address, ``ok``, ``operator``, ``error``).
        on_frame: called with ``(key, image bytes, (width, height))`` for every new frame of a watched world, or
            ``(key, None, message)`` when the world cannot be rendered.
        fps: the most frames a second rendered of each watched world.
        list_every_s: the shortest interval between two ``list`` requests.
        image_format: ``"png"`` or ``"jpeg"``.
        timeout_s: how long one request may take before the server counts as unreachable.
    """

    def __init__(
        self,
        index: int,
        target: Target,
        on_worlds: Callable[[int, list[dict], dict], None],
        on_frame: Callable[[str, bytes | None, object], None],
        fps: float = 10.0,
        list_every_s: float = 1.0,
        image_format: str = "png",
        timeout_s: float = 5.0,
    ):
        if not fps > 0 or not list_every_s > 0:
            raise ValueError(f"fps and list_every_s must be > 0, got {fps} and {list_every_s}")
        self.index, self.target = index, target
        self.on_worlds, self.on_frame = on_worlds, on_frame
        self.frame_interval_s = 1.0 / fps
        self.list_every_s = list_every_s
        self.image_format = image_format
        self.timeout_s = timeout_s
        self.status = {"server": index, "address": target.address, "ok": False, "operator": False, "error": None}
        self.counts = {"lists": 0, "renders": 0, "frames": 0}
        self._note: str | None = None  # why this session has fewer rights than asked for
        self._watched: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"agora-watch-{index}", daemon=True)

    def start(self) -> ServerWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.timeout_s + 2)

    def set_watched(self, worlds: set[int]) -> None:
        """The worlds some browser watches now (from any thread); the others are no longer rendered."""
        with self._lock:
            self._watched = set(worlds)
        self._wake.set()

    # -- the thread ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            client = self._connect()
        except (zmq.ZMQError, ValueError, OSError) as exc:  # a malformed address, an unreadable operator file
            self.status["error"] = f"cannot connect: {exc}"
            self.on_worlds(self.index, [], dict(self.status))
            return
        joined: set[int] = set()
        last: dict[int, np.ndarray] = {}
        due: dict[int, float] = {}  # world -> when it may be rendered next
        next_list = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_list:
                    took = self._list(client)
                    next_list = time.monotonic() + max(self.list_every_s, 50 * took)
                with self._lock:
                    watched = set(self._watched)
                for world in joined - watched:
                    self._leave(client, world)
                joined &= watched
                for world in list(last):
                    if world not in watched:
                        last.pop(world)
                        due.pop(world, None)
                for world in sorted(watched):
                    if time.monotonic() >= due.get(world, 0.0):
                        due[world] = time.monotonic() + self._render(client, world, joined, last)
                wake_at = min([next_list, *(due[w] for w in watched if w in due)])
                self._wake.wait(max(0.0, wake_at - time.monotonic()))
                self._wake.clear()
        finally:
            client.close()

    def _connect(self) -> AgentClient:
        name = f"agora-watch@{os.uname().nodename}"
        client = AgentClient(self.target.address, timeout_s=self.timeout_s, name=name, operator=self.target.operator)
        if self.target.operator is not None:
            try:
                client.hello()
            except ServerError as exc:  # a stale operator file: watch what a plain client may see
                log.warning("%s refused the operator secret (%s); watching its visible worlds only", self.target, exc)
                client.close()
                client = AgentClient(self.target.address, timeout_s=self.timeout_s, name=name)
                self._note = f"operator secret refused ({exc.message}): only the worlds a plain client sees"
            except TimeoutError:
                pass  # the first list reports it
        return client

    def _list(self, client: AgentClient) -> float:
        started = time.monotonic()
        try:
            entries = client.list_worlds()
        except (TimeoutError, ServerError) as exc:
            self.status.update(ok=False, error=str(exc))
            self.on_worlds(self.index, [], dict(self.status))
            return time.monotonic() - started
        took = time.monotonic() - started
        self.counts["lists"] += 1
        welcome = client.welcome or {}
        self.status.update(ok=True, operator=bool(welcome.get("operator")), error=self._note)
        rows = [world_row(entry, self.index) for entry in entries]
        self.on_worlds(self.index, rows, dict(self.status))
        return took

    def _render(self, client: AgentClient, world: int, joined: set[int], last: dict[int, np.ndarray]) -> float:
        """Render one watched world; returns how long to wait before the next render of it."""
        key = f"{self.index}:{world}"
        try:
            if world not in joined:
                client.join(world, role="observer")
                joined.add(world)
            frame = client.render(world)
        except ServerError as exc:
            joined.discard(world)  # a forgotten session lost its observer place: join again next time
            self.on_frame(key, None, f"cannot watch world {world}: {exc.message or exc.code}")
            return RETRY_S
        except TimeoutError as exc:
            self.on_frame(key, None, str(exc))
            return RETRY_S
        self.counts["renders"] += 1
        previous = last.get(world)
        if previous is None or previous.shape != frame.shape or not np.array_equal(previous, frame):
            last[world] = frame
            self.counts["frames"] += 1
            self.on_frame(key, encode_frame(frame, self.image_format), (frame.shape[1], frame.shape[0]))
        return self.frame_interval_s

    def _leave(self, client: AgentClient, world: int) -> None:
        with contextlib.suppress(ServerError, TimeoutError):  # the world is gone, or the server: nothing to give back
            client.leave(world)
