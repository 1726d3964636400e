"""JSON Schema constrained generation on real models: ``json_schema`` on ``generate`` and
``describe_image`` (SmolLM2 batched and one at a time; the VLM has random weights, so only the
constraint shows there), and schemas the engine cannot use refused before they reach a batch."""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
from mcp import Client
from PIL import Image

from openarc_mcp.engines.base import StopFlag
from openarc_mcp.engines.llm import BatchedLLMEngine, IsolatedLLMEngine
from openarc_mcp.engines.structured import (
    MAX_SCHEMA_CHARS,
    SchemaChecker,
    check_text,
    engine_reason,
    prepared_schema,
)
from openarc_mcp.errors import InvalidRequestError
from openarc_mcp.schema import GenerationOptions

from .conftest import LLM, VLM, structured, text_of

pytestmark = pytest.mark.anyio

CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "enum": ["France", "Germany", "Italy", "Spain"]},
        "is_capital": {"type": "boolean"},
    },
    "required": ["city", "country", "is_capital"],
    "additionalProperties": False,
}
QUESTION = "What is the capital of France? Answer in JSON with city, country and is_capital."
UNUSABLE: list[tuple[dict[str, Any], str]] = [
    ({"type": "nonsense"}, "not a valid JSON Schema"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "missing"),
    ({"type": "string", "pattern": "(?<=x)a"}, "Lookbehind is not supported"),
]


def _matches_city(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert set(value) == {"city", "country", "is_capital"}, value
    assert isinstance(value["city"], str) and len(value["city"]) <= 40
    assert value["country"] in ("France", "Germany", "Italy", "Spain")
    assert isinstance(value["is_capital"], bool)
    return dict(value)


async def test_generate_returns_json_matching_the_schema(client: Client) -> None:
    arguments = {"model": LLM, "prompt": QUESTION, "max_tokens": 200, "temperature": 0}
    free = structured(await client.call_tool("generate", arguments))
    with pytest.raises((ValueError, AssertionError)):  # without the schema the answer does not match it
        _matches_city(free["text"])
    result = await client.call_tool("generate", {**arguments, "json_schema": CITY})
    answer = structured(result)
    assert answer["finish_reason"] == "stop"
    assert _matches_city(answer["text"])["country"] == "France"
    assert text_of(result) == answer["text"]


async def test_a_pattern_and_sampling_both_hold_to_the_schema(client: Client) -> None:
    code = {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}
    for seed in range(3):
        answer = structured(
            await client.call_tool(
                "generate",
                {
                    "model": LLM,
                    "prompt": "Invent a product code.",
                    "json_schema": code,
                    "temperature": 1.0,
                    "seed": seed,
                    "max_tokens": 20,
                },
            )
        )
        assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", json.loads(answer["text"])), answer["text"]


async def test_streamed_pieces_join_into_the_json(client: Client) -> None:
    pieces: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        pieces.append(message or "")

    result = await client.call_tool(
        "generate",
        {"model": LLM, "prompt": QUESTION, "max_tokens": 200, "temperature": 0, "json_schema": CITY},
        progress_callback=on_progress,
    )
    assert "".join(pieces) == structured(result)["text"]
    _matches_city(structured(result)["text"])


@pytest.mark.parametrize(("schema", "reason"), UNUSABLE, ids=["unknown-type", "dangling-ref", "lookbehind"])
async def test_an_unusable_schema_is_refused_with_the_reason(
    client: Client, schema: dict[str, Any], reason: str
) -> None:
    result = await client.call_tool("generate", {"model": LLM, "prompt": "Hi", "json_schema": schema})
    assert result.is_error
    message = text_of(result)
    assert message.startswith("Error executing tool generate: json_schema ") and reason in message, message
    assert ".cc:" not in message and "/home/" not in message  # no build paths from the engine


async def test_a_schema_must_be_an_object_and_not_huge(client: Client) -> None:
    listed = await client.call_tool("generate", {"model": LLM, "prompt": "Hi", "json_schema": ["a"]})
    assert listed.is_error and "json_schema" in text_of(listed)
    huge = {"type": "object", "description": "x" * MAX_SCHEMA_CHARS}
    refused = await client.call_tool("generate", {"model": LLM, "prompt": "Hi", "json_schema": huge})
    assert refused.is_error and "too large" in text_of(refused)


def test_an_unusable_schema_never_reaches_the_batch(
    llm_engines: tuple[BatchedLLMEngine, IsolatedLLMEngine],
) -> None:
    """Without the check GenAI fails the whole step on such a schema, every request in it with it,
    and the pipeline takes no request afterwards."""
    batched, _ = llm_engines
    decoding, results = threading.Event(), {}

    def long_request() -> None:
        options = GenerationOptions(max_tokens=120, temperature=0)
        results["long"] = batched.generate(
            "Write a story about a lighthouse.", options, lambda _: decoding.set(), StopFlag()
        )

    thread = threading.Thread(target=long_request)
    thread.start()
    assert decoding.wait(60)
    for schema, reason in UNUSABLE:
        options = GenerationOptions(max_tokens=20, temperature=0, json_schema=schema)
        with pytest.raises(InvalidRequestError, match=re.escape(reason)):
            batched.generate("Hi", options, lambda _: None, StopFlag())
    thread.join(120)
    assert results["long"].finish_reason == "length" and results["long"].usage.completion_tokens == 120
    options = GenerationOptions(max_tokens=200, temperature=0, json_schema=CITY)
    _matches_city(batched.generate(QUESTION, options, lambda _: None, StopFlag()).text)
    assert batched.broken is None


def test_concurrent_calls_with_and_without_schemas_decode_together(
    llm_engines: tuple[BatchedLLMEngine, IsolatedLLMEngine],
) -> None:
    batched, _ = llm_engines
    numbers = {"type": "array", "items": {"type": "integer"}, "maxItems": 5}
    calls: list[tuple[str, dict[str, Any] | None]] = [
        (QUESTION, CITY),
        ("Write a haiku about rain.", None),
        ("List some prime numbers.", numbers),
        (QUESTION, CITY),
    ]
    results: dict[int, Any] = {}

    def run(index: int) -> None:
        prompt, schema = calls[index]
        options = GenerationOptions(max_tokens=200 if schema else 40, temperature=0, json_schema=schema)
        results[index] = batched.generate(prompt, options, lambda _: None, StopFlag())

    steps_before = batched.steps
    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    tokens = sum(result.usage.completion_tokens for result in results.values())
    assert batched.steps - steps_before < 0.9 * tokens  # they did decode together
    _matches_city(results[0].text)
    _matches_city(results[3].text)
    primes = json.loads(results[2].text)
    assert isinstance(primes, list) and len(primes) <= 5 and all(isinstance(n, int) for n in primes)
    haiku = results[1].text
    assert haiku.strip() and not haiku.lstrip().startswith(("{", "[")), (
        haiku
    )  # not held to the others' schemas


def test_the_one_at_a_time_engine_holds_to_the_schema_too(
    llm_engines: tuple[BatchedLLMEngine, IsolatedLLMEngine],
) -> None:
    _, single = llm_engines
    options = GenerationOptions(max_tokens=200, temperature=0, json_schema=CITY)
    _matches_city(single.generate(QUESTION, options, lambda _: None, StopFlag()).text)
    with pytest.raises(InvalidRequestError, match="Lookbehind is not supported"):
        bad = GenerationOptions(max_tokens=20, json_schema={"type": "string", "pattern": "(?<=a)b"})
        single.generate("Hi", bad, lambda _: None, StopFlag())


async def test_describe_image_holds_a_random_vlm_to_the_schema(client: Client, tmp_path: Path) -> None:
    image = tmp_path / "square.png"
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(buffer, format="PNG")
    image.write_bytes(buffer.getvalue())
    colour = {"type": "string", "enum": ["red", "green", "blue", "grey"]}
    arguments = {"model": VLM, "image": str(image), "max_tokens": 40, "temperature": 0}
    answer = structured(await client.call_tool("describe_image", {**arguments, "json_schema": colour}))
    assert json.loads(answer["text"]) in colour["enum"], answer["text"]


def test_engine_reasons_lose_the_build_path() -> None:
    raw = (
        "[04:20:10] /home/jenkins/agent/x/_deps/xgrammar-src/cpp/json_schema_converter.cc:898: "
        'Unsupported type "nonsense"\n\nmore'
    )
    assert engine_reason(RuntimeError(raw)) == 'Unsupported type "nonsense"'
    checked = "[1] /a/b.cc:3458: Check failed: (err.empty()) is false: Failed to parse JSON"
    assert engine_reason(RuntimeError(checked)) == "Failed to parse JSON"


async def test_numeric_bounds_are_refused_naming_them(client: Client) -> None:
    """GenAI 2026.4's grammar gave 315 for an integer in 300..310 and '0:5' for a number up to 0.5."""
    schema = {
        "type": "object",
        "properties": {
            "maximum": {"type": "string"},  # a property of that name is no keyword
            "age": {"type": "integer", "minimum": 0},
            "items": {"type": "array", "items": {"type": "number", "exclusiveMaximum": 1, "multipleOf": 0.5}},
        },
    }
    result = await client.call_tool("generate", {"model": LLM, "prompt": "Hi", "json_schema": schema})
    assert result.is_error
    message = text_of(result)
    for named in (
        "minimum (at #/properties/age)",
        "exclusiveMaximum (at #/properties/items/items)",
        "multipleOf (at #/properties/items/items)",
    ):
        assert named in message, message
    assert "maximum (at #/properties/maximum)" not in message and "enum" in message


def test_a_schema_keeps_its_property_order_and_must_be_a_json_schema() -> None:
    assert prepared_schema(CITY).index('"city"') < prepared_schema(CITY).index('"country"')
    backwards = {"type": "object", "properties": {"z": {"type": "string"}, "a": {"type": "string"}}}
    assert prepared_schema(backwards).index('"z"') < prepared_schema(backwards).index('"a"')
    with pytest.raises(InvalidRequestError, match=r"not a valid JSON Schema: .* \(at /properties/a/type\)"):
        prepared_schema({"type": "object", "properties": {"a": {"type": 5}}})


def test_a_text_that_breaks_the_schema_is_an_error_not_an_answer() -> None:
    check_text('{"city": "Paris", "country": "France", "is_capital": true}', CITY)
    with pytest.raises(InvalidRequestError, match=r"not JSON"):
        check_text("0:5", {"type": "number"})
    with pytest.raises(
        InvalidRequestError, match=r"does not match json_schema: 'Atlantis' is not one of .* \(at /country\)"
    ):
        check_text('{"city": "X", "country": "Atlantis", "is_capital": true}', CITY)


def test_a_schema_slow_to_compile_is_refused_and_tried_again_later(llm_path: Path) -> None:
    """A budget no compile can meet stands in for a schema that takes seconds (2,000 optional
    properties: 30 s here), which would hold up every request of a batch while it compiles. A busy
    machine can slow a compile, so that refusal is not remembered; the engine's own refusals are."""
    import openvino_genai

    checker = SchemaChecker(openvino_genai.Tokenizer(str(llm_path)), compile_budget_s=1e-9)
    schema = prepared_schema(CITY)
    for _ in range(2):  # compiled (and timed) each time
        with pytest.raises(
            InvalidRequestError, match=r"json_schema took .* s to compile, more than the 1e-09 s"
        ):
            checker.check(schema)
    lookbehind = prepared_schema({"type": "string", "pattern": "(?<=a)b"})
    with pytest.raises(InvalidRequestError, match="Lookbehind"):
        checker.check(lookbehind)

    def compiled_again(schema: str) -> tuple[str | None, bool]:
        raise AssertionError("a schema the engine refused was compiled again")

    checker._try = compiled_again  # type: ignore[method-assign]
    with pytest.raises(InvalidRequestError, match="Lookbehind"):
        checker.check(lookbehind)


async def test_stop_strings_and_a_schema_are_refused_together(client: Client) -> None:
    arguments = {"model": LLM, "prompt": QUESTION, "json_schema": CITY, "stop": ["\n\n"]}
    result = await client.call_tool("generate", arguments)
    assert result.is_error and "stop strings or json_schema, not both" in text_of(result)


def test_function_parameters_keep_their_references_inside_the_reply_schema(llm_path: Path) -> None:
    """Local references of every kind ("#", "#/definitions/...", "#/properties/...") still point
    into the function's own parameters once they sit inside the reply's schema."""
    import openvino_genai

    from openarc_mcp.transports.openai.tools import ToolDefinition, tool_use

    tree = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "kids": {"type": "array", "items": {"$ref": "#"}, "maxItems": 2},
            "at": {"$ref": "#/definitions/Spot"},
            "again": {"$ref": "#/properties/name"},
        },
        "required": ["name"],
        "definitions": {"Spot": {"type": "object", "properties": {"x": {"type": "integer", "maximum": 9}}}},
    }
    tools = [
        ToolDefinition.model_validate({"type": "function", "function": {"name": "plant", "parameters": tree}})
    ]
    use = tool_use(tools, "required", False)
    assert use is not None
    schema = use.reply_schema()
    placed = schema["$defs"]["plant"]
    assert placed["properties"]["kids"]["items"] == {"$ref": "#/$defs/plant"}
    assert placed["properties"]["at"] == {"$ref": "#/$defs/plant/definitions/Spot"}
    assert placed["properties"]["again"] == {"$ref": "#/$defs/plant/properties/name"}
    assert "maximum" not in json.dumps(schema)  # left to the check of the arguments
    assert tree["definitions"]["Spot"]["properties"]["x"]["maximum"] == 9  # type: ignore[index]  # the caller's copy kept
    SchemaChecker(openvino_genai.Tokenizer(str(llm_path))).check(
        prepared_schema(schema)
    )  # the engine takes it
    reply = {
        "tool_calls": [
            {
                "name": "plant",
                "arguments": {"name": "oak", "kids": [{"name": "x"}], "at": {"x": 3}, "again": "y"},
            }
        ]
    }
    check_text(json.dumps(reply), schema)  # and the validator follows the same references
    with pytest.raises(InvalidRequestError, match="does not match"):
        check_text(
            json.dumps({"tool_calls": [{"name": "plant", "arguments": {"name": "oak", "again": 5}}]}), schema
        )


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        (
            {"type": "object", "properties": {"a": {"$id": "http://x/a", "type": "string"}}},
            "$id (at #/properties/a)",
        ),
        ({"$id": "http://x/root", "type": "object"}, "$id (at #)"),
        ({"type": "object", "properties": {"a": {"$anchor": "here"}}}, "$anchor"),
        ({"type": "object", "properties": {"a": {"type": 5}}}, "not a valid JSON Schema"),
    ],
)
def test_function_parameters_that_cannot_be_used_name_the_function(
    parameters: dict[str, Any], words: str
) -> None:
    from openarc_mcp.transports.openai.errors import APIError
    from openarc_mcp.transports.openai.tools import ToolDefinition, tool_use

    tools = [
        ToolDefinition.model_validate(
            {"type": "function", "function": {"name": "f", "parameters": parameters}}
        )
    ]
    with pytest.raises(APIError) as refused:
        tool_use(tools, "auto", True)
    assert refused.value.param == "tools.0.function.parameters" and words in refused.value.message
    assert refused.value.message.startswith("parameters "), refused.value.message


def test_a_schema_nested_too_deeply_or_with_inner_identifiers_is_refused() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(400):
        deep = {"type": "array", "items": deep}
    with pytest.raises(InvalidRequestError, match="nested too deeply"):
        prepared_schema(deep)
    with pytest.raises(InvalidRequestError, match=r"\$id \(at #/properties/a\)"):
        prepared_schema({"type": "object", "properties": {"a": {"$id": "http://x/a", "type": "string"}}})
    prepared_schema(
        {"$id": "http://example.com/city", "type": "object"}
    )  # an $id at the top names the schema


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"$defs": {"n": {"$ref": "#/$defs/n"}}, "$ref": "#/$defs/n"}, "#/$defs/n refers back to itself"),
        (
            {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
            "#/$defs/a refers back to itself",
        ),
        ({"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}, "# refers back"),
        ({"type": "array", "minItems": 1, "items": {"$ref": "#"}}, "# refers back to itself"),
        ({"type": "string", "enum": []}, "enum at # is empty"),
        ({"type": "object", "properties": {"x": False}, "required": ["x"]}, "#/properties/x is false"),
    ],
    ids=["self", "cycle", "required-self", "non-empty-self", "empty-enum", "false"],
)
def test_a_schema_that_allows_no_finite_value_is_refused(schema: dict[str, Any], reason: str) -> None:
    """The grammar compiler takes these, and generation then spends every token on no text."""
    with pytest.raises(InvalidRequestError, match="allows no value that can be written out") as refused:
        prepared_schema(schema)
    assert reason in str(refused.value)


def test_recursive_schemas_with_a_way_to_end_are_kept() -> None:
    tree = {
        "type": "object",
        "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#"}}},
        "required": ["value", "children"],
    }
    chain = {
        "anyOf": [
            {"type": "null"},
            {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]},
        ]
    }
    for schema in (tree, chain, {"type": "object", "properties": {"next": {"$ref": "#"}}}):
        prepared_schema(schema)
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(300):
        deep = {"type": "object", "properties": {"a": deep}, "required": ["a"]}
    with pytest.raises(InvalidRequestError, match="nested too deeply"):
        prepared_schema(deep)


def test_replies_carry_whole_characters_only() -> None:
    """JSON escapes can spell half a surrogate pair (or max_tokens can cut a pair); UTF-8 cannot
    carry one, so it becomes U+FFFD rather than failing the response."""
    from openarc_mcp.transports.openai.tools import ToolDefinition, cut_answer, tool_use

    assert cut_answer('{"content": "hi \\ud83d') == "hi \ufffd"
    assert cut_answer('{"content": "pair \\ud83d\\ude00 ok') == "pair \U0001f600 ok"
    tools = [ToolDefinition.model_validate({"type": "function", "function": {"name": "say"}})]
    use = tool_use(tools, "required", True)
    assert use is not None
    _, calls = use.read_reply('{"tool_calls": [{"name": "say", "arguments": {"text": "\\udc00"}}]}')
    assert calls is not None
    arguments = calls[0]["function"]["arguments"]
    arguments.encode()  # would raise UnicodeEncodeError on a lone surrogate
    assert json.loads(arguments) == {"text": "\ufffd"}


def test_an_answer_cut_before_its_first_character_is_empty_not_json() -> None:
    from openarc_mcp.schema import GenerateResult, GenerationMetrics, TokenUsage
    from openarc_mcp.transports.openai.chat import _assistant_message
    from openarc_mcp.transports.openai.tools import ToolDefinition, tool_use

    use = tool_use(
        [ToolDefinition.model_validate({"type": "function", "function": {"name": "f"}})], "auto", True
    )
    metrics = GenerationMetrics(ttft_ms=1, tokens_per_second=1, total_ms=1)
    for text, content in (
        ('{"content": "', ""),
        ('{"content": "Hel', "Hel"),
        ('{"tool_calls": [{"na', '{"tool_calls": [{"na'),
    ):
        cut = GenerateResult(
            text=text,
            finish_reason="length",
            usage=TokenUsage(prompt_tokens=1, completion_tokens=1),
            metrics=metrics,
            model="m",
        )
        message, finish_reason = _assistant_message(cut, use)
        assert (message["content"], finish_reason) == (content, "length")


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ('{"content": "Rain falls on the ro', "Rain falls on the ro"),
        ('{\n  "content": "line one\\nline \\"two', 'line one\nline "two'),
        ('{"content": "caf\\u00e', "caf"),  # a partial escape is backed off
        ('{"content": "done"  ', "done"),  # the string ended, the object did not
        ('{"tool_calls": [{"name": "f", "argu', None),  # inside a call: no answer to show
        ("not json", None),
    ],
)
def test_a_reply_cut_short_shows_its_answer_as_far_as_it_got(text: str, answer: str | None) -> None:
    from openarc_mcp.transports.openai.tools import cut_answer

    assert cut_answer(text) == answer


def test_a_call_that_breaks_an_unenforced_bound_is_refused_naming_it() -> None:
    """The engine does not hold to minimum/maximum, so they are left out of the constraint (the
    schema is usable) and checked on each call's arguments. The caller's request was valid: a call
    that breaks them is the model's fault, a 500 as OpenAI answers, not retried by its clients."""
    from openarc_mcp.transports.openai.errors import APIError, error_response
    from openarc_mcp.transports.openai.tools import ToolDefinition, tool_use

    counted = {"type": "object", "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 10}}}
    tools = [
        ToolDefinition.model_validate(
            {"type": "function", "function": {"name": "count", "parameters": counted}}
        )
    ]
    use = tool_use(tools, "required", True)
    assert use is not None
    prepared_schema(use.reply_schema())  # no unenforced keyword left in it
    content, calls = use.read_reply('{"tool_calls": [{"name": "count", "arguments": {"count": 3}}]}')
    assert content is None and calls is not None and calls[0]["function"]["arguments"] == '{"count": 3}'
    with pytest.raises(APIError) as refused:
        use.read_reply('{"tool_calls": [{"name": "count", "arguments": {"count": 315}}]}')
    refusal = refused.value
    assert (refusal.status, refusal.param, refusal.code) == (500, None, "invalid_model_output")
    assert refused.value.message.startswith("The model produced invalid content")
    assert (
        "call to 'count' breaks the function's parameters: 315 is greater than the maximum of 10 (at count)"
        in refused.value.message
    )
    response = error_response(refused.value)
    assert response.status_code == 500 and response.headers["x-should-retry"] == "false"
    assert json.loads(bytes(response.body))["error"]["type"] == "server_error"


def _chat_request(messages: list[dict[str, Any]]) -> Any:
    from openarc_mcp.transports.openai.chat import ChatCompletionRequest

    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages})


def _call(ident: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_each_tool_result_reaches_the_model_with_the_call_it_answers() -> None:
    """Two calls of one function answered by id: the model reads which result is whose."""
    from openarc_mcp.transports.openai.chat import _text_chat

    calls = [_call("a", "get_weather", '{"city": "Paris"}'), _call("b", "get_weather", '{"city": "Rome"}')]
    request = _chat_request([
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "b", "content": "rain"},
        {"role": "tool", "tool_call_id": "a", "content": "sun"},
    ])  # fmt: skip
    chat = _text_chat(request.messages)
    rome = {"name": "get_weather", "arguments": {"city": "Rome"}}
    assert json.loads(chat[1].content)["tool_calls"][1] == rome
    assert json.loads(chat[2].content) == {"call": rome, "result": "rain"}
    assert json.loads(chat[3].content)["call"]["arguments"] == {"city": "Paris"}


@pytest.mark.parametrize(
    ("messages", "param", "words"),
    [
        ([{"role": "tool", "content": "sun"}], "messages.0.tool_call_id", "needs the tool_call_id"),
        (
            [
                {"role": "assistant", "tool_calls": [_call("a", "f", "{}")]},
                {"role": "tool", "tool_call_id": "z", "content": "sun"},
            ],
            "messages.1.tool_call_id",
            "'z' answers no call",
        ),
        ([{"role": "user", "tool_call_id": "a", "content": "hi"}], "messages.0.tool_call_id", "only tool"),
    ],
)
def test_tool_results_that_answer_no_call_are_refused(
    messages: list[dict[str, Any]], param: str, words: str
) -> None:
    from openarc_mcp.transports.openai.chat import _text_chat
    from openarc_mcp.transports.openai.errors import APIError

    with pytest.raises(APIError) as raised:
        _text_chat(_chat_request(messages).messages)
    assert (raised.value.status, raised.value.param) == (400, param) and words in raised.value.message


def test_an_assistant_reply_handed_back_as_the_client_holds_it_is_accepted() -> None:
    """The ``openai`` client's reply objects carry fields of their own (``refusal``, ``annotations``,
    ``parsed``, a streamed call's ``index``, ``parsed_arguments``); agent loops send them back."""
    from openarc_mcp.transports.openai.chat import _text_chat

    call: dict[str, Any] = {**_call("a", "f", '{"x": 1}'), "index": 0}
    call["function"]["parsed_arguments"] = {"x": 1}
    reply = {
        "role": "assistant", "content": None, "refusal": None, "annotations": [], "audio": None,
        "function_call": None, "parsed": None, "tool_calls": [call],
    }  # fmt: skip
    refused = {"role": "assistant", "content": None, "refusal": "I cannot help with that."}
    request = _chat_request([
        {"role": "user", "name": "ana", "content": "hi"}, reply,
        {"role": "tool", "tool_call_id": "a", "content": "done"}, refused,
    ])  # fmt: skip
    chat = _text_chat(request.messages)
    assert chat[3].content == "I cannot help with that."
    with pytest.raises(pydantic.ValidationError, match="audio"):  # a reply with audio is not one of ours
        _chat_request([{**reply, "audio": {"id": "x"}}])
