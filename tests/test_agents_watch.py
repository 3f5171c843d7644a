"""agora watch in a real headless browser: Debian's chromium driven by playwright, against a real EnvServer.

Without chromium (or playwright) the browser tests skip, and fail in CI (``CI=true``): launch/install.sh installs
chromium where apt-get can. ``AGORA_WATCH_SCREENSHOTS=DIR`` also saves the page's two screenshots there
(docs/images: ``watch-worlds.png``, ``watch-live.png``).
"""

from __future__ import annotations

import csv
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agora_marl.agents.client import AgentClient, ServerError
from agora_marl.agents.watch import Target, WatchServer, format_table, world_row
from agora_marl.agents.watch.servers import encode_frame

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000  # the longest any one thing on the page may take to appear
SCREENSHOTS = os.environ.get("AGORA_WATCH_SCREENSHOTS")


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not os.path.exists(CHROMIUM):
        return (
            f"no {CHROMIUM}: install Debian's chromium (bash launch/install.sh does, as root: apt-get install chromium)"
        )
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _missing_browser()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the watch page's browser test cannot run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


class Stepper:
    """A client that holds every seat of some worlds and steps them in the background (bounded)."""

    def __init__(self, address: str, worlds: list[int], max_steps: int = 5000):
        self.address, self.worlds, self.max_steps = address, worlds, max_steps
        self.stop = threading.Event()
        self.steps = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with AgentClient(self.address, name="stepper") as client:
            live = {}
            for world in self.worlds:
                joined = client.join(world)
                live[world] = (joined.spec, joined.agents)
                for i, space in enumerate(joined.spec.action_spaces.values()):
                    space.seed(i)
            while not self.stop.is_set() and self.steps < self.max_steps:
                for world, (spec, agents) in live.items():
                    actions = {a: spec.action_spaces[a].sample() for a in agents}
                    result = client.act(world, actions)
                    live[world] = (spec, result.agents)
                    self.steps += 1
                time.sleep(0.02)

    def __enter__(self) -> Stepper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def _wait_for(condition, what: str, timeout_s: float = WAIT_MS / 1000):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _metrics(run_dir: Path, rows: int) -> None:
    run_dir.mkdir()
    with open(run_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "update", "time_s", "return", "loss"])
        for i in range(rows):
            writer.writerow([(i + 1) * 2048, i + 1, i * 1.5, -60 + 40 * (1 - np.exp(-i / 12)), 0.5])


def test_the_page_shows_worlds_live_and_renders_only_what_is_watched(make_server, browser, tmp_path):
    server = make_server(heartbeat_timeout_s=5.0)
    owner = AgentClient(server.address, name="owner")
    stepped = owner.create("predator_prey_v0", seed=1, render=True).worlds[0]
    seats = owner.create("foraging_v0", seed=2, render=True).worlds[0]
    other = owner.create("cover_v0", seed=3, render=True).worlds[0]
    quiet = owner.create("predator_prey_v0", seed=4).worlds[0]  # draws nothing: render=False
    run_dir = tmp_path / "run"
    _metrics(run_dir, 40)

    target = Target(server.address, server.operator_secret)
    with (
        Stepper(server.address, [stepped, other]) as stepper,
        WatchServer([target], port=0, fps=10, list_every_s=0.2, run_dir=run_dir) as watch,
    ):
        # Nobody watches: the worlds are listed, and nothing is rendered.
        _wait_for(lambda: watch.counts["lists"] >= 3, "three lists")
        assert watch.counts["renders"] == 0

        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(watch.url)
        page.wait_for_function("document.querySelectorAll('#worlds tbody tr').length === 4", timeout=WAIT_MS)
        names = page.locator("#worlds tbody tr td:nth-child(2)").all_inner_texts()
        assert names == ["predator_prey_v0", "foraging_v0", "cover_v0", "predator_prey_v0"]
        page.wait_for_selector(f'tr[data-world="0:{stepped}"] .seat[data-state="held"]', timeout=WAIT_MS)
        assert "stepper" in page.locator(f'tr[data-world="0:{stepped}"] .seats').inner_text()
        page.wait_for_selector("#curve-svg[data-points='40'] polyline", timeout=WAIT_MS)
        _wait_for(lambda: stepper.steps > 150, "the stepper's first episodes")
        if SCREENSHOTS:
            page.wait_for_timeout(1200)  # a steps/s measured over a whole second
            page.screenshot(path=str(Path(SCREENSHOTS) / "watch-worlds.png"), full_page=True)

        # Watch the stepped world: frames come, and they change as it steps.
        page.click(f'tr[data-world="0:{stepped}"]')
        page.wait_for_function("Number(document.getElementById('frame').dataset.count) >= 1", timeout=WAIT_MS)
        first = page.get_attribute("#frame", "data-hash")
        page.wait_for_function(f"document.getElementById('frame').dataset.hash !== '{first}'", timeout=WAIT_MS)
        # The hash changes when a frame arrives; the image decodes after it (a loaded machine shows the gap).
        page.wait_for_function("document.getElementById('frame').naturalWidth === 256", timeout=WAIT_MS)
        page.wait_for_selector("#rewards .bar[data-agent='prey_0']", timeout=WAIT_MS)
        _wait_for(lambda: _listed(owner, stepped)["observers"] == 1, "the watch to observe the world")
        if SCREENSHOTS:
            page.screenshot(path=str(Path(SCREENSHOTS) / "watch-live.png"), full_page=True)

        # The seat table follows a client that joins, then leaves.
        seat = f'tr[data-world="0:{seats}"] .seat[data-agent="agent_0"]'
        with AgentClient(server.address, name="joiner") as joiner:
            joiner.join(seats, seats=["agent_0"])
            page.wait_for_selector(f'{seat}[data-state="held"]', timeout=WAIT_MS)
            assert "joiner" in page.inner_text(seat)
            joiner.leave(seats)
            page.wait_for_selector(f'{seat}[data-state="free"]', timeout=WAIT_MS)

        # A world that does not draw says so instead of showing frames.
        page.click(f'tr[data-world="0:{quiet}"]')
        page.wait_for_function("document.getElementById('frame-note').textContent.includes('render')", timeout=WAIT_MS)
        assert page.get_attribute("#frame", "data-count") == "0"

        # The browser goes: the watch stops observing and rendering.
        page.close()
        _wait_for(lambda: _listed(owner, stepped)["observers"] == 0, "the watch to leave the world")
        renders, lists = watch.counts["renders"], watch.counts["lists"]
        _wait_for(lambda: watch.counts["lists"] >= lists + 3, "three more lists")
        assert watch.counts["renders"] == renders
    owner.close()


def _listed(client: AgentClient, world: int) -> dict:
    return next(w for w in client.list_worlds() if w["world"] == world)


def test_rows_and_the_terminal_table_fill_what_a_server_does_not_send():
    old = {"world": 3, "scenario": "s", "agents": ["a", "b"], "seats": {"a": "held", "b": "lost"}, "tick": 7}
    row = world_row(old, server=1)
    assert row["key"] == "1:3" and row["steps_per_s"] is None and row["returns"] == [] and row["rewards"] == {}
    assert row["seats"] == [
        {"agent": "a", "state": "held", "holder": None},
        {"agent": "b", "state": "lost", "holder": None},
    ]
    new = {**old, "holders": {"a": "alice", "b": None}, "steps_per_s": 12.5, "late": 2, "returns": [1.0, 3.0]}
    table = format_table([world_row(new)], ["tcp://127.0.0.1:1"])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["WORLD", "SCENARIO", "TICK"]
    assert lines[1].split()[:7] == ["3", "s", "7", "0", "12.5", "2", "-"]
    assert "3; 2 over 2" in lines[1]
    assert lines[2].split() == ["a", "live", "alice"] and lines[3].split() == ["b", "lost", "-"]
    assert format_table([]) == "no worlds"


def test_frames_encode_as_images():
    from io import BytesIO

    from PIL import Image

    frame = np.zeros((20, 30, 3), np.uint8)
    frame[5:10, 5:25] = (200, 30, 40)
    for image_format in ("png", "jpeg"):
        image = Image.open(BytesIO(encode_frame(frame, image_format)))
        assert image.size == (30, 20) and image.format == image_format.upper()


def test_agora_worlds_prints_every_world_for_an_operator(make_server, capsys):
    from agora_marl.launch.cli import main

    server = make_server()
    with AgentClient(server.address, name="alice") as alice:
        world = alice.create("foraging_v0", join=True).worlds[0]
        assert main(["worlds", "--connect", server.address, "--operator", server.operator_secret]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[1].split()[:2] == [str(world), "foraging_v0"]
        assert out[2].split() == ["agent_0", "live", "alice"]
        # Without the operator secret a private world is not listed.
        assert main(["worlds", "--connect", server.address]) == 0
        captured = capsys.readouterr()
        assert captured.out.strip() == "no worlds" and "not an operator" in captured.err


def test_train_records_its_servers_and_serves_the_page_while_it_runs(make_server, tmp_path, monkeypatch):
    """``agora train --watch``'s part: the run records its servers, and the page (a process of its own, finding the
    operator secret where ``agora serve`` writes it) shows their worlds and the run's curve until the block ends."""
    import json
    import socket
    import urllib.request
    from argparse import Namespace

    from agora_marl.envserver.protocol.connection import operator_file, write_operator_file
    from agora_marl.launch.commands.watch import targets_of, watching_run

    monkeypatch.setenv("AGORA_OPERATOR_DIR", str(tmp_path / "operators"))
    server = make_server()
    write_operator_file(operator_file(server.address), server.operator_secret)
    owner = AgentClient(server.address, name="learner")
    world = owner.create("cover_v0", join=True).worlds[0]
    run_dir = tmp_path / "run"
    _metrics(run_dir, 5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/"

    def fetch(path: str):
        try:
            with urllib.request.urlopen(url + path, timeout=2) as reply:
                return json.loads(reply.read())
        except OSError:
            return None

    with watching_run([server.address], run_dir, port, writer=True):
        targets = targets_of(Namespace(connect=None, run=str(run_dir), operator=None))
        assert [(t.address, t.operator) for t in targets] == [(server.address, server.operator_secret)]
        listed = _wait_for(lambda: (fetch("worlds") or {}).get("worlds"), "the page's first list", timeout_s=30)
        assert [(w["world"], w["scenario"]) for w in listed] == [(world, "cover_v0")]
        assert len(fetch("run")["points"]) == 5
    assert fetch("worlds") is None  # the page went with the block
    owner.close()


@pytest.mark.parametrize("seats", [None, "predator_*"])
def test_a_learners_worlds_created_to_render_give_frames(server, seats):
    """``agora train --watch`` creates the learner's worlds with ``render`` (``env.render``): whole or partial, each
    gives a frame when a watcher asks, and worlds made without it say so."""
    from agora_marl.agents import BatchedWorlds

    scenario = "predator_prey_v0"
    watcher = AgentClient(server.address, operator=server.operator_secret)
    with BatchedWorlds(server.address, scenario, num_worlds=2, seats=seats, render=True) as drawn:
        frame = watcher.render(drawn.worlds[1])
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    with (
        BatchedWorlds(server.address, scenario, num_worlds=1, seats=seats) as plain,
        pytest.raises(ServerError, match="bad_request"),
    ):
        watcher.render(plain.worlds[0])
    watcher.close()
