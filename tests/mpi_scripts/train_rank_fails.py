"""``agora train ARGS`` in which one rank raises at the end of its third update (``--fail-rank R``, default the last).

Run under ``mpirun -n 2``: the whole job must end within seconds with a non-zero status, the other rank must not hang
in its next collective, and no env server may outlive the job (the node's servers belong to local rank 0, which the
abort kills when another rank fails).
"""

from __future__ import annotations

import sys

from agora_marl.launch.cli import main
from agora_marl.learners import mpi
from agora_marl.learners.run import Run


def _failing_end_update(original):
    def end_update(self: Run, step: int, update: int, metrics: dict[str, float]):
        if update == 3:
            raise RuntimeError(f"deliberate failure in rank {mpi.rank()} at update {update}")
        return original(self, step, update, metrics)

    return end_update


if __name__ == "__main__":
    args = sys.argv[1:]
    fail_rank = mpi.size() - 1
    if "--fail-rank" in args:
        at = args.index("--fail-rank")
        fail_rank = int(args[at + 1])
        del args[at : at + 2]
    if mpi.rank() == fail_rank:
        Run.end_update = _failing_end_update(Run.end_update)
    sys.exit(main(["train", *args]))
