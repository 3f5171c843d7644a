"""A new user's first day (issue 12): two players in one world, server errors in one line, policy modules found where
scenario modules are, what train, eval, record and plot report."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agora_marl.agents.play import PlayError, PlaySettings, play
from agora_marl.launch.cli import main
from agora_marl.launch.commands.plot import run_label
from agora_marl.launch.commands.train import returns_summary

SPREAD = "mpe2.simple_spread_v3:parallel_env"
ROOT = Path(__file__).resolve().parent.parent
AGORA = Path(sys.executable).parent / "agora"  # the console script: its sys.path lacks the working directory


def _agora(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agora_marl", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


# -- 1. joining someone else's world -----------------------------------------------------------------------------


def test_a_creator_waiting_for_seats_plays_with_the_player_who_joins(server):
    """The creator's world does not step before the joiner holds its seats; both then play the same episodes."""
    creator_lines: list[str] = []
    created = threading.Event()
    episodes_when_joined: list[int] = []

    def creator_out(line: str) -> None:
        creator_lines.append(line)
        if line.startswith("waiting up to"):
            created.set()

    def joiner_out(line: str) -> None:
        if line.startswith("playing"):
            episodes_when_joined.append(sum(x.startswith("episode") for x in creator_lines))

    returns: dict[str, list[float]] = {}
    creator = PlaySettings(
        server.address, scenario=SPREAD, config={"max_cycles": 4}, seats=["agent_0"], episodes=2, wait_for_seats=30
    )
    thread = threading.Thread(target=lambda: returns.setdefault("creator", play(creator, out=creator_out)))
    thread.start()
    assert created.wait(30), creator_lines
    world = int(re.search(r"created world (\d+)", creator_lines[0]).group(1))
    hint = next(line for line in creator_lines if line.startswith("waiting up to"))
    assert f"--world {world} --seat agent_1 --seat agent_2" in hint  # the creator says how to join
    joiner = PlaySettings(server.address, world=world, seats=["agent_1", "agent_2"], episodes=2)
    returns["joiner"] = play(joiner, out=joiner_out)
    thread.join(30)
    assert not thread.is_alive()
    assert episodes_when_joined == [0]  # nothing was played with filled seats before the joiner came
    assert len(returns["creator"]) == 2 and len(returns["joiner"]) == 2
    assert "every seat of world" in creator_lines[-3]  # then two episodes


def test_waiting_for_seats_is_bounded_with_a_clear_message(server):
    settings = PlaySettings(server.address, scenario=SPREAD, seats=["agent_0"], episodes=1, wait_for_seats=0.3)
    with pytest.raises(PlayError, match=r"nobody took seats \['agent_1', 'agent_2'\] of world \d+ within 0.3 s"):
        play(settings, out=lambda line: None)


def test_the_cli_says_what_went_wrong_in_one_line(server, capsys):
    """Play errors, server refusals (with the hint) and silent servers: one line on stderr, exit 1, no traceback."""
    cases = [
        (["play", "--connect", server.address, "--world", "999"], "there is no world 999"),
        (["play", "--connect", server.address, "--scenario", "no_such_world_v0"], "[scenario_not_allowed]"),
        (["play", "--connect", "tcp://127.0.0.1:9", "--scenario", SPREAD, "--timeout", "0.3"], "no reply from"),
        (["play", "--connect", server.address, "--scenario", SPREAD, "--seat", "agent_0", "--wait-for-seats", "0.2"],
         "nobody took seats"),
    ]  # fmt: skip
    errors = []
    for argv, expected in cases:
        assert main(argv) == 1, argv
        errors.append(capsys.readouterr().err)
        assert errors[-1].count("\n") == 1 and errors[-1].startswith("agora play: error: "), errors[-1]
        assert expected in errors[-1], errors[-1]
    assert "(hint: " in errors[1]  # a refusal comes with the server's hint


def test_a_bug_keeps_its_traceback(monkeypatch):
    import agora_marl.launch.commands.worlds as worlds

    def broken(args):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(worlds, "run", broken)
    with pytest.raises(ZeroDivisionError):
        main(["worlds", "--connect", "tcp://127.0.0.1:9"])


def test_the_play_command_waits_for_a_second_player_and_prints_mean_and_std(server, tmp_path):
    creator = subprocess.Popen(
        [sys.executable, "-m", "agora_marl", "play", "--connect", server.address, "--scenario", SPREAD]
        + ["--config", "max_cycles=3", "--seat", "agent_0", "--episodes", "2", "--wait-for-seats", "60"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not (lines and lines[-1].startswith("waiting up to")):
            lines.append(creator.stdout.readline())
            assert lines[-1], creator.stderr.read()
        join = re.search(r"joins with: agora play (.*)$", lines[-1]).group(1).split()
        joined = _agora("play", *join, "--episodes", "2")
        out, err = creator.communicate(timeout=60)
    finally:
        creator.kill()
    assert creator.returncode == 0 and joined.returncode == 0, err + joined.stderr
    for stdout in (out, joined.stdout):
        assert len(re.findall(r"^episode \d: return", stdout, re.M)) == 2
        assert re.search(r"^2 episodes: return -?[\d.]+ ± [\d.]+ \(mean ± std over 2 episodes\)$", stdout, re.M)


# -- 2. a policy module is found where a scenario module is -------------------------------------------------------

_POLICIES = """
def make(observation_space, action_space):
    return lambda obs: 0
"""


@pytest.mark.parametrize("spec", ["pz_policies_rough:make", "./pz_policies_rough.py:make"])
def test_a_policy_module_in_the_current_directory_is_found_like_a_scenario_module(tmp_path, spec):
    (tmp_path / "pz_policies_rough.py").write_text(_POLICIES)
    if not AGORA.exists():
        pytest.skip(f"no console script at {AGORA}")
    done = subprocess.run(
        [str(AGORA), "record", "--scenario", "foraging_v0", "--policy", spec, "--max-steps", "3", "--out", "t.gif"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "SDL_VIDEODRIVER": "dummy"},  # no PYTHONPATH
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "t.gif").exists()


# -- 3. train's last word ----------------------------------------------------------------------------------------


def test_train_reports_the_last_known_return_when_the_last_update_ended_no_episode(tmp_path):
    rows = [
        {"step": 100, "update": 1, "time_s": 1.0, "return": "", "episodes": 0},
        {"step": 200, "update": 2, "time_s": 2.0, "return": -12.5, "episodes": 4},
        {"step": 300, "update": 3, "time_s": 3.0, "return": "", "episodes": 0},
    ]
    with (tmp_path / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert (
        returns_summary({"episodes": 0.0}, tmp_path)
        == "return -12.5 at step 200, the last update that ended an episode"
    )
    assert returns_summary({"return": -3.0}, tmp_path) == "return -3"
    assert returns_summary({}, tmp_path / "nothing") == "no episode finished"


# -- 4. baselines next to the trained return ---------------------------------------------------------------------


def test_eval_puts_the_trained_return_next_to_baselines(server, tmp_path):
    run_dir = tmp_path / "run"
    trained = subprocess.run(
        [sys.executable, "-m", "agora_marl", "train", "--connect", server.address, "run.total_steps=200"]
        + ["env.num_worlds=4", "ppo.epochs=1", "run.progress=false", f"run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "AGORA_MPI": "off"},
    )
    assert trained.returncode == 0, trained.stderr
    evaluated = _agora("eval", str(run_dir), "--connect", server.address, "--episodes", "4", "--baselines")
    assert evaluated.returncode == 0, evaluated.stderr
    lines = {line.split()[0]: line for line in evaluated.stdout.splitlines()[1:]}
    assert list(lines) == ["trained", "random", "noop", "scripted"], evaluated.stdout  # simple_spread has scripted
    for line in lines.values():
        assert re.search(r"return -?[\d.]+ ± [\d.]+ \(mean ± std over 4 episodes", line), line
    mean = {name: float(re.search(r"return (-?[\d.]+)", line).group(1)) for name, line in lines.items()}
    assert mean["scripted"] > mean["noop"]  # the baselines are played, not printed
    refused = _agora("eval", str(run_dir), "--connect", server.address, "--episodes", "1", "--policy", "clever")
    assert refused.returncode != 0 and "unknown policy 'clever'" in refused.stderr


# -- 5. record and plot say what they wrote ----------------------------------------------------------------------


def test_record_counts_the_frames_in_the_file(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "noop.gif"
    args = ["record", "--scenario", "foraging_v0", "--policy", "noop", "--max-steps", "20", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    frames = int(re.search(r"wrote .*: (\d+) frames", printed).group(1))
    with Image.open(out) as gif:
        assert frames == gif.n_frames
    assert frames < 21 and f"{frames} frames of 21 rendered (identical ones merged)" in printed  # agents stand still


def test_plot_labels_name_each_run_once():
    runs = [Path("runs/mappo"), Path("runs/ippo-seed1"), Path("a/x"), Path("b/x")]
    assert run_label(runs[0], "mappo", runs) == "mappo"
    assert run_label(runs[1], "ippo", runs) == "ippo-seed1"
    assert run_label(runs[2], "mappo", runs) == "a/x (mappo)"
    assert run_label(Path("runs/mappo-2"), "ippo", runs) == "mappo-2 (ippo)"


def test_a_closed_pipe_ends_the_command_quietly():
    """`agora scenarios list | head -1`: the reader goes away; the command stops without a traceback."""
    proc = subprocess.Popen([str(AGORA), "scenarios", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the command prints anything
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
