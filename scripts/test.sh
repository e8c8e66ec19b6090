#!/usr/bin/env bash
# Set up everything the test suite needs (idempotent) and run it:
#   a venv in .venv, the project with all extras, the embedded local model,
#   Debian's chromium for the viewer test; then ruff, mypy and pytest.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RLM_VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet -e '.[dev,llama-index,langchain,server]'
bash scripts/install_local.sh "$VENV"
bash scripts/install_chromium.sh
bash scripts/install_postgres.sh >/dev/null  # Debian's PostgreSQL, for tests/deployment

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
# Everything is installed above, so a skipped test means a broken install step: fail.
export RLM_NO_SKIPS=1 RLM_REQUIRE_LOCAL_MODEL=1
"$PY" -m pytest "$@"
