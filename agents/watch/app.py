"""The watch page's web server (aiohttp): the page, a websocket per browser, and two JSON endpoints.

::

    GET /              the page (static/index.html, watch.js, watch.css: shipped in the package, no CDN)
    GET /api/worlds    the latest snapshot: {"servers": [status...], "worlds": [row...], "run": bool}
    GET /api/run       the run's learning curve (with --run): {"run", "column", "points": [[step, value], ...]}
    GET /ws            a websocket: the app sends every snapshot as text ({"type": "worlds", ...}) and the frames
                       of the world the browser watches as binary messages; the browser sends {"watch": KEY|null}

A binary message is a 4-byte big-endian header length, a JSON header ({"key", "format", "width", "height"}) and
the image. Each browser gets the latest snapshot and the latest frame when it is ready for them: a slow browser
skips frames, it never queues them. Only the worlds some browser watches are rendered (see
:class:`~agora_marl.agents.watch.servers.ServerWatch`).
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from pathlib import Path

from aiohttp import WSMsgType, web

from agora_marl.agents.watch.rundir import Curve
from agora_marl.agents.watch.servers import ServerWatch, Target

STATIC = Path(__file__).parent / "static"


class _Viewer:
    """One browser's websocket: what it watches, and the latest snapshot and frame not yet sent to it."""

    def __init__(self, socket: web.WebSocketResponse):
        self.socket = socket
        self.key: str | None = None
        self.text: str | None = None
        self.error: str | None = None
        self.frame: bytes | None = None
        self.ready = asyncio.Event()

    async def send_latest(self) -> None:
        try:
            while not self.socket.closed:
                await self.ready.wait()
                self.ready.clear()
                texts, frame = (self.text, self.error), self.frame
                self.text = self.error = self.frame = None
                for text in texts:
                    if text is not None:
                        await self.socket.send_str(text)
                if frame is not None:
                    await self.socket.send_bytes(frame)
        except ConnectionError:
            pass  # the browser went away; its handler cleans up


class WatchServer:
    """The watch page over some servers, served from a thread of its own (``start``/``stop``, or ``with``).

    Args:
        targets: the servers to watch (see :func:`~agora_marl.agents.watch.servers.resolve_servers`).
        host, port: where the page listens (port 0: a free one; the page is for this machine: 127.0.0.1).
        fps: the most frames a second sent of each watched world.
        list_every_s: the shortest interval between two ``list`` requests to a server.
        run_dir: a training run whose learning curve the page draws beside the worlds.
        image_format: ``"png"`` or ``"jpeg"``.
    """

    def __init__(
        self,
        targets: list[Target],
        host: str = "127.0.0.1",
        port: int = 8765,
        fps: float = 10.0,
        list_every_s: float = 1.0,
        run_dir: str | Path | None = None,
        image_format: str = "png",
    ):
        if not targets:
            raise ValueError("the watch needs at least one server to watch")
        self.host, self.port = host, port
        self.image_format = image_format
        self.curve = Curve(run_dir) if run_dir is not None else None
        self.watches = [
            ServerWatch(i, t, self._on_worlds, self._on_frame, fps, list_every_s, image_format)
            for i, t in enumerate(targets)
        ]
        self.url = ""
        self._rows: dict[int, list[dict]] = {}
        self._status: dict[int, dict] = {w.index: dict(w.status) for w in self.watches}
        self._viewers: set[_Viewer] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    # -- life ---------------------------------------------------------------------------------------------------

    def start(self) -> str:
        """Serve the page from a thread; returns its URL once it listens. Raises OSError if the port is taken."""
        self._thread = threading.Thread(target=self._serve, name="agora-watch-web", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        for watch in self.watches:
            watch.start()
        return self.url

    def stop(self) -> None:
        for watch in self.watches:
            watch.stop()
        if self._loop is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> WatchServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def counts(self) -> dict[str, int]:
        """Requests and frames so far, summed over the servers: ``lists``, ``renders``, ``frames`` (new ones)."""
        return {k: sum(w.counts[k] for w in self.watches) for k in ("lists", "renders", "frames")}

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._listen())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._socket)
        app.router.add_get("/api/worlds", self._worlds)
        app.router.add_get("/api/run", self._run)
        app.router.add_static("/static", STATIC)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/"

    async def _shutdown(self) -> None:
        for viewer in list(self._viewers):
            await viewer.socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- from the server threads --------------------------------------------------------------------------------

    def _on_worlds(self, index: int, rows: list[dict], status: dict) -> None:
        self._loop.call_soon_threadsafe(self._publish_worlds, index, rows, status)

    def _on_frame(self, key: str, image: bytes | None, detail: object) -> None:
        if image is None:
            message = json.dumps({"type": "frame_error", "key": key, "message": str(detail)})
            self._loop.call_soon_threadsafe(self._publish_frame, key, None, message)
            return
        width, height = detail
        header = json.dumps({"key": key, "format": self.image_format, "width": width, "height": height}).encode()
        self._loop.call_soon_threadsafe(self._publish_frame, key, struct.pack(">I", len(header)) + header + image, None)

    # -- on the loop --------------------------------------------------------------------------------------------

    def _snapshot(self) -> dict:
        worlds = [row for index in sorted(self._rows) for row in self._rows[index]]
        servers = [self._status[index] for index in sorted(self._status)]
        return {"type": "worlds", "servers": servers, "worlds": worlds, "run": self.curve is not None}

    def _publish_worlds(self, index: int, rows: list[dict], status: dict) -> None:
        self._rows[index], self._status[index] = rows, status
        text = json.dumps(self._snapshot())
        for viewer in self._viewers:
            viewer.text = text
            viewer.ready.set()

    def _publish_frame(self, key: str, frame: bytes | None, error: str | None) -> None:
        for viewer in self._viewers:
            if viewer.key != key:
                continue
            if frame is not None:
                viewer.frame, viewer.error = frame, None
            else:
                viewer.error = error
            viewer.ready.set()

    def _rewatch(self) -> None:
        """Tell each server thread which of its worlds some browser watches now."""
        watched: dict[int, set[int]] = {w.index: set() for w in self.watches}
        for viewer in self._viewers:
            if viewer.key is not None:
                server, world = viewer.key.split(":")
                watched.setdefault(int(server), set()).add(int(world))
        for watch in self.watches:
            watch.set_watched(watched[watch.index])

    # -- routes -------------------------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _worlds(self, request: web.Request) -> web.Response:
        return web.json_response(self._snapshot())

    async def _run(self, request: web.Request) -> web.Response:
        if self.curve is None:
            raise web.HTTPNotFound(text="this watch was started without --run")
        return web.json_response(self.curve.read())

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(heartbeat=30)
        await socket.prepare(request)
        viewer = _Viewer(socket)
        self._viewers.add(viewer)
        viewer.text = json.dumps(self._snapshot())
        viewer.ready.set()
        sender = asyncio.ensure_future(viewer.send_latest())
        try:
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    key = json.loads(message.data).get("watch")
                except (ValueError, AttributeError):
                    continue
                viewer.key = key if isinstance(key, str) and _is_key(key) else None
                self._rewatch()
        finally:
            self._viewers.discard(viewer)
            self._rewatch()
            sender.cancel()
        return socket


def _is_key(key: str) -> bool:
    server, _, world = key.partition(":")
    return server.isdigit() and world.isdigit()
