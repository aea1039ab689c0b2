"""`SqliteStateStore`: snapshots in a SQLite file (standard library), durable."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading

from .kernel.state import StateStore

__all__ = ["SqliteStateStore"]


class SqliteStateStore(StateStore):
    """Snapshots kept in a SQLite file, so they survive the whole process.

    A fresh `Mesh` given a store on the same file restores each agent that defines
    ``restore`` from the snapshot saved under its name. File access runs in a worker
    thread, so a slow disk never blocks the event loop; one write at a time.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None
        )
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS snapshots (key TEXT PRIMARY KEY, data BLOB NOT NULL)"
            )

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"state store {self.path} is closed")
        return self._db

    def _get(self, key: str) -> bytes | None:
        with self._lock:
            row = (
                self._conn().execute("SELECT data FROM snapshots WHERE key = ?", (key,)).fetchone()
            )
        return None if row is None else bytes(row[0])

    def _put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._conn().execute(
                "INSERT OR REPLACE INTO snapshots (key, data) VALUES (?, ?)", (key, data)
            )

    def _delete(self, key: str) -> None:
        with self._lock:
            self._conn().execute("DELETE FROM snapshots WHERE key = ?", (key,))

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._get, key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    async def aclose(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
