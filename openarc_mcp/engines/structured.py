"""JSON Schema constrained generation: the schema checked before a request reaches the model.

GenAI constrains sampling to a JSON schema (``StructuredOutputConfig``, compiled by xgrammar), but
it converts the schema only when the request is first sampled, inside the pipeline's step. A
schema it cannot convert (an unknown type, a ``$ref`` to nowhere, a regex ``pattern`` with a
lookbehind) then fails that step: in a continuous-batching pipeline every request of the batch
fails with it and the pipeline is left unusable (measured with GenAI 2026.4: the next
``add_request`` raises "cannot be called when we are already in scheduling phase").

So each schema is tried first on a checker: an ``LLMPipeline`` around a model built here with no
weights (its logits are zeros, wide enough for any vocabulary) and the serving model's own
tokenizer, generating one token under the schema. That runs GenAI's own conversion and compilation
(1-20 ms), so what the checker accepts the model accepts, and what it refuses is refused with
xgrammar's reason before any model work, and so is one that takes longer than
``SCHEMA_COMPILE_BUDGET_S`` (schema.py) to compile. What a schema got is remembered.

Not every keyword is held to by the grammar compiler GenAI 2026.4 bundles (measured with SmolLM2,
sampled): an integer with ``minimum`` 300 and ``maximum`` 310 came out as 315, a number with
``maximum`` 0.5 as ``0:5`` (not JSON at all), and ``multipleOf`` was ignored. Schemas with those
keywords are refused, naming them (``prepared_schema``), and every text that ends by itself is
validated against the whole schema afterwards (``check_text``), so a keyword the engine let pass
is an error, never a wrong answer.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import EngineFault, UnusableSchemaError
from ..schema import MAX_SCHEMA_CHARS, SCHEMA_COMPILE_BUDGET_S, UNENFORCED_KEYWORDS

__all__ = [
    "MAX_SCHEMA_CHARS",
    "SchemaChecker",
    "check_text",
    "checked_json_schema",
    "engine_reason",
    "first_mismatch",
    "prepared_schema",
    "subschemas",
]


_LOGITS_WIDTH = 2**19
"""Logits of the checker's model: at least any tokenizer's vocabulary (the largest in use ~262k)."""
_REMEMBERED = 256  # schemas checked, kept so that a repeated schema is not compiled again here
_SOURCE_PREFIX = re.compile(r"^.*?\.(?:cc|cpp|hpp|h):\d+:\s*")
_CHECK_FAILED = re.compile(r"^Check failed: \(.*?\) is false:\s*")


def prepared_schema(schema: dict[str, Any]) -> str:
    """The schema as GenAI takes it (compact JSON, the same text for the same schema), once it is
    known to be a JSON Schema, small enough, and free of keywords the engine would not hold to."""
    try:
        text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)  # properties keep their order
    except RecursionError as exc:
        raise UnusableSchemaError("json_schema is nested too deeply") from exc
    if len(text) > MAX_SCHEMA_CHARS:
        raise UnusableSchemaError(
            f"json_schema is too large: {len(text)} characters of JSON, at most {MAX_SCHEMA_CHARS}"
        )
    checked_json_schema(schema)
    try:
        unwritable = _Writable(schema).problem()
    except RecursionError as exc:
        raise UnusableSchemaError("json_schema is nested too deeply") from exc
    if unwritable is not None:
        raise UnusableSchemaError(f"json_schema allows no value that can be written out: {unwritable}")
    unenforced = sorted(_found(schema, "#", UNENFORCED_KEYWORDS))
    if unenforced:
        raise UnusableSchemaError(
            f"json_schema uses {', '.join(unenforced)}: the engine's grammar does not hold to numeric "
            "bounds or multipleOf (it can give out-of-range numbers, or text that is not JSON); remove "
            "them and check the values yourself, or list the allowed values with enum"
        )
    return text


def checked_json_schema(schema: dict[str, Any], *, nested: bool = False) -> None:
    """Raise ``UnusableSchemaError`` unless ``schema`` is a valid JSON Schema whose references
    stay within it by JSON pointer: identifiers and anchors (``$id`` below the root, or anywhere
    when the schema is ``nested`` in another) are refused, as the grammar compiler ignores them
    and the validator would resolve against them."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
        identifiers = sorted(_found(schema, "#", _IDENTIFIERS, spared=() if nested else ("$id",)))
    except RecursionError as exc:
        raise UnusableSchemaError("json_schema is nested too deeply") from exc
    except SchemaError as exc:
        raise UnusableSchemaError(
            f"json_schema is not a valid JSON Schema: {exc.message} (at {_where(exc.absolute_path)})"
        ) from exc
    if identifiers:
        raise UnusableSchemaError(
            f"json_schema uses {', '.join(identifiers)}: identifiers and anchors inside a schema are not "
            'supported; put shared parts under $defs and refer to them as "#/$defs/<name>"'
        )


_IDENTIFIERS = ("$id", "$anchor", "$dynamicAnchor", "$dynamicRef", "$recursiveAnchor", "$recursiveRef")


class _Writable:
    """Whether a schema allows some finite JSON value; if not, why (the grammar compiler accepts
    such a schema, and generation then never ends a value: every token is spent on no text).

    A value is writable when its node allows it: ``true``; a ``const`` or a non-empty ``enum``; a
    ``$ref`` to a writable node; all of ``allOf``, one of ``anyOf``/``oneOf``; an object whose
    required properties are writable; an array that may be empty or whose items are. A ``$ref``
    back to a node on the way to it is not (the value would never end). Anything else is taken as
    writable: this only refuses what surely allows nothing.
    """

    _BUDGET = 20_000  # nodes looked at; past it the schema is taken as writable

    def __init__(self, root: dict[str, Any]) -> None:
        self._root = root
        self._writable: set[int] = set()  # ids of nodes known writable
        self._path: list[int] = []  # ids of the nodes being looked at
        self._looked = 0
        self._why: str | None = None

    def problem(self) -> str | None:
        """Why the schema allows no value, or ``None`` when it allows one (or might)."""
        return None if self._node(self._root, "#") else (self._why or "no value matches it")

    def _node(self, node: Any, where: str) -> bool:
        self._looked += 1
        if self._looked > self._BUDGET or node is True:
            return True
        if not isinstance(node, dict):
            return self._refuse(f"{where} is false, which no value matches") if node is False else True
        if id(node) in self._writable:
            return True
        if id(node) in self._path:
            return self._refuse(
                f"{where} refers back to itself with no way to end (its value would never end)"
            )
        self._path.append(id(node))
        try:
            writable = self._dict(node, where)
        finally:
            self._path.pop()
        if writable:
            self._writable.add(id(node))
        return writable

    def _dict(self, node: dict[str, Any], where: str) -> bool:
        if "const" in node:
            return True
        if isinstance(node.get("enum"), list) and not node["enum"]:
            return self._refuse(f"enum at {where} is empty")
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith("#"):
            target = _pointed(self._root, reference)
            if target is not _NOWHERE and not self._node(target, reference):
                return False
        if not all(self._node(child, f"{where}/allOf/{index}") for index, child in _listed(node, "allOf")):
            return False
        for keyword in ("anyOf", "oneOf"):
            branches = _listed(node, keyword)
            if branches and not any(self._node(child, f"{where}/{keyword}/{i}") for i, child in branches):
                return False
        return self._typed(node, where)

    def _typed(self, node: dict[str, Any], where: str) -> bool:
        types = node.get("type")
        kinds = types if isinstance(types, list) else [types]
        if "object" in kinds and len(kinds) == 1:
            return self._object(node, where)
        if "array" in kinds and len(kinds) == 1:
            return self._array(node, where)
        return True

    def _object(self, node: dict[str, Any], where: str) -> bool:
        declared = node.get("properties")
        properties: dict[str, Any] = declared if isinstance(declared, dict) else {}
        required = node.get("required")
        others = node.get("additionalProperties", True)
        for name in required if isinstance(required, list) else []:
            child = properties.get(name, others)
            if not self._node(child, f"{where}/properties/{name}"):
                return False
        return True

    def _array(self, node: dict[str, Any], where: str) -> bool:
        least = node.get("minItems", 0)
        if not isinstance(least, int) or least < 1:
            return True
        prefix = _listed(node, "prefixItems")
        for index, child in prefix[:least]:
            if not self._node(child, f"{where}/prefixItems/{index}"):
                return False
        return least <= len(prefix) or self._node(node.get("items", True), f"{where}/items")

    def _refuse(self, why: str) -> bool:
        self._why = self._why or why
        return False


_NOWHERE = object()


def _pointed(root: dict[str, Any], reference: str) -> Any:
    """The node a ``#/...`` JSON pointer names in ``root``, or ``_NOWHERE``."""
    node: Any = root
    for raw in reference[1:].split("/")[1:] if reference != "#" else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _NOWHERE
    return node


def _listed(node: dict[str, Any], keyword: str) -> list[tuple[int, Any]]:
    items = node.get(keyword)
    return list(enumerate(items)) if isinstance(items, list) else []


def check_text(text: str, schema: dict[str, Any]) -> None:
    """Raise ``UnusableSchemaError`` if ``text``, which the engine was constrained to, does not match
    (a keyword of the schema the engine did not hold to: the caller can drop or replace it)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UnusableSchemaError(f"the engine's text under json_schema is not JSON ({exc})") from exc
    problem = first_mismatch(value, schema)
    if problem is not None:
        message, path = problem
        raise UnusableSchemaError(
            f"the engine's text does not match json_schema: {message} (at {_where(path)}); the grammar "
            "did not hold to this keyword: simplify the schema there, or ask without it and check the value"
        )


def first_mismatch(value: Any, schema: dict[str, Any]) -> tuple[str, tuple[str | int, ...]] | None:
    """The most telling way ``value`` breaks ``schema`` (message, path to the value), or ``None``."""
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for
    from referencing.exceptions import Unresolvable

    try:
        problem = best_match(validator_for(schema)(schema).iter_errors(value))
    except (Unresolvable, RecursionError) as exc:
        raise UnusableSchemaError(f"json_schema has a reference that cannot be followed ({exc})") from exc
    return None if problem is None else (problem.message, tuple(problem.absolute_path))


def _where(path: Any) -> str:
    return "/" + "/".join(str(part) for part in path) if path else "the top"


_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SUBSCHEMAS = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
)


def _found(node: Any, where: str, keywords: tuple[str, ...], spared: tuple[str, ...] = ()) -> Iterator[str]:
    """``keyword (at path)`` for each of ``keywords`` in the schema ``node`` (but ``spared`` there)
    and in its subschemas (keywords only: a property that happens to be named ``maximum`` is not one)."""
    if not isinstance(node, dict):
        return
    for keyword in keywords:
        if keyword in node and keyword not in spared:
            yield f"{keyword} (at {where})"
    for child, child_where in subschemas(node, where):
        yield from _found(child, child_where, keywords)


def subschemas(node: dict[str, Any], where: str) -> Iterator[tuple[Any, str]]:
    """The subschemas of the schema ``node``, each with its JSON pointer below ``where``."""
    for key in _SUBSCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            yield from ((child, f"{where}/{key}/{name}") for name, child in node[key].items())
    for key in (*_SUBSCHEMA_LISTS, *_SUBSCHEMAS):
        child = node.get(key)
        if isinstance(child, list):  # allOf, anyOf, ...; items as a list in older drafts
            yield from ((item, f"{where}/{key}/{index}") for index, item in enumerate(child))
        elif key in _SUBSCHEMAS:
            yield child, f"{where}/{key}"


class SchemaChecker:
    """Refuses, with xgrammar's reason, a JSON schema that the model's pipeline could not use, or
    that takes longer than ``compile_budget_s`` to compile.

    The budget matters under continuous batching: the pipeline compiles a new schema inside its
    step, so every request decoding beside it waits that long (GenAI then reuses the compiled
    grammar for the same schema). Measured here (SmolLM2's tokenizer): 0.02-0.4 s for most schemas,
    ~2 s for a string with a ``maxLength`` of a few hundred or more, 1.3 s for 400 optional
    properties and 30 s for 2,000. Thread-safe (checks run one at a time); the checker's pipeline is
    built at the first check (~30 ms) from ``tokenizer``, the serving pipeline's ``Tokenizer``."""

    def __init__(self, tokenizer: Any, compile_budget_s: float = SCHEMA_COMPILE_BUDGET_S) -> None:
        self._tokenizer = tokenizer
        self._budget = compile_budget_s
        self._lock = threading.Lock()
        self._pipe: Any = None
        self._known: OrderedDict[str, str | None] = OrderedDict()  # schema → why refused, None if fine

    def check(self, schema: str) -> None:
        """Return if ``schema`` (JSON text) is usable; raise ``UnusableSchemaError`` saying why if not."""
        with self._lock:
            if schema in self._known:
                self._known.move_to_end(schema)
                refusal = self._known[schema]
            else:
                refusal, lasting = self._try(schema)
                if lasting:  # a compile that ran long on a busy machine may pass another time
                    self._known[schema] = refusal
                    if len(self._known) > _REMEMBERED:
                        self._known.popitem(last=False)
        if refusal is not None:
            raise UnusableSchemaError(refusal)

    def close(self) -> None:
        """Drop the checker's pipeline and the tokenizer (the engine is closing)."""
        with self._lock:
            self._pipe = None
            self._tokenizer = None

    def _try(self, schema: str) -> tuple[str | None, bool]:
        """(why ``schema`` is refused, or ``None``; whether that answer lasts)."""
        import openvino_genai

        if self._tokenizer is None:
            raise EngineFault("the model is closing")
        if self._pipe is None:
            self._pipe = _checker_pipeline(self._tokenizer)
        config = self._pipe.get_generation_config()
        config.max_new_tokens = 1
        config.do_sample = False
        config.structured_output_config = openvino_genai.StructuredOutputConfig(json_schema=schema)
        started = time.perf_counter()
        try:
            self._pipe.generate("{", config)
        except RuntimeError as exc:
            return f"json_schema cannot be used: {engine_reason(exc)}", True
        took = time.perf_counter() - started
        if took > self._budget:
            return (
                f"json_schema took {took:.1f} s to compile, more than the {self._budget:g} s allowed (the "
                "model would hold up every request decoding beside it as long): simplify it, e.g. fewer "
                "optional properties, or no maxLength on long strings"
            ), False
        return None, True


def engine_reason(exc: BaseException) -> str:
    """The reason in a GenAI/xgrammar error, without the build path and source line before it."""
    first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return (_CHECK_FAILED.sub("", _SOURCE_PREFIX.sub("", first.strip())) or type(exc).__name__)[:300]


def _checker_pipeline(tokenizer: Any) -> Any:
    """An ``LLMPipeline`` whose model answers zero logits for every position (no weights)."""
    import numpy as np
    import openvino
    import openvino_genai

    with tempfile.TemporaryDirectory(prefix="openarc-schema-checker-") as folder:
        xml = Path(folder) / "checker.xml"
        openvino.save_model(_zero_logits_model(), xml, compress_to_fp16=False)
        tensor = openvino.Tensor(np.fromfile(xml.with_suffix(".bin"), dtype=np.uint8))
        return openvino_genai.LLMPipeline(xml.read_text(), tensor, tokenizer, "CPU", ATTENTION_BACKEND="SDPA")


def _zero_logits_model() -> Any:
    """A stateless causal-LM signature (input_ids, attention_mask, position_ids, beam_idx → logits)."""
    import numpy as np
    import openvino
    from openvino import opset13 as ops

    def parameter(name: str, shape: list[int], kind: Any) -> Any:
        node = ops.parameter(shape, kind, name=name)
        node.output(0).get_tensor().set_names({name})
        return node

    input_ids = parameter("input_ids", [-1, -1], openvino.Type.i64)
    inputs = [
        input_ids,
        parameter("attention_mask", [-1, -1], openvino.Type.i64),
        parameter("position_ids", [-1, -1], openvino.Type.i64),
        parameter("beam_idx", [-1], openvino.Type.i32),
    ]
    shape = ops.concat([ops.shape_of(input_ids), ops.constant(np.array([_LOGITS_WIDTH], np.int64))], 0)
    logits = ops.broadcast(ops.constant(np.float32(0)), shape)
    logits.output(0).get_tensor().set_names({"logits"})
    return openvino.Model([logits], inputs, "openarc-schema-checker")
