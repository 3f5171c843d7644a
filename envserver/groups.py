"""Named world groups: how a second party finds the K worlds a first one created (``create``'s ``group``,
``join_group``), and the owner's rules for who may take which seat and read the global state.

A group is a name on one server for worlds of one spec that one session created (one ``create`` or several); the
worlds keep their ids and step as ever. The name is what the owner tells the other party, with an ``invite_token``
when the seats it leaves are by invitation (``create``'s ``invite_only``). A group lives as long as its worlds: it
is gone when the last is closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from agora_marl.envserver.protocol.errors import ProtocolError
from agora_marl.envserver.protocol.vocabulary import BAD_REQUEST, NOT_OWNER, UNKNOWN_GROUP, UNKNOWN_SEAT

if TYPE_CHECKING:
    from agora_marl.envserver.world import World

#: A group name: what a person types on a command line, never a path or a module.
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


@dataclass
class WorldGroup:
    """The worlds a name stands for, in the order they were created (the rows of a joiner's batch)."""

    name: str
    spec_key: bytes
    invite_token: str
    """One for every world of the group, whichever ``create`` made it: the invitation to its seats."""
    worlds: list[int] = field(default_factory=list)


def check_name(name: str) -> str:
    """``name`` if it is a valid group name, else ``bad_request``."""
    if not GROUP_NAME.fullmatch(name):
        raise ProtocolError(
            BAD_REQUEST,
            f"group name {name[:70]!r} is not 1-64 letters, digits and _.:- (starting with a letter or digit)",
            "name the group like tag-league or run42.rank0",
        )
    return name


def check_patterns(patterns: list[str], what: str) -> list[str]:
    """Seat globs from a request: strings, at most 64 of them, each at most 200 characters."""
    if len(patterns) > 64 or any(not isinstance(p, str) or len(p) > 200 for p in patterns):
        raise ProtocolError(BAD_REQUEST, f"{what!r} must be at most 64 agent names or globs", "see docs/protocol.md")
    return patterns


def match_seats(agents: list[str], patterns: list[str]) -> list[str]:
    """The agents that ``patterns`` (names or globs such as ``prey_*``) name, in the world's order; ``unknown_seat``
    for a pattern that names none."""
    for pattern in patterns:
        if not any(fnmatchcase(a, pattern) for a in agents):
            raise ProtocolError(
                UNKNOWN_SEAT, f"{pattern[:70]!r} names no agent of the world", f"its agents are {agents}"
            )
    return [a for a in agents if any(fnmatchcase(a, p) for p in patterns)]


class Groups:
    """The server's named groups, by name."""

    def __init__(self) -> None:
        self._groups: dict[str, WorldGroup] = {}

    def get(self, name: str) -> WorldGroup:
        group = self._groups.get(check_name(name))
        if group is None:
            raise ProtocolError(
                UNKNOWN_GROUP, f"no group is called {name!r} on this server", "check the name (and the server address)"
            )
        return group

    def check_add(self, name: str, spec_key: bytes, owner: bytes, worlds: dict[int, World]) -> None:
        """Refuse, before anything is built, a create that may not add its worlds to group ``name``: one another
        session's worlds form, or of another spec."""
        group = self._groups.get(check_name(name))
        if group is None:
            return
        if any(worlds[w].owner != owner for w in group.worlds):
            raise ProtocolError(NOT_OWNER, f"group {name!r} belongs to another session", "pick another group name")
        if spec_key and group.spec_key != spec_key:
            raise ProtocolError(
                BAD_REQUEST, f"group {name!r} holds worlds of another scenario or config", "name a new group"
            )

    def invite_token(self, name: str) -> str | None:
        """The invite token of group ``name``, if it exists (a create that adds worlds to it reuses it)."""
        group = self._groups.get(name)
        return group.invite_token if group is not None else None

    def add(self, name: str, spec_key: bytes, invite_token: str, world_ids: list[int]) -> None:
        self._groups.setdefault(name, WorldGroup(name, spec_key, invite_token)).worlds.extend(world_ids)

    def discard(self, name: str, world_id: int) -> None:
        """A world of the group closed: drop it, and the group with its last world."""
        group = self._groups.get(name)
        if group is None:
            return
        group.worlds = [w for w in group.worlds if w != world_id]
        if not group.worlds:
            del self._groups[name]

    def __len__(self) -> int:
        return len(self._groups)
