"""One module per ``agora`` subcommand; each has ``register(subparsers)``."""
