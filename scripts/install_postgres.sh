#!/usr/bin/env bash
# Debian's PostgreSQL server, used by the deployment tests (SQLite and PostgreSQL resume,
# fault injection). The tests start a throwaway cluster of their own in a temp directory
# (tests/deployment/conftest.py); nothing here starts a server or creates a cluster.
#
# Idempotent: quick when initdb and postgres are already under /usr/lib/postgresql/*/bin.
# Also creates the unprivileged system user `rlm-postgres` that the tests run the server
# as when they run as root (PostgreSQL refuses to run as root).
set -euo pipefail
SERVER_USER="rlm-postgres"

have_server() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
    && compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null
}

if ! have_server; then
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL server is missing: run 'sudo apt-get install -y postgresql'" \
      "(needed by tests/deployment)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql >/dev/null
  have_server || { echo "apt-get installed postgresql but no initdb/postgres was found" >&2; exit 1; }
fi

if [ "$(id -u)" = "0" ] && ! id -u "$SERVER_USER" >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin "$SERVER_USER"
fi
ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1
