"""The RLM graph served by ``langgraph dev`` and driven through ``langgraph_sdk``.

The models are FAKES: a ScriptedOpenAIServer on 127.0.0.1 (see ``scenario.py``) that the
server process reaches through ``OPENAI_BASE_URL``. The server runs from a temporary
directory, so its ``.langgraph_api/`` state never lands in the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from langchain_rlm.testing.openai_server import ScriptedOpenAIServer
from tests.deployment import scenario

pytest.importorskip("langgraph_api", reason="needs langgraph-cli[inmem]")
langgraph_sdk = pytest.importorskip("langgraph_sdk")

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
LANGGRAPH_BIN = Path(sys.executable).with_name("langgraph")
RESERVED_PORT = 2024
"""Taken on these machines."""
STARTUP_SECONDS = 120.0
STOP_SECONDS = 15.0
CONTEXT_CHARS = 200_000
MARKER = f"RAW-CONTEXT-MARKER-{uuid.uuid4().hex}"
"""Planted mid-context, where neither the preview nor any sub-call prompt reaches."""


def _free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != RESERVED_PORT:
            return port


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"langgraph dev exited early:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ok", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"langgraph dev did not start:\n{log.read_text()[-4000:]}")


def _server_config(workdir: Path) -> Path:
    """The repository's langgraph.json with absolute paths, written to ``workdir``."""
    config = json.loads((REPO / "langgraph.json").read_text())
    config["dependencies"] = [str(REPO)]
    config["graphs"] = {
        name: str(REPO / spec.removeprefix("./")) for name, spec in config["graphs"].items()
    }
    path = workdir / "langgraph.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def models() -> Iterator[ScriptedOpenAIServer]:
    with scenario.scripted_server() as server:
        yield server


@pytest.fixture(scope="module")
def langgraph_url(
    models: ScriptedOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if not LANGGRAPH_BIN.exists():
        pytest.skip("the langgraph CLI is not installed (pip install 'langgraph-cli[inmem]')")
    workdir = tmp_path_factory.mktemp("langgraph_dev")
    port = _free_port()
    env = {
        **os.environ,
        **scenario.server_env(models),
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
        "LANGCHAIN_TRACING_V2": "false",
        "RLM_MODEL": f"openai:{scenario.ROOT_MODEL}",
        "RLM_SUB_MODEL": f"openai:{scenario.SUB_MODEL}",
        "PYTHONPATH": str(REPO),
    }
    log = workdir / "server.log"
    command = [str(LANGGRAPH_BIN), "dev", "--config", str(_server_config(workdir))]
    command += ["--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_SECONDS)
        shutil.rmtree(workdir / ".langgraph_api", ignore_errors=True)


def _context() -> str:
    text = scenario.make_context(CONTEXT_CHARS)
    middle = CONTEXT_CHARS // 2
    return text[:middle] + MARKER + text[middle + len(MARKER) :]


def _stored(value: Any) -> str:
    return json.dumps(value, default=str)


def test_langgraph_json_points_at_the_server_graph() -> None:
    from langgraph.graph.state import CompiledStateGraph

    from langchain_rlm import server

    config = json.loads((REPO / "langgraph.json").read_text())
    path, _, attribute = config["graphs"]["rlm"].partition(":")
    assert (REPO / path).resolve() == Path(server.__file__).resolve()
    assert isinstance(getattr(server, attribute), CompiledStateGraph)
    schema = server.graph.get_context_jsonschema() or {}
    assert {"context", "model", "sub_model", "max_iterations"} <= set(schema["properties"])


def test_server_runs_the_rlm_and_keeps_the_context_out_of_state(
    langgraph_url: str, models: ScriptedOpenAIServer
) -> None:
    client = langgraph_sdk.get_sync_client(url=langgraph_url)
    context = _context()
    thread = client.threads.create()
    thread_id = thread["thread_id"]
    models.reset_stats()

    first = client.runs.wait(
        thread_id,
        "rlm",
        input={"query": scenario.TURN1_QUERY},
        context={"context": context, "max_iterations": 8},
    )
    assert isinstance(first, dict), first
    assert first["answer"] == scenario.expected_turn1_answer(context)
    assert first["finished_reason"] == "final"
    assert first["iteration"] == scenario.TURN1_ITERATIONS
    assert len(models.requests_for(scenario.ROOT_MODEL)) == scenario.TURN1_ITERATIONS

    # A follow-up on the same thread: a new run, a fresh REPL session, the variables of
    # the first query replayed from the recorded cells (no sub-call is made again).
    second = client.runs.wait(
        thread_id,
        "rlm",
        input={"query": scenario.TURN2_QUERY},
        context={"context": context, "max_iterations": 8},
    )
    assert second["answer"] == f"follow-up: {first['answer']} from 2 parts"
    counts = scenario.sub_prompt_counts(models.requests)
    assert len(counts) == 4 and set(counts.values()) == {1}, counts

    # Invariant 1: the raw context is in no checkpoint, no checkpoint metadata, no thread.
    history = client.threads.get_history(thread_id, limit=200)
    assert len(history) > 2 * scenario.TURN1_ITERATIONS
    assert MARKER not in _stored(history)
    assert MARKER not in _stored(client.threads.get_state(thread_id))
    assert MARKER not in _stored(client.threads.get(thread_id))
    assert all("context" not in (h.get("metadata") or {}) for h in history)


def test_server_run_without_a_model_fails_with_a_clear_error(
    langgraph_url: str,
) -> None:
    client = langgraph_sdk.get_sync_client(url=langgraph_url)
    thread = client.threads.create()
    result = client.runs.wait(
        thread["thread_id"],
        "rlm",
        input={"query": "anything"},
        context={"context": "x", "model": "no-provider-prefix"},
        raise_error=False,
    )
    assert "provider:model" in _stored(result)
