"""The registry of conformance checks and the context each one runs in.

A check is a function ``check_NAME(ctx)`` decorated with :func:`check`: the first line of its docstring is its
description. It passes by returning, fails by raising :class:`~.peer.Failure` and skips by raising
:class:`~.peer.Skip`. It opens its own peers (:meth:`Context.peer`), so it makes its own sessions and worlds; when it
ends, the runner closes every world its peers created and every socket, so checks never depend on each other.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from agora_marl.agents.conformance.peer import Peer

#: How long a check waits to see that something does NOT happen (a world that must not step yet). Long enough for
#: a server on the same machine to have answered; a slower server only makes such a check weaker, never wrong.
QUIET_S = 0.3
#: A deadline no check waits for: worlds whose step must come from the clients' actions alone.
LONG_DEADLINE_MS = 600_000
#: A short deadline for the checks of late fills (a held seat that did not act).
SHORT_DEADLINE_MS = 150
#: The most steps a check plays to reach the end of an episode before it skips.
MAX_EPISODE_STEPS = 1000


@dataclass(frozen=True)
class Check:
    """One named check of the suite."""

    name: str
    description: str
    func: Callable[[Context], None]


#: Every check, by name, in the order the suite runs them.
CHECKS: dict[str, Check] = {}


def check(func: Callable[[Context], None]) -> Callable[[Context], None]:
    """Register ``check_NAME`` as the check ``NAME``, described by its docstring's first line."""
    name = func.__name__.removeprefix("check_")
    assert name not in CHECKS, f"two checks are called {name}"
    description = (func.__doc__ or "").strip().split("\n")[0]
    assert description, f"check {name} needs a one-line docstring: what it checks"
    CHECKS[name] = Check(name, description, func)
    return func


class Context:
    """What a check runs with: the server's address, the run's settings, and the peers the check opened.

    Args:
        context: the run's ZeroMQ context.
        address: the server's endpoint.
        scenario: the scenario checks create worlds of.
        operator: the server's operator secret, or None (the checks that need it skip).
        timeout_s: the longest wait for any one reply.
        ids: the run's request ids.
    """

    def __init__(
        self,
        context: zmq.Context,
        address: str,
        scenario: str,
        operator: str | None,
        timeout_s: float,
        ids: itertools.count,
    ):
        self.context = context
        self.address = address
        self.scenario = scenario
        self.operator = operator
        self.timeout_s = timeout_s
        self.ids = ids
        self.peers: list[Peer] = []

    def peer(self, name: str, hello: bool = True, **hello_fields) -> Peer:
        """A new client on its own connection; with ``hello``, it has opened a session."""
        peer = Peer(self.context, self.address, f"conformance-{name}", self.ids, self.timeout_s, self.scenario)
        self.peers.append(peer)
        if hello:
            peer.hello(**hello_fields)
        return peer

    def finish(self) -> None:
        """Close every world the check's peers created, and their sockets."""
        for peer in self.peers:
            peer.close_all(min(self.timeout_s, 2.0))
        self.peers = []
