"""``agora watch``: the live web view of agora servers (agents/watch), and ``agora train --watch``'s page."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

DEFAULT_PORT = 8765

_EPILOG = """\
examples:
  agora watch --connect tcp://127.0.0.1:5555            # then open the URL it prints
  agora watch --connect /tmp/agora.json                  # a connection file: every worker, and its operator secret
  agora watch --run runs/mappo-simple_spread_v3-...      # a run's worlds (recorded by agora train) and its curve
  agora train --watch                                    # the same page, started by the learner

The page lists every world (with operator rights: the server's operator secret, read by default from the file
`agora serve` writes; without them, only the worlds this client may see), and shows a clicked world live. Frames are
rendered only while a browser watches that world, at most --fps a second; worlds are listed once a second.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="serve a live web page of a server's worlds (and a run's learning curve)",
        description="Serve a web page on 127.0.0.1 showing agora servers' worlds live, as an observer client.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_server_arguments(parser)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the page's port (default %(default)s; 0: any)")
    parser.add_argument("--fps", type=float, default=10.0, help="most frames a second per watched world (default 10)")
    parser.add_argument(
        "--list-every", type=float, default=1.0, metavar="S", help="seconds between world lists (default 1)"
    )
    parser.add_argument("--format", choices=("png", "jpeg"), default="png", help="frame encoding (default png)")
    parser.add_argument("--run", metavar="RUN_DIR", help="draw this training run's learning curve (metrics.csv)")
    parser.add_argument("--exit-with", type=int, default=None, help=argparse.SUPPRESS)  # the learner's pid
    parser.set_defaults(func=run)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """``--connect`` and ``--operator``, shared with ``agora worlds``."""
    parser.add_argument(
        "--connect",
        metavar="ADDR[,ADDR]",
        help="the servers: endpoints (tcp://HOST:PORT, ipc://PATH) or connection files of `agora serve --addr-file`",
    )
    parser.add_argument(
        "--operator",
        metavar="SECRET_OR_FILE",
        help="the operator secret (or its file) that lists every world; default: the file `agora serve` wrote for "
        "each address, where it exists",
    )


def targets_of(args: argparse.Namespace) -> list:
    """The servers the arguments name (``--connect``, else the run's recorded servers); exits with a hint if none."""
    from agora_marl.agents.watch import resolve_servers
    from agora_marl.agents.watch.rundir import run_servers_file

    connect = args.connect.split(",") if args.connect else []
    run_dir = getattr(args, "run", None)
    if not connect and run_dir:
        recorded = run_servers_file(run_dir)
        if recorded is None:
            raise SystemExit(
                f"agora: {run_dir} records no servers (runs of `agora train` record them once started); "
                "give --connect ADDR"
            )
        connect = [str(recorded)]
    if not connect:
        raise SystemExit("agora: give --connect ADDR (or --run RUN_DIR of a run that recorded its servers)")
    try:
        return resolve_servers(connect, args.operator)
    except ValueError as exc:
        raise SystemExit(f"agora: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from agora_marl.agents.watch import WatchServer

    targets = targets_of(args)
    if args.run and not Path(args.run).is_dir():
        raise SystemExit(f"agora watch: {args.run} is not a directory")
    page = WatchServer(
        targets,
        port=args.port,
        fps=args.fps,
        list_every_s=args.list_every,
        run_dir=args.run,
        image_format=args.format,
    )
    try:
        url = page.start()
    except OSError as exc:
        raise SystemExit(f"agora watch: cannot listen on 127.0.0.1:{args.port} ({exc}); pick another --port") from None
    for target in targets:
        rights = "operator" if target.operator else "no operator secret: the worlds this client may see"
        print(f"agora watch: watching {target.address} ({rights})", flush=True)
    print(f"agora watch: open {url}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job (`agora watch &`) ignores it
        signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(1.0) and (args.exit_with is None or _alive(args.exit_with)):
            pass
    finally:
        page.stop()
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def watching_run(addresses: list[str], run_dir: str | Path, port: int | None, writer: bool) -> Iterator[None]:
    """For ``agora train``: record the servers of this rank in the run directory (rank 0), so that ``agora watch
    --run RUN_DIR`` finds them, and with a ``port``, serve the watch page of them and the run's curve meanwhile.

    The page runs as a process of its own (``agora watch``), so it costs the learner nothing but the frames it asks
    for; it ends with the block, or by itself when the learner is gone.
    """
    from agora_marl.agents.watch.rundir import SERVERS_FILE
    from agora_marl.envserver.protocol import write_connection_file

    if not writer:
        yield
        return
    write_connection_file(Path(run_dir) / SERVERS_FILE, addresses)
    if port is None:
        yield
        return
    command = [sys.executable, "-m", "agora_marl", "watch", "--connect", ",".join(addresses), "--run", str(run_dir)]
    page = subprocess.Popen([*command, "--port", str(port), "--exit-with", str(os.getpid())])
    try:
        yield
    finally:
        page.terminate()  # SIGTERM: its clean stop
        try:
            page.wait(timeout=10)
        except subprocess.TimeoutExpired:
            page.kill()
