"""The worlds of a server as rows: ``list`` entries made uniform, and the table ``agora worlds`` prints.

A row has every field the page and the terminal show, whatever the server sent: a server that predates a field
(``holders``, ``steps_per_s``, ``returns`` ...) gets ``None`` or an empty value there, never a missing key.
"""

from __future__ import annotations

from typing import Any

#: How a seat's state reads in the table: a held seat's holder is live, a lost one's went silent.
SEAT_WORDS = {"held": "live", "lost": "lost", "free": "free"}


def world_row(entry: dict, server: int = 0) -> dict[str, Any]:
    """One ``list`` entry of server number ``server`` as a row (plain JSON data)."""
    agents = [str(a) for a in entry.get("agents") or []]
    seats = entry.get("seats") or {}
    holders = entry.get("holders") or {}
    world = int(entry["world"])
    rate = entry.get("steps_per_s")
    return {
        "key": f"{server}:{world}",
        "server": server,
        "world": world,
        "scenario": str(entry.get("scenario", "?")),
        "seats": [
            {
                "agent": agent,
                "state": str(seats.get(agent, "free")),
                "holder": None if holders.get(agent) is None else str(holders[agent]),
            }
            for agent in agents or list(seats)
        ],
        "observers": entry.get("observers"),
        "public": entry.get("public"),
        "render": entry.get("render"),
        "tick": int(entry.get("tick", 0)),
        "episode": int(entry.get("episode", 0)),
        "steps_per_s": None if rate is None else float(rate),
        "late": entry.get("late"),
        "returns": [float(r) for r in entry.get("returns") or []],
        "rewards": {str(a): float(r) for a, r in (entry.get("rewards") or {}).items()},
    }


def format_table(rows: list[dict], addresses: list[str] | None = None) -> str:
    """The rows as a terminal table: one line per world, then one indented line per seat."""
    if not rows:
        return "no worlds"
    several = addresses is not None and len(addresses) > 1
    header = ["WORLD", "SCENARIO", "TICK", "EPISODE", "STEPS/S", "LATE", "OBSERVERS", "RETURNS (last; mean of recent)"]
    if several:
        header.insert(0, "SERVER")
    lines = []
    for row in rows:
        cells = [
            str(row["world"]),
            row["scenario"],
            str(row["tick"]),
            str(row["episode"]),
            _number(row["steps_per_s"], "{:.1f}"),
            _number(row["late"], "{}"),
            _number(row["observers"], "{}"),
            _returns(row["returns"]),
        ]
        if several:
            cells.insert(0, str(row["server"]))
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row, cells in zip(rows, lines, strict=True):
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        for seat in row["seats"]:
            holder = seat["holder"] or "-"
            out.append(f"    {seat['agent']:<16} {SEAT_WORDS.get(seat['state'], seat['state']):<5} {holder}")
    if several:
        out.append("")
        out.extend(f"server {i}: {address}" for i, address in enumerate(addresses))
    return "\n".join(out)


def _number(value: Any, form: str) -> str:
    return "-" if value is None else form.format(value)


def _returns(returns: list[float]) -> str:
    if not returns:
        return "-"
    return f"{returns[-1]:.3g}; {sum(returns) / len(returns):.3g} over {len(returns)}"
