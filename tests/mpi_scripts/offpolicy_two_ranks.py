"""Run under ``mpirun -n 2``: QMIX on homing_v0, then MADDPG on continuous simple_spread, each rank with its own env
server, worlds and replay buffer.

``run.sync_every=1`` makes every update check that the ranks' parameters agree (a drift raises, and
``abort_on_exception`` ends the job); both learners average every gradient over the ranks with one allreduce of a
flat buffer. Prints one line per rank and algorithm.
"""

from __future__ import annotations

import tempfile

from agora_marl.envserver.process import ServerProcesses
from agora_marl.learners import mpi
from agora_marl.learners.config import load_config
from agora_marl.learners.run import Run
from agora_marl.learners.training import train

RUNS = {
    "qmix": ["env.scenario=homing_v0", "qmix.learning_starts=256", "qmix.gradient_steps=4", "qmix.batch_size=32"],
    "maddpg": ["env.config.continuous_actions=true", "maddpg.learning_starts=256", "maddpg.gradient_steps=4"],
}


def main() -> None:
    with mpi.abort_on_exception(), ServerProcesses(count=1) as servers, tempfile.TemporaryDirectory() as tmp:
        directory = mpi.broadcast_object(tmp)  # rank 0's: only rank 0 writes
        for algo, overrides in RUNS.items():
            common = [f"algo={algo}", "env.num_worlds=4", "run.total_steps=1024", "run.sync_every=1"]
            config = load_config(None, [*common, "run.progress=false", f"{algo}.batch_size=32", *overrides])
            run = Run.create(config, f"{directory}/{algo}", writer=mpi.is_root())
            metrics = train(config, run, servers.addresses)
            run.close()
            print(f"RANK {mpi.rank()} {algo} OK gradient_steps={metrics['gradient_steps']:.0f}", flush=True)
        mpi.barrier()  # rank 0 removes the directory when it leaves the block


if __name__ == "__main__":
    main()
