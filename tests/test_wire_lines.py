"""Finding the id of a line that cannot be parsed whole, so that its error answer reaches the call."""

from __future__ import annotations

import pytest

from openarc_mcp.transports.wire_lines import Oversized, Withheld, oversized_answer, parse_line, top_level_id


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
    assert not isinstance(answer, Withheld)
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


@pytest.mark.parametrize(
    "head",
    [
        b'{"jsonrpc": "2.0", "id": 5, "result": {"content": [{"type": "text", "text": "',
        b'{"id": 5, "jsonrpc": "2.0", "error": {"code": 1, "message": "',
    ],
)
def test_an_oversized_response_is_withheld_not_answered_under_its_id(head: bytes) -> None:
    """A response's id is one of the server's own: an error sent under it could pass for the answer
    to a request of the host's with that id."""
    assert isinstance(oversized_answer(Oversized(head), 1000), Withheld)


def test_a_value_named_like_a_key_is_no_key() -> None:
    head = b'{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "result", "x": "error'
    answer = oversized_answer(Oversized(head), 1000)
    assert not isinstance(answer, Withheld) and answer["id"] == 3
