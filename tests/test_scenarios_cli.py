"""``agora scenarios list|check|new`` and ``agora record``, run through the real argument parser."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

import agora_marl.scenarios.registry as registry
from agora_marl.launch.cli import main

FAST_CHECK = ["--no-wire", "--seconds", "0.02", "--steps", "60", "--batch", "8"]


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry.registered()))
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_list_shows_every_registered_scenario_with_agents_and_spaces(capsys):
    assert main(["scenarios", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("foraging_v0", "predator_prey_v0", "cover_v0"):
        assert name in out
    assert "3 predator + 1 prey" in out and "Box(9) -> Discrete(5); Box(8) -> Box(2)" in out
    assert "[vectorised]" in out and "MODULE:CALLABLE" in out and "gymnasium:ENV_ID" in out


def test_check_passes_a_builtin_and_prints_the_table(capsys):
    assert main(["scenarios", "check", "foraging_v0", "--config", "size=5", *FAST_CHECK]) == 0
    out = capsys.readouterr().out
    assert (
        "parallel_api_test" in out
        and "in process, vectorised K=8" in out
        and out.rstrip().splitlines()[-1].startswith("PASS")
    )


def test_check_exits_non_zero_on_a_failing_scenario(tmp_path, capsys, scratch_registry):
    broken = tmp_path / "leaky.py"
    broken.write_text(
        "import numpy as np\n"
        "from agora_marl.scenarios import register\n"
        "from agora_marl.scenarios.builtin.cover import Cover\n"
        "from agora_marl.scenarios.vector import vector_env\n"
        "class Leaky(Cover):\n"
        "    def _observe(self):\n"
        "        obs = super()._observe()\n"
        "        return {a: v * 100 for a, v in obs.items()}  # outside Box(-2, 2)\n"
        "register('leaky_v0', vector_env(Leaky), vector_factory=Leaky)\n"
    )
    assert main(["scenarios", "check", "leaky_v0", "--module", str(broken), *FAST_CHECK]) == 1
    out = capsys.readouterr().out
    assert "values" in out and "FAIL" in out


def test_check_refuses_a_missing_module():
    with pytest.raises(SystemExit, match="cannot import scenario module"):
        main(["scenarios", "check", "x_v0", "--module", "no_such_module_anywhere"])


def test_new_writes_a_template_that_checks_and_refuses_to_overwrite(tmp_path, capsys, scratch_registry):
    assert main(["scenarios", "new", "garden", "--dir", str(tmp_path)]) == 0
    assert "garden_v0" in capsys.readouterr().out
    assert main(["scenarios", "check", "garden_v0", "--module", str(tmp_path / "garden.py"), *FAST_CHECK]) == 0
    assert main(["scenarios", "new", "garden", "--dir", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["scenarios", "new", "garden", "--dir", str(tmp_path), "--force"]) == 0
    assert main(["scenarios", "new", "Bad-Name", "--dir", str(tmp_path)]) == 2


def test_new_prints_commands_that_work_from_a_directory_outside_the_repository(tmp_path):
    """The printed next steps read the new file as a path: no PYTHONPATH, no repository on sys.path."""
    agora = [sys.executable, "-m", "agora_marl"]
    done = subprocess.run([*agora, "scenarios", "new", "garden"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    steps = [line.split() for line in done.stdout.splitlines() if line.startswith("  agora ")]
    assert [s[1] for s in steps] == ["scenarios", "record", "serve"] and "PYTHONPATH" not in done.stdout
    assert steps[2] == ["agora", "serve", "--scenario-module", "./garden.py"]
    check = [*agora, *steps[0][1:], *FAST_CHECK]
    done = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and "PASS" in done.stdout, done.stdout + done.stderr
    # What `agora serve --scenario-module ./garden.py` does first, in a process whose cwd is not the repository:
    load = "from agora_marl.scenarios import load_scenario_module; print(load_scenario_module('./garden.py'))"
    done = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "['garden_v0']", done.stdout + done.stderr


def test_record_writes_a_gif_of_the_episode(tmp_path, capsys):
    out = tmp_path / "episode.gif"
    assert main(["record", "--scenario", "foraging_v0", "--max-steps", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "episode 0: return" in printed and "of 13 rendered" in printed  # the reset frame and one per step
    with Image.open(out) as gif:
        # Pillow merges identical consecutive frames (agents standing still) into one longer frame.
        assert 2 <= gif.n_frames <= 13 and gif.size == (192, 192)


def test_record_gives_a_team_its_own_policy(tmp_path, capsys):
    out = tmp_path / "hunt.gif"
    args = ["record", "--scenario", "predator_prey_v0", "--policy", "noop", "--agent-policy", "prey=random"]
    assert main([*args, "--episodes", "2", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("episode 0") and lines[1].startswith("episode 1")
    with pytest.raises(SystemExit, match="no agent or team"):
        main(["record", "--scenario", "predator_prey_v0", "--agent-policy", "wolf=random", "--out", str(out)])
