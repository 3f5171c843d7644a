"""``python -m agora_marl.envserver [FLAGS]``: run an env server (the flags of ``agora serve``; see serve.py)."""

import sys

from agora_marl.envserver.serve import main

sys.exit(main())
