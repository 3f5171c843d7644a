"""``agora keys new NAME``: a CurveZMQ key pair, for a server (``--curve-secret``) or a client it lets in (``--clients``)."""

from __future__ import annotations

import argparse
from pathlib import Path

_EPILOG = """\
examples:
  agora keys new server --dir keys                 # keys/server.key (public) and keys/server.key_secret
  agora keys new alice --dir keys/clients          # one per client; give alice her .key_secret, keep the .key
  agora serve --bind tcp://0.0.0.0:5555 --curve-secret keys/server.key_secret --clients keys/clients
  agora play --connect tcp://HOST:5555 --server-key keys/server.key --client-key alice.key_secret --scenario ...

A .key file holds only the public key and may be shared; a .key_secret file must stay with its owner.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "keys",
        help="make CurveZMQ keys for servers and the clients they let in",
        description="Make CurveZMQ key pairs (ZeroMQ certificate files) for an encrypted, authenticated server.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="write NAME.key (public) and NAME.key_secret (keep it private)")
    new.add_argument("name", help="the key's name: the files are NAME.key and NAME.key_secret")
    new.add_argument("--dir", type=Path, default=Path("."), help="where to write them (default: here)")
    new.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import zmq.auth

    args.dir.mkdir(parents=True, exist_ok=True)
    public, secret = (args.dir / f"{args.name}.key", args.dir / f"{args.name}.key_secret")
    for path in (public, secret):
        if path.exists():
            raise SystemExit(f"agora keys: {path} exists; pick another name or remove it first")
    zmq.auth.create_certificates(args.dir, args.name)
    secret.chmod(0o600)
    print(f"wrote {public} (public: give it to whoever must trust this key) and {secret} (private: keep it)")
    return 0
