"""Named world groups: a second party finds K worlds by name (``join_group``), the owner decides who may take which
seat (``invite_only``) and whether seat holders may read the global state (``share_state``)."""

from __future__ import annotations

import numpy as np
import pytest

from agora_marl.agents import AgentClient, ServerError

TAG = "predator_prey_v0"
K = 3


def _league(owner: AgentClient, name: str = "tag-league", **fields) -> object:
    return owner.create(TAG, seed=3, copies=K, deadline_ms=5000, group=name, **fields)


def _samples(spec, seats: list[str]) -> dict[str, np.ndarray]:
    return {a: np.stack([spec.action_spaces[a].sample() for _ in range(K)]) for a in seats}


def _free_seats(owner: AgentClient, worlds: list[int]) -> dict[int, list[str]]:
    return {
        w["world"]: [a for a, s in w["seats"].items() if s == "free"]
        for w in owner.list_worlds()
        if w["world"] in worlds
    }


def test_a_second_client_finds_the_worlds_by_name_and_both_step_them(server):
    with AgentClient(server.address, timeout_s=20.0) as owner, AgentClient(server.address, timeout_s=20.0) as other:
        created = _league(owner, invite_only=["prey_*"])
        assert created.group == "tag-league" and created.invite_token
        for world in created.worlds:
            owner.join(world, seats=[a for a in created.spec.possible_agents if a.startswith("predator")])
        joined = other.join_group("tag-league", "prey_*", invite_token=created.invite_token)
        assert joined.worlds == created.worlds
        assert joined.seats == [a for a in created.spec.possible_agents if a.startswith("prey")]
        assert len(joined.tokens) == K and set(joined.tokens[0]) == set(joined.seats)
        assert set(joined.obs) == set(created.worlds) and set(joined.obs[created.worlds[0]]) == set(joined.seats)
        predators = [a for a in created.spec.possible_agents if a.startswith("predator")]
        assert all(not seats for seats in _free_seats(owner, created.worlds).values())
        listed = {w["world"]: w for w in owner.list_worlds()}
        assert all(listed[w]["group"] == "tag-league" for w in created.worlds)
        for _ in range(3):
            pending = other.send("act_batch", worlds=joined.worlds, actions=_samples(joined.spec, joined.seats))
            mine = owner.act_batch(created.worlds, _samples(created.spec, predators))
            theirs = other.reply(pending)
            assert not mine["late"].any() and not theirs["late"].any()
            assert list(mine["tick"]) == list(theirs["tick"])


def test_invitation_only_seats_need_the_invite_token_and_refusals_change_nothing(server):
    with (
        AgentClient(server.address, timeout_s=20.0) as owner,
        AgentClient(server.address, timeout_s=20.0) as stranger,
    ):
        created = _league(owner, invite_only=["prey_*"])
        prey = [a for a in created.spec.possible_agents if a.startswith("prey")]
        before = _free_seats(owner, created.worlds)
        with pytest.raises(ServerError) as refused:
            stranger.join_group("tag-league", "prey_*")
        assert refused.value.code == "not_allowed" and "invite_token" in refused.value.hint
        with pytest.raises(ServerError) as wrong:
            stranger.join_group("tag-league", "prey_*", invite_token="0" * 32)
        assert wrong.value.code == "bad_token"
        with pytest.raises(ServerError) as single:
            stranger.join(created.worlds[0], seats=prey)
        assert single.value.code == "not_allowed"
        assert _free_seats(owner, created.worlds) == before
        # "all" takes only the seats open to the sender; the open (predator) seats stay joinable by anyone.
        took = stranger.join(created.worlds[0])
        assert set(took.seats) == set(created.spec.possible_agents) - set(prey)
        # The owner may take any seat without the invitation.
        assert set(owner.join(created.worlds[1], seats=prey).seats) == set(prey)


def test_join_group_is_all_or_nothing(server):
    with (
        AgentClient(server.address, timeout_s=20.0) as owner,
        AgentClient(server.address, timeout_s=20.0) as first,
        AgentClient(server.address, timeout_s=20.0) as second,
    ):
        created = _league(owner)
        first.join(created.worlds[-1], seats=["prey_0"])  # one seat of the last world is taken
        before = _free_seats(owner, created.worlds)
        with pytest.raises(ServerError) as taken:
            second.join_group("tag-league", ["prey_*"])
        assert taken.value.code == "seat_taken"
        with pytest.raises(ServerError) as unmatched:
            second.join_group("tag-league", ["prey_*", "nobody_*"])
        assert unmatched.value.code == "unknown_seat"
        assert _free_seats(owner, created.worlds) == before


def test_group_names_belong_to_their_owner_and_vanish_with_the_worlds(server):
    with AgentClient(server.address, timeout_s=20.0) as owner, AgentClient(server.address, timeout_s=20.0) as other:
        created = _league(owner)
        with pytest.raises(ServerError) as stolen:
            other.create(TAG, copies=1, group="tag-league")
        assert stolen.value.code == "not_owner"
        with pytest.raises(ServerError) as other_spec:
            owner.create("foraging_v0", copies=1, group="tag-league")
        assert other_spec.value.code == "bad_request"
        more = owner.create(TAG, seed=9, copies=2, group="tag-league")  # the owner may grow its group
        joined = other.join_group("tag-league", "prey_*")
        assert joined.worlds == created.worlds + more.worlds
        for bad in ("", "../etc", "a" * 65, "has space", "-leading"):
            with pytest.raises(ServerError) as named:
                owner.create(TAG, copies=1, group=bad)
            assert named.value.code == "bad_request"
        with pytest.raises(ServerError) as unknown:
            other.join_group("no-such-group", "prey_*")
        assert unknown.value.code == "unknown_group"
        for world in joined.worlds:
            owner.close_world(world)
        with pytest.raises(ServerError) as gone:
            other.join_group("tag-league", "prey_*")
        assert gone.value.code == "unknown_group"


@pytest.mark.parametrize("share", [False, True])
def test_seat_holders_read_the_global_state_only_where_the_owner_shares_it(server, share):
    with AgentClient(server.address, timeout_s=20.0) as owner, AgentClient(server.address, timeout_s=20.0) as other:
        name = f"shared-{share}"
        created = owner.create("mpe2.simple_spread_v3:parallel_env", copies=2, group=name, share_state=share)
        for world in created.worlds:
            owner.join(world, seats=["agent_0", "agent_1"])
        joined = other.join_group(name, "agent_2")
        assert joined.share_state is share
        world = created.worlds[0]
        if not share:
            with pytest.raises(ServerError) as private:
                other.state(world)
            assert private.value.code == "not_allowed" and "share_state" in private.value.hint
            with pytest.raises(ServerError) as batch:
                other.act_batch(joined.worlds, {"agent_2": np.zeros(2, np.int64)}, state=True)
            assert batch.value.code == "not_allowed"
            assert owner.state(world).shape == (54,)  # the owner always may
            return
        pending = owner.send(
            "act_batch", worlds=created.worlds, actions={a: np.zeros(2, np.int64) for a in ("agent_0", "agent_1")}
        )
        reply = other.act_batch(joined.worlds, {"agent_2": np.zeros(2, np.int64)}, state=True)
        owner.reply(pending)
        assert reply["state"].shape == (2, 54)
        np.testing.assert_array_equal(reply["state"][0], other.state(world))
