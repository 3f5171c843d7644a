"""Cross-node figures on the simulated cluster (tests/cluster/nodes.py): 2 ranks on 2 nodes against 2 ranks on 1 node.

Needs root (it makes the network namespaces of tests/cluster/). What is timed, with 2 ranks in each layout:

- the gradient allreduce of the default MAPPO networks for simple_spread (``GradientAllreducer.allreduce()``, as
  bench/allreduce.py's ``ours``) and a raw ``Allreduce`` of the same bytes: per call, the slowest rank, median;
- the one-float stop check (``mpi.allreduce_max`` of one float: what every rank does at each logged update to agree
  on stopping) and a raw one-float ``Allreduce``;
- a training update: ``agora train`` with the default settings (64 worlds x 25 steps per rank, 4 minibatches), the
  median of ``update_s``, ``rollout_s`` and ``learn_s`` in metrics.csv over the updates after the first.

Layouts: ``1 node`` (both ranks on node1, MPICH's default transports: shared memory), ``1 node, tcp`` (the same over
TCP on the node's loopback: ``UCX_TLS=tcp,self``), ``2 nodes`` (one rank per node, TCP across the bridge). All the
nodes are the same 2 cores of one machine and the "network" is a veth pair through a Linux bridge: these figures show
what crossing nodes costs in agora's own code paths, not what a real interconnect does. Layouts take turns
(``--rounds``), so that machine noise hits them alike.

usage: sudo .venv/bin/python bench/cluster.py [--reps 2000] [--updates 6] [--rounds 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAYOUTS = {
    "1 node": (["-hosts", "node1", "-n", "2"], {}),
    "1 node, tcp": (["-hosts", "node1", "-n", "2"], {"UCX_TLS": "tcp,self"}),
    "2 nodes": (["-hosts", "node1,node2", "-n", "2", "-ppn", "1"], {"UCX_TLS": "tcp,self"}),
}


def worker(reps: int, out: Path) -> None:
    """Under mpiexec: time the allreduces; rank 0 writes the medians (µs) to ``out``."""
    import numpy as np
    import torch
    from allreduce import default_networks, measure
    from mpi4py import MPI

    from agora_marl.learners import mpi
    from agora_marl.learners.mpi.gradients import GradientAllreducer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = default_networks()
    reducer = GradientAllreducer(model.parameters())
    raw = np.zeros_like(reducer.flat.numpy())
    gradients = {
        "ours": (reducer.flat.numpy(), reducer.allreduce),
        "raw": (raw, lambda: MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, raw, op=MPI.SUM)),
    }
    one = np.zeros(1)
    floats = {
        "raw": (one, lambda: MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, one, op=MPI.MAX)),
        "stop_check": (one, lambda: mpi.allreduce_max(0.0)),
    }
    figures = {"params": sum(p.numel() for p in model.parameters())}
    for label, methods in (("gradients", gradients), ("one_float", floats)):
        times = measure(methods, reps, warmup=max(3, reps // 20))
        figures[label] = {name: float(np.median(t)) * 1e6 for name, t in times.items()}
    if mpi.is_root():
        out.write_text(json.dumps(figures))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2000, help="timed calls of each allreduce")
    parser.add_argument("--updates", type=int, default=6, help="training updates per layout")
    parser.add_argument("--rounds", type=int, default=2, help="turns of every layout")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.reps, args.worker)
        return 0
    if os.geteuid() != 0:
        print("bench/cluster.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    from agora_marl.learners.run import read_metrics
    from tests.cluster.jobs import MPIEXEC, agora, job_env
    from tests.cluster.nodes import Cluster, cleanup_leftovers

    cleanup_leftovers()
    cluster = Cluster(nodes=2).start()
    results: dict[str, list[dict]] = {layout: [] for layout in LAYOUTS}
    try:
        for round_ in range(args.rounds):
            for layout, (hosts, extra) in LAYOUTS.items():
                env = {**job_env(f"bench-{cluster.id}"), **extra}
                if "UCX_TLS" not in extra:
                    env.pop("UCX_TLS")
                launch = [MPIEXEC, "-launcher", "ssh", "-launcher-exec", cluster.launcher, *hosts]
                with tempfile.NamedTemporaryFile(dir=cluster.shared, suffix=".json") as out:
                    micro = [*launch, sys.executable, __file__, "--reps", str(args.reps), "--worker", out.name]
                    _check(cluster.nodes[0].run(micro, env, timeout=600))
                    figures = json.loads(Path(out.name).read_text())
                run_dir = cluster.shared / f"train-{round_}-{layout.replace(' ', '').replace(',', '-')}"
                steps = args.updates * 2 * 64 * 25
                train = agora("train", f"run.dir={run_dir}", f"run.total_steps={steps}", "run.progress=false")
                _check(cluster.nodes[0].run([*launch, *train], env, timeout=900))
                rows = read_metrics(run_dir / "metrics.csv")[1:]
                for key in ("update_s", "rollout_s", "learn_s"):
                    figures[key] = statistics.median(float(r[key]) for r in rows)
                results[layout].append(figures)
                print(f"round {round_ + 1} {layout}: {_line(figures)}", flush=True)
    finally:
        cluster.stop()
    print(f"\n2 ranks, median per call (slowest rank), medians of {args.rounds} round(s) shown as a range:")
    for layout, runs in results.items():
        print(f"  {layout:<12} " + _summary(runs))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _check(done: subprocess.CompletedProcess) -> None:
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def _line(f: dict) -> str:
    g, o = f["gradients"], f["one_float"]
    return (
        f"gradients ({f['params']:,} floats) {g['ours']:.1f} us (raw {g['raw']:.1f}); stop check {o['stop_check']:.1f} "
        f"us (raw {o['raw']:.1f}); update {f['update_s'] * 1e3:.0f} ms (rollout {f['rollout_s'] * 1e3:.0f}, learn "
        f"{f['learn_s'] * 1e3:.0f})"
    )


def _summary(runs: list[dict]) -> str:
    def span(values: list[float], scale: float = 1.0, unit: str = "us") -> str:
        low, high = min(values) * scale, max(values) * scale
        return f"{low:.1f} {unit}" if round(low, 1) == round(high, 1) else f"{low:.1f}-{high:.1f} {unit}"

    return (
        f"gradients {span([r['gradients']['ours'] for r in runs])} (raw {span([r['gradients']['raw'] for r in runs])}); "
        f"stop check {span([r['one_float']['stop_check'] for r in runs])}; "
        f"update {span([r['update_s'] for r in runs], 1e3, 'ms')} "
        f"(learn {span([r['learn_s'] for r in runs], 1e3, 'ms')})"
    )


if __name__ == "__main__":
    sys.exit(main())
