"""A seeded, bounded, structure-aware fuzz of every request: mutated messages get a proper reply, never ``internal``.

For each operation of the protocol a well-formed template is mutated (fields dropped, added, of the wrong type,
nested values of the wrong type, huge and negative ints, arrays where scalars are due and the reverse, tampered
``arrays`` tables) and sent over a real socket. Every reply must answer its request's id, be that request's success
reply or an error with a code other than ``internal``; the server must still answer ``ping``; and a well-behaved
trajectory replayed afterwards must equal the one recorded before. The machinery lives in tests/fuzzing.py, which
bench/fuzz_server.py runs for longer, with attackers and a bystander whose latency it measures.
"""

from __future__ import annotations

import collections
import random

import numpy as np

from tests.fuzzing import TAMPERED_ID, Context, check_reply, mutations, tampered_tables, tidy, variants
from tests.rawwire import RawClient
from tests.test_envserver_bad_input import well_behaved_trajectory

SEED = 20240601


def test_fuzzed_requests_get_proper_replies_and_change_nothing_for_others(server):
    bystander = RawClient(server.address)
    reference = well_behaved_trajectory(bystander, seed=3)

    rng = random.Random(SEED)
    client = RawClient(server.address, timeout_s=10)
    context = Context(client, server.operator_secret)
    counts: collections.Counter = collections.Counter()
    sent = 0
    for op, current in variants(context):
        for message in mutations(current, rng):
            request_id = client.send(message)
            reply = client.recv()
            check_reply(reply, op, request_id, counts, message)
            sent += 1
            tidy(client, context, reply)
        for frames in tampered_tables(current(), TAMPERED_ID, rng):
            client.send_frames(frames)
            reply = client.recv()
            check_reply(reply, op, TAMPERED_ID, counts, frames[0])  # the header itself is sound: its id is known
            sent += 1
            tidy(client, context, reply)
        assert client.request({"op": "ping"})["op"] == "pong"
        assert bystander.request({"op": "ping"})["op"] == "pong"

    again = well_behaved_trajectory(bystander, seed=3)
    assert len(again) == len(reference)
    for x, y in zip(reference, again, strict=True):
        np.testing.assert_array_equal(x, y)
    print(f"\nfuzz: {sent} messages; replies by code: {dict(sorted(counts.items()))}")
    assert 1000 <= sent <= 8000
