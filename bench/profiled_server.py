"""Profiles an env server's CPU time, for ``bench/server_throughput.py --profile-server FILE``.

The bench starts an ordinary server with this file as a ``--scenario-module``: imported before the server binds, it
turns on a profiler of the main thread (where the server's loop runs) that counts CPU time (a wall-clock one blames
syscalls for time spent descheduled), and writes the profile to ``$AGORA_PROFILE_OUT`` when the server exits.
"""

import atexit
import cProfile
import os
import time

_profiler = cProfile.Profile(time.process_time)


def _dump(out: str = os.environ["AGORA_PROFILE_OUT"]) -> None:
    _profiler.disable()
    _profiler.dump_stats(out)


atexit.register(_dump)
_profiler.enable()
