"""How two independently started programs meet in the same worlds: one learner names its worlds (``env.group``), the
other side (another ``agora train`` with ``env.join``, ``agora play --group``, or any client speaking
docs/protocol.md's ``join_group``) finds them by that name.

A learner whose opponent is ``external`` starts nobody: it says how to connect and waits, at most
``env.external_timeout_s``, until the other seats of all its worlds are held.
"""

from __future__ import annotations

import shlex
import time

from agora_marl.agents.batched import BatchedWorlds
from agora_marl.envserver.protocol.vocabulary import HELD, INTERRUPTED, UNKNOWN_WORLD
from agora_marl.learners import mpi
from agora_marl.learners.config import Config, EnvSettings

#: ``env.opponent`` for seats another program holds: the learner starts no opponent process and waits for it.
EXTERNAL = "external"
#: The errors a joiner's step gets when the owner closed the worlds: the end of its run, not a failure.
WORLDS_GONE = (INTERRUPTED, UNKNOWN_WORLD)


class GroupMismatch(ValueError):
    """The group's worlds are not the ones the joiner's config describes."""


def check_rendezvous(env: EnvSettings) -> None:
    """Refuse settings that could never meet: a group or a join without seats, an external opponent nobody can find.

    Raises:
        ValueError: with the setting to add.
    """
    if (env.group or env.join) and not env.seats:
        raise ValueError("env.group and env.join need env.seats: the seats this learner trains (e.g. env.seats=prey_*)")
    if env.group and env.join:
        raise ValueError("give env.group (create and name the worlds) or env.join (take seats of named ones), not both")
    if env.opponent == EXTERNAL and not env.group and not env.join:
        raise ValueError("env.opponent=external needs env.group=NAME, the name the other side joins the worlds by")


def group_name(name: str) -> str:
    """The group of this rank's worlds: the name itself with one rank, ``NAME.rR`` with several (a joiner run with
    as many ranks joins rank for rank)."""
    return name if mpi.size() == 1 else f"{name}.r{mpi.rank()}"


def join_group_worlds(config: Config, addresses: list[str], layout: str) -> BatchedWorlds:
    """This rank's seats ``env.seats`` of the worlds of group ``env.join`` on its servers.

    Raises:
        GroupMismatch: the group's worlds are not the ones the config describes (scenario, config, how many): the
            learner's networks and its later ``agora eval`` are built from the config, so it must say what it joins.
    """
    env = config.env
    worlds = BatchedWorlds.join_group(
        addresses,
        group_name(env.join),
        list(env.seats),
        invite_token=env.invite_token or None,
        layout=layout,
        timeout_s=env.timeout_s,
        server_key=env.server_key or None,
        client_key=env.client_key or None,
    )
    spec = worlds.spec
    if (spec.scenario, spec.config, worlds.num_worlds) != (env.scenario, env.config, env.num_worlds):
        worlds.close()
        config_items = " ".join(f"env.config.{k}={v!r}" for k, v in spec.config.items())
        raise GroupMismatch(
            f"group {env.join!r} holds {worlds.num_worlds} worlds of {spec.scenario} {spec.config}, but this run says "
            f"{env.num_worlds} of {env.scenario} {env.config}: set env.scenario={spec.scenario} "
            f"env.num_worlds={worlds.num_worlds} {config_items}".rstrip()
        )
    return worlds


def join_command(config: Config, worlds: BatchedWorlds) -> str:
    """What the other side runs to take the seats this learner leaves (printed while it waits)."""
    env = config.env
    address = worlds.placement[0][0]
    seats = ",".join(worlds.other_agents)
    token = next(iter(worlds.invite_tokens.values()), "") if env.invite_only else ""
    invite = f" env.invite_token={token}" if token else ""
    train = (
        f"agora train env.connect={address} env.join={env.group} env.seats={shlex.quote(seats)} "
        f"env.scenario={shlex.quote(env.scenario)} env.num_worlds={env.num_worlds}{invite}"
    )
    play = f"agora play --connect {address} --group {group_name(env.group)} --seats {shlex.quote(seats)}"
    if token:
        play += f" --invite-token {token}"
    return f"{train}\n  or: {play} --policy POLICY"


def wait_for_external(config: Config, worlds: BatchedWorlds, poll_s: float = 0.2) -> None:
    """Wait until every seat this learner leaves to others is held in all its worlds, saying once how to join.

    Raises:
        TimeoutError: nobody took them within ``env.external_timeout_s`` (the message says what to run).
    """
    env = config.env
    wanted = set(worlds.other_agents)
    told = False
    deadline = time.monotonic() + env.external_timeout_s
    while True:
        waiting = sum(1 for seats in worlds.seat_states() if any(seats[a] != HELD for a in wanted))
        if not waiting:
            return
        if not told and mpi.is_root():
            print(
                f"waiting up to {env.external_timeout_s:.0f} s for another client to take {sorted(wanted)} of the "
                f"{env.num_worlds} worlds of group {group_name(env.group)!r}; run:\n  {join_command(config, worlds)}",
                flush=True,
            )
            told = True
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"nobody took {sorted(wanted)} of group {env.group!r} within env.external_timeout_s="
                f"{env.external_timeout_s:.0f} s ({waiting} worlds still wait); start the other side with:\n  "
                f"{join_command(config, worlds)}"
            )
        time.sleep(poll_s)
