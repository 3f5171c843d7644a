"""Where a job's env servers run and how its ranks find them; stopping a job at a safe point on a signal.

``agora train`` uses, in this order of precedence:

- ``--connect ADDR,...`` or ``env.connect``: running servers; ranks share them round-robin. An entry that is a JSON
  connection file (``agora serve --addr-file``, e.g. on a shared filesystem) stands for the addresses in it.
- MPMD server ranks: ``mpirun -np 4 agora train : -np 2 agora serve``. Each serve rank runs one server, listening on
  a private ``ipc://`` socket and on ``tcp://`` (``--bind``'s host, a free port), and announces both over MPI
  (:func:`serve_as_rank`); a learner uses the servers on its own node over ipc://, or else the others over tcp://.
- ``env.servers_per = "node"`` (default): the node's local rank 0 starts ``env.servers`` server processes (0: one per
  core of the node's ranks, :func:`learners.training.env_servers`), broadcasts their ``ipc://`` addresses over the
  node, and the node's ranks spread over them.
- ``env.servers_per = "rank"``: every rank starts its own.

Servers started here are :class:`~agora_marl.envserver.process.ServerProcesses` that never outlive the job and
survive the signals meant for the learners: the launcher signals every process of a job step (SLURM: SIGUSR1 ahead
of the time limit with ``--signal``, SIGTERM at it), but a learner still needs its servers to finish the update it
checkpoints. So they block SIGTERM and SIGUSR1, stop on SIGINT from the rank that started them, and are killed by the
kernel if that rank dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agora_marl.envserver.process import ServerProcesses, ServerStartError, ipc_tempdir
from agora_marl.envserver.protocol.connection import reachable_address, read_connection_file, write_connection_file

#: ``agora train``'s exit status after stopping on a signal with a checkpoint written (EX_TEMPFAIL: "try again"):
#: a batch script requeues the job on it, and the next one continues with ``--resume``.
EXIT_STOPPED = 75


@dataclass(frozen=True)
class Placement:
    """Where this rank runs."""

    rank: int
    """Rank among the job's learners."""
    size: int
    """Number of learner ranks."""
    local_rank: int
    """Rank among the learners on this node."""
    local_size: int
    """Number of learner ranks on this node."""
    node: int
    """Index of this node (0 .. nodes - 1, in the order of the nodes' lowest ranks)."""
    nodes: int
    """Number of nodes the learners run on."""
    host: str
    """This node's host name."""


def placement() -> Placement:
    """This rank's placement. Collective over the learners."""
    from agora_marl.learners import mpi

    leader = mpi.node_broadcast_object(mpi.rank())
    leaders = sorted(set(mpi.allgather_object(leader)))
    return Placement(
        mpi.rank(), mpi.size(), mpi.local_rank(), mpi.local_size(), leaders.index(leader), len(leaders), _host()
    )


def tasks_without_mpi() -> str | None:
    """Why this process must not train as a job of its own, or None: srun started several tasks but gave MPI no PMI.

    ``srun --mpi=none`` (a common site default) starts R tasks that MPI cannot join into one job: each would train
    alone as rank 0 of 1, all into the same run directory. Reads the environment and this process's MPI size.
    """
    from agora_marl.learners import mpi

    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "")
    if not tasks.isdigit() or int(tasks) <= 1 or mpi.launched_by_mpi() or mpi.size() > 1:
        return None
    return (
        f"srun started {tasks} tasks but MPI sees a job of 1: srun gave them no PMI (--mpi=none, the site's default?); "
        "launch with `srun --mpi=pmi2` (MPICH, Intel MPI, MVAPICH, the pip MPICH wheel) or `srun --mpi=pmix` "
        "(Open MPI) (docs/cluster.md)"
    )


def share(addresses: Sequence[str], index: int, count: int) -> list[str]:
    """The addresses member ``index`` of ``count`` uses: its slice of the list, or one shared round-robin."""
    if not addresses:
        raise ValueError("no env server addresses to share")
    if len(addresses) >= count:
        return list(addresses[index::count])
    return [addresses[index % len(addresses)]]


# ---------------------------------------------------------------------------------------------- training servers


@contextlib.contextmanager
def training_servers(
    env: Any, connect: Sequence[str] = (), log_dir: str | Path | None = None, report: bool = True
) -> Iterator[list[str]]:
    """This rank's env server addresses for training, starting (and at the end stopping) servers where asked.

    Args:
        env: the run's ``EnvSettings`` (``connect``, ``servers``, ``servers_per``, ``timeout_s``).
        connect: addresses or connection files given on the command line (they win over ``env.connect``).
        log_dir: where started servers write their output (``node<N>/server<I>.log`` or ``rank<R>/...``); default:
            a temporary directory, removed with them.
        report: rank 0 prints which ranks use which servers.

    Collective over the learners (rank 0 prints where the servers are). On success the ranks of a node wait for
    each other before its servers stop. On an exception a rank's own servers stop at once and nothing waits: the
    job is aborting, and a rank waiting for the others here would hang it.
    """
    from agora_marl.learners import mpi

    if env.servers_per not in ("node", "rank"):
        raise ValueError(f"env.servers_per = {env.servers_per!r}: use 'node' or 'rank'")
    where = placement()
    given = list(connect) or list(env.connect)
    announced = mpi.published("server")
    servers, per_node = None, False
    if given:
        mine, origin = share(read_connect(given, env.timeout_s), where.rank, where.size), "given (--connect)"
    elif announced:
        mine, origin = _mpmd_addresses(announced), "MPMD server ranks"
    else:
        per_node = env.servers_per == "node"
        servers, mine = _start(env, where, per_node, log_dir)
        origin = "started per node" if per_node else "started per rank"
    if report:
        _report(where, mine, origin)
    try:
        yield mine
    except BaseException:
        if servers is not None:
            servers.stop()
        raise
    if per_node:
        mpi.node_barrier()  # the node's ranks are done with its servers before they go
    if servers is not None:
        servers.stop()


def _start(
    env: Any, where: Placement, per_node: bool, log_dir: str | Path | None
) -> tuple[ServerProcesses | None, list]:
    """Start this node's (local rank 0) or this rank's servers; returns them (None elsewhere) and this rank's share."""
    from agora_marl.learners import mpi
    from agora_marl.learners.training import env_servers

    servers, outcome = None, None
    # A launcher that binds each rank to its cores (srun does) would squeeze a node's servers onto local rank 0's.
    cores = sorted({c for ranks in mpi.node_cores() for c in ranks}) if per_node else []
    if where.local_rank == 0 or not per_node:
        folder = f"node{where.node}" if per_node else f"rank{where.rank}"
        servers = ServerProcesses(
            count=env_servers(env),
            log_dir=Path(log_dir) / folder if log_dir is not None else None,
            cores=cores,
            survive_job_signals=True,
            server_args=[flag for module in env.scenario_modules for flag in ("--scenario-module", module)],
        )
        try:
            outcome = servers.start()
        except ServerStartError as exc:
            outcome = str(exc)
    if per_node:
        # Every rank of the node learns the addresses, or why there are none (then all of them raise, not just one).
        outcome = mpi.node_broadcast_object(outcome)
    if isinstance(outcome, str):
        raise ServerStartError(f"the env servers of {where.host} did not start: {outcome}")
    return servers, share(outcome, where.local_rank, where.local_size) if per_node else outcome


def _report(where: Placement, mine: list[str], origin: str) -> None:
    """Rank 0 prints, per node, which ranks use which server. Collective over the learners."""
    from agora_marl.learners import mpi

    rows = mpi.allgather_object((where.node, where.host, where.rank, mine))
    if not mpi.is_root():
        return
    users: dict[tuple[int, str], dict[str, list[int]]] = {}
    for node, host, rank, addresses in rows:
        for address in addresses:
            users.setdefault((node, host), {}).setdefault(address, []).append(rank)
    lines = [f"agora: {where.size} rank(s) on {where.nodes} node(s), env servers: {origin}"]
    for (node, host), by_address in sorted(users.items()):
        for address, ranks in by_address.items():
            lines.append(f"agora:   node {node} ({host}): {address} <- rank(s) {' '.join(map(str, ranks))}")
    print("\n".join(lines), file=sys.stderr, flush=True)


def read_connect(entries: Sequence[str], timeout_s: float = 60.0) -> list[str]:
    """Addresses from ``--connect`` entries: an address, or a JSON connection file (waited for up to ``timeout_s``).

    A connection file is what ``agora serve --addr-file`` writes; a server started as a separate job step may write
    it on a shared filesystem after the learners start, hence the wait.
    """
    addresses: list[str] = []
    for entry in entries:
        if "://" in entry:
            addresses.append(entry)
            continue
        path, deadline = Path(entry), time.monotonic() + timeout_s
        while not path.exists():
            if time.monotonic() > deadline:
                raise FileNotFoundError(f"--connect {entry}: no such connection file after {timeout_s:.0f} s")
            time.sleep(0.2)
        addresses.extend(read_connection_file(path))
    return addresses


def _mpmd_addresses(announced: list[dict]) -> list[str]:
    """A learner's share of the server ranks: those on its node over ipc://, else the others over tcp://."""
    from agora_marl.learners import mpi

    host = _host()
    local = [server["ipc"] for server in announced if server["host"] == host]
    if local:
        return share(local, mpi.local_rank(), mpi.local_size())
    remote = [server["tcp"] for server in announced if server["tcp"] and not _loopback(server["tcp"])]
    if not remote:
        hosts = sorted({server["host"] for server in announced})
        raise RuntimeError(
            f"no server rank runs on {host} and those on {hosts} listen only on their own node: start them with "
            "`agora serve --bind tcp://0.0.0.0:0` (or an interface, tcp://ib0:0) so that other nodes reach them"
        )
    return share(remote, mpi.rank(), mpi.size())


# ---------------------------------------------------------------------------------------------- MPMD server ranks


def serve_as_rank(args: Any, make_config: Callable[[str], Any]) -> int:
    """``agora serve`` as ranks of an MPI job: one server per rank, its addresses announced to every rank.

    Each rank listens on a private ``ipc://`` socket (for learners on its node) and, with a ``tcp://`` ``--bind``,
    on that host at a free port (for the others; the published address names this host when the bind is a
    wildcard). With learner ranks in the job (MPMD) it serves until every learner has released it, through their
    SIGTERM checkpoint included; alone, until SIGTERM or SIGINT. ``--addr-file`` gets every server rank's address.

    Args:
        args: ``agora serve``'s parsed arguments.
        make_config: builds the ``ServerConfig`` from the arguments for a given bind address.
    """
    from agora_marl.envserver.server import EnvServer
    from agora_marl.learners import mpi

    if args.workers > 1:
        raise SystemExit(
            "agora serve: under mpirun each serve rank is one server; ask for more ranks instead of --workers"
        )
    if not args.bind.startswith("tcp://"):
        raise SystemExit(
            "agora serve: under mpirun give --bind tcp://HOST:0 (every rank also listens on its own ipc://)"
        )
    tmp = ipc_tempdir()
    try:
        server = EnvServer(make_config(f"{args.bind.rpartition(':')[0]}:0"))
        ipc = f"ipc://{tmp}/server.sock"
        server.socket.bind(ipc)
        server.start_in_thread()
        mpi.join("server", {"host": _host(), "ipc": ipc, "tcp": reachable_address(server.address)})
        announced, learners = mpi.published("server"), mpi.published("learner")
        if args.addr_file and mpi.rank() == 0:
            write_connection_file(args.addr_file, [server["tcp"] for server in announced])
        mpi.log(f"agora serve: {len(announced)} server rank(s) for {len(learners)} learner rank(s)", file=sys.stderr)
        with StopSignals() as stop:
            done = mpi.learners_released() if learners else stop.requested
            while not done():
                time.sleep(0.05)
        server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _loopback(address: str) -> bool:
    host = address.removeprefix("tcp://").rpartition(":")[0]
    return host in ("localhost", "[::1]") or host.startswith("127.")


def _host() -> str:
    return socket.gethostname()


# ---------------------------------------------------------------------------------------------- signals


class StopSignals:
    """Turns SIGTERM and SIGUSR1 into a request to stop at the next safe point, for the ``with`` block.

    SLURM sends SIGTERM at the time limit or on preemption (SIGKILL follows after ``KillWait``, 30 s by default) and,
    with ``--signal=USR1@120``, SIGUSR1 two minutes before the limit; ``mpirun`` forwards both to every rank.
    :meth:`requested` is the number of the first signal received, 0 before any.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def requested(self) -> int:
        """The first stop signal received (its number), or 0."""
        return self.received

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = self.received or signum

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
