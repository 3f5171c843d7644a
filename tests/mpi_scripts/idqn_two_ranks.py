"""Run under ``mpirun -n 2``: IDQN on CartPole, each rank with its own env server and worlds.

``run.sync_every=1`` makes every update check that the ranks' parameters agree (a drift raises, and
``abort_on_exception`` ends the job), and training ends with one more check. Prints one line per rank.
"""

from __future__ import annotations

import tempfile

from agora_marl.envserver.process import ServerProcesses
from agora_marl.learners import mpi
from agora_marl.learners.config import load_config
from agora_marl.learners.run import Run
from agora_marl.learners.training import train


def main() -> None:
    overrides = ["algo=idqn", "env.scenario=gymnasium:CartPole-v1", "env.num_worlds=4", "run.total_steps=4096"]
    overrides += ["run.sync_every=1", "run.progress=false", "idqn.learning_starts=512", "idqn.target_every=8"]
    config = load_config(None, overrides)
    with mpi.abort_on_exception(), ServerProcesses(count=1) as servers, tempfile.TemporaryDirectory() as tmp:
        directory = mpi.broadcast_object(tmp)  # rank 0's: only rank 0 writes
        run = Run.create(config, directory, writer=mpi.is_root())
        metrics = train(config, run, servers.addresses)
        run.close()
        mpi.barrier()  # rank 0 removes the directory when it leaves the block
    print(f"RANK {mpi.rank()} OK gradient_steps={metrics['gradient_steps']:.0f}", flush=True)


if __name__ == "__main__":
    main()
