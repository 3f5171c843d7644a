"""The registry builds what a server may host and refuses everything else; operators' modules register scenarios."""

from __future__ import annotations

import sys

import pytest
from pettingzoo import ParallelEnv
from pettingzoo.utils.conversions import aec_to_parallel_wrapper

import agora_marl.scenarios.registry as registry
from agora_marl.scenarios import ScenarioNotAllowed, check_allowed, make_env, make_vector, register
from agora_marl.scenarios.new import write_scenario_template


@pytest.fixture
def scratch_registry(monkeypatch):
    """Scenarios registered inside the test are forgotten after it (and so is sys.path)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry.registered()))
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.mark.parametrize(
    "name",
    [
        "os:system",
        "subprocess:Popen",
        "pettingzoo.utils:something_not_constructor",
        "mpe2.simple_spread_v3:__init__",
        "builtins:eval",
        "mpe2..simple_spread_v3:env",
        "../mpe2:env",
        "not_registered_v0",
        "",
        # gymnasium imports the module named before a colon inside an env id: the same allow-list applies to it.
        "gymnasium:unittest.__main__:X-v0",
        "gymnasium:this:X-v0",
        "gymnasium:os:CartPole-v1",
        "gymnasium:gymnasium._private:CartPole-v1",
        "gymnasium:a:b:CartPole-v1",
        "gymnasium:",
        "gymnasium:CartPole-v1\n",
        "gymnasium:Cart Pole-v1",
        "gymnasium:../CartPole-v1",
        "mpe2.simple_spread_v3:parallel_env\x00",
        "x" * 1000,
    ],
)
def test_names_outside_the_allowlist_are_refused_before_any_import(name, monkeypatch):
    imported = []
    monkeypatch.setattr(registry.importlib, "import_module", lambda *a, **k: imported.append(a) or sys)
    with pytest.raises(ScenarioNotAllowed):
        make_env(name)
    assert imported == [] or imported == [("agora_marl.scenarios.builtin",)]


def test_a_refused_gymnasium_name_imports_nothing_and_a_module_inside_the_allowlist_is_kept():
    sys.modules.pop("this", None)
    with pytest.raises(ScenarioNotAllowed, match="'this' is outside the allowed packages"):
        make_env("gymnasium:this:X-v0")
    assert "this" not in sys.modules
    check_allowed("gymnasium:gymnasium.envs.classic_control:CartPole-v1")
    check_allowed("gymnasium:mpe2.simple_spread_v3:Spread-v0")  # allowed package: gymnasium imports it
    with pytest.raises(ScenarioNotAllowed, match="outside the allowed packages"):
        check_allowed("gymnasium:mpe2.simple_spread_v3:Spread-v0", allowed_packages=("gymnasium",))
    env = make_env("gymnasium:gymnasium.envs.classic_control:CartPole-v1")
    assert env.possible_agents == ["agent_0"]


def test_gymnasium_is_allowed_only_when_its_package_is():
    check_allowed("gymnasium:CartPole-v1")
    with pytest.raises(ScenarioNotAllowed, match="gymnasium"):
        check_allowed("gymnasium:CartPole-v1", allowed_packages=("scenarios", "mpe2"))
    with pytest.raises(ScenarioNotAllowed, match="outside the allowed packages"):
        check_allowed("mpe2.simple_spread_v3:parallel_env", allowed_packages=("scenarios",))


def test_builds_mpe2_and_gymnasium_names():
    spread = make_env("mpe2.simple_spread_v3:parallel_env", {"N": 2})
    assert isinstance(spread, ParallelEnv) and spread.possible_agents == ["agent_0", "agent_1"]
    cartpole = make_env("gymnasium:CartPole-v1")
    obs, _ = cartpole.reset(seed=0)
    assert cartpole.possible_agents == ["agent_0"] and obs["agent_0"].shape == (4,)


def test_aec_environments_are_converted_to_parallel():
    env = make_env("mpe2.simple_spread_v3:env", {"N": 2, "max_cycles": 3})
    assert isinstance(env, aec_to_parallel_wrapper)
    env.reset(seed=0)
    for _ in range(3):
        _, rewards, _, truncated, _ = env.step({a: 0 for a in env.agents})
    assert set(rewards) == {"agent_0", "agent_1"} and all(truncated.values()) and env.agents == []
    rps = make_env("pettingzoo.classic.rps_v2:env")
    assert isinstance(rps, aec_to_parallel_wrapper)


def test_turn_based_aec_environments_are_refused():
    with pytest.raises(ValueError, match="turn-based"):
        make_env("pettingzoo.classic.tictactoe_v3:env")


def test_registered_names_carry_config_defaults_and_refuse_colons(scratch_registry):
    from agora_marl.scenarios.builtin.foraging import Foraging, parallel_env

    register("foraging_small_v0", parallel_env, "small", vector_factory=Foraging, defaults={"size": 4})
    assert make_env("foraging_small_v0").vector.size == 4
    assert make_env("foraging_small_v0", {"size": 5}).vector.size == 5
    assert make_vector("foraging_small_v0", 3).size == 4
    assert make_vector("predator_prey_v0", 3) is None
    with pytest.raises(ValueError, match="':'"):
        register("pkg:thing", parallel_env)


def test_scenario_modules_register_from_a_file_or_by_name_from_the_working_directory(
    tmp_path, monkeypatch, scratch_registry
):
    write_scenario_template("by_path", tmp_path)
    assert registry.load_scenario_module(str(tmp_path / "by_path.py")) == ["by_path_v0"]
    write_scenario_template("by_name_v3", tmp_path)
    monkeypatch.chdir(tmp_path)
    sys.path[:] = [p for p in sys.path if p not in ("", str(tmp_path))]  # as under a console script
    assert registry.load_scenario_module("by_name") == ["by_name_v3"]
    assert make_env("by_name_v3").metadata["name"] == "by_name_v3"
    with pytest.raises(ModuleNotFoundError):
        registry.load_scenario_module("no_such_module_here")
    with pytest.raises(FileNotFoundError):
        registry.load_scenario_module(str(tmp_path / "missing.py"))
