"""Env servers as local subprocesses, for jobs that bring their own (``agora train`` with no ``--connect``).

::

    with LocalServers(count=2) as servers:
        worlds = BatchedWorlds(servers.addresses, "mpe2.simple_spread_v3:parallel_env", num_worlds=64)

Each server is ``python -m envserver --bind ipc://TMP/serverI.sock --addr-file TMP/serverI.json`` in a private
temporary directory; :meth:`LocalServers.start` returns once every server has written its connection file (so it is
bound and serving), or raises with the server's own error output if one dies or takes too long. The servers are
stopped (SIGTERM, then SIGKILL after a grace period) when the ``with`` block ends, on an exception, at interpreter
exit, and, on Linux, by the kernel if this process dies without cleaning up: no server outlives its job.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

#: Run in each server process before the server itself: ask the kernel to SIGTERM it when its parent dies (Linux
#: ``PR_SET_PDEATHSIG``), and exit at once if the parent is already gone; then run ``python -m envserver``.
_BOOTSTRAP = """\
import ctypes, os, runpy, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform == "linux":
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(1)
sys.argv[0] = "agora_marl.envserver"
runpy.run_module("agora_marl.envserver", run_name="__main__", alter_sys=True)
"""
_PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The longest ``ipc://`` path the kernel takes (``sizeof(sun_path)`` less the terminator).
_MAX_IPC_PATH = 107


class ServerStartError(RuntimeError):
    """A local server exited or did not bind in time."""


class LocalServers:
    """``count`` env server processes on this machine, started by :meth:`start` and stopped by :meth:`stop`.

    Args:
        count: how many server processes (one per core you give them; spread worlds over :attr:`addresses`, which
            lists every address of every server: a server given ``--workers W`` in ``server_args`` has W).
        transport: ``"ipc"`` (a socket file in a private temporary directory) or ``"tcp"`` (a free port on
            127.0.0.1).
        server_args: extra ``agora serve`` flags for every server (``["--scenario-module", "my_worlds"]``).
        start_timeout_s: how long one server may take to bind before it counts as failed.
        grace_s: how long a server may take to exit after SIGTERM before it is killed.
        log_dir: where the servers' output goes (``server{i}.log``); default: the temporary directory, removed at
            stop.
        command: the server command before its flags; default ``python -m envserver`` under the guard that stops
            it when this process dies.

    The servers must be started from a thread that outlives them (the main thread): on Linux the kernel signals
    them when the thread that started them exits.
    """

    def __init__(
        self,
        count: int = 1,
        transport: str = "ipc",
        server_args: Sequence[str] = (),
        start_timeout_s: float = 60.0,
        grace_s: float = 5.0,
        log_dir: str | Path | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if transport not in ("ipc", "tcp"):
            raise ValueError(f"transport {transport!r}: use 'ipc' or 'tcp'")
        self.count = count
        self.transport = transport
        self.server_args = list(server_args)
        self.start_timeout_s = start_timeout_s
        self.grace_s = grace_s
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.command = list(command) if command is not None else None
        self.addresses: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self._tmp: Path | None = None
        self._logs: list[Path] = []

    @property
    def pids(self) -> list[int]:
        """The servers' process ids."""
        return [proc.pid for proc in self.procs]

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
            self._tmp = _short_tempdir()
            logs = self.log_dir or self._tmp
            logs.mkdir(parents=True, exist_ok=True)
            files = []
            for i in range(self.count):
                files.append(self._tmp / f"server{i}.json")
                self._logs.append(logs / f"server{i}.log")
                self.procs.append(self._spawn(i, files[-1], self._logs[-1]))
            self.addresses = [address for i, path in enumerate(files) for address in self._wait_for(i, path)]
        except BaseException:
            self.stop()
            raise
        return self.addresses

    def _spawn(self, i: int, addr_file: Path, log: Path) -> subprocess.Popen:
        bind = f"ipc://{self._tmp}/server{i}.sock" if self.transport == "ipc" else "tcp://127.0.0.1:0"
        flags = ["--bind", bind, "--addr-file", str(addr_file), *self.server_args]
        if self.command is not None:
            cmd = [*self.command, *flags]
        else:
            cmd = [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), *flags]
        # The project root on the path, so that the servers import the same agora as this process, installed or not.
        path = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        with open(log, "wb") as out:
            # Own session: a Ctrl-C in the terminal reaches the job, which then stops its servers in order.
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # No MPI rank, whatever it inherits from one (`agora serve` would otherwise join the rank's MPI job).
                env={**os.environ, "PYTHONPATH": path, "AGORA_MPI": "off"},
                start_new_session=True,
            )

    def _wait_for(self, i: int, addr_file: Path) -> list[str]:
        proc, deadline = self.procs[i], time.monotonic() + self.start_timeout_s
        while True:
            if addr_file.exists():
                # Written atomically by the server (a rename), so a file that exists is whole.
                return list(json.loads(addr_file.read_text())["addresses"])
            if proc.poll() is not None:
                raise ServerStartError(f"server {i} exited with status {proc.returncode}:\n{self._tail(i)}")
            if time.monotonic() > deadline:
                raise ServerStartError(f"server {i} did not bind within {self.start_timeout_s} s:\n{self._tail(i)}")
            time.sleep(0.02)

    def _tail(self, i: int, chars: int = 4000) -> str:
        try:
            text = self._logs[i].read_text(errors="replace")
        except OSError:
            return "(no output)"
        return text[-chars:].strip() or "(no output)"

    def stop(self) -> None:
        """Stop every server: SIGTERM, then SIGKILL after ``grace_s``; wait for all; remove the temporary files.

        Safe to call more than once and from ``atexit``.
        """
        for proc in self.procs:
            if proc.poll() is None:
                _signal(proc, signal.SIGTERM)
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

    def __enter__(self) -> LocalServers:
        if not self.procs:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        alive = sum(proc.poll() is None for proc in self.procs)
        return f"LocalServers({self.count}, {alive} running, addresses={self.addresses})"


def _signal(proc: subprocess.Popen, sig: int) -> None:
    # The server is its session's leader: signal the whole group, so that anything it started goes too.
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        proc.send_signal(sig)


def _short_tempdir() -> Path:
    """A private temporary directory whose ipc:// socket paths fit the kernel's limit."""
    base = tempfile.gettempdir()
    if len(base) + len("/agora-XXXXXXXX/server999.sock") > _MAX_IPC_PATH:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="agora-", dir=base))
