"""Training a run: :func:`train` runs the config's algorithm on this rank, with everything around its loop.

It checks the algorithm's declarations against the run (partial seats, self-play, the global state, action kinds),
sets the rank's threads and device, opens the worlds (:func:`open_worlds`), starts the opponents of the seats the
learner leaves to others (:func:`start_opponents`) or self-play's pool, restores the latest checkpoint (checked
against the schema and the worlds), and hands the algorithm a :class:`~agora_marl.learners.session.TrainingSession`;
the worlds, opponents and progress bar are closed however it ends. A stop that the ranks agreed on raises
:class:`~agora_marl.learners.run.TrainingStopped` after the checkpoint (:meth:`Run.stop_on
<agora_marl.learners.run.Run.stop_on>`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import torch

from agora_marl.agents.batched import BatchedWorlds
from agora_marl.agents.client import ServerError
from agora_marl.agents.policies import named_policy
from agora_marl.learners import mpi
from agora_marl.learners.api import Algorithm, action_kind
from agora_marl.learners.checkpoints import check, check_resumable
from agora_marl.learners.config import Config, EnvSettings
from agora_marl.learners.mpi.cuda import select_device
from agora_marl.learners.rendezvous import (
    EXTERNAL,
    WORLDS_GONE,
    GroupMismatch,
    check_rendezvous,
    group_name,
    join_group_worlds,
    wait_for_external,
)
from agora_marl.learners.run import Run
from agora_marl.learners.selfplay import SELF_PLAY, SelfPlayWorlds
from agora_marl.learners.session import TrainingSession
from agora_marl.learners.trained import load_run_policy

#: The fewest worlds per env server that the default server count gives: fewer, and the learner's cost of a request
#: per server and step is no longer small beside the worlds' (docs/learners.md, 'Learning speed').
MIN_WORLDS_PER_SERVER = 8


def env_servers(env: EnvSettings) -> int:
    """How many env servers ``agora train`` starts, per node or per rank (``env.servers_per``), when it connects to none.

    ``env.servers`` when positive. For 0 (the default), one per core that the learners may run on: a server is one
    thread and costs more CPU per world-step than the learner does (sampling, and its update beside the next rollout,
    ``ppo.overlap``), so servers on every core keep all of them busy, and the learner runs in the time they wait for
    its actions. Per node: the cores of the node's ranks (their CPU affinities; a cluster node's servers are shared
    by its ranks); per rank: this rank's fair part of its own. At least one per rank, at most one per
    :data:`MIN_WORLDS_PER_SERVER` worlds, and per node a multiple of the node's ranks, so that each rank gets as many.
    The config keeps its 0, so that a run resumed on other hardware counts anew. Not collective (the node's CPU
    affinities were exchanged when MPI started).
    """
    if env.servers > 0:
        return env.servers
    node = mpi.node_cores()
    if env.servers_per == "rank":
        mine = set(node[mpi.local_rank()])
        ranks, cores = 1, len(mine) // sum(1 for cores in node if mine.intersection(cores))
    else:
        ranks, cores = mpi.local_size(), len({core for cores in node for core in cores})
    worlds = env.num_worlds * ranks
    return ranks * max(1, min(cores, worlds // MIN_WORLDS_PER_SERVER) // ranks)


def torch_threads(config: Config) -> int:
    """The torch intra-op threads this rank trains with (at least 1).

    ``run.threads`` when positive. For 0 (the default): ``OMP_NUM_THREADS`` when set, else
    :func:`learners.mpi.fair_threads` counting the env servers that ``agora train`` starts when the config names none
    (:func:`env_servers`). The config keeps its 0, so that a run resumed on other hardware finds its share anew. Not
    collective (the node's CPU affinities were exchanged when MPI started).
    """
    if config.run.threads > 0:
        return config.run.threads
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    env, starts = config.env, 0.0
    if not env.connect and not mpi.published("server"):
        # Per rank: on the rank's own cores. Per node: anywhere on the node's, so each rank counts its part of them.
        starts = env_servers(env) / (1 if env.servers_per == "rank" else mpi.local_size())
    return mpi.fair_threads(starts)


def open_worlds(
    config: Config, addresses: list[str], state: bool = False, layouts: Sequence[str] = ("agents",), parts: int = 1
) -> BatchedWorlds:
    """This rank's ``env.num_worlds`` worlds of the run's scenario, seeded for the rank, in the first of ``layouts``
    the world allows (``"stacked"`` needs every agent to share its spaces). With ``env.seats``, only those seats of
    each world (no global state: ``state`` is not asked for); :func:`start_opponents` fills the others. In
    self-play every seat: :func:`train` shows the learner its side (learners.selfplay). The worlds are
    created in ``parts`` parts of rows, which a pipelined rollout steps one at a time (``BatchedWorlds``' ``parts``).
    """
    env = config.env
    check_rendezvous(env)
    partial = bool(env.seats) and env.opponent != SELF_PLAY
    kwargs = dict(
        num_worlds=env.num_worlds,
        seed=mpi.seed_for_rank(config.run.seed),
        state=state and not partial,
        timeout_s=env.timeout_s,
        server_key=env.server_key or None,
        client_key=env.client_key or None,
        render=env.render,
        parts=parts,
    )
    if partial:
        kwargs.update(seats=list(env.seats), deadline_ms=env.opponent_deadline_ms)
    if env.group:
        kwargs.update(group=group_name(env.group), invite_only=env.invite_only)

    def worlds_in(layout: str) -> BatchedWorlds:
        if env.join:
            return join_group_worlds(config, addresses, layout)
        return BatchedWorlds(addresses, env.scenario, env.config, layout=layout, **kwargs)

    for layout in layouts[:-1]:
        try:
            return worlds_in(layout)
        except GroupMismatch:
            raise
        except ValueError:  # this layout does not fit the world: try the next
            continue
    return worlds_in(layouts[-1])


def start_opponents(config: Config, worlds: BatchedWorlds) -> list[subprocess.Popen]:
    """Processes playing ``env.opponent`` in the seats of ``worlds`` that the learner leaves to others, one per
    server (``agora play --worlds``, which plays a trained run directory too); none when the learner holds every seat.
    They stop when the worlds close. None either where another program holds those seats: a learner that joined a
    group (``env.join``), or one whose ``env.opponent`` is ``external`` (it waits for them: learners.rendezvous).

    Raises:
        ValueError: ``env.opponent`` is no policy for those seats (checked here, before anything starts).
    """
    if not worlds.partial or config.env.join:  # a joiner's other seats are the owner's business
        return []
    if config.env.opponent == EXTERNAL:
        wait_for_external(config, worlds)
        return []
    env, spec = config.env, worlds.spec
    for agent in worlds.other_agents:
        spaces_ = spec.observation_spaces[agent], spec.action_spaces[agent]
        named_policy(env.opponent, *spaces_, agent=agent, run_loader=load_run_policy)
    keys = (["--server-key", env.server_key] if env.server_key else []) + (
        ["--client-key", env.client_key] if env.client_key else []
    )
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agora_marl",
                "play",
                "--connect",
                address,
                "--worlds",
                ",".join(str(w) for w in ids),
                "--seats",
                ",".join(worlds.other_agents),
                "--policy",
                env.opponent,
                "--timeout",
                str(env.timeout_s),
                *keys,
            ],
            stdout=subprocess.DEVNULL,
        )
        for address, ids in worlds.placement
    ]


def stop_opponents(opponents: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """Wait for opponents to see their worlds closed and exit; terminate those that do not within ``grace_s``."""
    for process in opponents:
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(timeout=grace_s)


def check_declarations(algorithm: type[Algorithm], config: Config) -> None:
    """Refuse a run that asks of ``algorithm`` what it does not declare (before any world opens).

    Raises:
        ValueError: partial seats, self-play or the global state asked of an algorithm that does not declare them.
    """
    env, name = config.env, algorithm.name
    self_play = env.opponent == SELF_PLAY
    if self_play and not algorithm.self_play:
        raise ValueError(
            f"self-play (env.opponent = self-play) needs an algorithm that declares self_play = True, such as "
            f"algo=ippo or algo=mappo; {name} does not"
        )
    if env.seats and not self_play and not algorithm.partial_seats:
        raise ValueError(
            f"{name} cannot train some seats (env.seats = {env.seats}) beside other clients: it does not declare "
            "partial_seats = True; train every seat, or choose an algorithm that does (ippo, mappo, idqn)"
        )
    if env.seats and not self_play and algorithm.state == "required":
        raise ValueError(
            f"{name} requires the world's global state, which a learner holding some seats (env.seats) is not "
            "granted; train every seat, or use self-play"
        )


def _check_worlds(algorithm: type[Algorithm], worlds: BatchedWorlds | SelfPlayWorlds) -> None:
    for agent in worlds.possible_agents:
        space = worlds.action_spaces[agent]
        if action_kind(space) not in algorithm.actions:
            raise ValueError(
                f"{algorithm.name} acts in {sorted(algorithm.actions)} action spaces; {agent} of "
                f"{worlds.spec.scenario} acts in {space} ({action_kind(space)}): choose an algorithm that handles it"
            )
    if algorithm.state == "required" and worlds.state_space is None:
        raise ValueError(f"{algorithm.name} requires the world's global state; {worlds.spec.scenario} has none")


def train(config: Config, run: Run, addresses: list[str], check_actions: bool = False) -> dict[str, float]:
    """Train ``config.algo`` until ``config.run.total_steps`` through the env servers at ``addresses`` (this rank's
    share), resuming from ``run``'s latest checkpoint when there is one. Returns the metrics of the last logged
    update. Collective: every rank calls it.

    Args:
        check_actions: check every action the algorithm sends against its space (``agora learners check``).

    Raises:
        TrainingStopped: on every rank, after the checkpoint, when the ranks agreed to stop early.
        ValueError: the run asks of the algorithm what it does not declare, or bad settings.
        CheckpointError: the latest checkpoint belongs to another algorithm or world.
    """
    cls = config.algorithm
    check_declarations(cls, config)
    algorithm = cls()
    torch.set_num_threads(torch_threads(config))
    device = select_device(config.run.device)
    parts = algorithm.world_parts(config.algo_settings)
    worlds = open_worlds(config, addresses, cls.state != "never", cls.layouts, parts)
    session, opponents, selfplay = None, [], None
    try:
        _check_worlds(cls, worlds)
        if config.env.opponent == SELF_PLAY:
            worlds = selfplay = SelfPlayWorlds(worlds, config, addresses)
        opponents = start_opponents(config, worlds)
        resumed = run.restore(device)
        if resumed is not None:
            check(resumed, str(run.checkpoints()[-1]))
            check_resumable(resumed, cls.name, worlds.spec.to_wire(), list(worlds.possible_agents))
        torch.manual_seed(config.run.seed)  # the initial parameters (rank 0's are broadcast to all)
        session = TrainingSession(algorithm, config, run, worlds, device, resumed, selfplay, opponents, check_actions)
        algorithm.train(session)
        session.finished()
        return session.last_metrics
    except ServerError as exc:
        if not (config.env.join and exc.code in WORLDS_GONE):
            raise
        # The worlds are the other learner's: it finished and closed them. This run ends with what it has.
        if mpi.is_root():
            print(f"stopping: the owner of group {config.env.join!r} closed its worlds ({exc.code})", flush=True)
        return session.last_metrics if session is not None else {}
    finally:
        if session is not None:
            session.close()
        worlds.close()
        stop_opponents(opponents)
