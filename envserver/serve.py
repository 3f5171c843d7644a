"""``python -m agora_marl.envserver``: run one env server, or N worker processes of one, until stopped.

``agora serve`` is the same command with the same flags (``launch/commands/serve.py`` registers them through
:func:`add_arguments`); it also runs as the server ranks of an MPI job. This module imports only the env server and
the scenarios, and those only when it runs, so that ``--help`` is fast and a launcher may import it for its flags.

A single server stops cleanly (closing its worlds, exit status 0) on SIGINT or SIGTERM. With ``--workers N`` this
process starts N single servers (:mod:`agora_marl.envserver.process`), publishes all their addresses, and stops them
all when it gets SIGINT or SIGTERM, or when one of them ends.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import time
from pathlib import Path

from zmq.auth import load_certificate, load_certificates

DESCRIPTION = "Run an agora env server: a ZeroMQ ROUTER socket hosting many multi-agent worlds."
#: The examples under ``--help``; ``%(prog)s`` is ``agora serve`` or ``python -m agora_marl.envserver``.
EPILOG = """\
examples:
  %(prog)s                                   # tcp://127.0.0.1:5555, the default scenarios
  %(prog)s --bind ipc:///tmp/agora.sock --addr-file /tmp/agora.json
  %(prog)s --bind tcp://0.0.0.0:5555 --workers 4   # 4 processes on ports 5555..5558
  %(prog)s --scenario-module my_worlds       # import my_worlds so its scenarios register themselves
  %(prog)s --allow my_envs                   # let clients name my_envs.module:parallel_env

Clients connect a ZeroMQ DEALER socket and speak the protocol of docs/protocol.md.
"""

log = logging.getLogger("agora.server")
#: The environment variable through which `--workers N` hands its workers one shared operator secret (never argv,
#: which every user of the machine can read in ps).
OPERATOR_ENV = "AGORA_OPERATOR_SECRET"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the server's flags to ``parser``."""
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
        "--max-message-bytes",
        type=int,
        default=16 << 20,
        help="refuse larger requests; a single frame larger than this closes the sender's connection (default "
        "%(default)s)",
    )
    parser.add_argument(
        "--max-unread-bytes",
        type=int,
        default=8 << 20,
        help="bytes of replies a client may leave unread; past it its newest are dropped (default %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=4096,
        help="connections kept at once (at most the descriptor limit less a reserve); past it a newcomer replaces the "
        "longest idle connection that holds nothing, or is closed (default %(default)s)",
    )
    parser.add_argument(
        "--max-connections-per-peer",
        type=int,
        default=1024,
        help="connections from one IP address (one user over ipc://) at once, the same way (default %(default)s)",
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
        "--max-keep-alive",
        type=float,
        default=600.0,
        help="the longest silence a client may ask for at hello (keep_alive_s), e.g. through a long learner update "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--deadline-ms", type=float, default=1000.0, help="default lockstep deadline of a world (default %(default)s)"
    )
    parser.add_argument(
        "--curve-secret",
        type=Path,
        help="the server's CurveZMQ secret key: a NAME.key_secret file from `agora keys new`, or a file holding the "
        "Z85 key; encrypts the socket, and clients must know the server's public key (NAME.key)",
    )
    parser.add_argument(
        "--clients",
        type=Path,
        metavar="DIR",
        help="with --curve-secret: let in only the clients whose public keys (*.key files, `agora keys new`) are in DIR",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=65536,
        help="sessions kept at once (one per hello; idle ones are forgotten); past it hello is refused (default "
        "%(default)s)",
    )
    parser.add_argument(
        "--operator-file",
        type=Path,
        help="write the operator secret (lists and observes every world: agora watch, agora worlds) to this file, "
        "readable by you only (default: ~/.cache/agora/operator/<address>; $AGORA_OPERATOR_DIR moves the folder)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser(prog: str = "python -m agora_marl.envserver") -> argparse.ArgumentParser:
    """The parser of ``python -m agora_marl.envserver``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return parser


def configure_logging(args: argparse.Namespace) -> None:
    """Log at ``--log-level`` to stderr, with times."""
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def server_config(args: argparse.Namespace, bind: str | None = None):
    """The ServerConfig of the parsed flags (bound to ``bind`` instead of ``--bind`` if given).

    Imports the ``--scenario-module`` modules first, so that their scenarios are registered.
    """
    from agora_marl import scenarios
    from agora_marl.envserver.server import ServerConfig
    from agora_marl.scenarios.registry import load_scenario_module

    for module in args.scenario_module:
        load_scenario_module(module)
    return ServerConfig(
        bind=bind or args.bind,
        max_message_bytes=args.max_message_bytes,
        max_unread_bytes=args.max_unread_bytes,
        max_connections=args.max_connections,
        max_connections_per_peer=args.max_connections_per_peer,
        max_worlds_per_client=args.max_worlds_per_client,
        max_sessions=args.max_sessions,
        # Workers of one `agora serve --workers N` share the operator secret their parent made.
        operator_secret=os.environ.get(OPERATOR_ENV) or None,
        heartbeat_timeout_s=args.heartbeat_timeout,
        max_keep_alive_s=args.max_keep_alive,
        default_deadline_ms=args.deadline_ms,
        allowed_packages=(*scenarios.DEFAULT_ALLOWED_PACKAGES, *args.allow),
        curve_secret_key=secret_key(args.curve_secret) if args.curve_secret else None,
        curve_client_keys=client_keys(args.clients, args.curve_secret) if args.clients else None,
    )


def secret_key(path: Path) -> bytes:
    """The Z85 CurveZMQ secret key in ``path``: a certificate with its secret part (``agora keys new``) or the key."""
    try:
        _public, secret = load_certificate(path)
    except (OSError, ValueError):
        secret = None
    if secret is None:
        text = path.read_text().strip()
        if len(text) != 40:
            raise SystemExit(f"--curve-secret {path}: neither a secret certificate nor a 40-character Z85 key")
        secret = text.encode()
    return secret


def client_keys(folder: Path, curve_secret: Path | None) -> tuple[bytes, ...]:
    """The public keys of the ``*.key`` certificates in ``folder`` (the clients' allow-list)."""
    if curve_secret is None:
        raise SystemExit("--clients needs --curve-secret: an allow-list of client keys works over CurveZMQ only")
    if not folder.is_dir():
        raise SystemExit(f"--clients {folder}: no such folder (make keys with `agora keys new NAME --dir {folder}`)")
    keys = tuple(load_certificates(folder))
    if not keys:
        raise SystemExit(f"--clients {folder}: no *.key certificate in it, so nobody could connect")
    return keys


def run(args: argparse.Namespace) -> int:
    """Serve as the parsed flags say until stopped; returns the exit status."""
    configure_logging(args)
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if args.workers > 1:
        return _run_workers(args)
    from agora_marl.envserver.protocol.connection import (
        operator_file,
        remove_operator_file,
        write_connection_file,
        write_operator_file,
    )
    from agora_marl.envserver.server import EnvServer

    # Set before the --scenario-module modules load: those may handle signals their own way.
    stop = _StopSignal()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = stop.server = EnvServer(server_config(args))
    if stop.requested:
        server.request_stop()
    secret_file = args.operator_file or operator_file(server.address)
    write_operator_file(secret_file, server.operator_secret)
    if args.addr_file:
        write_connection_file(args.addr_file, [server.address], operator=server.operator_secret)
    log.info("serving on %s (operator secret in %s)", server.address, secret_file)
    try:
        server.serve_forever()
    finally:
        remove_operator_file(secret_file, server.operator_secret)
    # Stopped and closed: more stop signals (a scheduler's and a job script's) must not end the exit itself.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.info("stopped")
    return 0


class _StopSignal:
    """The handler of SIGTERM and SIGINT: it only sets flags. A second signal may arrive while the first handler runs
    (a scheduler and a job script each send one): a handler that waited for a lock its own thread holds (a
    threading.Event's) would never return, and the server would ignore every later signal."""

    def __init__(self) -> None:
        self.requested = False
        self.server = None

    def __call__(self, *_: object) -> None:
        self.requested = True
        if self.server is not None:
            self.server.request_stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m agora_marl.envserver [FLAGS]``."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:  # before the server loop started
        return 130


def endpoints(bind: str, workers: int) -> list[str]:
    """The endpoint of each of ``workers`` servers for one ``--bind``: ``PATH.I`` for ipc://, consecutive ports for
    tcp:// (or a free port each for port 0)."""
    if workers == 1:
        return [bind]
    if bind.startswith("ipc://"):
        return [f"{bind}.{i}" for i in range(workers)]
    host, _, port = bind.rpartition(":")
    if port in ("0", "*"):
        return [f"{host}:0"] * workers
    return [f"{host}:{int(port) + i}" for i in range(workers)]


def _run_workers(args: argparse.Namespace) -> int:
    """Start one single server per endpoint, publish all addresses, and stop them all together."""
    from agora_marl.envserver.process import ServerProcesses, ServerStartError
    from agora_marl.envserver.protocol.connection import write_connection_file

    os.environ.setdefault(OPERATOR_ENV, secrets.token_urlsafe(32))  # one operator secret for all the workers
    stopped: list[int] = []  # a plain flag: a signal handler must not take a lock the main thread may hold
    signal.signal(signal.SIGTERM, lambda signum, _: stopped.append(signum))
    # The workers' log lines go where this process's go.
    workers = ServerProcesses(
        binds=endpoints(args.bind, args.workers), server_args=_worker_flags(args), inherit_output=True
    )
    try:
        with workers:
            if args.addr_file:
                write_connection_file(args.addr_file, workers.addresses, operator=os.environ[OPERATOR_ENV])
            print("serving on " + " ".join(workers.addresses), flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while not stopped and workers.running():
                    time.sleep(0.2)
    except ServerStartError as exc:
        raise SystemExit(f"a server worker failed to start: {exc}") from None
    failed = [(i, proc.returncode) for i, proc in enumerate(workers.procs) if proc.returncode != 0]
    for i, status in failed:
        log.error("worker %d (%s) ended with status %s", i, workers.addresses[i], status)
    return 1 if failed else 0


def _worker_flags(args: argparse.Namespace) -> list[str]:
    """The flags every worker shares (each gets its own --bind and --addr-file)."""
    flags = [
        f"--max-message-bytes={args.max_message_bytes}",
        f"--max-unread-bytes={args.max_unread_bytes}",
        f"--max-connections={args.max_connections}",
        f"--max-connections-per-peer={args.max_connections_per_peer}",
        f"--max-worlds-per-client={args.max_worlds_per_client}",
        f"--max-sessions={args.max_sessions}",
        f"--heartbeat-timeout={args.heartbeat_timeout}",
        f"--max-keep-alive={args.max_keep_alive}",
        f"--deadline-ms={args.deadline_ms}",
        f"--log-level={args.log_level}",
    ]
    flags += [f"--allow={p}" for p in args.allow] + [f"--scenario-module={m}" for m in args.scenario_module]
    if args.curve_secret:
        flags.append(f"--curve-secret={args.curve_secret}")
    if args.clients:
        flags.append(f"--clients={args.clients}")
    return flags
