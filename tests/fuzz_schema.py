"""Hypothesis strategies built from a JSON Schema (a tool's inputSchema, a REST body's model schema).

``arguments(schema)`` draws objects that mostly follow the schema, and a good share that break it
on purpose — a required key dropped, an unknown key added, one value of the wrong type, numbers
just past their bounds, odd text (NUL, lone surrogates, right-to-left marks, very long) — so both
the validation path and the engines behind it see a wide spread of inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

Json = Any
Schema = Mapping[str, Any]

# Text: every category hypothesis has, lone surrogates (Cs) included, plus a few chosen oddities.
ODD_TEXT = st.sampled_from(["", " ", "\u0000", "\ud800", "\u202e", "\ufeff", "a" * 5000, "\n\n", "🙂" * 50])
WORDS = ["the", "capital", "of", "France", "is", "Paris", "hello", "model", "data", "?", "\n", "42"]
ALL_CHARACTERS = st.characters(codec=None, exclude_categories=())  # lone surrogates (Cs) too
ANY_TEXT = st.one_of(st.text(max_size=60), st.text(ALL_CHARACTERS, max_size=60), ODD_TEXT)

ANY_JSON: st.SearchStrategy[Json] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=8,
)


class SchemaStrategies:
    """Strategies for one schema document (``$defs`` resolved against it); ``overrides`` replace the
    strategy of named properties anywhere in it (to keep, say, ``max_tokens`` small enough to run)."""

    def __init__(self, document: Schema, overrides: Mapping[str, st.SearchStrategy[Json]] | None = None):
        self._definitions: Mapping[str, Schema] = document.get("$defs", {})
        self._overrides = dict(overrides or {})

    def valid(self, schema: Schema) -> st.SearchStrategy[Json]:
        """Values the schema allows (as far as the keywords used by our schemas go)."""
        schema = self._resolve(schema)
        if "const" in schema:
            return st.just(schema["const"])
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                return st.one_of([self.valid(option) for option in schema[combinator]])
        kind = schema.get("type")
        if isinstance(kind, list):
            return st.one_of([self.valid({**schema, "type": one}) for one in kind])
        return self._of_type(kind, schema)

    def mutated(self, schema: Schema) -> st.SearchStrategy[Json]:
        """Mostly valid objects, and objects broken in one of the ways a careless caller breaks them."""
        schema = self._resolve(schema)
        valid = self.valid(schema)
        properties: Mapping[str, Schema] = schema.get("properties", {})
        required: list[str] = list(schema.get("required", []))
        broken = [
            valid.flatmap(_with_unknown_key),
            valid.flatmap(lambda value: _with_wrong_value(value, properties, self)),
            st.dictionaries(ANY_TEXT, ANY_JSON, max_size=5),
        ]
        if required:
            broken.append(valid.flatmap(lambda value: _without_one_of(value, required)))
        return st.one_of(valid, valid, valid, *broken)

    def edge(self, schema: Schema) -> st.SearchStrategy[Json]:
        """Values at and just past the schema's bounds, and values of other JSON types."""
        schema = self._resolve(schema)
        edges: list[Json] = [None, True, "", [], {}, -1, 0, 2**63, -(2**63), 1e308, -1e-308, "text"]
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                bound = schema[key]
                edges += [bound, bound - 1, bound + 1, bound - 1e-9, bound + 1e-9]
        for key in ("minLength", "maxLength", "minItems", "maxItems"):
            if key in schema:
                edges += ["x" * max(schema[key] + 1, 0), ["x"] * min(schema[key] + 1, 300)]
        return st.one_of(st.sampled_from(edges), ANY_JSON)

    def _resolve(self, schema: Schema) -> Schema:
        reference = schema.get("$ref")
        if isinstance(reference, str) and reference.startswith("#/$defs/"):
            return self._resolve(self._definitions[reference.removeprefix("#/$defs/")])
        return schema

    def _of_type(self, kind: str | None, schema: Schema) -> st.SearchStrategy[Json]:
        if kind == "object":
            return self._object(schema)
        if kind == "array":
            items = self.valid(schema.get("items", {}))
            low = schema.get("minItems", 0)
            return st.lists(items, min_size=low, max_size=min(schema.get("maxItems", low + 6), low + 6))
        if kind == "string":
            low = schema.get("minLength", 0)
            high = min(schema.get("maxLength", low + 80), low + 80)
            words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)
            return st.one_of(
                words.filter(lambda text: low <= len(text) <= high) if high >= 1 else st.just(""),
                st.text(min_size=max(low, 1), max_size=max(high, 1)).filter(lambda text: len(text) <= high),
                st.text(ALL_CHARACTERS, min_size=low, max_size=high),
                ODD_TEXT.filter(lambda text: low <= len(text) <= schema.get("maxLength", len(text))),
            )
        if kind in {"integer", "number"}:
            return _number(kind, schema)
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        return ANY_JSON  # no type: anything

    def _object(self, schema: Schema) -> st.SearchStrategy[Json]:
        properties: Mapping[str, Schema] = schema.get("properties", {})
        required = set(schema.get("required", []))
        strategies = {
            name: self._overrides[name] if name in self._overrides else self.valid(sub)
            for name, sub in properties.items()
        }
        return st.fixed_dictionaries(
            {name: strategy for name, strategy in strategies.items() if name in required},
            optional={name: strategy for name, strategy in strategies.items() if name not in required},
        )


def _number(kind: str, schema: Schema) -> st.SearchStrategy[Json]:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if kind == "integer":
        low = None if low is None else int(low) + ("exclusiveMinimum" in schema)
        high = None if high is None else int(high) - ("exclusiveMaximum" in schema)
        return st.integers(low, high)
    return st.floats(
        low,
        high,
        allow_nan=False,
        allow_infinity=False,
        exclude_min="exclusiveMinimum" in schema,
        exclude_max="exclusiveMaximum" in schema,
    )


def _with_unknown_key(value: Json) -> st.SearchStrategy[Json]:
    if not isinstance(value, dict):
        return st.just(value)
    return st.builds(lambda key, extra: {**value, f"x_{key}": extra}, st.text(max_size=8), ANY_JSON)


def _without_one_of(value: Json, required: list[str]) -> st.SearchStrategy[Json]:
    if not isinstance(value, dict):
        return st.just(value)
    return st.sampled_from(required).map(lambda key: {k: v for k, v in value.items() if k != key})


def _with_wrong_value(
    value: Json, properties: Mapping[str, Schema], strategies: SchemaStrategies
) -> st.SearchStrategy[Json]:
    if not isinstance(value, dict) or not properties:
        return st.just(value)

    def replace(name: str) -> st.SearchStrategy[Json]:
        return strategies.edge(properties[name]).map(lambda wrong: {**value, name: wrong})

    return st.sampled_from(sorted(properties)).flatmap(replace)
