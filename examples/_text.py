"""A real long text that ships with every CPython: the Python language reference topics."""

from __future__ import annotations


def python_reference() -> str:
    """About 470,000 characters of the Python reference, one section per topic."""
    from pydoc_data.topics import topics

    return "\n\n".join(f"=== {name} ===\n{text}" for name, text in sorted(topics.items()))


def python_reference_sections() -> list[dict[str, object]]:
    """The same text as records ``{"id", "text", "metadata"}``, one per topic."""
    from pydoc_data.topics import topics

    return [
        {"id": name, "text": text, "metadata": {"topic": name, "chars": len(text)}}
        for name, text in sorted(topics.items())
    ]
