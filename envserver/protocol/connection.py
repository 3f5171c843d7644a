"""The JSON connection file: where a running server listens, for clients and launchers to read.

Written by ``agora serve --addr-file PATH`` (and every server process a launcher starts) once the socket is bound::

    {"protocol": 2, "server": "agora", "version": "0.2.0", "addresses": ["ipc:///tmp/agora-x/server0.sock"], "pid": 4242}

A server bound to every interface (``tcp://0.0.0.0:P``, ``tcp://*:P``, ``tcp://[::]:P``) is listed under this host's
name, the address a client on another host can use. It is written atomically (a rename), so a file that exists is
whole: a reader may poll for it. A connection file that
holds the server's operator secret (``"operator"``) is made readable by its user only, as is the operator file
(:func:`operator_file`) that ``agora serve`` writes the secret to.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import tempfile
from pathlib import Path

from agora_marl import __version__
from agora_marl.envserver.protocol.vocabulary import PROTOCOL_VERSION

#: The hosts of a tcp:// bind to every interface: a client cannot connect to them from elsewhere.
_WILDCARD_HOSTS = ("0.0.0.0", "*", "[::]")
#: Where operator files go unless ``AGORA_OPERATOR_DIR`` says otherwise.
DEFAULT_OPERATOR_DIR = Path("~/.cache/agora/operator")


def operator_file(address: str) -> Path:
    """Where ``agora serve`` keeps the operator secret of the server at ``address`` (and tools look for it)."""
    folder = Path(os.environ.get("AGORA_OPERATOR_DIR") or DEFAULT_OPERATOR_DIR).expanduser()
    return folder / re.sub(r"[^A-Za-z0-9._-]+", "_", address).strip("_")


def _write_private(path: Path, text: str, private: bool) -> None:
    """Write ``text`` to ``path`` atomically; ``private``: readable by this user only, from the first byte.

    The text goes to a new file of a random name in the same folder, created exclusively with its mode (a file
    planted under a predictable name could otherwise lend its own mode), then renamed over ``path``; the result is
    checked.

    Raises:
        PermissionError: ``path`` did not end up ours with the mode asked for.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o600 if private else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # O_EXCL, mode 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    info = os.stat(path, follow_symlinks=False)
    if stat.S_IMODE(info.st_mode) != mode or info.st_uid != os.getuid() or not stat.S_ISREG(info.st_mode):
        raise PermissionError(f"{path} is not a file of this user with mode {mode:o} after writing it")


def write_operator_file(path: str | Path, secret: str) -> None:
    """Write an operator secret to ``path``, readable by this user only."""
    _write_private(Path(path), secret + "\n", private=True)


def remove_operator_file(path: str | Path, secret: str) -> None:
    """Remove the operator file a server wrote when it stops (if it still holds that server's secret), so that
    files of servers on port 0 do not pile up."""
    path = Path(path)
    with contextlib.suppress(OSError):
        if path.read_text().strip() == secret:
            path.unlink()


def reachable_address(address: str) -> str:
    """``address`` as a client on another host can use it: a tcp:// wildcard bind becomes this host's name."""
    if not address.startswith("tcp://"):
        return address
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return f"tcp://{socket.gethostname()}:{port}" if host in _WILDCARD_HOSTS else address


def write_connection_file(path: str | Path, addresses: list[str], operator: str | None = None) -> None:
    """Write the connection file of this process's server(s) at ``path`` atomically (with the operator secret, if
    given: the file is then readable by this user only). Wildcard binds are listed as :func:`reachable_address`."""
    body = {
        "protocol": PROTOCOL_VERSION,
        "server": "agora",
        "version": __version__,
        "addresses": [reachable_address(address) for address in addresses],
        "pid": os.getpid(),
    }
    if operator is not None:
        body["operator"] = operator
    _write_private(Path(path), json.dumps(body), private=operator is not None)


def find_operator_secret(connect: str) -> str | None:
    """The operator secret for a server named by ``connect`` (a connection file or an endpoint): from the connection
    file, else from the server's operator file; None when neither holds one this user can read."""
    candidates = []
    if "://" not in connect and os.path.isfile(connect):
        try:
            secret = json.loads(Path(connect).read_text()).get("operator")
        except (ValueError, OSError, AttributeError):
            secret = None
        if isinstance(secret, str) and secret:
            return secret
        candidates = [operator_file(a) for a in read_connection_file(connect)]
    else:
        candidates = [operator_file(connect)]
    for path in candidates:
        try:
            return path.read_text().strip() or None
        except OSError:
            continue
    return None


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
