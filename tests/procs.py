"""Process checks shared by the tests: is a pid still a live (non-zombie) process; which processes carry a token; a
job that is killed with everything carrying its token; what importing a module loads; wait for a server process's
connection file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def pids_with(needle: str, where: str = "environ") -> list[int]:
    """Live processes (other than this one) whose environment (or ``where="cmdline"``: command line) holds ``needle``.

    A test gives the jobs it starts a unique token in their environment, which everything they start inherits.
    """
    found = []
    for path in Path("/proc").glob(f"[0-9]*/{where}"):
        try:
            if needle.encode() in path.read_bytes():
                found.append(int(path.parent.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid() and alive(pid)]


class TokenJob:
    """A started process (``proc``) whose token (``token``, in its environment) everything it starts inherits."""

    proc: subprocess.Popen
    token: str

    def wait(self, timeout_s: float) -> tuple[int, str, str]:
        """Its exit status and output; fails the test (killing everything it started) past ``timeout_s``."""
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"the job did not end within {timeout_s} s:\n{out}\n{err}")
        return self.proc.returncode, out, err

    def kill(self) -> None:
        """SIGKILL the job and everything carrying its token."""
        for pid in [self.proc.pid, *pids_with(self.token)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def leftovers(token: str, timeout_s: float = 15.0) -> list[int]:
    """The processes carrying ``token`` still alive after waiting up to ``timeout_s`` for them to end."""
    deadline = time.monotonic() + timeout_s
    while pids_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids_with(token)


def modules_loaded_by(*modules: str, then: str = "") -> set[str]:
    """The modules a fresh interpreter has loaded after importing ``modules`` (and running the code ``then``).

    Runs isolated (``-I``): neither the working directory nor PYTHONPATH is on its path, only the installed package.
    """
    code = f"import sys, {', '.join(modules)}\n{then}\nprint(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def wait_for_connection_file(path: Path, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Wait until the server process ``proc`` has written its connection file at ``path`` (failing with its stderr
    if it dies first)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else f"exit {proc.returncode}"
        assert time.monotonic() < deadline, "the server never wrote its connection file"
        time.sleep(0.05)
