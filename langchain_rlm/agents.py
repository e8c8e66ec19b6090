"""An RLM as a tool for LangChain agents: :func:`rlm_tool`.

Every LangChain Runnable has ``as_tool``; this factory adds what an agent needs from an
RLM: a clear description for the model, a plain-string answer, and the option to bind a
document at creation so that the agent never carries huge text through its own context::

    from langchain.agents import create_agent
    from langchain_rlm import RLM
    from langchain_rlm.agents import rlm_tool

    rlm = RLM("openai:gpt-4o", sub_model="openai:gpt-4o-mini")
    contract = open("contract.txt").read()          # megabytes: stays out of the agent's prompt
    tool = rlm_tool(rlm, name="contract_qa", context=contract,
                    description="Answers questions about the signed contract.")
    agent = create_agent("openai:gpt-4o-mini", tools=[tool])
    agent.invoke({"messages": [("user", "What is the termination notice period?")]})

``context`` may be ``None`` (the tool then takes ``query`` and ``document``), a string, list
or dict (bound: the tool takes only ``query``), or a zero-argument callable returning one
(bound, evaluated on each call: e.g. reading the latest file). The tool runs the RLM with
the agent's config, so its run nests under the agent's tool run in traces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from langchain_rlm.rlm import RLM

__all__ = ["DEFAULT_TOOL_DESCRIPTION", "DEFAULT_TOOL_NAME", "rlm_tool"]

DEFAULT_TOOL_NAME = "long_context_qa"
DEFAULT_TOOL_DESCRIPTION = (
    "Answers a question over a long document of any size by reading it with code and "
    "sub-model calls (a Recursive Language Model). Ask one precise, self-contained question."
)
BOUND_NOTE = " The document is already loaded: pass only the question."
UNBOUND_NOTE = " Pass the question and the full document text."

ContextSource = str | list[Any] | dict[str, Any] | Callable[[], Any] | None


class _QueryOnly(BaseModel):
    """Arguments of a tool with a bound document."""

    query: str = Field(description="The question to answer over the document.")


class _QueryAndDocument(BaseModel):
    """Arguments of a tool that takes the document with each call."""

    query: str = Field(description="The question to answer over the document.")
    document: str = Field(description="The document (any length) to answer from.")


def rlm_tool(
    rlm: RLM,
    name: str = DEFAULT_TOOL_NAME,
    description: str = DEFAULT_TOOL_DESCRIPTION,
    *,
    context: ContextSource = None,
    return_direct: bool = False,
) -> BaseTool:
    """A :class:`~langchain_core.tools.StructuredTool` that answers with ``rlm``.

    Args:
        rlm: the RLM that answers.
        name: the tool name the agent sees.
        description: what the tool is for (a note on its arguments is appended).
        context: ``None`` (the agent passes ``document``), a bound document (str, list,
            dict), or a zero-argument callable returning the document on each call.
        return_direct: end the agent's loop with the tool's answer.

    Returns:
        A tool whose output is the RLM's answer string. Errors of the run (a failed root
        model, bad input) are returned to the agent as ``"ERROR: ..."`` text.
    """
    if not isinstance(rlm, RLM):
        raise TypeError(f"rlm_tool needs an RLM, not {type(rlm).__name__}")
    if not name.isidentifier():
        raise ValueError(f"tool name {name!r} must be an identifier (letters, digits, _)")
    if context is None:

        def answer_with_document(query: str, document: str, config: RunnableConfig) -> str:
            return _answer(rlm, query, document, config)

        return StructuredTool.from_function(
            func=answer_with_document,
            name=name,
            description=description + UNBOUND_NOTE,
            args_schema=_QueryAndDocument,
            return_direct=return_direct,
        )
    source = context

    def answer_bound(query: str, config: RunnableConfig) -> str:
        document = source() if callable(source) else source
        return _answer(rlm, query, document, config)

    return StructuredTool.from_function(
        func=answer_bound,
        name=name,
        description=description + BOUND_NOTE,
        args_schema=_QueryOnly,
        return_direct=return_direct,
    )


def _answer(rlm: RLM, query: str, document: Any, config: RunnableConfig) -> str:
    try:
        result = rlm.invoke({"query": query, "context": document}, config)
    except (ValueError, RuntimeError) as error:
        return f"ERROR: {error}"
    return result.answer
