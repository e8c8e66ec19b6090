"""A LlamaIndex ReActAgent that uses an RLMQueryEngine as one of its tools.

The agent decides *when* to consult the document collection; the RLM decides *how* to
read it (code over all the records, sub-model calls on the parts it picked). The tool's
output carries the RLM's answer; ``source_nodes`` are the documents that informed it.

The documents are real: docstrings of standard-library modules (see
``llama_index_documents.py``).

Models:

* default: ``OPENAI_API_KEY`` when set, else the embedded local model (Qwen2.5-Coder-0.5B
  via llama.cpp; small, so expect a wobbly ReAct loop) for the agent and the RLM;
* ``--base-url URL``: an OpenAI-compatible server for all three roles;
* ``--scripted``: a fully offline, deterministic demo. The agent, root and sub-model are
  FAKES: scripted replies served over HTTP by the project's ``ScriptedOpenAIServer`` on
  127.0.0.1, so the real ``ChatOpenAI`` client path runs but no model answers.

The agent's LLM is a LangChain chat model wrapped in ``LangChainLLM`` (a LlamaIndex LLM),
so the same OpenAI-compatible endpoint drives both frameworks. A LlamaIndex LLM such as
``llama_index.llms.openai.OpenAI`` can be passed to ``RLMQueryEngine`` directly as well.

Run::

    python examples/llama_index_agent.py --scripted
    python examples/llama_index_agent.py --question "Which modules compress data?"
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llama_index.core.agent.workflow import ReActAgent
from llama_index.core.tools import QueryEngineTool

from llama_index_rlm import LangChainLLM, RLMQueryEngine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_index_documents import load_documents

DEFAULT_QUESTION = "Which standard library modules deal with data compression?"
TOOL_NAME = "stdlib_docs"
TOOL_DESCRIPTION = (
    "Answers questions about the documentation of Python standard-library modules. "
    "Input: a full question in plain English."
)
LOCAL_MAX_TOKENS = 512

# -- the --scripted demo: FAKE replies, not a model --------------------------------------
SCRIPTED_AGENT = [
    "Thought: The documentation will tell me; I should ask the tool.\n"
    f"Action: {TOOL_NAME}\n"
    'Action Input: {"input": "Which standard library modules deal with data compression?"}',
    "Thought: I can answer without using any more tools.\n"
    "Answer: According to the stdlib documentation, these modules deal with compression: {}.",
]
SCRIPTED_ROOT = [
    "```repl\nimport re\nhits = [r for r in context if re.search(r'compress', r['text'], re.I)]\n"
    "print([r['id'] for r in hits])\n```",
    "```repl\nverdicts = llm_query_batched([\n"
    "    'Is this module mainly about data compression? Answer yes or no.\\n\\n' + r['text']\n"
    "    for r in hits])\n"
    "found = [r['id'] for r, v in zip(hits, verdicts) if v.strip().lower().startswith('yes')]\n"
    "print(found)\n```",
    "```repl\nFINAL(', '.join(found))\n```",
]
COMPRESSION_MODULES = frozenset({"bz2", "gzip", "lzma", "zlib", "zipfile", "tarfile"})


def scripted_sub(prompt: str) -> str:
    """FAKE sub-model: says yes for the compression modules' docstrings."""
    first_line = prompt.split("\n\n", 1)[-1].splitlines()[0].lower()
    named = {m for m in COMPRESSION_MODULES if re.search(rf"\b{m}\b", first_line)}
    return "yes" if named or "compress" in first_line else "no"


def scripted_models() -> tuple[Any, Any, Any, Callable[[], None]]:
    """Agent, root and sub chat models served by the scripted server, and a closer."""
    from langchain_rlm.testing import ScriptedOpenAIServer, replies_responder

    answers: list[str] = []

    def agent(request: Any) -> str:
        turn = len(answers)
        answers.append(request.last_user_message)
        if turn == 0:
            return SCRIPTED_AGENT[0]
        observation = re.search(r"Observation: (.*)", request.last_user_message)
        found = observation.group(1).strip() if observation else "unknown"
        return SCRIPTED_AGENT[1].format(found)

    server = ScriptedOpenAIServer(
        {
            "agent": agent,
            "root": replies_responder(SCRIPTED_ROOT),
            "sub": lambda request: scripted_sub(request.last_user_message),
        }
    ).start()
    return (
        server.chat_model("agent"),
        server.chat_model("root"),
        server.chat_model("sub"),
        server.close,
    )


def real_models(args: argparse.Namespace) -> tuple[Any, Any, Any, Callable[[], None]]:
    if args.base_url:
        from langchain_openai import ChatOpenAI

        model = ChatOpenAI(base_url=args.base_url, api_key=args.api_key, model=args.model)
        return model, model, model, lambda: None
    from langchain_rlm.local import default_chat_models

    root, sub = default_chat_models(max_tokens=LOCAL_MAX_TOKENS)
    return root, root, sub, lambda: None


async def run(args: argparse.Namespace) -> int:
    agent_model, root, sub, close = scripted_models() if args.scripted else real_models(args)
    try:
        engine = RLMQueryEngine.from_documents(
            load_documents(), root, sub, max_iterations=args.max_iterations
        )
        tool = QueryEngineTool.from_defaults(engine, name=TOOL_NAME, description=TOOL_DESCRIPTION)
        agent = ReActAgent(tools=[tool], llm=LangChainLLM(chat_model=agent_model))
        result = await agent.run(user_msg=args.question)
        print(f"Q: {args.question}\nA: {result}\n")
        for call in result.tool_calls:
            sources = getattr(call.tool_output.raw_output, "source_nodes", [])
            print(f"tool {call.tool_name}({call.tool_kwargs}) -> {call.tool_output.content!r}")
            print("  sources:", ", ".join(n.node.node_id for n in sources) or "none")
    finally:
        close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--scripted", action="store_true", help="offline demo with FAKE models")
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint")
    parser.add_argument("--api-key", default="local")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--max-iterations", type=int, default=8)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
