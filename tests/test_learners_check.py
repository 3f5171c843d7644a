"""``agora learners new`` and ``agora learners check``: the template trains and passes every check, so do the
built-ins, and a broken algorithm fails with what to fix (a wrong action shape, a resume that does not continue
exactly, a policy that its checkpoint cannot rebuild, settings that do not round-trip through TOML)."""

from __future__ import annotations

import sys

import pytest

from agora_marl.launch.cli import main
from agora_marl.learners.check import check_algorithm
from agora_marl.learners.new import write_algorithm_template

MPIRUN_CHECKS = ("eval", "play", "mpirun -n 2")


def _statuses(report) -> dict[str, str]:
    return {row.check: row.status for row in report.rows}


@pytest.mark.slow
def test_the_template_passes_the_checks(tmp_path, capsys, monkeypatch) -> None:
    """``agora learners new`` writes an algorithm that passes the checks as written (in this process; the checks in
    fresh processes and under mpirun run on a plugin in test_learners_plugins.py)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_a2c", raising=False)
    assert main(["learners", "new", "my_a2c"]) == 0
    written = capsys.readouterr().out
    assert "wrote my_a2c.py" in written and "agora train algo=./my_a2c.py:MyA2c" in written
    assert main(["learners", "new", "my_a2c"]) == 2  # never overwrites without --force
    report = check_algorithm("./my_a2c.py:MyA2c", out=lambda line: None, processes=False)
    assert report.ok and set(_statuses(report).values()) == {"ok"}, [row.line() for row in report.rows]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ippo", "mappo", "idqn", "vdn", "qmix", "maddpg"])
def test_the_built_ins_pass_the_checks_in_process(algo) -> None:
    """In this process: their runs in fresh processes and under mpirun are the CLI tests' (test_launch_train.py,
    test_learners_idqn.py, test_launch_matches.py), and the same checks in fresh processes run on a plugin."""
    report = check_algorithm(algo, out=lambda line: None, processes=False)
    assert report.ok, [row.line() for row in report.rows]
    statuses = _statuses(report)
    assert statuses["resume"] == statuses["policy"] == statuses["partial seats"] == "ok"
    assert statuses["self-play"] == ("skip" if algo == "idqn" else "ok")
    assert not set(MPIRUN_CHECKS) & set(statuses)


#: Edits of the template that break one rule each: (what is replaced, by what, the failing check, its message).
BROKEN = {
    "wrong-action-shape": (
        "result = worlds.step(head.to_env(raw))",
        "result = worlds.step(head.to_env(raw)[..., None])",
        "train",
        "my_a2c sent agent_0 actions of shape (4, 1) for 4 worlds in Discrete(5)",
    ),
    "inexact-resume": (
        "session.register(policy, critic=critic, optimizer=optimizer)",
        "session.register(policy, critic=critic)",
        "resume",
        "resume does not continue exactly: policy.actor.trunk.0.weight differs",
    ),
    "policy-not-rebuilt": (
        "policy = self.make_policy(session.spec, session.seats, s).to(device)",
        "policy = SharedPolicy(session.spec, session.seats, Settings(hidden=[16])).to(device)",
        "policy",
        "the checkpoint does not rebuild the policy",
    ),
    "settings-not-toml": (
        '    """Hidden layer widths of actor and critic."""\n',
        '    """Hidden layer widths of actor and critic."""\n    note: str | None = None\n    """A note."""\n',
        "settings",
        "the settings do not round-trip through TOML: cannot write None",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_algorithm_fails_with_what_to_fix(tmp_path, monkeypatch, case) -> None:
    old, new, check, message = BROKEN[case]
    path, _ = write_algorithm_template("my_a2c", tmp_path)
    text = path.read_text()
    assert old in text, f"the template changed: update the {case} case"
    path.write_text(text.replace(old, new))
    monkeypatch.delitem(sys.modules, "my_a2c", raising=False)
    lines: list[str] = []
    report = check_algorithm(f"{path}:MyA2c", out=lines.append, processes=False)
    failed = [row for row in report.rows if row.status == "FAIL"]
    assert [row.check for row in failed] == [check], lines
    assert message in failed[0].detail and "fix: " in failed[0].detail, failed[0].detail
    assert report.rows[-1].check == check  # the checks that build on it did not run
    assert len(lines) == len(report.rows)  # a progress line per check
