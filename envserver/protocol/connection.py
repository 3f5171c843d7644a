"""The JSON connection file: where a running server listens, for clients and launchers to read.

Written by ``agora serve --addr-file PATH`` (and every server process a launcher starts) once the socket is bound::

    {"protocol": 1, "server": "agora", "version": "0.2.0", "addresses": ["ipc:///tmp/agora-x/server0.sock"], "pid": 4242}

It is written atomically (a rename), so a file that exists is whole: a reader may poll for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agora_marl import __version__
from agora_marl.envserver.protocol.vocabulary import PROTOCOL_VERSION


def write_connection_file(path: str | Path, addresses: list[str]) -> None:
    """Write the connection file of this process's server(s) at ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "protocol": PROTOCOL_VERSION,
        "server": "agora",
        "version": __version__,
        "addresses": list(addresses),
        "pid": os.getpid(),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)


def read_connection_file(path: str | Path) -> list[str]:
    """The addresses a connection file lists.

    Raises:
        ValueError: the file is not a connection file, or lists no address.
    """
    try:
        body = json.loads(Path(path).read_text())
        addresses = [str(a) for a in body["addresses"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not an agora connection file ({type(exc).__name__}: {exc})") from None
    if not addresses:
        raise ValueError(f"connection file {path} lists no addresses")
    return addresses


def resolve_address(connect: str) -> str:
    """The first address of a connection file, or ``connect`` itself when it is an endpoint (``tcp://``, ``ipc://``)."""
    if "://" not in connect and os.path.isfile(connect):
        return read_connection_file(connect)[0]
    return connect
