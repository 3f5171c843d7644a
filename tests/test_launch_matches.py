"""Matches between runs (issue 10): ``agora eval RUN_DIR --opponent``, ``agora record RUN_A --opponent RUN_B`` and
``agora plot`` of two runs that trained the two sides of predator_prey_v0, with real short runs."""

from __future__ import annotations

import json
import re

import pytest

from agora_marl.envserver.process import ServerProcesses
from agora_marl.launch.cli import main
from agora_marl.launch.commands.plot import run_label
from agora_marl.learners.config import load_config
from agora_marl.learners.run import Run
from agora_marl.learners.training import train

WORLD = ["run.progress=false", "env.scenario=predator_prey_v0", "env.num_worlds=8"]
PREDATORS = "predator_0, predator_1, predator_2"


@pytest.fixture(scope="module")
def servers() -> list[str]:
    with ServerProcesses(count=1) as local:
        yield local.addresses


@pytest.fixture(scope="module")
def runs(servers, tmp_path_factory) -> dict[str, str]:
    """IDQN predators (against random prey), IPPO prey (against random predators), IPPO on every seat: tiny runs."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for name, overrides in [
        ("predators", ["algo=idqn", "env.seats=predator_*", "run.total_steps=1024", "idqn.learning_starts=256"]),
        ("prey", ["algo=ippo", "env.seats=prey_*", "run.total_steps=960", "ppo.rollout_steps=60", "ppo.epochs=1"]),
        ("both", ["algo=ippo", "run.total_steps=480", "ppo.rollout_steps=60", "ppo.epochs=1"]),
    ]:
        config = load_config(None, [*WORLD, *overrides])
        run = Run.create(config, root / name)
        try:
            train(config, run, servers)
        finally:
            run.close()
        made[name] = str(run.directory)
    return made


def _eval(capsys, *args: str) -> str:
    assert main(["eval", *args]) == 0
    return capsys.readouterr().out


def test_eval_puts_every_opponent_in_one_table_with_both_sides_and_win_rates(servers, runs, capsys):
    run = [runs["predators"], "--connect", servers[0], "--episodes", "8"]
    out = _eval(capsys, *run, "--baselines")
    out += _eval(capsys, *run, "--policy", "random", "--opponent", "noop", "--opponent", "random")
    out += _eval(capsys, *run, "--opponent", "random", "--opponent", runs["prey"])
    header, *lines = [line for line in out.splitlines() if line.strip()]
    assert f"the run's side plays {PREDATORS}, the opponent prey_0 (env.opponent, as it trained)" in header
    assert re.match(
        r"\s+policy\s+opponent\s+predator_\* return\s+prey_0 return\s+predator_\* wins\s+prey_0 wins", lines[0]
    )
    rows = [line.split() for line in lines if re.match(r"\s+(trained|random|noop|scripted)\s", line)]
    # --baselines: random, noop and scripted play the predators' seats too, against the opponent the run trained with.
    assert [row[:2] for row in rows] == [
        ["trained", "random"], ["random", "random"], ["noop", "random"], ["scripted", "random"],
        ["random", "noop"], ["random", "random"],
        ["trained", "random"], ["trained", runs["prey"]],
    ]  # fmt: skip
    for row in rows:
        assert re.fullmatch(r"-?\d+\.\d\d", row[2]) and row[3] == "±" and re.fullmatch(r"\d+%", row[-1]), row
        assert int(row[-1][:-1]) + int(row[-2][:-1]) == 100, row  # predator_prey names a winner every episode
    # Every match starts from the same seeded worlds and policies, whatever was played before it.
    assert rows[1] == rows[5] and rows[0] == rows[6]
    assert float(rows[3][2]) > float(rows[1][2])  # the scripted predators beat random ones: the baselines are played


def test_eval_of_a_run_that_trained_every_seat_needs_its_side_and_can_print_json(servers, runs, capsys):
    with pytest.raises(SystemExit, match=r"trained every seat .* --seats 'predator_\*'"):
        main(["eval", runs["both"], "--connect", servers[0], "--episodes", "2", "--opponent", "random"])
    out = _eval(
        capsys, runs["both"], "--connect", servers[0], "--episodes", "6", "--seats", "prey_*", "--opponent",
        runs["predators"], "--opponent", "random", "--json",
    )  # fmt: skip
    report = json.loads(out)
    assert report["seats"] == ["prey_0"] and report["opponent_seats"] == PREDATORS.split(", ")
    assert [m["opponent"] for m in report["matches"]] == [runs["predators"], "random"]
    for match in report["matches"]:
        assert match["winners_from"] == "infos" and match["win_rate"] + match["opponent_win_rate"] == pytest.approx(1)
        assert set(match["return"]) == {"mean", "std"}
    # Without --opponent a run of every seat plays them all, as before.
    whole = json.loads(_eval(capsys, runs["both"], "--connect", servers[0], "--episodes", "2", "--json"))
    assert [p["policy"] for p in whole["policies"]] == ["trained"]
    assert set(whole["policies"][0]["return"]) == {"mean", "std", "min", "max"}


def test_eval_refuses_an_opponent_run_that_did_not_train_the_other_seats(servers, runs):
    with pytest.raises(SystemExit, match=r"prey trained \['prey_0'\]: it has no policy for \['predator_0', "):
        main(["eval", runs["prey"], "--connect", servers[0], "--episodes", "2", "--opponent", runs["prey"]])
    with pytest.raises(SystemExit, match=r"trained \['predator_0', 'predator_1', 'predator_2'\], not \['prey_0'\]"):
        main(["eval", runs["predators"], "--connect", servers[0], "--seats", "prey_*", "--opponent", "random"])


def test_record_plays_a_match_between_two_runs(runs, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "match.gif"
    assert main(["record", runs["predators"], "--opponent", runs["prey"], "--episodes", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"predator_prey_v0: {runs['predators']} plays {PREDATORS}; {runs['prey']} plays prey_0" in printed
    episodes = [line for line in printed.splitlines() if line.startswith("episode")]
    assert len(episodes) == 2 and all(re.search(r"; winner (predator|prey)$", line) for line in episodes), printed
    assert all(f"{runs['prey']}: " in line for line in episodes)
    with Image.open(out) as gif:
        assert gif.n_frames > 2


def test_record_says_where_two_runs_overlap_and_refuses_seats_nobody_plays(runs, tmp_path, capsys):
    out = str(tmp_path / "m.gif")
    assert main(["record", runs["predators"], "--opponent", runs["both"], "--max-steps", "5", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert f"note: {runs['both']} also trained {PREDATORS}; {runs['predators']} plays them here" in printed
    assert f"{runs['both']} plays prey_0" in printed
    with pytest.raises(SystemExit, match=r"nobody plays prey_0: .* --agent-policy prey_0=POLICY"):
        main(["record", runs["predators"], "--opponent", runs["predators"], "--out", out])
    assert main(["record", runs["predators"], "--opponent", runs["predators"], "--agent-policy", "prey=noop"]
                + ["--max-steps", "5", "--out", out]) == 0  # fmt: skip
    assert "noop plays prey_0" in capsys.readouterr().out


def test_plot_draws_both_sides_and_their_opponent_late(runs, tmp_path, capsys):
    from pathlib import Path

    from PIL import Image

    out = tmp_path / "sides.png"
    assert main(["plot", runs["predators"], runs["prey"], "--out", str(out)]) == 0
    single = tmp_path / "one.png"
    assert main(["plot", runs["both"], "--out", str(single)]) == 0
    with Image.open(out) as both, Image.open(single) as one:
        assert both.height > 1.5 * one.height  # a second row: opponent_late, logged only by partial runs
    dirs = [Path(runs["predators"]), Path(runs["prey"])]
    assert run_label(dirs[0], "idqn", dirs, ["predator_*"]) == "predators (idqn, predator_*)"
    assert run_label(dirs[1], "ippo", dirs, ["prey_*"]) == "prey (ippo, prey_*)"
