"""Checking an answer before the run accepts it: evidence, and typed answers.

Two checks run when the model finishes (``FINAL`` in code or in prose):

* **Support** (:func:`is_supported`). A short answer written as literal text, not
  computed by code, must appear in something the run produced: a REPL output or a
  sub-call's response of the current query. Small models copy numbers from worked
  examples or invent them; one "verify it with code" turn catches that. The check runs
  once per query: a model that answers the same again after verifying is believed.
  Long answers (prose summaries) are not checked: they are composed, not copied.
* **Schema** (:func:`parse_structured`). With ``output_schema``, the answer (a dict or
  list from ``FINAL(obj)``, or JSON) is parsed and validated on the host; a validation
  error goes back to the model as its next turn.
"""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

__all__ = [
    "MAX_CHECKED_ANSWER_CHARS",
    "OutputSchema",
    "is_supported",
    "normalize_answer",
    "parse_structured",
    "schema_json",
]

MAX_CHECKED_ANSWER_CHARS = 120
"""Answers longer than this are prose and are not checked for support."""

OutputSchema = type[BaseModel] | Mapping[str, Any]
"""A pydantic model, or a JSON schema (a dict)."""


def normalize_answer(text: str) -> str:
    """Case-folded, NFKC, without surrounding quotes, spaces and a final period."""
    text = unicodedata.normalize("NFKC", text).strip().strip("\"'`*").strip()
    return text.rstrip(".").casefold()


def is_supported(answer: str, evidence: Iterable[str]) -> bool:
    """True when ``answer`` is long prose, or occurs in one of the ``evidence`` texts."""
    wanted = normalize_answer(answer)
    if not wanted or len(wanted) > MAX_CHECKED_ANSWER_CHARS:
        return True
    pattern = _loose_pattern(wanted)
    return any(pattern.search(normalize_answer(text)) for text in evidence if text)


def _loose_pattern(wanted: str) -> re.Pattern[str]:
    """``wanted`` as a whole token; numbers match with or without thousands separators."""
    if re.fullmatch(r"-?[\d,]*\.?\d+", wanted):
        digits = wanted.replace(",", "")
        body = ",?".join(re.escape(char) for char in digits)
        return re.compile(rf"(?<![\d.]){body}(?![\d])")
    return re.compile(rf"(?<!\w){re.escape(wanted)}(?!\w)")


def schema_json(schema: OutputSchema) -> dict[str, Any]:
    """The JSON schema of a pydantic model, or the given JSON schema."""
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    return dict(schema)


def parse_structured(answer: str, schema: OutputSchema) -> tuple[Any, str | None]:
    """``(value, None)`` when ``answer`` parses and validates, else ``(None, reason)``.

    ``answer`` is what ``FINAL`` recorded: JSON, or the ``str()`` of a Python dict/list
    (single quotes, ``True``/``None``), which is read as a literal, never evaluated.
    The value is a JSON-able dict/list (a pydantic model is dumped in JSON mode).
    """
    try:
        data = _load(answer)
    except ValueError as error:
        return None, str(error)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            return schema.model_validate(data).model_dump(mode="json"), None
        except ValidationError as error:
            return None, _errors(error)
    try:
        return _validate_json_schema(data, dict(schema)), None
    except ValueError as error:
        return None, str(error)


def _load(answer: str) -> Any:
    text = answer.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(
            "the answer is not JSON nor a Python dict/list literal: call FINAL(value) with "
            "a dict (or a list) that matches the schema"
        ) from None


def _errors(error: ValidationError) -> str:
    lines = [
        f"- {'.'.join(str(part) for part in item['loc']) or '(root)'}: {item['msg']}"
        for item in error.errors()[:20]
    ]
    return "the value does not match the schema:\n" + "\n".join(lines)


def _validate_json_schema(data: Any, schema: dict[str, Any]) -> Any:
    """Validate against a JSON schema with pydantic (types, required fields, nesting)."""
    adapter: TypeAdapter[Any] = TypeAdapter(_model_from_schema(schema))
    try:
        value = adapter.validate_python(data)
    except ValidationError as error:
        raise ValueError(_errors(error)) from None
    return adapter.dump_python(value, mode="json")


def _model_from_schema(schema: dict[str, Any], name: str = "Output") -> Any:
    """A pydantic type for the common subset of JSON schema (objects, arrays, scalars)."""
    from pydantic import create_model

    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        required = set(schema.get("required", []))
        fields: dict[str, Any] = {}
        for key, sub in schema.get("properties", {}).items():
            field_type = _model_from_schema(sub, f"{name}_{key}")
            fields[key] = (field_type, ...) if key in required else (field_type | None, None)
        return create_model(name, **fields)
    if kind == "array":
        return list[_model_from_schema(schema.get("items", {}), f"{name}_item")]  # type: ignore[misc]
    return {
        "string": str,
        "integer": int,
        "number": float,
        "boolean": bool,
        "null": type(None),
    }.get(str(kind), Any)
