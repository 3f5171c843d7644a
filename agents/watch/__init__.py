"""``agora watch``: a live web view of agora servers, as an observer client.

The page lists every world a server shows (an operator session: all of them) with its scenario, seats and their
holders, tick, episode, steps/s, late fills and recent returns; a click watches one world live, as frames the
server renders, with its agents' rewards; with a run directory, the learning curve beside them. It speaks only
the protocol through :class:`~agora_marl.agents.client.AgentClient`, so it works against any conforming server, and
it costs the worlds little: a ``list`` a second, and frames only of worlds some browser watches, at a bounded rate.

Imports aiohttp and Pillow, so it is not imported by ``agora_marl.agents`` itself:
``from agora_marl.agents.watch import WatchServer, resolve_servers``.
"""

from agora_marl.agents.watch.app import WatchServer
from agora_marl.agents.watch.servers import ServerWatch, Target, resolve_servers
from agora_marl.agents.watch.table import format_table, world_row

__all__ = ["ServerWatch", "Target", "WatchServer", "format_table", "resolve_servers", "world_row"]
