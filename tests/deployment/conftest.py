"""Fixtures of the deployment tests: a real PostgreSQL cluster, and the database to use.

``postgres_cluster`` (session scope) starts one throwaway cluster for the whole session
(see :class:`tests.deployment.databases.PostgresCluster`) and stops and removes it at the
end, also when tests fail. It skips only when the server is not installed; CI installs it
(``scripts/install_postgres.sh``) and sets ``RLM_NO_SKIPS=1``, which turns a skip into a
failure.

``database`` is parametrized over ``sqlite`` and ``postgres``: a fresh SQLite file or a
fresh PostgreSQL database per test, named by one string (a path or a ``postgresql://``
URL) that worker processes take on their command line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployment.databases import INSTALL_HINT, PostgresCluster, postgres_bin_dir

DATABASES = ("sqlite", "postgres")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(f"the PostgreSQL server is not installed: {INSTALL_HINT}")
    cluster = PostgresCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database: a SQLite file path, or a ``postgresql://`` URL."""
    if request.param == "sqlite":
        return str(tmp_path / "rlm.sqlite")
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.create_database()
