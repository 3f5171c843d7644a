"""``python -m envserver``: the same as ``agora serve`` (used by launchers that start servers as subprocesses)."""

import sys

from agora_marl.launch.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
