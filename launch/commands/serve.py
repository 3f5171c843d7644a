"""``agora serve``: run an env server (or N worker processes of one) until stopped."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_EPILOG = """\
examples:
  agora serve                                   # tcp://127.0.0.1:5555, the default scenarios
  agora serve --bind ipc:///tmp/agora.sock --addr-file /tmp/agora.json
  agora serve --bind tcp://0.0.0.0:5555 --workers 4   # 4 processes on ports 5555..5558
  agora serve --scenario-module my_worlds       # import my_worlds so its scenarios register themselves
  agora serve --allow my_envs                   # let clients name my_envs.module:parallel_env

Clients connect a ZeroMQ DEALER socket and speak the protocol of docs/protocol.md.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="host worlds for agent clients and learners",
        description="Run an agora env server: a ZeroMQ ROUTER socket hosting many multi-agent worlds.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bind",
        default="tcp://127.0.0.1:5555",
        help="endpoint: tcp://HOST:PORT (0 = any free port) or ipc://PATH (default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, one per core you give it; each binds its own endpoint (default 1)",
    )
    parser.add_argument(
        "--addr-file", type=Path, help="write a JSON connection file {protocol, addresses, pid} once bound"
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PKG",
        help="also host module:callable scenarios from package PKG (repeatable)",
    )
    parser.add_argument(
        "--scenario-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (a module name or a .py file) first, so that its scenarios register themselves (repeatable)",
    )
    parser.add_argument(
        "--max-message-bytes", type=int, default=64 << 20, help="refuse larger requests (default %(default)s)"
    )
    parser.add_argument(
        "--max-worlds-per-client", type=int, default=4096, help="worlds one connection may own (default %(default)s)"
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=10.0,
        help="seconds of silence before a client loses its seats (default %(default)s)",
    )
    parser.add_argument(
        "--deadline-ms", type=float, default=1000.0, help="default lockstep deadline of a world (default %(default)s)"
    )
    parser.add_argument(
        "--curve-secret", type=Path, help="file holding a Z85 CurveZMQ secret key: encrypt and authenticate the socket"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=run)


def _endpoints(bind: str, workers: int) -> list[str]:
    if workers == 1:
        return [bind]
    if bind.startswith("ipc://"):
        return [f"{bind}.{i}" for i in range(workers)]
    host, _, port = bind.rpartition(":")
    if port in ("0", "*"):
        return [f"{host}:0"] * workers
    return [f"{host}:{int(port) + i}" for i in range(workers)]


def write_addr_file(path: Path, addresses: list[str]) -> None:
    """Write the JSON connection file atomically, so that a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"protocol": 1, "addresses": addresses, "pid": os.getpid()}))
    tmp.replace(path)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    from agora_marl.launch import cluster

    if cluster.launched_by_mpi():  # `mpirun -n 4 agora train : -n 2 agora serve`: addresses travel over MPI
        return cluster.serve_as_rank(args, lambda bind: server_config(args, bind))
    if args.workers > 1:
        return _run_workers(args)
    from agora_marl.envserver.server import EnvServer

    config = server_config(args)
    server = EnvServer(config)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    if args.addr_file:
        write_addr_file(args.addr_file, [server.address])
    logging.getLogger("agora.server").info("serving on %s", server.address)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def server_config(args: argparse.Namespace, bind: str | None = None):
    """The ServerConfig of ``agora serve``'s flags (bound to ``bind`` instead of ``--bind`` if given)."""
    from agora_marl import scenarios
    from agora_marl.envserver.server import ServerConfig
    from agora_marl.scenarios.registry import load_scenario_module

    for module in args.scenario_module:
        load_scenario_module(module)
    return ServerConfig(
        bind=bind or args.bind,
        max_message_bytes=args.max_message_bytes,
        max_worlds_per_client=args.max_worlds_per_client,
        heartbeat_timeout_s=args.heartbeat_timeout,
        default_deadline_ms=args.deadline_ms,
        allowed_packages=(*scenarios.DEFAULT_ALLOWED_PACKAGES, *args.allow),
        curve_secret_key=args.curve_secret.read_text().strip().encode() if args.curve_secret else None,
    )


def _run_workers(args: argparse.Namespace) -> int:
    """Start one single-worker server per endpoint, publish all addresses, and stop them all together."""
    tmp = Path(tempfile.mkdtemp(prefix="agora-serve-"))
    procs, files = [], []
    for i, endpoint in enumerate(_endpoints(args.bind, args.workers)):
        files.append(tmp / f"worker{i}.json")
        cmd = [
            sys.executable,
            "-m",
            "agora_marl.envserver",
            *_worker_flags(args),
            "--bind",
            endpoint,
            "--addr-file",
            str(files[-1]),
        ]
        procs.append(subprocess.Popen(cmd))
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        addresses = []
        for proc, path in zip(procs, files, strict=True):
            deadline = time.monotonic() + 30
            while not path.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"a server worker failed to start (exit code {proc.poll()})")
                time.sleep(0.05)
            addresses.extend(json.loads(path.read_text())["addresses"])
        if args.addr_file:
            write_addr_file(args.addr_file, addresses)
        print("serving on " + " ".join(addresses), flush=True)
        while not stop["now"] and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
    return max((p.returncode or 0) for p in procs) if stop["now"] else 0


def _worker_flags(args: argparse.Namespace) -> list[str]:
    """The flags every worker shares (each gets its own --bind and --addr-file)."""
    flags = [
        f"--max-message-bytes={args.max_message_bytes}",
        f"--max-worlds-per-client={args.max_worlds_per_client}",
        f"--heartbeat-timeout={args.heartbeat_timeout}",
        f"--deadline-ms={args.deadline_ms}",
        f"--log-level={args.log_level}",
    ]
    flags += [f"--allow={p}" for p in args.allow] + [f"--scenario-module={m}" for m in args.scenario_module]
    if args.curve_secret:
        flags.append(f"--curve-secret={args.curve_secret}")
    return flags
