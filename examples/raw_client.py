"""A custom agora agent in raw pyzmq + msgpack, written from docs/protocol.md alone (no agora code).

usage: python examples/raw_client.py ADDRESS [SCENARIO | WORLD_ID | WORLD_ID,WORLD_ID,... | group:NAME:SEATS]
                                      [EPISODES] [INVITE_TOKEN]
  creates a world of SCENARIO (default mpe2 simple_spread) holding every seat, or joins the free seats of WORLD_ID,
  then plays random legal actions in lockstep and prints each episode's return. With several world ids it joins
  the same free seats of each and plays them all with one act_batch message per tick (the batched partial-seat
  mode: someone else may hold the other seats). With group:NAME:SEATS it finds the worlds by their group's name
  and takes SEATS (an agent name or a glob such as prey_*) of every one of them with one join_group.
"""

import itertools
import sys

import msgpack
import numpy as np
import zmq

rng = np.random.default_rng(0)
ids = itertools.count(1)
session = {}  # the secret from welcome, which every later request carries


def request(sock, op, **fields):
    """Send one request and return its reply, with the array frames put in place at their paths."""
    sock.send(msgpack.packb({"v": 2, "op": op, "id": next(ids), **session, **fields}))
    frames = sock.recv_multipart()  # one request in flight at a time, so this reply is ours
    reply = msgpack.unpackb(frames[0])
    for (path, dtype, shape), frame in zip(reply.pop("arrays", []), frames[1:], strict=True):
        node = reply
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.frombuffer(frame, np.dtype(dtype).newbyteorder("<")).reshape(shape)
    if reply["op"] == "error":
        raise RuntimeError(f"{op}: {reply['code']}: {reply['message']} (hint: {reply['hint']})")
    return reply


def sample(space):
    """A random legal value of a space map, as plain msgpack values (sent inline)."""
    kind = space["type"]
    if kind == "Discrete":
        return int(space["start"] + rng.integers(space["n"]))
    if kind == "Box":
        low, high = (np.broadcast_to(np.asarray(space[k], float), space["shape"]) for k in ("low", "high"))
        lo, hi = np.clip(-1.0, low, high), np.clip(1.0, low, high)  # stay finite where the box is unbounded
        if space["dtype"].startswith("float"):
            return rng.uniform(lo, hi).tolist()
        return rng.integers(np.ceil(lo).astype(int), np.floor(hi).astype(int), endpoint=True).tolist()
    if kind == "MultiDiscrete":
        return (np.asarray(space["start"]) + rng.integers(np.asarray(space["nvec"]))).tolist()
    if kind == "MultiBinary":
        return rng.integers(0, 2, size=space["n"]).tolist()
    if kind == "Dict":
        return {key: sample(sub) for key, sub in space["spaces"].items()}
    return {str(i): sample(sub) for i, sub in enumerate(space["spaces"])}  # Tuple


def play_batch(sock, worlds, episodes, group=None, invite_token=None):
    """Hold the same free seats of several worlds (or SEATS of a named group's) and act in all of them with one
    act_batch per tick."""
    if group is not None:
        name, pattern = group
        joined = request(
            sock, "join_group", group=name, seats=pattern, **({"invite_token": invite_token} if invite_token else {})
        )
        worlds, seats, spec = joined["worlds"], joined["seats"], joined["spec"]
    else:
        joined = request(sock, "join", world=worlds[0], seats="all")
        seats, spec = list(joined["seats"]), joined["spec"]
        for world in worlds[1:]:
            request(sock, "join", world=world, seats=seats)
    print(f"worlds {worlds}: playing {seats}", flush=True)
    totals, done = np.zeros(len(worlds)), 0
    while done < int(episodes):
        actions = {a: [sample(spec["action_spaces"][a]) for _ in worlds] for a in seats}  # one row per world
        batch = request(sock, "act_batch", worlds=worlds, actions=actions)
        totals += batch["rewards"].sum(axis=1)  # (K, seats): this client's seats only
        for k in np.flatnonzero(batch["episode_over"]):
            done += 1
            filled = int(batch["filled"][k].sum())  # others' seats that got the fill action (free, lost or late)
            print(f"episode {done}: world {worlds[k]} return {totals[k]:.2f} ({filled} filled seats)", flush=True)
            totals[k] = 0.0


def main(address, target="mpe2.simple_spread_v3:parallel_env", episodes=3, invite_token=None):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    session["secret"] = request(sock, "hello", name="raw_client")["secret"]
    if target.startswith("group:"):
        _, name, pattern = target.split(":", 2)
        play_batch(sock, None, episodes, group=(name, pattern), invite_token=invite_token)
        sock.close()
        return
    if "," in target:
        play_batch(sock, [int(w) for w in target.split(",")], episodes)
        sock.close()
        return
    if target.isdigit():
        joined = request(sock, "join", world=int(target), seats="all")
        world, seats, spec = joined["world"], list(joined["seats"]), joined["spec"]
    else:
        created = request(sock, "create", scenario=target, join=True, seed=0)
        world, spec, seats = created["worlds"][0], created["spec"], list(created["tokens"][0])
    print(f"world {world}: playing {seats}", flush=True)
    total, done = 0.0, 0
    while done < int(episodes):
        # Acting for a seat whose agent is not alive is allowed: it is ignored and the reply comes at the next step.
        step = request(sock, "act", world=world, actions={a: sample(spec["action_spaces"][a]) for a in seats})
        total += sum(step["rewards"].values())
        if step["episode_over"]:  # the world auto-reset: the next act plays the new episode
            done += 1
            print(f"episode {done}: return {total:.2f}", flush=True)
            total = 0.0
    sock.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
