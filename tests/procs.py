"""Process checks shared by the tests: is a pid still a live (non-zombie) process; what importing a module loads."""

from __future__ import annotations

import subprocess
import sys
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
