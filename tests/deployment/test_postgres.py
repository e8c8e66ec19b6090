"""The throwaway PostgreSQL cluster works, and ``PostgresSaver`` stores checkpoints in it.

Real server (Debian's postgresql, started by ``conftest.py``), real checkpointer
(``langgraph-checkpoint-postgres``); nothing is faked.
"""

from __future__ import annotations

import stat
from pathlib import Path

import psycopg
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.postgres import PostgresSaver

from tests.deployment.databases import PostgresCluster


def test_the_cluster_listens_only_on_a_socket_in_its_own_directory(
    postgres_cluster: PostgresCluster,
) -> None:
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as connection:
        listen = connection.execute("SHOW listen_addresses").fetchone()
        socket_dirs = connection.execute("SHOW unix_socket_directories").fetchone()
    assert listen == ("",)
    assert socket_dirs == (str(postgres_cluster.root),)
    socket = Path(postgres_cluster.root) / ".s.PGSQL.5432"
    assert stat.S_ISSOCK(socket.stat().st_mode)


def test_postgres_saver_puts_and_gets_a_checkpoint(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.create_database("saver")
    config = {"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"answer": "forty-two", "iteration": 3}
    checkpoint["channel_versions"] = {"answer": "1", "iteration": "1"}
    with PostgresSaver.from_conn_string(url) as saver:
        saver.setup()
        saved = saver.put(config, checkpoint, {"source": "input", "step": -1}, {"answer": "1"})  # type: ignore[arg-type]
        saver.put_writes(saved, [("iteration", 4)], task_id="task-1")
    with PostgresSaver.from_conn_string(url) as reader:  # a new connection reads it back
        found = reader.get_tuple({"configurable": {"thread_id": "t1"}})
        missing = reader.get_tuple({"configurable": {"thread_id": "other"}})
    assert found is not None and missing is None
    assert found.checkpoint["id"] == checkpoint["id"]
    assert found.checkpoint["channel_values"]["answer"] == "forty-two"
    assert found.metadata["step"] == -1
    assert found.pending_writes == [("task-1", "iteration", 4)]
