"""The ``rlm`` command, in-process (``main(argv)``) and once through the console script,
against the project's scripted OpenAI-compatible server on 127.0.0.1 (FAKE replies over
the real ChatOpenAI HTTP path)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from langchain_rlm import cli
from langchain_rlm.cli import ProgressDisplay, load_context, main
from langchain_rlm.events import CodeEvent, SubCallEndEvent, SubCallStartEvent
from langchain_rlm.testing import ScriptedChatModel
from langchain_rlm.testing.openai_server import ScriptedOpenAIServer, replies_responder
from langchain_rlm.trajectory import read_trajectory

REPO_ROOT = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 120

ROOT_SCRIPT = [
    "```repl\nparts = llm_query_batched(['one', 'two'])\nprint(parts)\n```",
    "```repl\nFINAL('the answer is ' + parts[0])\n```",
]
"""Root replies: a batch of two sub-calls, then FINAL."""


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    srv = ScriptedOpenAIServer(
        {
            "root": replies_responder(ROOT_SCRIPT),
            "sub": lambda request: "S-" + request.last_user_message,
        }
    )
    with srv:
        yield srv


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("apples and pears\n" * 50, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "RLM_MODEL", "RLM_SUB_MODEL"):
        monkeypatch.delenv(name, raising=False)


def _wire(srv: ScriptedOpenAIServer) -> list[str]:
    return [
        "--model",
        "openai:root",
        "--sub-model",
        "openai:sub",
        "--base-url",
        srv.base_url,
        "--api-key",
        "test",
    ]


def test_ask_prints_answer_and_progress(
    server: ScriptedOpenAIServer, notes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["ask", "What fruits?", "--context", str(notes), *_wire(server)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out == "the answer is S-one\n"
    assert "[rlm] iteration 1: code (2 lines)" in err
    assert err.count("llm_query started") == 2 and err.count("llm_query done") == 2
    assert "[rlm] done: 2 iteration(s), 4 model call(s)" in err and "tokens" in err
    assert "\x1b[K" not in err  # plain lines when stderr is not a terminal
    assert [r.model for r in server.requests].count("sub") == 2


def test_ask_json_and_trajectory(
    server: ScriptedOpenAIServer, notes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "run.jsonl"
    code = main(
        [
            "ask",
            "What fruits?",
            "-c",
            str(notes),
            *_wire(server),
            "--json",
            "--trajectory",
            str(out_file),
            "--quiet",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["answer"] == "the answer is S-one" and data["iterations"] == 2
    assert data["total_calls"] == 4 and len(data["repl_history"][0]["sub_calls"]) == 2
    records = read_trajectory(out_file)
    header = records[0]
    assert header["query"] == "What fruits?"
    description = header["context_description"]
    assert description["source"] == {"kind": "file", "path": str(notes)}
    assert description["total_chars"] == len(notes.read_text())
    assert "apples and pears\n" * 3 not in out_file.read_text()  # a preview at most
    assert sum(r["type"] == "subcall" for r in records) == 2


def test_view_writes_html(
    server: ScriptedOpenAIServer, notes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl = tmp_path / "run.jsonl"
    assert (
        main(
            [
                "ask",
                "What fruits?",
                "-c",
                str(notes),
                *_wire(server),
                "-q",
                "--trajectory",
                str(jsonl),
            ]
        )
        == 0
    )
    assert main(["view", str(jsonl)]) == 0
    page = tmp_path / "run.html"
    assert capsys.readouterr().out.strip().endswith(str(page))
    html = page.read_text(encoding="utf-8")
    assert "What fruits?" in html and "llm_query_batched" in html


def test_directory_context_is_records_of_text_files(tmp_path: Path) -> None:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("alpha", encoding="utf-8")
    (tmp_path / "docs" / "sub" / "b.md").write_text("beta", encoding="utf-8")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (tmp_path / "docs" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "docs" / ".hidden").write_text("secret", encoding="utf-8")
    context, source = load_context(str(tmp_path / "docs"))
    assert context == [
        {"id": "a.txt", "text": "alpha", "metadata": {"path": "a.txt"}},
        {"id": "sub/b.md", "text": "beta", "metadata": {"path": "sub/b.md"}},
    ]
    assert source == {"kind": "directory", "path": str(tmp_path / "docs"), "files": 2}


def test_directory_context_reaches_the_repl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("ex", encoding="utf-8")
    (tmp_path / "d" / "y.txt").write_text("why", encoding="utf-8")
    script = ["```repl\nFINAL(';'.join(d['id'] + '=' + d['text'] for d in context))\n```"]
    with ScriptedOpenAIServer.from_replies({"root": script}) as srv:
        code = main(
            [
                "ask",
                "ids?",
                "-c",
                str(tmp_path / "d"),
                "--model",
                "openai:root",
                "--base-url",
                srv.base_url,
                "--api-key",
                "test",
                "-q",
            ]
        )
    assert code == 0 and capsys.readouterr().out == "x.txt=ex;y.txt=why\n"


def test_stdin_context(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("piped text"))
    script = ["```repl\nFINAL(context.upper())\n```"]
    with ScriptedOpenAIServer.from_replies({"root": script}) as srv:
        code = main(
            [
                "ask",
                "shout",
                "-c",
                "-",
                "--model",
                "openai:root",
                "--base-url",
                srv.base_url,
                "--api-key",
                "test",
                "-q",
            ]
        )
    assert code == 0 and capsys.readouterr().out == "PIPED TEXT\n"


def test_env_defaults_pick_openai_model(
    server: ScriptedOpenAIServer,
    notes: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("RLM_MODEL", "openai:root")
    monkeypatch.setenv("RLM_SUB_MODEL", "openai:sub")
    assert main(["ask", "What fruits?", "-c", str(notes), "-q"]) == 0
    assert capsys.readouterr().out == "the answer is S-one\n"
    assert {r.model for r in server.requests} == {"root", "sub"}


def _fake_local_models(monkeypatch: pytest.MonkeyPatch, make: Callable[[], tuple]) -> list[str]:
    """Replace the embedded models with FAKE ones from ``make``; returns the names asked for."""
    import langchain_rlm.local.defaults as local_defaults

    names: list[str] = []

    def fake_local_models(name: str) -> tuple:
        names.append(name)
        return make()

    monkeypatch.setattr(local_defaults, "local_chat_models", fake_local_models)
    return names


def test_no_key_uses_the_local_model(
    server: ScriptedOpenAIServer,
    notes: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = _fake_local_models(
        monkeypatch, lambda: (server.chat_model("root"), server.chat_model("sub"))
    )
    assert main(["ask", "What fruits?", "-c", str(notes)]) == 0
    out, err = capsys.readouterr()
    assert out == "the answer is S-one\n" and "embedded local model" in err
    assert names == ["qwen2.5-coder-0.5b"]


def test_model_strings_pick_an_embedded_model_by_name(
    server: ScriptedOpenAIServer,
    notes: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fresh_root() -> tuple:  # a fresh scripted root per call
        root = ScriptedChatModel(replies=ROOT_SCRIPT, model="local-root")
        return root, root

    names = _fake_local_models(monkeypatch, fresh_root)
    sub = ["--sub-model", "openai:sub", "--base-url", server.base_url, "--api-key", "test"]
    argv = ["ask", "q", "-c", str(notes), "-q", "--model", "local:qwen2.5-coder-1.5b", *sub]
    assert main(argv) == 0
    assert capsys.readouterr().out == "the answer is S-one\n"
    monkeypatch.setenv("RLM_MODEL", "local:qwen2.5-coder-1.5b")
    assert main(["ask", "q", "-c", str(notes), "-q", *sub]) == 0
    assert capsys.readouterr().out == "the answer is S-one\n"
    assert names == ["qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b"]


def test_rlm_model_old_bare_form_is_refused_with_the_new_one(
    notes: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """RLM() used to read a bare OpenAI name while the CLI read provider:model."""
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("RLM_MODEL", "gpt-4o-mini")
    assert main(["ask", "q", "-c", str(notes), "-q"]) == 2
    err = capsys.readouterr().err
    assert (
        "RLM_MODEL='gpt-4o-mini' is not 'provider:model'; set RLM_MODEL='openai:gpt-4o-mini'" in err
    )
    assert "Traceback" not in err
    monkeypatch.setenv("RLM_MODEL", "openai:gpt-4o-mini")
    monkeypatch.setenv("RLM_SUB_MODEL", "gpt-4o")
    assert main(["ask", "q", "-c", str(notes), "-q"]) == 2
    assert "set RLM_SUB_MODEL='openai:gpt-4o'" in capsys.readouterr().err


def test_rlm_model_is_honoured_without_openai_api_key(
    server: ScriptedOpenAIServer,
    notes: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RLM_MODEL", "openai:root")
    monkeypatch.setenv("RLM_SUB_MODEL", "openai:sub")
    argv = ["ask", "q", "-c", str(notes), "-q", "--base-url", server.base_url, "--api-key", "t"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "the answer is S-one\n"
    assert {r.model for r in server.requests} == {"root", "sub"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["ask", "q", "-c", "/nonexistent/file.txt", "--model", "openai:x", "--api-key", "k"],
            "does not exist: pass an existing file or directory, or '-' to read stdin",
        ),
        (
            ["ask", "q", "-c", "NOTES", "--model", "nosuchprovider:model"],
            "--model 'nosuchprovider:model'",
        ),
        (["ask", "q", "-c", "NOTES", "--model", "gpt-4o"], "write it as 'provider:model'"),
        (
            ["ask", "q", "-c", "NOTES", "--model", "openai:gpt-4o-mini"],
            "needs an API key: export OPENAI_API_KEY",
        ),
        (["view", "/nonexistent/run.jsonl"], "does not exist"),
    ],
)
def test_clear_errors_exit_2_without_traceback(
    argv: list[str], message: str, notes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([str(notes) if a == "NOTES" else a for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("rlm: error: ") and message in err, err
    assert "Traceback" not in err


def test_binary_file_and_broken_local_model(
    tmp_path: Path, notes: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02")
    assert main(["ask", "q", "-c", str(binary), "--model", "openai:x", "--api-key", "k"]) == 2
    assert "is binary" in capsys.readouterr().err
    import langchain_rlm.local.defaults as local_defaults
    from langchain_rlm.local import LocalModelError

    def broken(name: str) -> tuple:  # FAKE: the server cannot start
        raise LocalModelError("llama-cpp-python is not installed")

    monkeypatch.setattr(local_defaults, "local_chat_models", broken)
    assert main(["ask", "q", "-c", str(notes), "-q"]) == 2
    err = capsys.readouterr().err
    assert "llama-cpp-python is not installed" in err and "OPENAI_API_KEY" in err
    assert "rlm local fetch --model qwen2.5-coder-0.5b" in err
    assert "Traceback" not in err
    assert main(["ask", "q", "-c", str(notes), "-q", "--model", "local:nope"]) == 2
    assert "unknown local model 'nope'" in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "ask" in capsys.readouterr().err


def test_local_subcommands_are_mounted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "path", "--cache-dir", str(tmp_path)]) == 3  # not fetched there
    assert str(tmp_path) in capsys.readouterr().out


def test_tty_progress_redraws_one_line() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(stream, tty=True)
    display.handle(CodeEvent(code="x = 1", iteration=2))
    display.handle(SubCallStartEvent(id="a", kind="llm_query", iteration=2))
    display.handle(SubCallEndEvent(id="a", kind="llm_query", iteration=2))
    text = stream.getvalue()
    assert text.count("\r\x1b[K") == 3 and "\n" not in text
    assert "iteration 2 · sub-calls 1 ·" in text.split("\r\x1b[K")[-1]


def test_console_script_subprocess(
    server: ScriptedOpenAIServer, notes: Path, tmp_path: Path
) -> None:
    script = Path(sys.executable).with_name("rlm")
    if not script.exists():
        pytest.fail(
            f"the 'rlm' console script is not installed next to {sys.executable}: pip install -e ."
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RLM_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    jsonl = tmp_path / "run.jsonl"
    done = subprocess.run(
        [
            str(script),
            "ask",
            "What fruits?",
            "--context",
            str(notes),
            *_wire(server),
            "--trajectory",
            str(jsonl),
        ],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the answer is S-one\n"
    assert "[rlm] done: 2 iteration(s)" in done.stderr
    assert read_trajectory(jsonl)[0]["answer"] == "the answer is S-one"
    assert (
        subprocess.run(
            [str(script), "ask", "q", "--context", str(tmp_path / "missing.txt")],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            env=env,
            check=False,
        ).returncode
        == cli.EXIT_USAGE
    )
