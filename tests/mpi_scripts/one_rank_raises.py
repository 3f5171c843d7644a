"""Run under ``mpirun -n 2``: the last rank raises while the others wait in a collective that it never joins.

``--guard`` wraps the body in ``learners.mpi.abort_on_exception`` (for scripts not started by ``python -m mpi4py``).
Either way the whole job must end at once with a non-zero status instead of hanging.
"""

from __future__ import annotations

import contextlib
import sys

from agora_marl.learners import mpi


def main() -> None:
    guard = mpi.abort_on_exception() if "--guard" in sys.argv else contextlib.nullcontext()
    with guard:
        if mpi.rank() == mpi.size() - 1:
            raise RuntimeError("deliberate failure in the last rank")
        mpi.barrier()
        print("UNREACHABLE: the barrier returned", flush=True)


if __name__ == "__main__":
    main()
