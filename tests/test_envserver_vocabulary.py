"""The protocol's words in code and in docs/protocol.md are the same words, and the server answers every request."""

from __future__ import annotations

import re
from pathlib import Path

from agora_marl.envserver.handlers import OPERATIONS
from agora_marl.envserver.protocol import ProtocolError, vocabulary

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def test_every_request_has_a_handler_and_a_section_of_the_document():
    assert set(OPERATIONS) == set(vocabulary.REQUESTS)
    documented = dict(re.findall(r"^### (\w+) → (\w+)", DOC, flags=re.MULTILINE))
    assert documented == vocabulary.REQUESTS


def test_every_error_code_is_documented_once_in_order():
    table = re.findall(r"^\| `(\w+)` \| ", DOC[DOC.index("### error") :], flags=re.MULTILINE)
    assert tuple(table[: len(vocabulary.ERROR_CODES)]) == vocabulary.ERROR_CODES


def test_field_values_are_the_documented_ones():
    for kind in vocabulary.FILL_KINDS:
        assert f'"{kind}"' in DOC
    for layout in vocabulary.LAYOUTS:
        assert f'"{layout}"' in DOC
    for state in vocabulary.SEAT_STATES:
        assert f"`{state}`" in DOC or f'"{state}"' in DOC
    for reason in vocabulary.FILL_REASONS:
        assert f'"{reason}"' in DOC[DOC.index("### act → step") :]
    assert f"version {vocabulary.PROTOCOL_VERSION}" in DOC.splitlines()[0]


def test_an_error_carries_its_request_id():
    error = ProtocolError(vocabulary.BAD_REQUEST, "no", "do this", request_id=7)
    assert error.to_header() == {
        "v": vocabulary.PROTOCOL_VERSION,
        "op": vocabulary.ERROR_OP,
        "id": 7,
        "code": "bad_request",
        "message": "no",
        "hint": "do this",
    }
    assert error.to_header(9)["id"] == 9
