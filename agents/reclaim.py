"""Taking seats back after the server gave them up, for the envs that hold seats across a library's long pauses
(:class:`RemoteParallelEnv`, :class:`SeatEnv`), and saying plainly why when they cannot be taken back.

A seat is given up when its connection stays silent past its keep-alive; its token brings it back. Two other things
look the same from the env's side and cannot be undone by it: a copy of the env (pickled by a vectorising wrapper,
or ``copy.deepcopy``) took the seats over with their tokens, and perhaps left them since (which voids the tokens);
or the world is gone (the server closed a world whose owner and seat holders were all silent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from agora_marl.agents.client import AgentClient, ServerError
from agora_marl.envserver.protocol.vocabulary import (
    BAD_TOKEN,
    NO_SESSION,
    NOT_OWNER,
    NOT_YOUR_SEAT,
    SEAT_TAKEN,
    UNKNOWN_WORLD,
)

T = TypeVar("T")

#: The refusals that mean the server gave this env's seats (or its ownership) up.
_GIVEN_UP = (NOT_YOUR_SEAT, NO_SESSION, NOT_OWNER)


@dataclass
class HeldSeats:
    """The seats an env holds in one world, with what takes them back.

    Attributes:
        client: the env's client.
        world: the world the seats are in.
        tokens: the seats' tokens, as the env's join or create returned them.
        owner_token: the world's owner token, for an env that owns the world; None otherwise.
        owns_world: whether the env created the world (a copy of such an env creates its own, so none is in it).
        again: how to get a fresh env on the world's free seats, for an error's hint.
    """

    client: AgentClient
    world: int
    tokens: dict[str, str]
    owner_token: str | None
    owns_world: bool
    again: str

    def call(self, request: Callable[[], T]) -> T:
        """``request()``; if the server gave the seats or the ownership up, take them back and ask once more."""
        try:
            return request()
        except ServerError as exc:
            if exc.code not in _GIVEN_UP or (exc.code == NOT_OWNER and self.owner_token is None):
                raise
        self.reclaim()
        return request()

    def reclaim(self) -> None:
        """Take the seats back (and the ownership, with the owner token), where nobody holds them.

        Raises:
            ServerError: with the join's code and a message that says what happened: ``seat_taken`` (another
                connection holds the seats with their tokens: a copy of this env), ``bad_token`` (that connection
                left them, which voided the tokens) or ``unknown_world`` (the world closed). Any other refusal as
                the server sent it.
        """
        try:
            self.client.join(self.world, tokens=self.tokens, owner_token=self.owner_token, takeover=False)
        except ServerError as exc:
            explained = self._explained(exc)
            if explained is exc:
                raise
            raise explained from exc

    def _explained(self, exc: ServerError) -> ServerError:
        seats, world = sorted(self.tokens), self.world
        moved = f"seats {seats} of world {world} moved to another connection that brought their tokens"
        # A copy of an env that created its world creates a world of its own: only someone given the tokens moves in.
        why = "a copy of this env: pickling or copying an env in a shared world moves its seats to the copy"
        if self.owns_world:
            why = "someone given this env's tokens"
        if exc.code == UNKNOWN_WORLD and self.owns_world:
            granted = (self.client.welcome or {}).get("keep_alive_s")
            return ServerError(
                exc.code,
                f"world {world} was closed while this env was silent for longer than its keep-alive ({granted} s "
                "granted): the server closes a world whose owner and seat holders all went silent",
                "ask for a longer keep_alive_s (the server grants at most its max_keep_alive_s)",
                exc.op,
            )
        if exc.code == SEAT_TAKEN:
            return ServerError(
                exc.code,
                f"{moved} ({why})",
                "this env holds no seat any more" if self.owns_world else "use the copy",
                exc.op,
            )
        if exc.code == BAD_TOKEN:
            return ServerError(
                exc.code,
                f"{moved} ({why}), which has left them since: leaving voids a seat's token",
                f"this env holds no seat any more; take free seats with a new env: {self.again}",
                exc.op,
            )
        return exc
