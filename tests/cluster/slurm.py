"""A real SLURM (Debian's slurm-wlm: slurmctld, one slurmd per node, munge) on the simulated nodes.

munged and slurmctld run on node1, a slurmd on every node, all in the foreground as children of the test process,
with their configuration, sockets, spool and logs under the cluster's state folder (``slurm/``, ``munge/``): nothing
of the host's own SLURM or munge (``/etc/slurm``, ``/run/munge``) is read or written. Clients find the configuration
through ``SLURM_CONF`` (:meth:`Slurm.env`) and run on the head node (:meth:`Slurm.run`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.cluster.nodes import Cluster, Node

#: The daemons and clients the simulated SLURM needs (:func:`missing` also looks for libpmix.so: ``srun --mpi=pmix``).
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel")
#: Job states after which a job runs no more (unless requeued).
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}
#: Seconds the daemons may take to come up.
START_TIMEOUT_S = 60

_CONF = """\
ClusterName=agorasim
SlurmctldHost={head}({head_address})
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/%n
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/%n/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=15
InactiveLimit=0
MessageTimeout=20
MinJobAge=600
TmpFS=/tmp
{nodes}
PartitionName=sim Nodes={node_names} Default=YES MaxTime=INFINITE State=UP
"""


def not_installed() -> str:
    """Why SLURM cannot run here ("" when it can): what of it is not installed."""
    absent = missing()
    return (
        f"SLURM is not installed ({', '.join(absent)}): `bash launch/install.sh` installs it as root" if absent else ""
    )


def missing() -> list[str]:
    """The programs (and libpmix) this needs that are not installed."""
    absent = [name for name in NEEDED if shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if not any(
        Path(folder).glob("libpmix.so") for folder in ("/usr/lib", "/usr/lib64", *glob.glob("/usr/lib/*-linux-*"))
    ):
        absent.append("libpmix.so (libpmix-dev)")
    return absent


class Slurm:
    """munged, slurmctld and the slurmds of ``cluster``'s nodes."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.head = cluster.nodes[0]
        self.folder = cluster.state / "slurm"
        self.munge = cluster.state / "munge"
        self.conf = self.folder / "slurm.conf"
        self.daemons: list[subprocess.Popen] = []

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with what SLURM's clients need to find this cluster."""
        return {**base, "SLURM_CONF": str(self.conf)}

    def start(self) -> Slurm:
        """Write the configuration and the munge key, start the daemons; returns once every node is idle."""
        self.munge.mkdir(mode=0o755)
        key = self.munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.folder.mkdir()
        (self.folder / "ctld").mkdir()
        for node in self.cluster.nodes:
            (self.folder / node.name).mkdir()
        self.conf.write_text(
            _CONF.format(
                head=self.head.name,
                head_address=self.head.address,
                munge_socket=self.munge / "munge.socket",
                state=self.folder,
                nodes="\n".join(
                    f"NodeName={n.name} NodeAddr={n.address} CPUs=4 RealMemory=4000 State=UNKNOWN"
                    for n in self.cluster.nodes
                ),
                node_names=",".join(n.name for n in self.cluster.nodes),
            )
        )
        env = self.env({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        munged = [
            "munged",
            "--foreground",
            f"--key-file={key}",
            f"--socket={self.munge / 'munge.socket'}",
            f"--pid-file={self.munge / 'munged.pid'}",
            f"--log-file={self.munge / 'munged.log'}",
            f"--seed-file={self.munge / 'munged.seed'}",
        ]
        self._daemon(self.head, munged, env)
        self._wait(lambda: (self.munge / "munge.socket").exists(), "munged")
        self._daemon(self.head, ["slurmctld", "-D"], env)
        for node in self.cluster.nodes:
            self._daemon(node, ["slurmd", "-D", "-N", node.name], env)
        self._wait(self._all_idle, "slurmctld and the slurmds")
        return self

    def _daemon(self, node: Node, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.folder.parent / f"{argv[0]}-{node.name}.out", "wb")  # noqa: SIM115 (kept by the daemon)
        self.daemons.append(node.popen(argv, env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
        log.close()

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            ended = [d.args for d in self.daemons if d.poll() is not None]
            if ended or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what} did not start ({'ended: ' + str(ended) if ended else 'timeout'}); "
                    f"logs in {self.folder}: {self.logs()}"
                )
            time.sleep(0.2)

    def _all_idle(self) -> bool:
        done = self.run(["sinfo", "--noheader", "--format=%t"], timeout=20, check=False)
        states = done.stdout.split()
        return done.returncode == 0 and bool(states) and all(s == "idle" for s in states)

    def logs(self) -> str:
        """The tails of the daemons' logs (for a failure message)."""
        tails = []
        for path in sorted([*self.folder.glob("*.log"), *self.folder.parent.glob("*.out")]):
            with contextlib.suppress(OSError):
                tails.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-15:]))
        return "\n".join(tails)

    def run(
        self,
        argv: list,
        timeout: float = 30,
        check: bool = True,
        env: dict | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.CompletedProcess:
        """A SLURM client command on the head node."""
        env = self.env(env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        done = self.head.run(argv, env, timeout, cwd or self.cluster.shared)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done

    def job(self, job_id: int) -> dict[str, str]:
        """``scontrol show job``'s fields of ``job_id``."""
        out = self.run(["scontrol", "--oneliner", "show", "job", str(job_id)]).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: int, timeout_s: float) -> dict[str, str]:
        """Wait until ``job_id`` ends, through its requeues; returns its fields (the last seen on a timeout).

        A requeued job waits ~2 minutes before it may start again (SLURM's requeue delay: the lifetime of a job
        credential, ``cred_expire``): its StartTime is reset here, as an operator would, so that the test does not wait
        for it. Not at once: a slurmd refuses a credential made in the same second as the revocation of the previous
        one ("Job credential revoked"). A batch script requeues its job before it exits, so a job seen ended is not
        requeued afterwards.
        """
        deadline = time.monotonic() + timeout_s
        released = 0
        while True:
            fields = self.job(job_id)
            restarted = int(fields.get("Restarts", "0"))
            if fields["JobState"] == "PENDING" and restarted > released:
                time.sleep(2)
                self.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
                released = restarted
            if fields["JobState"] in ENDED or time.monotonic() > deadline:
                return fields
            time.sleep(0.5)

    def stop(self) -> None:
        """Kill the daemons (their state goes with the cluster's)."""
        for daemon in self.daemons:
            with contextlib.suppress(ProcessLookupError):
                daemon.kill()
        for daemon in self.daemons:
            daemon.wait(timeout=30)
