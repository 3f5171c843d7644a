"""Env server processes: started bound, stopped on request, and never outliving the process that started them.

::

    with ServerProcesses(count=2) as servers:
        worlds = BatchedWorlds(servers.addresses, "mpe2.simple_spread_v3:parallel_env", num_worlds=64)

Each server is ``python -m agora_marl.envserver --bind B --addr-file TMP/serverI.json FLAGS`` run under a small
bootstrap (:data:`_BOOTSTRAP`), in a session of its own, with its output in ``serverI.log``. The bootstrap, before the
server is imported:

- marks the process as no MPI rank (``AGORA_MPI=off``), whatever it inherits from the rank that started it;
- optionally pins it to given cores (a node's servers on all of its ranks' cores, not only those of the rank that
  starts them, which a launcher such as srun binds to its own);
- optionally blocks SIGTERM and SIGUSR1 (``survive_job_signals``): a batch system signals every process of a job
  step (SLURM: SIGUSR1 ahead of the time limit, SIGTERM at it), but a learner still needs its servers to finish the
  update it checkpoints, so only the learner decides when they go;
- makes SIGINT its stop signal (a clean end: the server closes its worlds and exits 0), also when it was started
  with SIGINT ignored, as a shell's background job (``cmd &`` in a batch script) is;
- asks the kernel to SIGKILL it when its parent dies (Linux ``PR_SET_PDEATHSIG``), and exits at once if the parent
  is already gone.

:meth:`ServerProcesses.start` returns once every server has written its connection file (so it is bound and
serving), or raises :class:`ServerStartError` with the server's own output if one exits or takes too long.
:meth:`ServerProcesses.stop` sends SIGINT, then SIGKILL after a grace period; it runs when the ``with`` block ends,
on an exception, and at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from agora_marl.envserver.protocol.connection import read_connection_file

#: How long a server may take to write its connection file (imports included) before it counts as failed.
START_TIMEOUT_S = 60.0
#: How long a server may take to exit after SIGINT before it is killed.
GRACE_S = 5.0
#: The longest ``ipc://`` path the kernel takes: ``sizeof(sockaddr_un.sun_path)`` is 108 bytes on Linux, and the
#: path must end in a NUL byte. ZeroMQ refuses a longer one (ENAMETOOLONG) only when it binds.
MAX_IPC_PATH = 107
#: The longest socket name this module puts in a private directory (see :func:`ipc_tempdir`).
_SOCKET_NAME = "/server9999.sock"

#: Run as ``python -c _BOOTSTRAP PARENT_PID CORES SURVIVE FLAGS...`` (see the module docstring), then the server.
#: The parent-death signal is SIGKILL: the parent died without stopping the server, so nobody waits for a clean end,
#: and SIGKILL is the one signal a server cannot block (SIGTERM may be blocked here) or delay (in a long step).
_BOOTSTRAP = """\
import ctypes, os, runpy, signal, sys
parent, cores, survive = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
del sys.argv[1:4]
os.environ["AGORA_MPI"] = "off"
if cores and hasattr(os, "sched_setaffinity"):
    try:
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    except OSError:
        pass
if survive:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
signal.signal(signal.SIGINT, signal.default_int_handler)
if sys.platform == "linux":
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
if os.getppid() != parent:
    sys.exit(1)
sys.argv[0] = "agora_marl.envserver"
runpy.run_module("agora_marl.envserver", run_name="__main__", alter_sys=True)
"""


class ServerStartError(RuntimeError):
    """A server process exited or did not bind in time."""


def ipc_tempdir() -> Path:
    """A new private temporary directory in which ``ipc://`` socket paths fit the kernel's limit.

    The system's temporary directory, or ``/tmp`` where that one is so deep (a long ``TMPDIR``, as some batch
    systems set per job) that ``DIR/agora-XXXXXXXX/server9999.sock`` would pass :data:`MAX_IPC_PATH` bytes.
    """
    base = tempfile.gettempdir()
    if len(os.fsencode(base)) + len("/agora-XXXXXXXX") + len(_SOCKET_NAME) > MAX_IPC_PATH:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="agora-", dir=base))


def check_ipc_path(endpoint: str) -> None:
    """Raise ValueError if ``endpoint`` is an ``ipc://`` path longer than the kernel takes."""
    if endpoint.startswith("ipc://") and len(os.fsencode(endpoint.removeprefix("ipc://"))) > MAX_IPC_PATH:
        raise ValueError(
            f"{endpoint}: an ipc:// path may have at most {MAX_IPC_PATH} bytes (the kernel's socket path limit); "
            "use a shorter directory"
        )


class ServerProcesses:
    """Env server processes on this machine, started by :meth:`start` and stopped by :meth:`stop`.

    Args:
        count: how many server processes (one per core you give them). Ignored when ``binds`` is given.
        binds: the endpoint of each server (one process per entry), instead of ``count`` chosen by ``transport``.
        transport: ``"ipc"`` (a socket file in a private temporary directory) or ``"tcp"`` (a free port on
            127.0.0.1).
        server_args: extra server flags for every server (``["--scenario-module", "my_worlds"]``).
        log_dir: where the servers' output goes (``server{i}.log``); default: the private temporary directory,
            removed at stop.
        inherit_output: the servers write to this process's stdout and stderr instead (no log file; a start error
            then names no output).
        cores: CPU cores the servers may run on (default: this process's affinity, inherited).
        survive_job_signals: block SIGTERM and SIGUSR1 in the servers, so that only :meth:`stop` (SIGINT) ends them.
        start_timeout_s: how long the servers may take to write their connection files.
        grace_s: how long a server may take to exit after SIGINT before it is killed.

    :attr:`addresses` lists every address of every server, in order (a server given ``--workers W`` has W). Start
    the servers from a thread that outlives them (the main thread): on Linux the kernel signals them when the thread
    that started them exits.
    """

    def __init__(
        self,
        count: int = 1,
        *,
        binds: Sequence[str] | None = None,
        transport: str = "ipc",
        server_args: Sequence[str] = (),
        log_dir: str | Path | None = None,
        inherit_output: bool = False,
        cores: Sequence[int] = (),
        survive_job_signals: bool = False,
        start_timeout_s: float = START_TIMEOUT_S,
        grace_s: float = GRACE_S,
    ) -> None:
        if binds is not None:
            if not binds:
                raise ValueError("binds: give at least one endpoint")
            for endpoint in binds:
                check_ipc_path(endpoint)
            count = len(binds)
        elif count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if transport not in ("ipc", "tcp"):
            raise ValueError(f"transport {transport!r}: use 'ipc' or 'tcp'")
        self.count = count
        self.binds = list(binds) if binds is not None else None
        self.transport = transport
        self.server_args = list(server_args)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.inherit_output = inherit_output
        self.cores = sorted(set(cores))
        self.survive_job_signals = survive_job_signals
        self.start_timeout_s = start_timeout_s
        self.grace_s = grace_s
        self.addresses: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self._tmp: Path | None = None
        self._logs: list[Path | None] = []

    @property
    def pids(self) -> list[int]:
        """The servers' process ids."""
        return [proc.pid for proc in self.procs]

    def running(self) -> bool:
        """Whether every server is still running."""
        return bool(self.procs) and all(proc.poll() is None for proc in self.procs)

    def start(self) -> list[str]:
        """Start the servers and wait until each is bound; returns their addresses.

        Raises:
            ServerStartError: a server exited or did not write its connection file within ``start_timeout_s``
                (its output is in the message). The other servers are stopped first.
        """
        if self.procs:
            raise RuntimeError("these servers are already started")
        atexit.register(self.stop)
        try:
            self._tmp = ipc_tempdir()
            logs = self.log_dir or self._tmp
            logs.mkdir(parents=True, exist_ok=True)
            files = []
            for i in range(self.count):
                files.append(self._tmp / f"server{i}.json")
                self._logs.append(None if self.inherit_output else logs / f"server{i}.log")
                self.procs.append(self._spawn(self._bind(i), files[-1], self._logs[-1]))
            self.addresses = self._wait_for(files)
        except BaseException:
            self.stop()
            raise
        return self.addresses

    def _bind(self, i: int) -> str:
        if self.binds is not None:
            return self.binds[i]
        return f"ipc://{self._tmp}/server{i}.sock" if self.transport == "ipc" else "tcp://127.0.0.1:0"

    def _spawn(self, bind: str, addr_file: Path, log: Path | None) -> subprocess.Popen:
        survive = "1" if self.survive_job_signals else "0"
        command = [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), ",".join(map(str, self.cores)), survive]
        command += ["--bind", bind, "--addr-file", str(addr_file), *self.server_args]
        # Own session: a Ctrl-C in the terminal reaches only this process, which then stops its servers in order.
        if log is None:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        with open(log, "wb") as out:
            return subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _wait_for(self, files: list[Path]) -> list[str]:
        """Every server's addresses, in order, once all have written their connection files."""
        found: dict[int, list[str]] = {}
        deadline = time.monotonic() + self.start_timeout_s
        while len(found) < len(files):
            for i, (proc, path) in enumerate(zip(self.procs, files, strict=True)):
                if i in found:
                    continue
                if path.exists():  # written atomically (a rename): a file that exists is whole
                    found[i] = read_connection_file(path)
                elif proc.poll() is not None:
                    raise ServerStartError(f"server {i} exited with status {proc.returncode}:\n{self._tail(i)}")
            if len(found) < len(files):
                if time.monotonic() > deadline:
                    late = min(set(range(len(files))) - set(found))
                    raise ServerStartError(
                        f"server {late} did not bind within {self.start_timeout_s:g} s:\n{self._tail(late)}"
                    )
                time.sleep(0.02)
        return [address for i in range(len(files)) for address in found[i]]

    def _tail(self, i: int, chars: int = 4000) -> str:
        log = self._logs[i]
        if log is None:
            return "(its output went to this process's)"
        try:
            text = log.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return text[-chars:].strip() or "(no output)"

    def stop(self) -> None:
        """Stop every server: SIGINT, then SIGKILL after ``grace_s``; wait for all; remove the temporary files.

        Safe to call more than once and from ``atexit``.
        """
        for proc in self.procs:
            if proc.poll() is None:
                _signal(proc, signal.SIGINT)
        deadline = time.monotonic() + self.grace_s
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        atexit.unregister(self.stop)

    def __enter__(self) -> ServerProcesses:
        if not self.procs:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        alive = sum(proc.poll() is None for proc in self.procs)
        return f"ServerProcesses({self.count}, {alive} running, addresses={self.addresses})"


def _signal(proc: subprocess.Popen, sig: int) -> None:
    # The server leads its own session: signal the whole group, so that anything it started (workers) goes too.
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        proc.send_signal(sig)
