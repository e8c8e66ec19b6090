"""Checking and normalizing what users pass as ``context``.

The sandbox holds JSON-like data: a ``str``, a ``list`` or a ``dict``. Documents
(LangChain ``Document`` or anything with ``page_content`` / ``text``) become records
``{"id", "text", "metadata"}`` so model code can filter by metadata. The caller's object is
never mutated: lists and dicts are copied (strings are immutable and shared).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["ContextTypeError", "normalize_context", "record_from_document"]

SUPPORTED = "a str, a list of str / documents / dicts, or a dict of JSON-like values"


class ContextTypeError(TypeError):
    """The context is of a type the RLM cannot load into its REPL."""


def normalize_context(context: Any) -> str | list[Any] | dict[str, Any]:
    """A JSON-like copy of ``context`` (strings are shared, containers are copied)."""
    if isinstance(context, str):
        return context
    if isinstance(context, bytes):
        raise ContextTypeError(
            f"context is bytes: decode it first, e.g. data.decode('utf-8'), or pass {SUPPORTED}"
        )
    if isinstance(context, list | tuple):
        return [_item(value, index) for index, value in enumerate(context)]
    if isinstance(context, Mapping):
        return {str(key): _json_like(value, f"context[{key!r}]") for key, value in context.items()}
    if _is_document(context):
        return [record_from_document(context, 0)]
    raise ContextTypeError(
        f"context of type {type(context).__name__} is not supported: pass {SUPPORTED} "
        "(convert other objects with str() or json-able dicts first)"
    )


def _item(value: Any, index: int) -> Any:
    if isinstance(value, str):
        return value
    if _is_document(value):
        return record_from_document(value, index)
    return _json_like(value, f"context[{index}]")


def _is_document(value: Any) -> bool:
    return hasattr(value, "page_content") or (
        hasattr(value, "get_content") and hasattr(value, "metadata")
    )


def record_from_document(document: Any, index: int) -> dict[str, Any]:
    """``{"id", "text", "metadata"}`` from a LangChain Document or a LlamaIndex node."""
    if hasattr(document, "page_content"):
        text = document.page_content
        identifier = getattr(document, "id", None)
    else:
        text = document.get_content()
        identifier = getattr(document, "node_id", None) or getattr(document, "id_", None)
    metadata = _json_like(dict(getattr(document, "metadata", None) or {}), "metadata", lenient=True)
    return {
        "id": str(identifier) if identifier is not None else str(index),
        "text": text,
        "metadata": metadata,
    }


def _json_like(value: Any, where: str, *, lenient: bool = False) -> Any:
    """A deep copy of ``value`` restricted to JSON types (lenient: other leaves become str)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return str(value)
    if isinstance(value, list | tuple):
        return [_json_like(item, f"{where}[{i}]", lenient=lenient) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {
            str(key): _json_like(item, f"{where}[{key!r}]", lenient=lenient)
            for key, item in value.items()
        }
    if _is_document(value):
        return record_from_document(value, 0)
    if lenient:
        return str(value)
    raise ContextTypeError(
        f"{where} is a {type(value).__name__}, which cannot be loaded into the REPL: "
        f"pass {SUPPORTED} (convert it with str() or to a dict first)"
    )
