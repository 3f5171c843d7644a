"""The wire's speed tricks (envserver/protocol/wire.py) refuse what they cannot carry instead of sending something
else: each checks its precondition. And the one pair of nested-row helpers (protocol/spaces.py) that the server's
batches and BatchedWorlds share."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from agora_marl.envserver.protocol import pack, rows_of, unpack, write_row, zeros_like_space
from agora_marl.envserver.protocol.wire import PLACED, Packed, Stacked


def test_placed_arrays_refuse_an_array_left_in_the_message_and_a_path_that_overwrites():
    obs = np.arange(3, dtype=np.float32)
    with pytest.raises(ValueError, match="outside them"):
        pack({"op": "step", "id": 1, "stray": np.zeros(2), PLACED: [(("obs", "a"), obs)]})
    with pytest.raises(ValueError, match="overwrite"):
        pack({"op": "step", "id": 1, "obs": {}, PLACED: [(("obs", "a"), obs)]})
    message = unpack(pack({"op": "step", "id": 1, "reward": np.float32(0.5), PLACED: [(("obs", "a"), obs)]}))
    assert message["reward"] == 0.5 and message["obs"]["a"].tolist() == [0, 1, 2]  # numpy scalars still pass


def test_packed_splices_only_at_the_top_and_stacked_needs_slices_of_one_shape():
    ids = list(range(40))
    for extra in (0, 20):  # a fixmap header, and a map16 one
        message = {"op": "batch", "id": 2, "worlds": Packed(ids), **{f"k{i}": i for i in range(extra)}}
        assert unpack(pack(message))["worlds"] == ids
    with pytest.raises(TypeError):
        pack({"op": "batch", "id": 2, "nested": {"worlds": Packed(ids)}})
    with pytest.raises(ValueError, match="one shape"):
        Stacked([np.zeros((4, 2)), np.zeros((4, 3))])
    stacked = Stacked([np.zeros((4, 2)), np.ones((4, 2))])
    assert unpack(pack({"op": "batch", "id": 3, "obs": stacked}, joined=True))["obs"].shape == (4, 2, 2)


def test_rows_of_and_write_row_over_nested_spaces():
    space = spaces.Dict(
        {"pos": spaces.Box(-1, 1, (2,)), "pair": spaces.Tuple((spaces.Discrete(3), spaces.Discrete(2)))}
    )
    out = zeros_like_space(space, (3,))
    write_row(out, 1, {"pos": np.ones(2, np.float32), "pair": (2, 1)})
    row = rows_of(out, 1)
    assert row["pos"].tolist() == [1, 1] and row["pair"] == {"0": 2, "1": 1}
    assert rows_of(out, slice(0, 2))["pos"].shape == (2, 2)
    with pytest.raises(ValueError, match="no member 'pair'"):
        write_row(out, 0, {"pos": np.zeros(2)})
