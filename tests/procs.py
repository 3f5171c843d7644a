"""Process checks shared by the tests: is a pid still a live (non-zombie) process; what importing a module loads; wait
for a server process's connection file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


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
