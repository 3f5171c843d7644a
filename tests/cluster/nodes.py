"""Simulated nodes on one machine: network, UTS and mount namespaces joined by a bridge in a namespace of its own.

Each node is a network namespace (``agoraclu-<id>-node<i>``) holding ``lo`` and ``eth0`` with an address of a
private /24 (:data:`SUBNET`), a host name of its own (UTS namespace) and, in a mount namespace of its own, a private
``/tmp``, ``/dev/shm`` and ``/etc/hosts`` (listing every node), plus the empty cgroup mounts slurmd needs. The other
end of each node's veth pair sits on a bridge in a further namespace (``agoraclu-<id>-bridge``). Nothing is added
to the host's own interfaces, routes or mounts: there is no default route and no NAT, so a node reaches the other
nodes and its own loopback, and nothing else.

A node lives as long as its holder process (``sleep infinity`` entered into its namespaces); commands run in it
through ``nsenter`` (:meth:`Node.command`). MPICH's Hydra starts ranks on other nodes through the ``ssh`` launcher
given :attr:`Cluster.launcher`, a script that enters the named node instead of logging in.

State (the hosts file, the launcher, a folder every node sees: :attr:`Cluster.shared`) lives under
``/var/tmp/agora-cluster/<id>``, outside ``/tmp``, which each node replaces by its own. :func:`cleanup_leftovers`
removes the namespaces and state of clusters whose owner process is gone (a crashed or killed run); run it by hand
with ``python -m tests.cluster.nodes --cleanup``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

#: The prefix of every namespace a simulated cluster makes (``agoraclu-<id>-...``): what a cleanup looks for.
PREFIX = "agoraclu"
#: One folder per cluster: ``<id>/owner`` (the pid and start time of the process that made it), hosts, shared/...
STATE_BASE = Path("/var/tmp/agora-cluster")
#: The private /24 of the nodes: node i is SUBNET.i. It exists only inside the cluster's namespaces.
SUBNET = "10.254.20"
#: The checkout: nodes run its code, and must see it (and the venv) even where they lie under the host's /tmp.
ROOT = Path(__file__).resolve().parents[2]
#: Seconds any one setup command may take.
COMMAND_TIMEOUT_S = 30

_NODE_SETUP = r"""
set -euo pipefail
hostname "$NAME"
mount --bind "$HOSTS" /etc/hosts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# A private /tmp: a tmpfs made beside it, the checkout and venv bound back in at their own paths, moved over /tmp.
mkdir -p "$STAGE" && mount -t tmpfs -o mode=1777 tmpfs "$STAGE"
for path in $KEEP; do mkdir -p "$STAGE${path#/tmp}" && mount --bind "$path" "$STAGE${path#/tmp}"; done
mount --move "$STAGE" /tmp
# slurmd 22.05 wants a cgroup filesystem even with proctrack/linuxproc: an empty named hierarchy, not the host's.
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
mkdir /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=agora-sim cgroup /sys/fs/cgroup/systemd
echo $$ > "$PIDFILE.tmp" && mv "$PIDFILE.tmp" "$PIDFILE"
exec sleep infinity
"""

_LAUNCHER = """#!/bin/bash
# Hydra's ssh launcher for the simulated nodes: enter-node [ssh options] HOST COMMAND... runs COMMAND on HOST.
while [[ $1 == -* ]]; do shift; done
host=$1; shift
case $host in
{cases}
  *) echo "enter-node: no simulated node named $host" >&2; exit 255 ;;
esac
exec nsenter -t "$pid" -n -u -m --wd="$PWD" -- /bin/sh -c "$*"
"""


def unavailable() -> str:
    """Why simulated nodes cannot be made here ("" when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces); run as root or deselect with -m 'not cluster'"
    absent = [tool for tool in ("ip", "nsenter", "unshare") if shutil.which(tool) is None]
    if absent:
        return f"needs {', '.join(absent)} (Debian: iproute2, util-linux)"
    done = _ip("netns", "list", check=False)
    return f"`ip netns` does not work here: {done.stderr.strip()}" if done.returncode != 0 else ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=check)


def _start_time(pid: int) -> str:
    """The kernel's start time of ``pid`` ("" if it is gone): a pid and its start time name one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _owner_alive(state: Path) -> bool:
    try:
        owner = json.loads((state / "owner").read_text())
    except (OSError, ValueError):
        return False
    return _start_time(owner["pid"]) == owner["start"]


def kill_namespace(netns: str, timeout_s: float = 10.0) -> None:
    """SIGKILL every process in network namespace ``netns`` and delete it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    _ip("netns", "delete", netns, check=False)


def cleanup_leftovers() -> list[str]:
    """Remove what crashed or killed runs left (namespaces, processes in them, state), sparing live clusters.

    Returns the names of the namespaces removed.
    """
    live, removed = set(), []
    if STATE_BASE.is_dir():
        for state in STATE_BASE.iterdir():
            if _owner_alive(state):
                live.add(state.name)
                continue
            for netns in _namespaces(state.name):
                kill_namespace(netns)
                removed.append(netns)
            shutil.rmtree(state, ignore_errors=True)
        with contextlib.suppress(OSError):
            STATE_BASE.rmdir()  # only when empty
    for netns in _namespaces():
        if netns.split("-")[1] not in live:
            kill_namespace(netns)
            removed.append(netns)
    return removed


def _namespaces(cluster_id: str = "") -> list[str]:
    names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{PREFIX}-{cluster_id}")]


class Node:
    """One simulated node: its name (also its host name), address and namespaces."""

    def __init__(self, cluster: Cluster, index: int) -> None:
        self.index = index
        self.name = f"node{index}"
        self.address = f"{SUBNET}.{index}"
        self.netns = f"{PREFIX}-{cluster.id}-{self.name}"
        self.folder = cluster.state / self.name
        self.holder: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        """The holder's pid: its namespaces are the node's."""
        return int((self.folder / "pid").read_text())

    def namespace_inode(self, kind: str = "net") -> int:
        """The inode of the node's ``net``, ``uts`` or ``mnt`` namespace (compare a process's /proc/PID/ns/KIND)."""
        return os.stat(f"/proc/{self.pid}/ns/{kind}").st_ino

    def command(self, argv: list[str], cwd: str | Path = ROOT) -> list[str]:
        """``argv`` as run on this node, in ``cwd``."""
        return ["nsenter", "-t", str(self.pid), "-n", "-u", "-m", f"--wd={cwd}", "--", *map(str, argv)]

    def run(self, argv: list, env: dict, timeout: float, cwd: str | Path = ROOT) -> subprocess.CompletedProcess:
        """Run ``argv`` on this node and wait for it (text output captured)."""
        return subprocess.run(self.command(argv, cwd), env=env, capture_output=True, text=True, timeout=timeout)

    def popen(self, argv: list, env: dict, cwd: str | Path = ROOT, **kwargs) -> subprocess.Popen:
        """Start ``argv`` on this node in a session of its own."""
        return subprocess.Popen(self.command(argv, cwd), env=env, start_new_session=True, **kwargs)


class Cluster:
    """``nodes`` simulated nodes on a bridge; :meth:`start` builds them, :meth:`stop` removes every trace."""

    def __init__(self, nodes: int = 2) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.state = STATE_BASE / self.id
        self.bridge = f"{PREFIX}-{self.id}-bridge"
        self.nodes = [Node(self, i + 1) for i in range(nodes)]
        self.shared = self.state / "shared"
        self.launcher = self.state / "bin" / "enter-node"

    def start(self) -> Cluster:
        """Make the bridge, the nodes and their holders; returns once every node is up."""
        self.state.mkdir(parents=True)
        (self.state / "owner").write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid())}))
        self.shared.mkdir()
        self.launcher.parent.mkdir()
        (self.state / "hosts").write_text(
            "127.0.0.1 localhost\n" + "".join(f"{node.address} {node.name}\n" for node in self.nodes)
        )
        _ip("netns", "add", self.bridge)
        _ip("-n", self.bridge, "link", "set", "lo", "up")
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for node in self.nodes:
            self._wire(node)
        for node in self.nodes:
            self._hold(node)
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while not all((node.folder / "pid").exists() for node in self.nodes):
            for node in self.nodes:
                if node.holder.poll() is not None:
                    raise RuntimeError(f"{node.name} did not start: {(node.folder / 'holder.log').read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("the simulated nodes did not start in time")
            time.sleep(0.05)
        cases = "".join(f"  {node.name}) pid={node.pid} ;;\n" for node in self.nodes)
        self.launcher.write_text(_LAUNCHER.format(cases=cases.rstrip("\n")))
        self.launcher.chmod(0o755)
        return self

    def _wire(self, node: Node) -> None:
        """The node's namespace, and a veth pair from its eth0 to the bridge: both ends made inside namespaces."""
        port = f"veth{node.index}"
        _ip("netns", "add", node.netns)
        _ip("link", "add", "eth0", "netns", node.netns, "type", "veth", "peer", "name", port, "netns", self.bridge)
        _ip("-n", self.bridge, "link", "set", port, "master", "br0")
        _ip("-n", self.bridge, "link", "set", port, "up")
        _ip("-n", node.netns, "link", "set", "lo", "up")
        _ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
        _ip("-n", node.netns, "link", "set", "eth0", "up")

    def _hold(self, node: Node) -> None:
        node.folder.mkdir()
        keep = _kept_under_tmp([ROOT, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()])
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NAME": node.name,
            "HOSTS": str(self.state / "hosts"),
            "STAGE": str(node.folder / "tmp"),
            "KEEP": " ".join(map(str, keep)),
            "PIDFILE": str(node.folder / "pid"),
        }
        command = ["ip", "netns", "exec", node.netns, "unshare", "--uts", "--mount", "--propagation", "private"]
        with open(node.folder / "holder.log", "wb") as log:
            node.holder = subprocess.Popen(
                [*command, "--fork", "--", "bash", "-c", _NODE_SETUP],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def bridge_counters(self, node: Node) -> tuple[int, int]:
        """Bytes the bridge received from and sent to ``node`` so far."""
        out = _ip("-n", self.bridge, "-s", "-j", "link", "show", f"veth{node.index}").stdout
        counters = json.loads(out)[0]["stats64"]
        return counters["rx"]["bytes"], counters["tx"]["bytes"]

    def stop(self) -> None:
        """Kill every process on the nodes, delete the namespaces and the state. Safe to call twice."""
        for node in self.nodes:
            if node.holder is not None and node.holder.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.holder.pid, signal.SIGKILL)
        for netns in _namespaces(self.id):
            kill_namespace(netns)
        for node in self.nodes:
            if node.holder is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.holder.wait(timeout=COMMAND_TIMEOUT_S)
        shutil.rmtree(self.state, ignore_errors=True)
        with contextlib.suppress(OSError):
            STATE_BASE.rmdir()  # the last cluster out removes the base folder


def _kept_under_tmp(paths: list[Path]) -> list[Path]:
    """The paths under /tmp (outermost only) that a node must bind back over its private /tmp."""
    under = sorted({p for p in paths if Path("/tmp") in p.parents})
    return [p for p in under if not any(q in p.parents for q in under)]


def main() -> int:
    """``python -m tests.cluster.nodes --cleanup``: remove the leftovers of crashed runs."""
    if sys.argv[1:] != ["--cleanup"]:
        print(__doc__.split("\n\n")[0] + "\nusage: python -m tests.cluster.nodes --cleanup", file=sys.stderr)
        return 2
    removed = cleanup_leftovers()
    print(f"removed {len(removed)} namespace(s): {' '.join(removed) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
