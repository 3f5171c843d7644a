"""The agora protocol conformance suite: checks any server against docs/protocol.md, over the wire.

A server implementer (in any language) runs it against their server::

    agora conformance tcp://127.0.0.1:5555          # or a connection file; -k NAME, --scenario, --json

or from Python::

    from agora_marl.agents.conformance import run_conformance
    results = run_conformance("tcp://127.0.0.1:5555")
    assert not any(r.failed for r in results)

It speaks the protocol itself, with pyzmq DEALER sockets and the frame layout
(:func:`agora_marl.envserver.protocol.pack`/``unpack``), and needs nothing of the server but its address. Each check
is a small function (``checks_*.py``) with a one-line description, runs in its own sessions and worlds, closes what
it made, and waits for nothing without a timeout; checks that need what this server does not offer (its scenario, a
testable message limit, the operator secret, a scenario that draws) skip and say why.
"""

from agora_marl.agents.conformance.base import CHECKS, Check
from agora_marl.agents.conformance.runner import (
    DEFAULT_SCENARIO,
    FAILED,
    PASSED,
    SKIPPED,
    CheckResult,
    format_report,
    run_conformance,
    select,
)

__all__ = [
    "CHECKS",
    "DEFAULT_SCENARIO",
    "FAILED",
    "PASSED",
    "SKIPPED",
    "Check",
    "CheckResult",
    "format_report",
    "run_conformance",
    "select",
]
