"""`agora play --worlds`: a non-learning client holding some seats of K shared worlds, one act_batch per tick."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from agora_marl.agents.batched import BatchedWorlds

ROOT = Path(__file__).resolve().parent.parent
TICKS = 130  # predator_prey_v0 truncates at 60 ticks: two episodes per world


def _agora_play(address: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agora_marl", "play", "--connect", address, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_play_holds_the_other_seats_of_k_worlds_while_the_owner_holds_its_own(server):
    with BatchedWorlds(
        server.address, "predator_prey_v0", num_worlds=3, seed=0, seats="predator_*", deadline_ms=5000, timeout_s=30
    ) as owner:
        assert owner.possible_agents == ["predator_0", "predator_1", "predator_2"]
        assert owner.other_agents == ["prey_0"]
        ids = list(owner.worlds)
        player = _agora_play(
            server.address, "--worlds", ",".join(map(str, ids)), "--seats", "prey_*", "--steps", str(TICKS)
        )
        try:
            rng = np.random.default_rng(0)
            owner.reset()  # the worlds wait for the player's seats before their first tick
            episodes, late = 0, []
            for _ in range(TICKS):
                result = owner.step({a: rng.integers(0, 5, owner.num_worlds) for a in owner.possible_agents})
                episodes += int(result.episode_over.sum())
                late.append(result.opponent_late)
            out, err = player.communicate(timeout=60)
        finally:
            if player.poll() is None:
                player.kill()
                player.communicate()
    # Both progressed: the owner saw every world end its episodes, the player stepped as many ticks.
    assert episodes >= 2 * len(ids), episodes
    assert player.returncode == 0, err
    assert re.search(rf"^{TICKS} ticks of 3 worlds, (\d+) episodes \(steps\)$", out, re.M), out
    assert int(re.search(r"(\d+) episodes \(steps\)", out).group(1)) == episodes
    per_world = re.findall(r"^world (\d+): return (-?[\d.]+) ± ([\d.]+) \(mean ± std over (\d+) episodes\)$", out, re.M)
    assert [int(w) for w, *_ in per_world] == ids, out
    assert all(int(n) >= 2 for *_, n in per_world), out
    filled = re.search(r"^other seats filled late: (\d+) of (\d+) seat-ticks$", out, re.M)
    assert filled, out
    # The other seats are the owner's three predators in each world, every tick.
    assert int(filled.group(2)) == TICKS * 3 * 3 and 0 <= int(filled.group(1)) <= int(filled.group(2))
    assert all(x is not None and 0.0 <= x <= 1.0 for x in late)


def test_play_worlds_needs_seats(server):
    player = _agora_play(server.address, "--worlds", "1,2")
    out, err = player.communicate(timeout=30)
    assert player.returncode != 0 and "--worlds needs --seats" in err


def test_play_worlds_reports_worlds_that_do_not_exist(server):
    player = _agora_play(server.address, "--worlds", "999", "--seats", "prey_0", "--steps", "5")
    out, err = player.communicate(timeout=30)
    # Worlds that are gone are not an error for an opponent: it stops at once, having played nothing.
    assert player.returncode == 0, err
    assert re.search(r"^0 ticks of 1 worlds, 0 episodes \(worlds closed\)$", out, re.M), out
    assert "world 999: return no episode ended" in out
