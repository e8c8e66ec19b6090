#!/usr/bin/env bash
# The main job on a fresh machine: a venv in .venv, the project, and (when no OPENAI_API_KEY
# is set) the embedded local model; then an RLM answers a question over Python's
# 470,000-character language reference. Extra arguments go to examples/quickstart.py.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RLM_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .
if [ -z "${OPENAI_API_KEY:-}" ]; then
  bash scripts/install_local.sh "$VENV"
fi
exec "$VENV/bin/python" examples/quickstart.py "$@"
