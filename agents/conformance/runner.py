"""Running the checks: :func:`run_conformance` and the report of its results."""

from __future__ import annotations

import itertools
import os
import random
import time
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import zmq

from agora_marl.agents.conformance import checks_batch, checks_groups, checks_messages, checks_seats, checks_worlds
from agora_marl.agents.conformance.base import CHECKS, Check, Context
from agora_marl.agents.conformance.peer import Failure, Skip
from agora_marl.envserver.protocol import pack, resolve_address

#: The scenario the checks create worlds of unless told otherwise.
DEFAULT_SCENARIO = "mpe2.simple_spread_v3:parallel_env"

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"

#: The modules of checks, in the order the suite runs them: messages first, then worlds, seats, batches.
_MODULES = (checks_messages, checks_worlds, checks_seats, checks_batch, checks_groups)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check."""

    name: str
    status: str
    """``"passed"``, ``"failed"`` or ``"skipped"``."""
    message: str
    """Why it failed or was skipped (empty when it passed)."""
    seconds: float
    description: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    @property
    def skipped(self) -> bool:
        return self.status == SKIPPED

    def to_dict(self) -> dict:
        return asdict(self)


def select(only: str | Iterable[str] | None = None) -> list[Check]:
    """The checks whose names contain ``only`` (or any of several substrings), in the suite's order; every check for
    None."""
    suite = [c for module in _MODULES for c in CHECKS.values() if c.func.__module__ == module.__name__]
    assert len(suite) == len(CHECKS), "every module of checks is in _MODULES"
    if only is None:
        return suite
    wanted = [only] if isinstance(only, str) else list(only)
    return [c for c in suite if any(w in c.name for w in wanted)]


def _reachable(context: zmq.Context, address: str, timeout_s: float) -> bool:
    """Whether anything answers a ping within ``timeout_s`` (the checks judge what it answers)."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(address)
        socket.send_multipart(pack({"op": "ping", "id": 1}))
        return bool(socket.poll(int(timeout_s * 1000)))
    finally:
        socket.close(linger=0)


def _run_one(check: Check, context: Context) -> CheckResult:
    start = time.monotonic()
    try:
        check.func(context)
        status, message = PASSED, ""
    except Failure as exc:
        status, message = FAILED, str(exc)
    except Skip as exc:
        status, message = SKIPPED, str(exc)
    except Exception as exc:  # a reply so malformed that a check tripped on it: the server's failure, with where
        where = traceback.extract_tb(exc.__traceback__)[-1]
        status = FAILED
        message = f"{type(exc).__name__}: {exc} (at {os.path.basename(where.filename)}:{where.lineno})"
    finally:
        context.finish()
    return CheckResult(check.name, status, message, time.monotonic() - start, check.description)


def run_conformance(
    address: str,
    *,
    operator: str | None = None,
    scenario: str = DEFAULT_SCENARIO,
    only: str | Iterable[str] | None = None,
    timeout_s: float = 10.0,
) -> list[CheckResult]:
    """Run the protocol conformance checks against the server at ``address``.

    Every check opens its own connections and sessions, creates its own worlds and closes them when it ends; every
    wait has a timeout, so a server that never answers costs at most ``timeout_s`` per wait.

    Args:
        address: the server's endpoint (``tcp://HOST:PORT``, ``ipc://PATH``) or a connection file (its first address).
        operator: the server's operator secret; None skips the checks that need operator rights.
        scenario: the scenario the checks create worlds of; checks skip if the server does not host it.
        only: run only the checks whose names contain this substring (or any of these).
        timeout_s: the longest wait for any one reply.

    Returns:
        One :class:`CheckResult` per check run, in the suite's order. If the server does not answer a ping at
        all, every selected check fails with that message and none runs.
    """
    address = resolve_address(address)
    checks = select(only)
    context = zmq.Context()
    try:
        if not _reachable(context, address, timeout_s):
            message = f"nothing at {address} answered a ping within {timeout_s:g} s: is the server running there?"
            return [CheckResult(c.name, FAILED, message, 0.0, c.description) for c in checks]
        # Ids from a random start: a server that answers with a fixed id (or the previous one) is caught at once.
        ids = itertools.count(random.randrange(1 << 20, 1 << 30))
        return [_run_one(c, Context(context, address, scenario, operator, timeout_s, ids)) for c in checks]
    finally:
        context.destroy(linger=0)


def format_report(results: list[CheckResult], address: str = "") -> str:
    """The results as a table (one line per check, its message under it when not passed) and a summary line."""
    marks = {PASSED: "PASS", FAILED: "FAIL", SKIPPED: "SKIP"}
    width = max((len(r.name) for r in results), default=10)
    lines = []
    for r in results:
        lines.append(f"{marks[r.status]}  {r.name:<{width}}  {r.seconds:6.2f}s  {r.description}")
        if r.message:
            lines.append(f"      {'':<{width}}  {r.message}")
    counts = {status: sum(r.status == status for r in results) for status in (PASSED, FAILED, SKIPPED)}
    total = sum(r.seconds for r in results)
    where = f" against {address}" if address else ""
    lines.append(f"{counts[PASSED]} passed, {counts[FAILED]} failed, {counts[SKIPPED]} skipped in {total:.1f} s{where}")
    return "\n".join(lines)
