"""``agora scenarios new``: write a documented scenario file, from scenarios/templates/, that passes the checker."""

from __future__ import annotations

import keyword
import re
from importlib import resources
from pathlib import Path

_VERSIONED = re.compile(r"^(?P<base>[a-z][a-z0-9_]*?)(?:_v(?P<version>\d+))?$")


def template_names(name: str) -> tuple[str, str, str]:
    """``(module, registered name, class name)`` for a scenario called ``name`` (``my_world`` or ``my_world_v2``).

    Raises:
        ValueError: ``name`` is not a lower-case Python identifier.
    """
    match = _VERSIONED.match(name)
    if not match or keyword.iskeyword(match["base"]) or not name.isidentifier():
        raise ValueError(
            f"scenario name {name!r} must be a lower-case identifier (letters, digits, _), such as my_world or my_world_v0"
        )
    module = match["base"]
    registered = f"{module}_v{match['version'] or 0}"
    class_name = "".join(part.capitalize() for part in module.split("_") if part) or "World"
    return module, registered, class_name


def write_scenario_template(name: str, directory: str | Path = ".", force: bool = False) -> tuple[Path, str]:
    """Write ``directory/<module>.py`` holding a working scenario called ``name``; return its path and name.

    Raises:
        ValueError: a bad name.
        FileExistsError: the file exists and ``force`` is false.
    """
    module, registered, class_name = template_names(name)
    path = Path(directory) / f"{module}.py"
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; choose another name or pass --force to overwrite it")
    text = (resources.files(__package__) / "templates" / "scenario.py.tmpl").read_text()
    text = text.replace("__NAME__", registered).replace("__CLASS__", class_name).replace("__MODULE__", module)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path, registered
