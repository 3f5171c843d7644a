"""The served half of ``agora scenarios check``: a scenario through a real server and client, and its served rates.

Here and not in scenarios/, because it needs both the server (agora_marl.envserver) and the client
(agora_marl.agents), and scenarios imports nothing of ours. :func:`check_everything` composes the report that
``agora scenarios check`` prints: the in-process correctness checks (scenarios/check.py), the in-process step rates
(scenarios/rates.py), then the ``wire`` row and the served rates.
"""

from __future__ import annotations

from pettingzoo.test import parallel_api_test

from agora_marl.agents import BatchedWorlds, RemoteParallelEnv
from agora_marl.envserver.server import EnvServer, ServerConfig
from agora_marl.scenarios.check import (
    CheckFailed,
    CheckReport,
    CheckResult,
    CheckSettings,
    check_scenario,
    first_difference,
    pettingzoo_check,
    trajectory,
)
from agora_marl.scenarios.rates import RateSettings, batch_actions, measure_in_process, play, rate_of


def check_everything(
    name: str, settings: CheckSettings | None = None, rates: RateSettings | None = None, wire: bool = True
) -> CheckReport:
    """Every check of ``agora scenarios check`` and every step rate, in one report. Never raises for a broken
    scenario; a name that does not build stops after the ``build`` row.

    Args:
        wire: also check over the wire and measure the served rates (starts a server in a thread of this process,
            on a free loopback port); without it the ``wire`` row reads skip.
    """
    s, r = settings or CheckSettings(), rates or RateSettings()
    report = check_scenario(name, s)
    if not report.built:
        return report
    report.run("step rates", lambda: measure_in_process(name, s, r, report.rates))
    if wire:
        report.run("wire", lambda: check_wire(name, s, r, report.rates))
    else:
        report.results.append(CheckResult("wire", None, "not asked for"))
    return report


def check_wire(name: str, settings: CheckSettings, rates: RateSettings, out: dict[str, str]) -> str:
    """PettingZoo's ``parallel_api_test`` through :class:`RemoteParallelEnv` against an in-process server, and the
    served trajectory equals the in-process one; adds the served rates to ``out``. Returns the row's detail.

    Raises:
        CheckFailed: the served world differs from the in-process one (or PettingZoo's checker warns).
    """
    s = settings
    server = EnvServer(ServerConfig(bind="tcp://127.0.0.1:0", allowed_packages=tuple(s.allowed_packages)))
    server.start_in_thread()
    try:
        remote = RemoteParallelEnv(server.address, name, s.config, seed=s.seed, timeout_s=30.0)
        pettingzoo_check(lambda: parallel_api_test(remote, num_cycles=s.api_cycles))
        remote.close()
        remote = RemoteParallelEnv(server.address, name, s.config, seed=s.seed, timeout_s=30.0)
        served = trajectory(remote, s.seed, s.steps, with_infos=False)
        local = trajectory(s.build(name), s.seed, s.steps, with_infos=False)
        if difference := first_difference(served, local):
            raise CheckFailed(
                f"the served trajectory differs from the in-process one: {difference}",
                "use values the protocol carries (spaces Box, Discrete, MultiDiscrete, MultiBinary, Dict, Tuple; "
                "observations of the space's dtype); see docs/protocol.md",
            )
        out["served, 1 world lockstep"] = rate_of(lambda: play(remote, 64), rates.seconds, 64, "steps/s")
        remote.close()
        k = rates.batch_worlds
        with BatchedWorlds(server.address, name, s.config, num_worlds=k, seed=s.seed) as batched:
            batched.reset()
            actions = batch_actions(s.build(name), s.seed, k)
            out[f"served, K={k} batched"] = rate_of(lambda: batched.step(actions), rates.seconds, k, "world-steps/s")
    finally:
        server.stop()
    return "parallel_api_test over the wire; served trajectory equals in-process"
