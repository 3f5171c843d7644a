"""What the watch reads of a training run's directory: its learning curve and where its servers are.

Read as files, with no learner imported: ``metrics.csv`` (one row per logged update: ``step``, ``update``, ``time_s``,
then the metrics; ``return`` is the mean episode return) and, when ``agora train`` recorded it, the connection file
``servers/connection.json`` of the servers its first rank steps its worlds on.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

METRICS_FILE = "metrics.csv"
#: Where ``agora train`` records the addresses of its first rank's servers (a connection file).
SERVERS_FILE = "servers/connection.json"
#: The most points a curve sends to the page (longer runs are thinned evenly, the last point always kept).
MAX_POINTS = 2000


def run_servers_file(run_dir: str | Path) -> Path | None:
    """The run's recorded connection file, or None when the run did not record one."""
    path = Path(run_dir) / SERVERS_FILE
    return path if path.is_file() else None


class Curve:
    """The learning curve of one run, read again only when metrics.csv changed."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self._seen: tuple[int, int] | None = None
        self._curve: dict = self._empty()

    def read(self) -> dict:
        """``{"run", "column", "points": [[step, value], ...]}``: the ``return`` column (else the first
        ``return...`` one) over ``step``; no points while the run has logged none."""
        path = self.run_dir / METRICS_FILE
        try:
            stat = os.stat(path)
        except OSError:
            return self._empty()
        if self._seen != (stat.st_mtime_ns, stat.st_size):
            self._curve = self._parse(path)
            self._seen = (stat.st_mtime_ns, stat.st_size)
        return self._curve

    def _empty(self) -> dict:
        return {"run": self.run_dir.name, "column": None, "points": []}

    def _parse(self, path: Path) -> dict:
        try:
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, csv.Error):
            return self._empty()
        columns = list(rows[0]) if rows else []
        column = "return" if "return" in columns else next((c for c in columns if c.startswith("return")), None)
        points = []
        for row in rows:
            try:
                step, value = float(row.get("step") or "nan"), float(row.get(column) or "nan") if column else math.nan
            except ValueError:
                continue  # a row being written
            if math.isfinite(step) and math.isfinite(value):
                points.append([step, value])
        if len(points) > MAX_POINTS:
            stride = math.ceil(len(points) / MAX_POINTS)
            points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
        return {"run": self.run_dir.name, "column": column, "points": points}
