"""Finding the id of a line that cannot be parsed whole, so that its error answer reaches the call."""

from __future__ import annotations

import pytest

from openarc_mcp.transports.wire_lines import Oversized, oversized_answer, parse_line, top_level_id


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"jsonrpc": "2.0", "id": "call-42", "method": "tools/call", "params": {"x": "aaa', "call-42"),
        ('{"id":7,"method":"ping"}', 7),
        ('{"jsonrpc": "2.0", "id": -3, "params": {', -3),
        ('{"method": "id", "id": "after-a-value-named-id"}', "after-a-value-named-id"),
        ('{"id": "with \\"escaped\\" quotes", "params": {}}', 'with "escaped" quotes'),
        ('{"params": {"id": "nested"}, "x": "aaaa', None),  # nested ids are never taken
        ('{"params": [{"id": 1}], "id": 2}', 2),
        ('{"id": null, "method": "ping"}', None),
        ('{"id": true, "method": "ping"}', None),
        ('{"id": {"a": 1}, "method": "ping"}', None),
        ('{"id": 1.5, "method": "ping"}', None),
        ('{"id": "cut off', None),
        ('{"id": "bad \\q escape", "x": 1}', None),
        ("[1, 2, 3]", None),
        ("", None),
    ],
)
def test_top_level_id(text: str, expected: str | int | None) -> None:
    assert top_level_id(text) == expected


def test_an_oversized_line_is_answered_with_its_id_and_what_to_do() -> None:
    answer = oversized_answer(Oversized(b'{"jsonrpc": "2.0", "id": "big-1", "method": "tools/call"'), 1000)
    assert answer["id"] == "big-1"
    assert answer["error"]["code"] == -32600
    assert "over 1000 bytes" in answer["error"]["message"]
    assert "file path" in answer["error"]["message"]


def test_nesting_too_deep_for_any_parser_is_an_invalid_request_with_its_id() -> None:
    line = (
        '{"jsonrpc": "2.0", "id": 9, "method": "ping", "params": {"a": '
        + "[" * 100_000
        + "]" * 100_000
        + "}}"
    )
    answer = parse_line(line)
    assert isinstance(answer, dict)
    assert answer["id"] == 9 and answer["error"]["code"] == -32600
    assert "nested too deeply" in answer["error"]["message"]
