"""A client of the agora env server: one ZeroMQ DEALER socket, requests matched to replies by id.

Several requests may be in flight at once (an ``act`` reply comes only when its world steps), so every reply is
matched to its request by ``id``; replies that arrive while waiting for another one are kept until asked for.
Waiting always polls with a timeout: a dead server raises :class:`TimeoutError`, never hangs. Error replies raise
:class:`ServerError`. A client is not thread-safe (ZeroMQ sockets are not): use one per thread.

Authority comes from the session secret the server issues at ``hello``: the client says hello by itself before its
first request that needs a session, and puts the secret in every request. When the server has forgotten the session
(a silence past its keep-alive), the request fails with ``no_session`` and the client says hello again before the
next one; seats are then reclaimed with their tokens (RemoteParallelEnv, SeatEnv and play do that).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from typing import Any

import numpy as np
import zmq
from zmq.auth import load_certificate

from agora_marl.agents.types import Created, Joined, JoinedGroup, Observation, StepResult, encode_actions
from agora_marl.envserver.protocol import ProtocolError, WorldSpec, pack, unpack
from agora_marl.envserver.protocol.vocabulary import ERROR_OP, INTERNAL, NO_SESSION, SESSIONLESS

#: How long the views (RemoteParallelEnv, BatchedWorlds) wait for their first reply: a server that does not answer a
#: hello this fast is not there, and saying so beats waiting out a long step timeout.
HELLO_TIMEOUT_S = 10.0


class ServerError(Exception):
    """The server refused a request: ``code`` is one of docs/protocol.md's error codes.

    Attributes:
        code: the error code (``bad_action``, ``unknown_world``, ...).
        message: what was wrong.
        hint: what to do instead.
        op: the operation that was refused.
    """

    def __init__(self, code: str, message: str, hint: str = "", op: str = ""):
        super().__init__(code, message, hint, op)
        self.code = code
        self.message = message
        self.hint = hint
        self.op = op

    def __str__(self) -> str:
        where = f"{self.op}: " if self.op else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{where}[{self.code}] {self.message}{hint}"


class AgentClient:
    """A connection to one agora server.

    Args:
        address: the server's endpoint, ``tcp://HOST:PORT`` or ``ipc://PATH``.
        timeout_s: how long to wait for a reply before raising :class:`TimeoutError` (per call, overridable).
        name: shown in the server's log (sent with :meth:`hello`).
        server_key: the server's Z85 CurveZMQ public key (or the path of its ``NAME.key`` certificate, or of a file
            holding the key), for a server run with ``--curve-secret``: the connection is then encrypted, with a fresh
            client key pair unless ``client_key`` is given.
        client_key: this client's key pair, for a server that lets in only listed clients (``--clients``): the path
            of a secret certificate (``NAME.key_secret`` from ``agora keys new``).
        context: the ZeroMQ context to use (default: the process-wide one).
    """

    def __init__(
        self,
        address: str,
        timeout_s: float = 30.0,
        name: str | None = None,
        server_key: str | bytes | None = None,
        context: zmq.Context | None = None,
        client_key: str | os.PathLike | None = None,
        operator: str | os.PathLike | None = None,
    ):
        self.address = address
        self.timeout_s = timeout_s
        self.name = name
        self.welcome: dict | None = None
        self._operator = read_operator_secret(operator) if operator is not None else None
        self._secret: str | None = None  # the session secret from welcome; None: hello before the next request
        self._keep_alive_s: float | None = None
        self._socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        if server_key:
            public, secret = _key_pair(client_key)
            self._socket.curve_publickey, self._socket.curve_secretkey = public, secret
            self._socket.curve_serverkey = _server_public_key(server_key)
        self._socket.connect(address)
        self._ids = itertools.count(1)
        self._ops: dict[int, str] = {}  # in-flight request id -> op
        self._stash: dict[int, dict] = {}  # replies that arrived while waiting for another id
        self._dropped: set[int] = set()  # requests whose replies nobody will read (heartbeats, timed out)
        self._acts: dict[int, int] = {}  # in-flight send_act id -> world, in send order
        self._specs: dict[int, WorldSpec] = {}

    # -- the transport ------------------------------------------------------------------------------------------

    def send(self, op: str, **fields: Any) -> int:
        """Send one request without waiting; returns its id, for :meth:`reply`. Array fields become frames."""
        if self._socket.closed:
            raise RuntimeError(f"the client for {self.address} is closed")
        if self._secret is None and op not in SESSIONLESS:
            self.hello(keep_alive_s=self._keep_alive_s)
        if self._secret is not None and "secret" not in fields:
            fields["secret"] = self._secret
        request_id = next(self._ids)
        frames = pack({"op": op, "id": request_id, **{k: v for k, v in fields.items() if v is not None}}, joined=True)
        try:
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise TimeoutError(
                f"cannot send '{op}' to {self.address}: its send queue is full (is the server running?)"
            ) from None
        self._ops[request_id] = op
        return request_id

    def reply(self, request_id: int, timeout_s: float | None = None) -> dict:
        """The reply to request ``request_id`` (arrays in place), waiting at most ``timeout_s`` (default: the client's).

        Raises:
            ServerError: the server answered with an error.
            TimeoutError: no reply in time; the request is abandoned (a late reply is dropped).
        """
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while request_id not in self._stash:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._receive_available()
                if request_id in self._stash:
                    break
                op = self._ops.get(request_id, "?")
                self._dropped.add(request_id)
                self._acts.pop(request_id, None)
                raise TimeoutError(
                    f"no reply from {self.address} to '{op}' (request {request_id}) within {timeout:g} s: "
                    "is the server running and reachable at that address?"
                )
            if self._socket.poll(max(1, int(remaining * 1000)), zmq.POLLIN):
                self._receive_available()
        return self._take(request_id)

    def request(self, op: str, timeout_s: float | None = None, **fields: Any) -> dict:
        """Send a request and wait for its reply (see :meth:`reply`).

        A request refused with ``no_session`` (the server forgot this client's session) is sent once more, after a new
        hello; what the old session held is then reclaimed with its tokens, by the caller.
        """
        try:
            return self.reply(self.send(op, **dict(fields)), timeout_s)
        except ServerError as exc:
            if exc.code != NO_SESSION or op in SESSIONLESS:
                raise
        return self.reply(self.send(op, **fields), timeout_s)

    def _receive_available(self) -> None:
        while True:
            try:
                frames = self._socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                message = unpack(frames, max_header_bytes=1 << 30)
            except ProtocolError as exc:
                raise ServerError(exc.code, f"the server at {self.address} sent a malformed reply: {exc}") from None
            request_id = message.get("id", 0)
            if request_id in self._dropped:
                self._dropped.discard(request_id)
                self._ops.pop(request_id, None)
            else:
                self._stash[request_id] = message

    def _take(self, request_id: int) -> dict:
        message = self._stash.pop(request_id)
        op = self._ops.pop(request_id, "?")
        self._acts.pop(request_id, None)
        if message.get("op") == ERROR_OP:
            code = message.get("code", INTERNAL)
            if code == NO_SESSION:
                self._secret = None  # the server forgot this session: hello again before the next request
            raise ServerError(code, message.get("message", ""), message.get("hint", ""), op)
        return message

    # -- session ------------------------------------------------------------------------------------------------

    def hello(self, name: str | None = None, keep_alive_s: float | None = None, timeout_s: float | None = None) -> dict:
        """Introduce the client; returns the ``welcome`` map (server version, limits, scenarios), also kept in ``welcome``.

        ``keep_alive_s`` asks the server to keep this connection's seats and worlds through that long a silence (a
        long learner update between steps); the server grants at most ``limits.max_keep_alive_s`` and says what it
        granted in ``welcome["keep_alive_s"]``. ``timeout_s`` (default: the client's) bounds the wait: a first
        request with a short one tells a dead or mistyped address in seconds.
        """
        if keep_alive_s is not None:
            self._keep_alive_s = keep_alive_s
        self.name = name or self.name
        # joined: every reply's arrays in one frame (docs/protocol.md, 'Frames'): a frame less per array, both ends.
        fields = {"name": self.name, "keep_alive_s": self._keep_alive_s, "operator": self._operator, "frames": "joined"}
        try:
            self.welcome = self.reply(self.send("hello", secret=self._secret, **fields), timeout_s)
        except ServerError as exc:
            if exc.code != NO_SESSION:
                raise
            self.welcome = self.reply(self.send("hello", **fields), timeout_s)  # forgotten: a new session
        self._secret = self.welcome.get("secret")
        return self.welcome

    def ping(self) -> float:
        """One round trip; returns the server's wall-clock time. Keeps this connection's seats alive."""
        return float(self.request("ping")["time"])

    def heartbeat(self) -> None:
        """Tell the server this connection is alive without waiting (the pong is dropped when it comes).

        Call it while idle for less than ``welcome["limits"]["heartbeat_timeout_s"]``; a pending ``act`` keeps the
        seats alive by itself.
        """
        self._dropped.add(self.send("ping"))
        self._receive_available()

    def list_worlds(self) -> list[dict]:
        """The worlds this client may see (every world, for an operator): maps with ``world``, ``scenario``,
        ``agents``, ``seats`` (state per agent), ``holders`` (holder name per agent), ``observers``, ``public``,
        ``render``, ``tick``, ``episode``, ``steps_per_s``, ``late``, ``returns`` and ``rewards`` (docs/protocol.md)."""
        return list(self.request("list")["worlds"])

    # -- worlds -------------------------------------------------------------------------------------------------

    def create(
        self,
        scenario: str,
        config: dict | None = None,
        seed: int | None = None,
        copies: int = 1,
        join: bool = False,
        deadline_ms: int | None = None,
        fill: str = "noop",
        auto_reset: bool = True,
        wait_for_seats: bool | None = None,
        public: bool = False,
        render: bool = False,
        group: str | None = None,
        invite_only: list[str] | None = None,
        share_state: bool = False,
    ) -> Created:
        """Create ``copies`` worlds of ``scenario`` (this client owns them); with ``join``, also hold every seat.

        ``group`` names the worlds so that others find them (:meth:`join_group`); ``invite_only`` (agent names or
        globs) keeps those seats to whom this client gives the reply's ``invite_token``; ``share_state`` lets seat
        holders read the global state. See docs/protocol.md, 'create', for the fields. Raises :class:`ServerError` (``scenario_not_allowed``,
        ``scenario_error``, ``too_many_worlds``, ``bad_request``).
        """
        reply = self.request(
            "create",
            scenario=scenario,
            config=config or {},
            seed=seed,
            copies=copies,
            join=join,
            deadline_ms=deadline_ms,
            fill=fill,
            auto_reset=auto_reset,
            wait_for_seats=wait_for_seats,
            public=public or None,
            render=render or None,
            group=group,
            invite_only=invite_only,
            share_state=share_state or None,
        )
        spec = WorldSpec.from_wire(reply["spec"])
        worlds = [int(w) for w in reply["worlds"]]
        self._specs.update(dict.fromkeys(worlds, spec))
        obs = {int(w): spec.decode_obs(values) for w, values in (reply.get("obs") or {}).items()}
        return Created(
            worlds,
            spec,
            reply.get("owner_token", ""),
            list(reply.get("tokens") or []),
            obs,
            reply.get("observer_token", ""),
            bool(reply.get("render", False)),
            reply.get("invite_token", ""),
            reply.get("group"),
        )

    def join(
        self,
        world: int,
        seats: list[str] | str = "all",
        role: str = "agent",
        tokens: dict[str, str] | None = None,
        owner_token: str | None = None,
        observer_token: str | None = None,
        takeover: bool = True,
        invite_token: str | None = None,
    ) -> Joined:
        """Take seats of ``world`` (``"all"``: every free or lost seat), reclaim them with ``tokens``, or observe.

        With ``tokens`` and no explicit ``seats``, the seats the tokens name are taken. An observer needs the
        owner's ``observer_token`` unless the world is public or this client is an operator. ``takeover=False``
        reclaims seats with their tokens only where nobody else holds them now (``seat_taken`` otherwise). Raises
        :class:`ServerError` (``seat_taken``, ``bad_token``, ``unknown_seat``, ``unknown_world``, ``not_allowed``).
        """
        fields: dict[str, Any] = {
            "world": world,
            "role": role,
            "tokens": tokens,
            "owner_token": owner_token,
            "observer_token": observer_token,
            "takeover": None if takeover else False,
            "invite_token": invite_token,
        }
        if not (tokens and seats == "all"):
            fields["seats"] = seats
        reply = self.request("join", **fields)
        spec = WorldSpec.from_wire(reply["spec"])
        self._specs[world] = spec
        return Joined(
            world=int(reply["world"]),
            seats=dict(reply.get("seats") or {}),
            spec=spec,
            tick=int(reply.get("tick", 0)),
            episode=int(reply.get("episode", 0)),
            agents=list(reply.get("agents") or []),
            obs=spec.decode_obs(reply.get("obs")),
        )

    def join_group(
        self, group: str, seats: list[str] | str, invite_token: str | None = None, takeover: bool = True
    ) -> JoinedGroup:
        """Take ``seats`` (agent names or globs such as ``"prey_*"``) of every world of the named ``group``, all or
        none. Raises :class:`ServerError` (``unknown_group``, ``unknown_seat``, ``seat_taken``, ``not_allowed``
        for invitation-only seats without ``invite_token``, ``bad_token``)."""
        reply = self.request(
            "join_group", group=group, seats=seats, invite_token=invite_token, takeover=None if takeover else False
        )
        spec = WorldSpec.from_wire(reply["spec"])
        worlds = [int(w) for w in reply["worlds"]]
        self._specs.update(dict.fromkeys(worlds, spec))
        return JoinedGroup(
            group=str(reply["group"]),
            worlds=worlds,
            seats=list(reply["seats"]),
            tokens=list(reply["tokens"]),
            spec=spec,
            obs={int(w): spec.decode_obs(values) for w, values in (reply.get("obs") or {}).items()},
            share_state=bool(reply.get("share_state", False)),
        )

    def leave(self, world: int, seats: list[str] | None = None) -> list[str]:
        """Give up seats of ``world`` (default: all this client holds); returns the seats left."""
        return list(self.request("leave", world=world, seats=seats)["seats"])

    def close_world(self, world: int) -> None:
        """Close a world this client owns; pending ``act``s in it get ``interrupted``."""
        self.request("close", world=world)
        self._specs.pop(world, None)

    def spec(self, world: int) -> WorldSpec:
        """The spec of a world this client created or joined."""
        try:
            return self._specs[world]
        except KeyError:
            raise KeyError(f"world {world} was not created or joined through this client") from None

    # -- playing ------------------------------------------------------------------------------------------------

    def reset(self, world: int, seed: int | None = None, options: dict | None = None) -> Observation:
        """Reset a world this client owns; returns the first observations of every live agent."""
        return self._observation(self.request("reset", world=world, seed=seed, options=options))

    def observe(self, world: int) -> Observation:
        """The current observations: of every live agent for the owner and observers, else of the held seats."""
        return self._observation(self.request("observe", world=world))

    def state(self, world: int) -> np.ndarray:
        """The world's global state (its ``state()``, or the concatenated observations)."""
        return np.asarray(self.request("state", world=world)["state"])

    def render(self, world: int) -> np.ndarray:
        """The world as a (H, W, 3) uint8 picture, for a member or an admitted observer of a world created with
        ``render=True``. The server draws a world at most once per tick, however many ask."""
        return np.asarray(self.request("render", world=world)["frame"])

    def act(self, world: int, actions: dict[str, Any], timeout_s: float | None = None) -> StepResult:
        """Send actions for held seats and block until the world steps (up to its deadline).

        The wait needs no heartbeat: a pending ``act`` keeps the seats alive. Raises :class:`ServerError`
        (``bad_action``, ``not_your_seat``, ``already_acted``, ``episode_over``, ``interrupted``).
        """
        return self.recv(self.send_act(world, actions), timeout_s)

    def send_act(self, world: int, actions: dict[str, Any]) -> int:
        """Send actions without waiting; returns the request id for :meth:`recv` (to act in several worlds at once)."""
        spec = self._specs.get(world)
        wire = encode_actions(spec, actions) if spec else {a: np.asarray(v) for a, v in actions.items()}
        request_id = self.send("act", world=world, actions=wire)
        self._acts[request_id] = world
        return request_id

    def recv(self, request_id: int | None = None, timeout_s: float | None = None) -> StepResult:
        """The step of the ``act`` sent as ``request_id``, or with None of whichever pending ``act`` steps first."""
        if request_id is None:
            if not self._acts:
                raise RuntimeError("recv() with no act in flight: call send_act() first")
            request_id = self._first_act_reply(timeout_s)
        return self._step_result(self.reply(request_id, timeout_s))

    def _first_act_reply(self, timeout_s: float | None) -> int:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while True:
            self._receive_available()
            ready = next((i for i in self._acts if i in self._stash), None)
            if ready is not None:
                return ready
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no world of {sorted(set(self._acts.values()))} stepped on {self.address} within {timeout:g} s "
                    "(are the other seats' clients acting, and is the server running?)"
                )
            self._socket.poll(max(1, int(remaining * 1000)), zmq.POLLIN)

    def step_batch(self, worlds: list[int], actions: Any, layout: str = "agents", state: bool = False) -> dict:
        """Step K worlds this client fully holds in one message; returns the raw ``batch`` reply (arrays)."""
        return self.request("step_batch", worlds=list(worlds), actions=actions, layout=layout, state=state)

    def act_batch(
        self, worlds: list[int], actions: dict[str, Any], timeout_s: float | None = None, state: bool = False
    ) -> dict:
        """Act for this client's seats in K shared worlds at once (the same seats in each) and wait until every one
        of them has stepped (each at its own step rule, so at most its deadline).

        ``actions`` maps each held seat to a ``(K, ...)`` stack. The reply's arrays cover only this client's seats
        (``seats``, in that order): ``obs`` {seat: (K, ...)}, ``rewards``/``terminated``/``truncated``/``active``/
        ``alive`` (K, seats), ``episode_over`` (K,), ``final_obs`` where an episode ended, and for every agent of the
        worlds (``agents``) ``filled`` and ``late`` (K, agents); with ``state`` (where the worlds share it) ``state``
        and ``final_state``. See docs/protocol.md, 'act_batch'.
        """
        return self.request("act_batch", timeout_s, worlds=list(worlds), actions=actions, state=state or None)

    def reset_batch(
        self, worlds: list[int], seed: int | None = None, layout: str = "agents", state: bool = False
    ) -> dict:
        """Reset K worlds this client owns (world k seeded ``seed + k``); returns the raw ``batch`` reply."""
        return self.request("reset_batch", worlds=list(worlds), seed=seed, layout=layout, state=state)

    def _observation(self, reply: dict) -> Observation:
        world = int(reply["world"])
        spec = self._specs.get(world)
        obs = reply.get("obs") or {}
        return Observation(
            world=world,
            tick=int(reply.get("tick", 0)),
            episode=int(reply.get("episode", 0)),
            agents=list(reply.get("agents") or []),
            obs=spec.decode_obs(obs) if spec else dict(obs),
            infos=dict(reply.get("infos") or {}),
        )

    def _step_result(self, reply: dict) -> StepResult:
        world = int(reply["world"])
        spec = self._specs.get(world)
        obs, final = reply.get("obs") or {}, reply.get("final_obs")
        return StepResult(
            world=world,
            tick=int(reply["tick"]),
            episode=int(reply["episode"]),
            agents=list(reply.get("agents") or []),
            obs=spec.decode_obs(obs) if spec else dict(obs),
            rewards={a: float(r) for a, r in (reply.get("rewards") or {}).items()},
            terminated={a: bool(t) for a, t in (reply.get("terminated") or {}).items()},
            truncated={a: bool(t) for a, t in (reply.get("truncated") or {}).items()},
            active={a: bool(t) for a, t in (reply.get("active") or {}).items()},
            infos=dict(reply.get("infos") or {}),
            episode_over=bool(reply.get("episode_over", False)),
            final_obs=(spec.decode_obs(final) if spec else dict(final)) if final is not None else None,
            filled={str(a): str(why) for a, why in (reply.get("filled") or {}).items()},
        )

    # -- lifetime -----------------------------------------------------------------------------------------------

    def close(self, bye_timeout_s: float = 1.0) -> None:
        """Say ``bye`` (the server ends this client's session at once: its seats become free, the worlds it owns and
        nobody else plays in close), wait for the answer at most ``bye_timeout_s``, and close the socket (unsent
        requests are dropped). Idempotent; never raises for a server that is gone."""
        if self._socket.closed:
            return
        if self._secret is not None:
            # A server that is gone, or does not know bye, forgets the session after its keep-alive instead.
            with contextlib.suppress(ServerError, TimeoutError, zmq.ZMQError):
                self.reply(self.send("bye"), timeout_s=bye_timeout_s)
            self._secret = None
        self._socket.close(linger=0)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AgentClient({self.address!r}, in_flight={len(self._ops)})"


def read_operator_secret(operator: str | os.PathLike) -> str:
    """The operator secret given as itself, as the file ``agora serve`` writes it to, or as a connection file that
    holds it (``"operator"``)."""
    if isinstance(operator, os.PathLike) or os.path.isfile(operator):
        with open(operator) as handle:
            text = handle.read().strip()
        if text.startswith("{"):
            try:
                return str(json.loads(text)["operator"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{operator} is a JSON file with no 'operator' secret in it") from None
        return text
    return str(operator)


def _server_public_key(server_key: str | bytes) -> bytes:
    """A server's Z85 public key given as itself, as its certificate file (``NAME.key``) or as a file holding it."""
    if isinstance(server_key, str) and os.path.isfile(server_key):
        try:
            return load_certificate(server_key)[0]
        except ValueError:  # not a certificate: a file with the key alone
            with open(server_key) as handle:
                return handle.read().strip().encode()
    return server_key.encode() if isinstance(server_key, str) else server_key


def _key_pair(client_key: str | os.PathLike | None) -> tuple[bytes, bytes]:
    """This client's CURVE key pair: from a secret certificate, or a fresh one."""
    if client_key is None:
        return zmq.curve_keypair()
    public, secret = load_certificate(client_key)
    if secret is None:
        raise ValueError(f"{client_key} holds only a public key: give the NAME.key_secret file")
    return public, secret
