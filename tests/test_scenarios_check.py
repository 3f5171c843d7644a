"""The checker passes every registered scenario and the template, in process and over the wire, and catches bugs,
under ``python -O`` too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gymnasium.spaces import Box, Discrete

import agora_marl.scenarios.registry as registry
from agora_marl.launch.scenario_wire import check_everything
from agora_marl.scenarios.api import Scenario, scenario_env
from agora_marl.scenarios.builtin.cover import Cover
from agora_marl.scenarios.check import CheckSettings, check_scenario
from agora_marl.scenarios.new import write_scenario_template
from agora_marl.scenarios.rates import RateSettings
from agora_marl.scenarios.vector import VectorScenario, vector_env

ROOT = Path(__file__).resolve().parent.parent
QUICK = CheckSettings(api_cycles=100, steps=120)
QUICK_RATES = RateSettings(seconds=0.05, batch_worlds=16)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Scenarios registered inside the test are forgotten after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry.registered()))


def _verdicts(report) -> dict[str, bool | None]:
    return {r.name: r.passed for r in report.results}


@pytest.mark.parametrize("name", sorted(registry.registered()))
def test_every_registered_scenario_passes_in_process_and_over_the_wire(name):
    report = check_everything(name, QUICK, QUICK_RATES)
    assert report.ok, report.table()
    verdicts = _verdicts(report)
    assert verdicts["wire"] is True and verdicts["determinism"] is True
    assert verdicts["vector"] is (True if registry.registered()[name].vector_factory else None)
    assert "in process, 1 world" in report.rates and "served, K=16 batched" in report.rates


def test_the_template_passes_as_written(tmp_path, scratch_registry):
    path, name = write_scenario_template("tiny_world", tmp_path)
    assert registry.load_scenario_module(str(path)) == ["tiny_world_v0"] and name == "tiny_world_v0"
    report = check_everything(name, QUICK, QUICK_RATES)
    assert report.ok, report.table()
    assert _verdicts(report)["wire"] is True


class _Base(Scenario):
    name = "broken_v0"
    max_cycles = 20

    def __init__(self):
        self.possible_agents = ["a", "b"]

    def observation_space(self, agent):
        return Box(-1.0, 1.0, (2,), np.float32)

    def action_space(self, agent):
        return Discrete(3)

    def reset(self):
        self.x = self.rng.uniform(-1, 1, 2)

    def step(self, actions):
        self.x = np.clip(self.x + 0.1 * (np.array([actions["a"], actions["b"]]) - 1), -1, 1)

    def observe(self, agent):
        return self.x.astype(np.float32)

    def reward(self, agent):
        return -float(abs(self.x).sum())


class _GlobalRandom(_Base):
    def reset(self):
        self.x = np.random.uniform(-1, 1, 2)  # not self.rng: the seed does not reach it


class _OutOfSpace(_Base):
    def observe(self, agent):
        return (self.x * 3).astype(np.float32)


class _BadCopySeeds(Cover):
    """Seeds every copy with ``seed`` instead of ``seed + i`` (one copy, the per-copy form, is still right)."""

    def seed_copies(self, seed, copies):
        index = super().seed_copies(None, copies)
        if seed is not None:
            for i in index.tolist():
                self.rngs[i] = np.random.default_rng(seed)
        return index


@pytest.mark.parametrize(
    ("cls", "failing"),
    [(_GlobalRandom, "determinism"), (_OutOfSpace, "values")],
)
def test_broken_scenarios_fail_the_named_check(cls, failing, scratch_registry):
    registry.register("broken_v0", scenario_env(cls))
    report = check_scenario("broken_v0", CheckSettings(api_cycles=30, steps=60))
    assert not report.ok
    assert _verdicts(report)[failing] is False, report.table()
    assert "FAIL" in report.table().splitlines()[-1]


def test_a_vector_form_that_seeds_copies_wrongly_fails_the_vector_check(scratch_registry):
    registry.register("badcopies_v0", vector_env(_BadCopySeeds), vector_factory=_BadCopySeeds)
    report = check_scenario("badcopies_v0", CheckSettings(steps=30))
    assert _verdicts(report)["vector"] is False, report.table()
    assert _verdicts(report)["determinism"] is True


def test_an_unbuildable_name_fails_at_build_and_stops():
    report = check_everything("no_such_world_v0", QUICK, QUICK_RATES)
    assert [(r.name, r.passed) for r in report.results] == [("build", False)]
    assert "not a registered scenario" in report.results[0].detail


_BROKEN = """
import numpy as np
from gymnasium.spaces import Box, Discrete

from agora_marl.scenarios import Scenario, register, scenario_env


class Leaky(Scenario):
    name = "leaky_v0"
    max_cycles = 10

    def __init__(self):
        self.possible_agents = ["a", "b"]

    def observation_space(self, agent):
        return Box(-1.0, 1.0, (2,), np.float32)

    def action_space(self, agent):
        return Discrete(2)

    def reset(self):
        pass

    def step(self, actions):
        pass

    def observe(self, agent):
        return np.full(2, 3.0, np.float32)  # outside Box(-1, 1)

    def reward(self, agent):
        return 0.0


class Poisoned(Leaky):
    def observe(self, agent):
        return np.zeros(2, np.float32)

    def reward(self, agent):
        return float("nan")


register("leaky_v0", scenario_env(Leaky))
register("poisoned_v0", scenario_env(Poisoned))
"""

_DRIVER = """
import sys

from agora_marl.launch.cli import main

assert False, "this script must run under python -O"
fast = ["--seconds", "0.02", "--steps", "60", "--batch", "8"]
for name in ("leaky_v0", "poisoned_v0"):
    print("rc", name, main(["scenarios", "check", name, "--module", "./broken.py", "--no-wire", *fast]), flush=True)
print("rc foraging_v0", main(["scenarios", "check", "foraging_v0", *fast]), flush=True)
"""


def test_the_checker_fails_a_broken_scenario_under_python_O_and_passes_a_good_one(tmp_path):
    """``python -O`` strips ``assert``: the checks must raise real errors, with a message that says what to fix."""
    (tmp_path / "broken.py").write_text(_BROKEN)
    (tmp_path / "driver.py").write_text(_DRIVER)
    done = subprocess.run(
        [sys.executable, "-O", "driver.py"], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("rc "))
    tables = {t.split("\n", 1)[0]: t for t in printed.split("scenario ")[1:]}
    rows = {
        name: {line.split()[0]: line for line in tables[name].splitlines()[2:] if line.startswith("  ")}
        for name in tables
    }
    assert "rc leaky_v0 1" in done.stdout and "rc poisoned_v0 1" in done.stdout, done.stdout
    leaky = rows["leaky_v0"]["values"]
    assert "FAIL" in leaky and "observation" in leaky and "is outside Box" in leaky and "fix:" in leaky, leaky
    poisoned = rows["poisoned_v0"]
    assert "FAIL" in poisoned["values"] and "reward nan is not a finite number" in poisoned["values"]
    assert "fix:" in poisoned["values"]
    assert "pass" in poisoned["determinism"], poisoned  # NaN equals NaN: the NaN is blamed once, on values
    assert "python -O" in poisoned["parallel_api_test"]  # PettingZoo's own asserts are off, and the row says so
    assert "rc foraging_v0 0" in done.stdout, done.stdout
    assert tables["foraging_v0"].rstrip().splitlines()[-1].startswith("PASS")
    assert "pass" in rows["foraging_v0"]["wire"]


class _Blind(Cover):
    """cover_v0 without its picture: a vectorised world that says nothing about rendering."""

    render = VectorScenario.render


class _NoCopyIndex(Cover):
    def render(self):  # the copy index forgotten
        return super().render(0)


class _GreyFloats(Cover):
    def render(self, copy=0):
        return super().render(copy).astype(np.float32)


@pytest.mark.parametrize(
    ("per_copy", "vector", "verdict", "says"),
    [
        (_Blind, _Blind, None, "render(self, copy=0)"),  # neither form renders: skipped, with what to add
        (Cover, _Blind, False, "the vectorised form has no render(copy)"),  # record draws, the server cannot
        (_Blind, Cover, False, "declares no rgb_array render mode"),  # the server draws, record cannot
        (_NoCopyIndex, _NoCopyIndex, False, "raised TypeError"),
        (_GreyFloats, _GreyFloats, False, "not uint8 (H, W, 3)"),
    ],
)
def test_the_render_check_says_what_a_vectorised_world_lacks(per_copy, vector, verdict, says, scratch_registry):
    registry.register("drawn_v0", vector_env(per_copy), vector_factory=vector)
    report = check_scenario("drawn_v0", CheckSettings(api_cycles=20, steps=30))
    row = next(r for r in report.results if r.name == "render")
    assert row.passed is verdict and says in row.detail, report.table()
    if verdict is False:
        assert "fix:" in row.detail


def test_a_vectorised_world_that_renders_passes_the_render_check():
    report = check_scenario("cover_v0", CheckSettings(api_cycles=20, steps=30))
    row = next(r for r in report.results if r.name == "render")
    assert row.passed and "rgb_array 256x256" in row.detail and "copy 0 equal to the per-copy form" in row.detail


def test_record_of_a_world_that_cannot_render_says_what_to_add(scratch_registry, tmp_path):
    from agora_marl.launch.cli import main

    registry.register("blind_v0", vector_env(_Blind), vector_factory=_Blind)
    with pytest.raises(SystemExit, match=r"does not render.*render\(self, copy=0\)"):
        main(["record", "--scenario", "blind_v0", "--out", str(tmp_path / "x.gif")])


def test_the_documented_vector_example_passes_with_box_actions_and_renders(scratch_registry):
    """examples/drift_vector.py (docs/scenarios.md): continuous actions, truncation and rendering, served batched."""
    assert registry.load_scenario_module(str(ROOT / "examples" / "drift_vector.py")) == ["drift_v0"]
    report = check_everything("drift_v0", QUICK, QUICK_RATES)
    assert report.ok, report.table()
    verdicts = _verdicts(report)
    assert verdicts["vector"] is True and verdicts["render"] is True and verdicts["wire"] is True
    assert "Box(-1.0, 1.0, (2,), float32)" in report.results[0].detail
    assert "served, K=16 batched" in report.rates  # the vector-backed worlds stepped with Box actions
