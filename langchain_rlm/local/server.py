"""The llama.cpp server manager: ``python -m llama_cpp.server`` on a loopback port.

:class:`LocalModelServer` runs llama-cpp-python's OpenAI-compatible server for one GGUF file in a
child process, so ``ChatOpenAI`` drives it. Starting it logs (on ``langchain_rlm.local``, at INFO,
or at the level the caller asks for) the command and the ``127.0.0.1:PORT`` it is about to bind,
before it spawns anything.

Server settings (measured on the 2-core machines this project runs on): ``--logits_all False``
(the server's default keeps every prompt token's logits: +1.6 GB RSS at 2k tokens and about 35%
slower prompts), ``--interrupt_requests False`` (else a queued request cuts a streaming one
short), ``OMP_WAIT_POLICY=PASSIVE`` (spinning OpenMP threads collapse generation to about
1 token/s when other processes share the cores) and ``n_ctx`` 8192 by default (32k works and costs
about 1 GB RSS, but a full 32k prompt takes many minutes on CPU).

Nothing here imports ``llama_cpp`` (the server runs in a child process) and ``langchain_openai``
is imported lazily, because it costs about 2 s to import.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from langchain_rlm.local.errors import LOCAL_EXTRA_HINT, LocalModelError, logger
from langchain_rlm.local.files import DEFAULT_MODEL, ModelSpec, ensure_model_file

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI

__all__ = [
    "DEFAULT_N_CTX",
    "DEFAULT_N_THREADS",
    "DEFAULT_STARTUP_TIMEOUT_S",
    "LOOPBACK_HOST",
    "LocalModelServer",
    "free_port",
    "llama_cpp_available",
]

LOOPBACK_HOST = "127.0.0.1"
RESERVED_PORTS = frozenset({2024})  # `langgraph dev` lives there on these machines
DEFAULT_N_CTX = 8192
"""Context window of the local server. The models support 32k; 8k keeps a full prompt under a
minute (0.5B) or a few minutes (1.5B) on 2 cores. Override with ``RLM_LOCAL_N_CTX``."""
MAX_DEFAULT_THREADS = 4
DEFAULT_N_THREADS = max(1, min(os.cpu_count() or 2, MAX_DEFAULT_THREADS))
SERVER_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Environment defaults for the server process (the caller's values win). llama.cpp built with
OpenMP spins its worker threads while waiting; when other processes compete for the 2 cores,
measured generation fell from about 12-22 to about 1.2 tokens/s. Passive waiting avoids that."""
DEFAULT_STARTUP_TIMEOUT_S = 120.0
HEALTH_POLL_INTERVAL_S = 0.25
HEALTH_REQUEST_TIMEOUT_S = 2.0
STOP_GRACE_S = 10.0
PORT_BIND_RETRIES = 3
STDERR_TAIL_CHARS = 4000

DEFAULT_MAX_TOKENS = 1024
DEFAULT_REQUEST_TIMEOUT_S = 600.0
DEFAULT_MAX_RETRIES = 1
LOCAL_API_KEY = "local"

ENV_LOCAL_N_CTX = "RLM_LOCAL_N_CTX"
ENV_LOCAL_THREADS = "RLM_LOCAL_THREADS"

# Runs llama.cpp's server in the child. A thread waits for EOF on stdin, which comes when the
# parent closes the pipe or dies (even by SIGKILL), and then ends the child: no orphan servers.
_SERVER_BOOTSTRAP = """\
import os, runpy, sys, threading
def _watch_parent():
    try:
        while os.read(0, 65536):
            pass
    finally:
        os._exit(0)
threading.Thread(target=_watch_parent, daemon=True, name="rlm-parent-watch").start()
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def llama_cpp_available() -> bool:
    """True when ``llama_cpp`` (from ``llama-cpp-python``) is importable here (not imported)."""
    return importlib.util.find_spec("llama_cpp") is not None


def _require_llama_cpp_server(install_hint: str = LOCAL_EXTRA_HINT) -> None:
    missing = [
        name
        for name in ("llama_cpp", "uvicorn", "fastapi")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise LocalModelError(
            f"The local model needs llama-cpp-python's server ({', '.join(missing)} not "
            f"installed). Install it with {install_hint} (it builds llama.cpp from source, "
            "a few minutes on 2 cores), or set OPENAI_API_KEY to use OpenAI instead."
        )


def free_port(host: str = LOOPBACK_HOST) -> int:
    """A port the OS reports free on ``host``, never one in :data:`RESERVED_PORTS`."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise LocalModelError(f"{name}={raw!r} is not an integer") from exc


class LocalModelServer:
    """``python -m llama_cpp.server`` on a loopback port, as a context manager.

    Example::

        with LocalModelServer() as server:
            model = server.chat_model()
            print(model.invoke("Say hi").content)

    The server process runs in its own process group and is stopped (SIGTERM, then SIGKILL) on
    :meth:`stop` / exit; if this Python process dies, the server notices its closed stdin and
    exits too. One request is computed at a time (llama.cpp's Python server serialises them).
    """

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        spec: ModelSpec = DEFAULT_MODEL,
        model_alias: str | None = None,
        port: int | None = None,
        host: str = LOOPBACK_HOST,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
        extra_args: Sequence[str] = (),
        python: str | None = None,
        announce_level: int = logging.INFO,
    ) -> None:
        """Configure (not start) a server.

        Args:
            model_path: a GGUF file; default ``spec``'s file (assembled on start if needed).
            spec: the embedded model to serve when ``model_path`` is not given (see
                :data:`~langchain_rlm.local.files.MODELS`); its name is the served model name.
            model_alias: the model name the server answers to; default ``spec.alias``.
            port: a fixed port; default a free one (retried if another process takes it first).
            host: the address to bind; loopback by default.
            n_ctx: context window in tokens; default ``$RLM_LOCAL_N_CTX`` or 8192.
            n_threads: CPU threads; default ``$RLM_LOCAL_THREADS`` or min(cpu_count, 4).
            startup_timeout: seconds to wait for ``/v1/models`` to answer.
            extra_args: more ``llama_cpp.server`` options, e.g. ``["--n_batch", "256"]``.
            python: interpreter that has llama-cpp-python; default this one.
            announce_level: the logging level of the line that says, before anything is
                spawned, which model is about to be served on which ``127.0.0.1:PORT``
                (the default-model policy raises it to WARNING).
        """
        self.spec = spec
        self.model_alias = model_alias or spec.alias or DEFAULT_MODEL.alias
        self.announce_level = announce_level
        self.model_path = Path(model_path) if model_path is not None else None
        self.host = host
        self._fixed_port = port
        self.port: int | None = None
        self.n_ctx = n_ctx if n_ctx is not None else _env_int(ENV_LOCAL_N_CTX, DEFAULT_N_CTX)
        self.n_threads = (
            n_threads if n_threads is not None else _env_int(ENV_LOCAL_THREADS, DEFAULT_N_THREADS)
        )
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.python = python or sys.executable
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()
        self.startup_seconds: float | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> LocalModelServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process group id), while started."""
        return self._process.pid if self._process is not None else None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (without ``/v1``)."""
        if self.port is None:
            raise LocalModelError("The local model server is not started; call start() first")
        return f"http://{self.host}:{self.port}"

    def output_tail(self, max_chars: int = STDERR_TAIL_CHARS) -> str:
        """The last ``max_chars`` bytes the server wrote to stdout/stderr (e.g. llama.cpp's
        timings), while started. The output goes to an anonymous temporary file, so nothing is
        left behind even when this process is killed."""
        log = self._log
        if log is None:
            return ""
        try:
            size = os.fstat(log.fileno()).st_size
            # pread leaves the offset the server's writes share with this handle alone.
            data = os.pread(log.fileno(), max_chars, max(0, size - max_chars))
        except (OSError, ValueError):
            return ""
        return data.decode("utf-8", "replace")

    def command(self, port: int) -> list[str]:
        """The command line that starts the server on ``port``."""
        assert self.model_path is not None
        return [
            self.python,
            "-c",
            _SERVER_BOOTSTRAP,
            "--model",
            str(self.model_path),
            "--model_alias",
            self.model_alias,
            "--host",
            self.host,
            "--port",
            str(port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            # llama-cpp-python's default lets a new request abort a streaming one: batched
            # sub-calls must queue instead.
            "--interrupt_requests",
            "False",
            # The server's default keeps logits for every prompt token (only `logprobs` needs
            # them): about 0.6 MB per token, 1.6 GB more RSS for a 2k-token prompt, and 20 GB
            # for a full 32k context.
            "--logits_all",
            "False",
            *self.extra_args,
        ]

    def start(self) -> LocalModelServer:
        """Start the server and wait until it answers; idempotent while running."""
        with self._lock:
            if self.running:
                return self
            if self.python == sys.executable:
                _require_llama_cpp_server(self.spec.install_hint)
            if self.model_path is None:
                self.model_path = ensure_model_file(spec=self.spec)
            elif not self.model_path.is_file():
                raise LocalModelError(f"Model file {self.model_path} does not exist")
            started = time.monotonic()
            attempts = 1 if self._fixed_port is not None else PORT_BIND_RETRIES
            for attempt in range(1, attempts + 1):
                port = self._fixed_port or free_port(self.host)
                logger.log(
                    self.announce_level,
                    "Starting llama.cpp's server (llama-cpp-python, a child process) for %s on "
                    "%s:%d, model file %s",
                    self.model_alias,
                    self.host,
                    port,
                    self.model_path,
                )
                try:
                    self._spawn(port)
                    self._wait_ready(port)
                except LocalModelError as exc:
                    tail = self.output_tail()
                    self._terminate()
                    if attempt < attempts and "address already in use" in tail.lower():
                        logger.info("Port %d was taken; retrying on another port", port)
                        continue
                    raise exc
                self.port = port
                self.startup_seconds = time.monotonic() - started
                logger.info(
                    "Local model server ready at %s in %.1f s", self.base_url, self.startup_seconds
                )
                return self
            raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, port: int) -> None:
        if self._log is not None:
            self._log.close()
        # Lives as long as the server (closed in _terminate); anonymous, so never left behind.
        self._log = tempfile.TemporaryFile(prefix="rlm-llama-server-", suffix=".log")  # noqa: SIM115
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        for name, value in SERVER_ENV_DEFAULTS.items():
            env.setdefault(name, value)
        self._process = subprocess.Popen(
            self.command(port),
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )

    def _wait_ready(self, port: int) -> None:
        url = f"http://{self.host}:{port}/v1/models"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + self.startup_timeout
        assert self._process is not None
        while True:
            code = self._process.poll()
            if code is not None:
                raise LocalModelError(
                    f"The local model server exited with code {code} during start-up. "
                    f"Command: {' '.join(self.command(port)[3:])}\nServer output (tail):\n"
                    f"{self.output_tail()}"
                )
            try:
                with opener.open(url, timeout=HEALTH_REQUEST_TIMEOUT_S) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise LocalModelError(
                    f"The local model server did not answer {url} within "
                    f"{self.startup_timeout:.0f} s. Raise startup_timeout or check the output "
                    f"(tail):\n{self.output_tail()}"
                )
            time.sleep(HEALTH_POLL_INTERVAL_S)

    def stop(self) -> None:
        """Stop the server's process group and wait for it; idempotent."""
        with self._lock:
            self._terminate()
            self.port = None

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait()
            # Anything the server spawned in its group goes too.
            _signal_group(process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- clients ----------------------------------------------------------------------------

    def chat_model(self, **kwargs: Any) -> ChatOpenAI:
        """A ``ChatOpenAI`` (subclass) bound to this server.

        Defaults: ``temperature=0``, ``max_tokens=1024``, a 600 s request timeout (a full 8k
        prompt takes about a minute on 2 cores), one retry, and HTTP clients that ignore proxy
        settings (the server is on loopback). Any keyword overrides them.
        """
        settings: dict[str, Any] = {
            "base_url": f"{self.base_url}/v1",
            "api_key": LOCAL_API_KEY,
            "model": self.model_alias,
            "temperature": 0,
            "max_tokens": DEFAULT_MAX_TOKENS,
            "timeout": DEFAULT_REQUEST_TIMEOUT_S,
            "max_retries": DEFAULT_MAX_RETRIES,
        }
        settings.update(kwargs)
        if "http_client" not in settings and "http_async_client" not in settings:
            import httpx

            timeout = settings["timeout"]
            settings["http_client"] = httpx.Client(trust_env=False, timeout=timeout)
            settings["http_async_client"] = httpx.AsyncClient(trust_env=False, timeout=timeout)
        return _local_chat_class()(**settings)

    def __repr__(self) -> str:
        where = self.base_url if self.port is not None else "not started"
        return (
            f"LocalModelServer({where}, {self.model_alias}, model={self.model_path}, "
            f"n_ctx={self.n_ctx})"
        )


@functools.cache
def _local_chat_class() -> type[ChatOpenAI]:
    """``ChatOpenAI`` that sends ``max_tokens`` as llama.cpp's server expects it.

    langchain-openai renames ``max_tokens`` to ``max_completion_tokens`` in every request;
    llama-cpp-python's server silently ignores that field, so without this the limit is lost and
    a rambling reply runs on to the end of the context window. Defined lazily because importing
    ``langchain_openai`` costs about 2 s.
    """
    from langchain_core.language_models import LanguageModelInput
    from langchain_openai import ChatOpenAI

    class LocalChatOpenAI(ChatOpenAI):
        """``ChatOpenAI`` for the embedded llama.cpp server (``max_tokens`` sent as such)."""

        def _get_request_payload(
            self,
            input_: LanguageModelInput,
            *,
            stop: list[str] | None = None,
            **kwargs: Any,
        ) -> dict[str, Any]:
            payload = super()._get_request_payload(input_, stop=stop, **kwargs)
            if "max_completion_tokens" in payload:
                limit = payload.pop("max_completion_tokens")
                payload.setdefault("max_tokens", limit)
            return payload

    LocalChatOpenAI.__module__ = __name__
    LocalChatOpenAI.__qualname__ = LocalChatOpenAI.__name__
    return LocalChatOpenAI


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --------------------------------------------------------------------------------------------
