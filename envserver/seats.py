"""Who holds which seat: the one owner of that fact.

Every take and release goes through :class:`SeatTable`, which keeps the fact's two views in step: each world's seats
(``World.seats``, read by the step rule on every act) and each session's seats (what the session loses when it
ends, what keeps it alive). Nothing else writes either; joining.py decides who *may* take a seat, then asks here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agora_marl.envserver.world import World


class SeatTable:
    """The seats every session holds, by world, kept with the worlds' own seats (``EnvServer.seat_table``)."""

    def __init__(self) -> None:
        self._of: dict[bytes, dict[int, set[str]]] = {}
        """Session identity -> world id -> the agents whose seats it holds (no empty entries)."""

    def take(self, world: World, agent: str, identity: bytes) -> str:
        """Give seat ``agent`` of ``world`` to the session ``identity`` (the caller checked that it may: joining.py);
        a previous holder no longer holds it. Returns the seat's token."""
        previous = world.seats[agent].holder
        if previous is not None and previous != identity:
            self._drop(previous, world.world_id, agent)
        self._of.setdefault(identity, {}).setdefault(world.world_id, set()).add(agent)
        return world.take_seat(agent, identity)

    def release(self, world: World, agent: str, lost: bool) -> None:
        """Seat ``agent`` of ``world`` has no holder any more: ``free`` (its token void), or ``lost`` (its token
        still reclaims it)."""
        holder = world.seats[agent].holder
        if holder is not None:
            self._drop(holder, world.world_id, agent)
        world.release_seat(agent, lost=lost)

    def forget_world(self, world: World) -> None:
        """The world closes: its holders no longer hold any of its seats."""
        for agent, seat in world.seats.items():
            if seat.holder is not None:
                self._drop(seat.holder, world.world_id, agent)

    def forget_session(self, identity: bytes) -> None:
        """The session ended (after its seats were released): nothing of it stays in the table."""
        self._of.pop(identity, None)

    def holder(self, world: World, agent: str) -> bytes | None:
        """The session holding seat ``agent`` of ``world``, if any."""
        return world.seats[agent].holder

    def seats_of(self, identity: bytes) -> list[tuple[int, str]]:
        """Every ``(world id, agent)`` the session holds."""
        return [(w, a) for w, agents in self._of.get(identity, {}).items() for a in sorted(agents)]

    def worlds_of(self, identity: bytes) -> list[int]:
        """The worlds where the session holds a seat."""
        return list(self._of.get(identity, ()))

    def holds_any(self, identity: bytes) -> bool:
        return identity in self._of

    def holds_in(self, identity: bytes, world_id: int) -> bool:
        return world_id in self._of.get(identity, ())

    def _drop(self, identity: bytes, world_id: int, agent: str) -> None:
        worlds = self._of.get(identity)
        agents = worlds.get(world_id) if worlds is not None else None
        if agents is None:
            return
        agents.discard(agent)
        if not agents:
            del worlds[world_id]
            if not worlds:
                del self._of[identity]
