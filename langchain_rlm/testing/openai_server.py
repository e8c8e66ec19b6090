"""A scripted, OpenAI-compatible chat-completions server on 127.0.0.1 for tests and benchmarks.

This is a **test double**, not a model: every reply comes from a scripted ``responder``. It
speaks the real OpenAI wire protocol so tests can drive ``langchain_openai.ChatOpenAI``
(and the ``openai`` SDK) over real HTTP, including streaming (SSE), usage accounting,
stop sequences, HTTP errors with retry headers, latency and hung requests.

The HTTP side is aiohttp's web server (a maintained HTTP/1.1 implementation: keep-alive,
chunked transfer, client-disconnect detection) running its own event loop in one background
thread, bound to 127.0.0.1 only. Requests are served concurrently on that loop (latency and hung
requests are asyncio waits, so hundreds of concurrent requests cost no threads); each responder
runs in a (reused) daemon thread, so a responder may block (e.g. wait for an event) without
holding up other requests. Install it with ``pip install 'langchain-rlm[testing]'``. aiohttp
rather than uvicorn: its runner starts on a socket we bound (so :attr:`port` is known at once),
cancels a handler whose client disconnected (a hung request ends when the client gives up), and
shuts down without uvicorn's 0.1 s polling, which matters when every test starts a server.

Where it lives: ``langchain_rlm.testing`` is the package's public testing toolkit (like
``langchain_core``'s fake chat models): tests, benchmarks and examples of this project and of its
users drive ``ChatOpenAI`` against it.

Example::

    with ScriptedOpenAIServer.from_replies({"root": ["hi"], "sub": ["a", "b"]}) as srv:
        llm = srv.chat_model("root")
        assert llm.invoke("hello").content == "hi"
        assert srv.requests[0].model == "root"
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from langchain_rlm.parsing import cut_at_stop
from langchain_rlm.usage import CHARS_PER_TOKEN, estimate_tokens

if TYPE_CHECKING:
    from aiohttp import web
    from langchain_openai import ChatOpenAI

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "Fault",
    "NoMatchingRuleError",
    "RecordedResponse",
    "Reply",
    "Responder",
    "ScriptExhaustedError",
    "ScriptedOpenAIServer",
    "apply_stop",
    "echo_responder",
    "estimate_tokens",
    "replies_responder",
    "rules_responder",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MODEL_NAME = "scripted"
DEFAULT_API_KEY = "test"
DEFAULT_CLIENT_TIMEOUT = 30.0
REQUEST_QUEUE_SIZE = 1024
"""Listen backlog: a 256-wide fan-out connects all at once."""
MAX_REQUEST_BYTES = 1 << 30
"""Largest request body accepted (aiohttp's default is 1 MiB; prompts can be larger)."""
STARTUP_TIMEOUT = 30.0
THREAD_JOIN_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 2.0
"""How long close() lets in-flight handlers finish before cancelling them."""
TESTING_EXTRA_HINT = "pip install 'langchain-rlm[testing]'"
RESPONDER_THREAD_NAME = "scripted-responder"
IPV4 = 4
STREAM_CHUNK_CHARS = 16
DEFAULT_FAULT_RETRY_AFTER = 0.01
CREATED_TIMESTAMP = 1_700_000_000
SYSTEM_FINGERPRINT = "fp_scripted"
FALLBACK_MODEL_KEY = "*"
CHAT_COMPLETIONS_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
MODELS_PATHS = frozenset({"/v1/models", "/models"})

_ERROR_TYPES: Mapping[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout_error", None),
    409: ("conflict_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}
_DEFAULT_ERROR_TYPE = ("server_error", None)


# --------------------------------------------------------------------------- helpers


apply_stop = cut_at_stop
"""Cut a reply at the earliest stop sequence: ``(text, hit)`` (see ``parsing.cut_at_stop``)."""


def _content_text(content: Any) -> str:
    """Flatten an OpenAI message ``content`` (string, list of parts or null) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in content]
        return "".join(str(p) for p in parts)
    return str(content)


def _normalise_stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    return tuple(str(s) for s in stop)


def _error_body(
    status: int, message: str, *, error_type: str | None = None, code: str | None = None
) -> dict[str, Any]:
    default_type, default_code = _ERROR_TYPES.get(status, _DEFAULT_ERROR_TYPE)
    return {
        "error": {
            "message": message,
            "type": error_type or default_type,
            "param": None,
            "code": code if code is not None else default_code,
        }
    }


def _retry_after_headers(retry_after: float | None) -> dict[str, str]:
    """OpenAI-style retry headers; ``retry-after-ms`` keeps sub-second waits precise."""
    if retry_after is None:
        return {}
    return {
        "retry-after-ms": str(round(retry_after * 1000)),
        "retry-after": str(max(0, int(-(-retry_after // 1)))),
    }


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat-completions request, content flattened to text."""

    role: str
    content: str
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class ChatRequest:
    """A parsed ``POST /v1/chat/completions`` request, as seen by responders and tests."""

    model: str
    messages: tuple[ChatMessage, ...]
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    index: int = 0
    """0-based arrival order over all chat requests of this server."""
    model_index: int = 0
    """0-based arrival order among the requests for this ``model``."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    received_at: float = field(default=0.0, compare=False)

    @property
    def prompt_text(self) -> str:
        """All message contents joined by newlines."""
        return "\n".join(m.content for m in self.messages)

    @property
    def prompt_chars(self) -> int:
        """Total characters of all message contents."""
        return sum(len(m.content) for m in self.messages)

    @property
    def last_message(self) -> str:
        """Content of the last message ("" if there are none)."""
        return self.messages[-1].content if self.messages else ""

    @property
    def last_user_message(self) -> str:
        """Content of the last ``user`` message ("" if there is none)."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")

    @property
    def system_message(self) -> str:
        """Content of the first ``system``/``developer`` message ("" if there is none)."""
        roles = ("system", "developer")
        return next((m.content for m in self.messages if m.role in roles), "")


@dataclass(frozen=True)
class Reply:
    """What the server answers to one request.

    A responder may return a plain ``str`` (= ``Reply(content=...)``). ``status >= 400``
    turns the reply into an HTTP error with ``error_body`` (built from the status when
    omitted). ``latency`` sleeps before answering; ``hang`` never answers (until the client
    disconnects or the server closes).
    """

    content: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    status: int = 200
    error_body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    latency: float = 0.0
    hang: bool = False

    @property
    def is_error(self) -> bool:
        """True for HTTP error replies."""
        return self.status >= 400

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        error_type: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """An HTTP error reply with an OpenAI-style ``{"error": {...}}`` body."""
        body = _error_body(
            status,
            message or f"Scripted error {status}",
            error_type=error_type,
            code=code,
        )
        all_headers = {**_retry_after_headers(retry_after), **(headers or {})}
        return cls(status=status, error_body=body, headers=all_headers)

    @classmethod
    def context_length_exceeded(
        cls, max_context: int = 8192, requested: int | None = None
    ) -> Reply:
        """A 400 ``context_length_exceeded`` error, worded like OpenAI's."""
        requested = requested if requested is not None else max_context + 1
        message = (
            f"This model's maximum context length is {max_context} tokens. However, your "
            f"messages resulted in {requested} tokens. Please reduce the length of the messages."
        )
        return cls.error(400, message, code="context_length_exceeded")

    @classmethod
    def rate_limited(cls, retry_after: float | None = DEFAULT_FAULT_RETRY_AFTER) -> Reply:
        """A 429 rate-limit error with ``Retry-After`` headers."""
        return cls.error(429, "Rate limit reached (scripted).", retry_after=retry_after)

    @classmethod
    def server_error(
        cls, status: int = 500, retry_after: float | None = DEFAULT_FAULT_RETRY_AFTER
    ) -> Reply:
        """A 5xx error (500, 502, 503, ...), retryable by the OpenAI SDK."""
        return cls.error(status, f"Scripted server error {status}.", retry_after=retry_after)

    @classmethod
    def hanging(cls) -> Reply:
        """A reply that never comes: the request hangs until the client gives up."""
        return cls(hang=True)


Responder = Callable[[ChatRequest], str | Reply]
"""A scripted reply source: ``(ChatRequest) -> str | Reply``."""


@dataclass
class Fault:
    """Inject an error reply into matching requests: skip ``after``, then fail ``first_n``.

    ``model=None`` matches every model. The counter is per ``Fault`` and thread-safe.
    """

    reply: Reply = field(default_factory=Reply.server_error)
    model: str | None = None
    first_n: int = 1
    after: int = 0
    _seen: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def take(self, request: ChatRequest) -> Reply | None:
        """Return the error reply if this request is one of the faulted ones."""
        if self.model is not None and request.model != self.model:
            return None
        with self._lock:
            position = self._seen
            self._seen += 1
        return self.reply if self.after <= position < self.after + self.first_n else None


@dataclass(frozen=True)
class RecordedResponse:
    """What the server sent back for one request (``content`` after stop-cutting)."""

    request_index: int
    model: str
    status: int
    content: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stream: bool = False


class ScriptExhaustedError(RuntimeError):
    """A scripted reply queue ran out (the server answers 500 with this message)."""


class NoMatchingRuleError(LookupError):
    """No rule matched a request and no default was given (the server answers 500)."""


# --------------------------------------------------------------------------- responders


def echo_responder(request: ChatRequest) -> str:
    """Reply with the content of the last message (the default responder)."""
    return request.last_message


def replies_responder(replies: Sequence[str | Reply], *, cycle: bool = False) -> Responder:
    """A thread-safe responder that hands out ``replies`` in order.

    When the queue is exhausted it raises :class:`ScriptExhaustedError` (the server then
    answers HTTP 500), unless ``cycle`` is true.
    """
    items = list(replies)
    source: Iterator[str | Reply] = itertools.cycle(items) if cycle and items else iter(items)
    lock = threading.Lock()

    def respond(request: ChatRequest) -> str | Reply:
        with lock:
            item = next(source, None)
        if item is None:
            raise ScriptExhaustedError(
                f"scripted replies exhausted for model {request.model!r} "
                f"({len(items)} given; request #{request.index})"
            )
        return item

    return respond


def _compile_matcher(
    matcher: str | re.Pattern[str] | Callable[[ChatRequest], bool],
    match_on: Literal["last", "all"],
) -> Callable[[ChatRequest], bool]:
    if callable(matcher) and not isinstance(matcher, re.Pattern):
        return matcher
    pattern = re.compile(matcher) if isinstance(matcher, str) else matcher

    def matches(request: ChatRequest) -> bool:
        text = request.last_message if match_on == "last" else request.prompt_text
        return pattern.search(text) is not None

    return matches


def _resolve_spec(spec: str | Reply | Responder, request: ChatRequest) -> str | Reply:
    return spec if isinstance(spec, str | Reply) else spec(request)


def rules_responder(
    rules: Sequence[tuple[Any, str | Reply | Responder]],
    *,
    default: str | Reply | Responder | None = None,
    match_on: Literal["last", "all"] = "last",
) -> Responder:
    """A responder answering with the reply of the first matching rule.

    A rule is ``(matcher, reply)``: ``matcher`` is a regex (string or compiled, searched in
    the last message, or in all messages with ``match_on="all"``) or a predicate
    ``(ChatRequest) -> bool``; ``reply`` is a ``str``, a :class:`Reply` or a responder.
    """
    compiled = [(_compile_matcher(m, match_on), spec) for m, spec in rules]

    def respond(request: ChatRequest) -> str | Reply:
        for matches, spec in compiled:
            if matches(request):
                return _resolve_spec(spec, request)
        if default is None:
            raise NoMatchingRuleError(
                f"no rule matched request #{request.index} for model {request.model!r}: "
                f"{request.last_message[:200]!r}"
            )
        return _resolve_spec(default, request)

    return respond


# --------------------------------------------------------------------------- the server


class ScriptedOpenAIServer:
    """An OpenAI-compatible chat server on ``127.0.0.1`` whose replies are scripted.

    ``responder`` is a callable ``(ChatRequest) -> str | Reply``, or a mapping model name ->
    responder (key ``"*"`` is the fallback; unknown models get a 404 ``model_not_found``),
    or ``None`` for :func:`echo_responder`. ``latency`` is added to every request;
    ``faults`` (and the ``fail_first_n`` shortcut) inject errors before the responder runs.
    Every chat request is recorded in :attr:`requests`; :attr:`peak_in_flight` is the
    highest number of chat requests being served at the same time.

    Only loopback addresses can be bound (``host`` defaults to ``127.0.0.1``).

    By default every response carries ``Connection: close``: with hundreds of concurrent
    calls, idle keep-alive connections make the *client's* httpx pool re-probe each of them
    on every request (quadratic work, ~0.2-0.5 s per 256-wide fan-out on a small machine),
    which would pollute benchmarks. ``keep_alive=True`` gives real-server HTTP/1.1
    keep-alive (chunked SSE, connection reuse) instead.
    ``truncate_at_max_tokens`` cuts replies at ``max_tokens * 4`` chars (finish "length").
    """

    def __init__(
        self,
        responder: Responder | Mapping[str, Responder] | None = None,
        *,
        latency: float = 0.0,
        faults: Sequence[Fault] = (),
        fail_first_n: int = 0,
        fail_status: int = 500,
        fail_model: str | None = None,
        truncate_at_max_tokens: bool = False,
        keep_alive: bool = False,
        models: Sequence[str] | None = None,
        host: str = DEFAULT_HOST,
        port: int = 0,
    ) -> None:
        self._responders: Mapping[str, Responder] = (
            dict(responder)
            if isinstance(responder, Mapping)
            else {FALLBACK_MODEL_KEY: responder or echo_responder}
        )
        self.latency = latency
        self.truncate_at_max_tokens = truncate_at_max_tokens
        self.keep_alive = keep_alive
        self._faults = list(faults)
        if fail_first_n:
            reply = Reply.rate_limited() if fail_status == 429 else Reply.server_error(fail_status)
            self._faults.append(Fault(reply=reply, model=fail_model, first_n=fail_first_n))
        self._models = list(models or [k for k in self._responders if k != FALLBACK_MODEL_KEY])
        _require_loopback(host)
        self._address = (host, port)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._requests: list[ChatRequest] = []
        self._responses: list[RecordedResponse] = []
        self._errors: list[BaseException] = []
        self._per_model: dict[str, int] = {}
        self._in_flight = 0
        self._peak_in_flight = 0
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._pool = _DaemonPool(RESPONDER_THREAD_NAME)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._closing_async: asyncio.Event | None = None

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_replies(
        cls,
        replies: Sequence[str | Reply] | Mapping[str, Sequence[str | Reply]],
        *,
        cycle: bool = False,
        **kwargs: Any,
    ) -> ScriptedOpenAIServer:
        """Serve ``replies`` in order: one queue, or one queue per model name (a mapping)."""
        if isinstance(replies, Mapping):
            per_model = {m: replies_responder(r, cycle=cycle) for m, r in replies.items()}
            return cls(per_model, **kwargs)
        return cls(replies_responder(replies, cycle=cycle), **kwargs)

    @classmethod
    def from_rules(
        cls,
        rules: Sequence[tuple[Any, str | Reply | Responder]],
        *,
        default: str | Reply | Responder | None = None,
        match_on: Literal["last", "all"] = "last",
        **kwargs: Any,
    ) -> ScriptedOpenAIServer:
        """Answer with the first matching rule; see :func:`rules_responder`."""
        return cls(rules_responder(rules, default=default, match_on=match_on), **kwargs)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ScriptedOpenAIServer:
        """Bind (port 0 = a free port) and serve from a background thread's event loop."""
        if self._thread is not None:
            raise RuntimeError("ScriptedOpenAIServer is already started")
        _import_web()  # fail here, in the caller's thread, when aiohttp is missing
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self._address)
            sock.listen(REQUEST_QUEUE_SIZE)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._closing.clear()
        self._pool = _DaemonPool(RESPONDER_THREAD_NAME)
        self._port = int(sock.getsockname()[1])
        ready = threading.Event()
        failures: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run,
            args=(sock, ready, failures),
            name=f"ScriptedOpenAIServer:{self._port}",
            daemon=True,
        )
        self._thread.start()
        if not ready.wait(STARTUP_TIMEOUT) or failures:
            self.close()
            raise RuntimeError("ScriptedOpenAIServer did not start") from (
                failures[0] if failures else None
            )
        return self

    def close(self) -> None:
        """Stop serving, end hanging/sleeping requests and live connections, join the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._closing.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(THREAD_JOIN_TIMEOUT)
        self._pool.shutdown()
        self._port = None

    def _run(
        self, sock: socket.socket, ready: threading.Event, failures: list[BaseException]
    ) -> None:
        """The server thread: one event loop serving until :meth:`close`."""
        try:
            asyncio.run(self._serve(sock, ready))
        except BaseException as exc:  # reported to start(), or lost after close()
            failures.append(exc)
        finally:
            sock.close()
            ready.set()

    async def _serve(self, sock: socket.socket, ready: threading.Event) -> None:
        web_module = _import_web()
        app = web_module.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web_module.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,  # a client that disconnects cancels its handler
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._closing_async = asyncio.Event()
        try:
            await web_module.SockSite(runner, sock).start()
            ready.set()
            await self._stop.wait()
            self._closing_async.set()  # wakes sleeping and hanging requests: they drop
            await asyncio.sleep(0)
        finally:
            await runner.cleanup()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        """The bound port (only valid once started)."""
        if self._port is None:
            raise RuntimeError("ScriptedOpenAIServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``)."""
        return f"http://{self._address[0]}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url``: ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    def chat_model(self, model: str = DEFAULT_MODEL_NAME, **kwargs: Any) -> ChatOpenAI:
        """A ``ChatOpenAI`` pointed at this server.

        Defaults (overridable via ``kwargs``): ``api_key="test"``, ``max_retries=0``,
        ``stream_usage=True``, ``timeout=30``.
        """
        from langchain_openai import ChatOpenAI

        kwargs.setdefault("api_key", DEFAULT_API_KEY)
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("stream_usage", True)
        kwargs.setdefault("timeout", DEFAULT_CLIENT_TIMEOUT)
        return ChatOpenAI(model=model, base_url=self.base_url, **kwargs)

    # ------------------------------------------------------------------ recordings

    @property
    def requests(self) -> list[ChatRequest]:
        """A snapshot of every chat request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, model: str) -> list[ChatRequest]:
        """The recorded requests for one model name."""
        return [r for r in self.requests if r.model == model]

    @property
    def request_count(self) -> int:
        """Number of chat requests received."""
        with self._lock:
            return len(self._requests)

    @property
    def responses(self) -> list[RecordedResponse]:
        """A snapshot of what was sent back, in completion order (hung requests excluded)."""
        with self._lock:
            return list(self._responses)

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by responders (each was answered with HTTP 500)."""
        with self._lock:
            return list(self._errors)

    @property
    def in_flight(self) -> int:
        """Chat requests currently being served."""
        with self._lock:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The highest number of chat requests served at the same time."""
        with self._lock:
            return self._peak_in_flight

    def reset_stats(self) -> None:
        """Forget recorded requests/responses/errors and the in-flight peak."""
        with self._lock:
            self._requests.clear()
            self._responses.clear()
            self._errors.clear()
            self._per_model.clear()
            self._peak_in_flight = self._in_flight

    def models_payload(self) -> dict[str, Any]:
        """The ``GET /v1/models`` body."""
        names = self._models or [DEFAULT_MODEL_NAME]
        data = [
            {"id": n, "object": "model", "created": CREATED_TIMESTAMP, "owned_by": "scripted"}
            for n in names
        ]
        return {"object": "list", "data": data}

    # ------------------------------------------------------------------ request handling

    # ------------------------------------------------------------------ request handling

    async def _dispatch(self, http: web.Request) -> web.StreamResponse:
        """Route one HTTP request (the app's only handler)."""
        path = http.path.rstrip("/")
        if http.method == "GET" and path in MODELS_PATHS:
            return self._json(200, self.models_payload())
        if http.method == "POST" and path in CHAT_COMPLETIONS_PATHS:
            return await self._handle_chat(http)
        await http.read()
        return self._json(404, _error_body(404, f"Unknown path {path}", code="not_found"))

    def _json(
        self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> web.StreamResponse:
        web_module = _import_web()
        response = web_module.Response(
            status=status,
            body=json.dumps(payload).encode(),
            content_type="application/json",
            headers=dict(headers or {}),
        )
        self._apply_keep_alive(response)
        return response

    def _apply_keep_alive(self, response: web.StreamResponse) -> None:
        if not self.keep_alive:
            response.force_close()  # sends ``Connection: close``

    async def _handle_chat(self, http: web.Request) -> web.StreamResponse:
        """Serve one ``POST /v1/chat/completions``; counted in :attr:`in_flight` throughout."""
        self._enter()
        try:
            return await self._serve_chat(http)
        finally:
            self._leave()

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    async def _serve_chat(self, http: web.Request) -> web.StreamResponse:
        try:
            raw = json.loads(await http.read() or b"null")
            if not isinstance(raw, dict) or not isinstance(raw.get("messages"), list):
                raise ValueError("body must be a JSON object with a 'messages' list")
        except ValueError as exc:
            return self._json(400, _error_body(400, f"Invalid request body: {exc}"))
        request = self._record_request(raw, dict(http.headers.items()))
        reply = await self._reply_for(request)
        if not await self._wait(self.latency + reply.latency):
            return self._drop(http)
        if reply.hang:
            await self._closing_event().wait()  # ends early when the client disconnects
            return self._drop(http)
        if reply.is_error:
            return self._send_error(request, reply)
        return await self._send_completion(http, request, reply)

    def _closing_event(self) -> asyncio.Event:
        assert self._closing_async is not None
        return self._closing_async

    async def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` (cut short by ``close()``); False if the server is closing."""
        closing = self._closing_event()
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), seconds)
        return not closing.is_set()

    def _drop(self, http: web.Request) -> web.StreamResponse:
        """Close the connection without an answer (the server is closing)."""
        if http.transport is not None:
            http.transport.close()
        return self._json(503, _error_body(503, "The scripted server is closing."))

    def _record_request(self, raw: dict[str, Any], headers: dict[str, str]) -> ChatRequest:
        model = str(raw.get("model") or "")
        messages = tuple(
            ChatMessage(str(m.get("role", "")), _content_text(m.get("content")), m)
            for m in raw["messages"]
            if isinstance(m, dict)
        )
        max_tokens = raw.get("max_completion_tokens", raw.get("max_tokens"))
        stream_options = raw.get("stream_options") or {}
        with self._lock:
            request = ChatRequest(
                model=model,
                messages=messages,
                stop=_normalise_stop(raw.get("stop")),
                max_tokens=int(max_tokens) if max_tokens is not None else None,
                stream=bool(raw.get("stream")),
                include_usage=bool(stream_options.get("include_usage")),
                index=len(self._requests),
                model_index=self._per_model.get(model, 0),
                raw=raw,
                headers=headers,
                received_at=time.monotonic(),
            )
            self._per_model[model] = request.model_index + 1
            self._requests.append(request)
        return request

    async def _reply_for(self, request: ChatRequest) -> Reply:
        for fault in self._faults:
            if (injected := fault.take(request)) is not None:
                return injected
        responder = self._responders.get(request.model) or self._responders.get(FALLBACK_MODEL_KEY)
        if responder is None:
            message = f"The model `{request.model}` does not exist (scripted server)."
            return Reply.error(404, message, code="model_not_found")
        try:
            result = await _run_responder(self._pool, responder, request)
        except Exception as exc:
            with self._lock:
                self._errors.append(exc)
            return Reply.error(500, f"{type(exc).__name__}: {exc}", retry_after=None)
        return Reply(content=result) if isinstance(result, str) else result

    def _send_error(self, request: ChatRequest, reply: Reply) -> web.StreamResponse:
        body = reply.error_body or _error_body(reply.status, f"Scripted error {reply.status}")
        self._record_response(RecordedResponse(request.index, request.model, reply.status))
        return self._json(reply.status, body, reply.headers)

    async def _send_completion(
        self, http: web.Request, request: ChatRequest, reply: Reply
    ) -> web.StreamResponse:
        content, finish_reason = self._final_content(request, reply)
        prompt_tokens = (
            reply.prompt_tokens
            if reply.prompt_tokens is not None
            else sum(estimate_tokens(m.content) for m in request.messages)
        )
        completion_tokens = (
            reply.completion_tokens
            if reply.completion_tokens is not None
            else estimate_tokens(content)
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        completion_id = f"chatcmpl-scripted-{request.index}"
        if request.stream:
            response = await self._stream(
                http, request, completion_id, content, finish_reason, usage
            )
        else:
            payload = _completion_payload(
                request.model, completion_id, content, finish_reason, usage
            )
            response = self._json(200, payload, reply.headers)
        recorded = RecordedResponse(
            request.index,
            request.model,
            200,
            content,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            request.stream,
        )
        self._record_response(recorded)
        return response

    def _final_content(self, request: ChatRequest, reply: Reply) -> tuple[str, str]:
        """Apply stop sequences (and optionally ``max_tokens``); pick the finish reason."""
        content, stopped = apply_stop(reply.content, request.stop)
        truncated = False
        if self.truncate_at_max_tokens and request.max_tokens is not None:
            limit = request.max_tokens * CHARS_PER_TOKEN
            truncated = len(content) > limit
            content = content[:limit]
        default_reason = "length" if truncated and not stopped else "stop"
        return content, reply.finish_reason or default_reason

    async def _stream(
        self,
        http: web.Request,
        request: ChatRequest,
        completion_id: str,
        content: str,
        finish_reason: str,
        usage: dict[str, int],
    ) -> web.StreamResponse:
        """Send the reply as server-sent events (chunked), ending with ``[DONE]``."""

        def chunk(delta: dict[str, Any], reason: str | None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            return json.dumps(_chunk_payload(request.model, completion_id, [choice]))

        events = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        events += [
            chunk({"content": content[start : start + STREAM_CHUNK_CHARS]}, None)
            for start in range(0, len(content), STREAM_CHUNK_CHARS)
        ]
        events.append(chunk({}, finish_reason))
        if request.include_usage:
            payload = _chunk_payload(request.model, completion_id, [])
            events.append(json.dumps({**payload, "usage": usage}))
        events.append("[DONE]")
        response = _import_web().StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            },
        )
        response.enable_chunked_encoding()
        self._apply_keep_alive(response)
        await response.prepare(http)
        for event in events:  # one SSE event per HTTP chunk, as a real server streams
            await response.write(f"data: {event}\n\n".encode())
        await response.write_eof()
        return response

    def _record_response(self, response: RecordedResponse) -> None:
        with self._lock:
            self._responses.append(response)


def _require_loopback(host: str) -> None:
    """Refuse to bind anything but IPv4 loopback: this is a test double, never a service."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        loopback = host == "localhost"
    else:
        loopback = address.version == IPV4 and address.is_loopback
    if not loopback:
        raise ValueError(
            f"ScriptedOpenAIServer binds loopback only, not {host!r}: use host='127.0.0.1'"
        )


def _import_web() -> Any:
    """``aiohttp.web``, imported on first use (the ``testing`` extra)."""
    try:
        from aiohttp import web as web_module
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ImportError(f"ScriptedOpenAIServer needs aiohttp: {TESTING_EXTRA_HINT}") from exc
    return web_module


class _DaemonPool:
    """Daemon threads that run responders: an idle thread is reused, a new one starts when none
    is idle (so a blocking responder never holds up another request).

    Reuse matters: starting a thread per request cost about 0.25 ms of server CPU per request,
    half the server's whole cost. Daemon threads never keep the interpreter alive; :meth:`shutdown`
    ends them once their current job is done.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._alive = 0

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on an idle thread, or on a new one."""
        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self._alive += 1
            else:
                self._idle -= 1
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._work, name=self._name, daemon=True).start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()
            with self._lock:
                self._idle += 1
        with self._lock:
            self._alive -= 1

    def shutdown(self) -> None:
        """Ask every thread to end after its current job (does not wait)."""
        with self._lock:
            alive, self._idle = self._alive, 0
        for _ in range(alive):
            self._jobs.put(None)


async def _run_responder(
    pool: _DaemonPool, responder: Responder, request: ChatRequest
) -> str | Reply:
    """Run ``responder(request)`` on ``pool`` and await its result without blocking the loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str | Reply] = loop.create_future()

    def settle(result: str | Reply | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = responder(request), None
        except BaseException as exc:  # handed to the awaiting handler
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server was closed
            loop.call_soon_threadsafe(settle, result, error)

    pool.submit(run)
    return await future


def _completion_payload(
    model: str, completion_id: str, content: str, finish_reason: str, usage: dict[str, int]
) -> dict[str, Any]:
    message = {"role": "assistant", "content": content, "refusal": None}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": CREATED_TIMESTAMP,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage,
    }


def _chunk_payload(model: str, completion_id: str, choices: list[Any]) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": CREATED_TIMESTAMP,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
    }
