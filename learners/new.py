"""``agora learners new NAME``: write a one-file algorithm, from learners/templates/, that trains out of the box."""

from __future__ import annotations

import keyword
import re
from importlib import resources
from pathlib import Path

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def write_algorithm_template(name: str, directory: str | Path = ".", force: bool = False) -> tuple[Path, str]:
    """Write ``directory/<name>.py`` holding a working algorithm called ``name``; return its path and class name.

    Raises:
        ValueError: ``name`` is not a lower-case Python identifier.
        FileExistsError: the file exists and ``force`` is false.
    """
    if not _NAME.match(name) or keyword.iskeyword(name) or name in ("algo", "env", "run", "selfplay"):
        raise ValueError(
            f"algorithm name {name!r} must be a lower-case identifier (letters, digits, _), such as my_a2c, and not "
            "a config table (algo, env, run, selfplay)"
        )
    class_name = "".join(part.capitalize() for part in name.split("_") if part)
    path = Path(directory) / f"{name}.py"
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; choose another name or pass --force to overwrite it")
    text = (resources.files(__package__) / "templates" / "algorithm.py.tmpl").read_text()
    text = text.replace("__NAME__", name).replace("__CLASS__", class_name).replace("__MODULE__", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path, class_name
