"""The trajectory viewer rendered by a real browser (headless Chromium), not just parsed.

Needs Debian's chromium (``apt-get install -y chromium``): when it is missing the test
FAILS with that command, it does not skip. Models are FAKE (scripted).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from obs_helpers import BATCH, BATCH_ROOT_REPLIES, sub_model

from langchain_rlm import RLM
from langchain_rlm.cli import main
from langchain_rlm.testing.fake_models import ScriptedChatModel
from langchain_rlm.trajectory import write_trajectory

pytestmark = pytest.mark.browser

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "apt-get update && apt-get install -y chromium"
BROWSER_TIMEOUT_S = 120
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"
QUERY = "How many fruits are in the basket?"


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    pytest.fail(f"headless Chromium is required for the viewer test: {INSTALL_HINT}")


def _browser(page: Path, profile: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *mode,
        page.resolve().as_uri(),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture
def viewer_page(tmp_path: Path) -> Path:
    replies = [BATCH_ROOT_REPLIES[0], f"```repl\nprint({HOSTILE!r})\n```", BATCH_ROOT_REPLIES[2]]
    rlm = RLM(ScriptedChatModel(model="root", replies=replies), sub_model())
    result = rlm.invoke({"query": QUERY, "context": "apple pear plum fig"})
    jsonl = write_trajectory(
        result, tmp_path / "run.jsonl", query=QUERY, context_description={"source": "test"}
    )
    page = tmp_path / "run.html"
    assert main(["view", str(jsonl), "-o", str(page)]) == 0
    return page


def test_chromium_renders_the_viewer(viewer_page: Path, tmp_path: Path) -> None:
    dom = _browser(viewer_page, tmp_path / "profile", "--dump-dom").stdout
    assert 'data-ready="1"' in dom, "the viewer's script did not run"
    assert QUERY in dom
    assert re.search(r"iterations: <b>3</b>", dom)
    assert "llm_query_batched(" in dom  # the code
    assert dom.count('class="subcall"') == len(BATCH)  # the sub-call tree
    assert "leaf:count apples" in dom  # a sub-call's response
    assert "42 fruits" in dom  # the answer
    # model output is shown as text, never run as markup
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom
    assert "<title>RLM run:" in dom and "pwned</title>" not in dom
    assert '<img src="x"' not in dom


def test_chromium_screenshot_is_a_picture(viewer_page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    _browser(viewer_page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,900")
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
