"""``python -m agora_marl ...``: the ``agora`` command."""

import sys

from agora_marl.launch.cli import main

sys.exit(main())
