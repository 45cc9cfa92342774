"""The result cache's storage: finished items on disk, so a map can resume after a crash.

Results are stored under ``(function key, item key)`` (``cachekey.py`` says what the keys
cover) in one SQLite database per cache directory, not one file per item: a map of 10M
items would be 10M files — an inode and a 4 KiB block each, a directory no one can list,
and on a network home volume a round trip per file — where SQLite keeps them in one
file, writes a chunk of results in one transaction and finds any item through an index.

Why it survives crashes and sharing:

* **one transaction per chunk** (:meth:`ResultCache.put_many`): a chunk's results are
  either all there or not at all, and every committed chunk survives a SIGKILL of the
  kernel (``synchronous=NORMAL`` in WAL mode syncs at checkpoints only; that risks the
  last chunks on *power* loss, not on a process crash, and they are just recomputed);
* **WAL mode**: two kernels can use the same directory at once — readers never block
  and are never blocked, a writer waits for the other's short transaction (``timeout``).
  WAL needs all users on one host (they share memory through the ``-shm`` file), which
  holds for the kernels of one user's server, and working file locks, which local disks
  and the block volumes hubs usually mount as homes have (not every NFS server does).

Values are pickled with cloudpickle. A value that cannot be pickled (or is over 1 GB
pickled) is left out and reported by ``put_many``; a stored value that can no longer be unpickled (its class is
gone) counts as missing, so the item is recomputed and overwritten.
"""

from __future__ import annotations

import io
import os
import pickle
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

import cloudpickle
import platformdirs

from .errors import UsageError

#: the file name carries the schema version: a new schema starts a new file
DATABASE_NAME = "results-v1.sqlite3"
_PROTOCOL = 5
#: SQLite's default limit on one value (SQLITE_MAX_LENGTH); a larger result is not stored
MAX_VALUE_BYTES = 1_000_000_000
#: item keys per SELECT: below SQLite's smallest limit on bound parameters (999)
_BATCH = 900

_SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS results (
    fn INTEGER NOT NULL,
    item BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (fn, item)
);
"""


class CacheStats(NamedTuple):
    """What ``%kubemap cache`` shows."""

    entries: int
    bytes: int  # on disk: the database and its write-ahead log


def default_directory() -> Path:
    """The user's cache directory (on JupyterHub: the persistent home volume)."""
    return Path(platformdirs.user_cache_dir("kubemagic"))


def _pickle_values(values: Mapping[str, Any]) -> tuple[list[tuple[bytes, bytes]], list[str]]:
    """``(item key bytes, pickle)`` rows, and the keys whose value cannot be stored:
    not picklable, or larger than :data:`MAX_VALUE_BYTES` pickled.

    One pickler for the chunk: creating a cloudpickle pickler per value costs more than
    pickling a small value.
    """
    buffer = io.BytesIO()
    pickler = cloudpickle.Pickler(buffer, protocol=_PROTOCOL)
    rows: list[tuple[bytes, bytes]] = []
    not_stored: list[str] = []
    for key, value in values.items():
        buffer.seek(0)
        buffer.truncate()
        pickler.clear_memo()
        try:
            pickler.dump(value)
        except Exception:  # TypeError, PicklingError, RecursionError, ... from __reduce__
            not_stored.append(key)
            continue
        if buffer.tell() > MAX_VALUE_BYTES:
            not_stored.append(key)
            continue
        rows.append((bytes.fromhex(key), buffer.getvalue()))
    return rows, not_stored


class ResultCache:
    """Results by ``(function key, item key)`` in ``<directory>/results-v1.sqlite3``.

    Thread-safe (the map's dispatcher writes while the kernel may read stats); several
    processes may open the same directory.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None,
                 timeout: float = 60.0) -> None:
        self._directory = Path(directory).expanduser() if directory else default_directory()
        self._path = self._directory / DATABASE_NAME
        self._lock = threading.Lock()
        self._timeout = timeout
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            # autocommit mode: transactions are explicit (BEGIN IMMEDIATE for writes)
            self._db = sqlite3.connect(self._path, timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise UsageError(
                f"cannot open the result cache in {self._directory}: {e}",
                fix="pass a writable directory (--cache DIR, cache=DIR)",
            ) from None
        try:
            self._set_up(time.monotonic() + timeout)
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise UsageError(
                f"the result cache {self._path} is unreadable: {e}",
                fix=f"delete {self._path} (it only holds cached results) or use another "
                "directory",
            ) from None

    def _set_up(self, deadline: float) -> None:
        """WAL mode and the schema. Two kernels opening a new cache at once can find it
        locked: switching to WAL does not wait for SQLite's busy timeout, so retry."""
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                # item keys are hashes, so a chunk's rows land on index pages all over the
                # file: keep more pages in memory and checkpoint the WAL less often (a
                # third less time per stored item when storing 1M items)
                self._db.execute("PRAGMA cache_size=-65536")  # KiB: at most 64 MiB
                self._db.execute("PRAGMA wal_autocheckpoint=10000")  # pages: about 40 MB
                self._db.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def get_many(self, function_key: str, item_keys: Iterable[str]) -> dict[str, Any]:
        """The cached values among ``item_keys``, by item key; missing ones are absent."""
        wanted = [bytes.fromhex(k) for k in dict.fromkeys(item_keys)]
        rows: list[tuple[bytes, bytes]] = []
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot: a concurrent clear() is all or nothing
            try:
                fn = self._function_id(function_key)
                for start in range(0, len(wanted) if fn is not None else 0, _BATCH):
                    batch = wanted[start:start + _BATCH]
                    rows.extend(self._db.execute(
                        "SELECT item, value FROM results WHERE fn = ? AND item IN "
                        f"({','.join('?' * len(batch))})", (fn, *batch)))
            finally:
                self._db.execute("COMMIT")
        found: dict[str, Any] = {}
        for item, blob in rows:
            try:
                found[item.hex()] = pickle.loads(blob)
            except Exception:  # e.g. a class that no longer exists: recompute the item
                continue
        return found

    def put_many(self, function_key: str, values: Mapping[str, Any]) -> list[str]:
        """Store one chunk's results in one transaction; return the keys not stored
        because their value cannot be pickled or is too large (the caller tells the user
        once)."""
        rows, not_stored = _pickle_values(values)
        if not rows:
            return not_stored
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # take the write lock now, not on upgrade
            try:
                self._db.execute("INSERT OR IGNORE INTO functions (key) VALUES (?)",
                                 (function_key,))
                fn = self._function_id(function_key)
                self._db.executemany(
                    "INSERT OR REPLACE INTO results (fn, item, value) VALUES (?, ?, ?)",
                    [(fn, item, blob) for item, blob in rows])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return not_stored

    def stats(self) -> CacheStats:
        """Entries (all functions) and bytes on disk."""
        with self._lock:
            (entries,) = self._db.execute("SELECT count(*) FROM results").fetchone()
        size = sum(p.stat().st_size for p in (self._path, Path(f"{self._path}-wal"))
                   if p.exists())
        return CacheStats(entries, size)

    def clear(self) -> None:
        """Delete every entry and give the disk space back.

        Compaction (VACUUM) needs a moment without readers; if another kernel is reading,
        it is skipped after a second rather than waiting for ``timeout``: the space stays
        allocated and is reused by later entries.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM results")
            self._db.execute("DELETE FROM functions")
            self._db.execute("COMMIT")
            self._db.execute("PRAGMA busy_timeout = 1000")
            try:
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError:  # "database is locked": another kernel reads
                pass
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResultCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _function_id(self, function_key: str) -> int | None:
        row = self._db.execute("SELECT id FROM functions WHERE key = ?",
                               (function_key,)).fetchone()
        return row[0] if row else None
