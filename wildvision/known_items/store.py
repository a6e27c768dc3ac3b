"""The known-item index's SQLite file: its schema, opening (and upgrading) it, and reading its items for matching.

The schema is documented in `wildvision.known_items`; this module is the only one that writes DDL.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from wildvision.classifier import ModelIdentity
from wildvision.errors import WildvisionError
from wildvision.hashing import HASH_BYTES

__all__ = [
    "FORMAT_VERSION", "IndexFormatError", "PDQ_MIN_QUALITY", "Snapshot", "connect", "embedding_model_of", "open_or_create",
    "replace_pdq", "transaction", "utc_now",
]

FORMAT_VERSION = 3
FORMAT_NAME = "wildvision-known-items"
VARIANTS = 18  # difference hashes per photo item: the photo and 8 centre crops, each then its mirror
PDQ_MIN_QUALITY = 50  # Meta's advice: a PDQ hash below this quality (flat or tiny photos) is not trusted to match
_ITEMS = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    reference TEXT NOT NULL UNIQUE,
    label TEXT,
    source TEXT,
    added_at TEXT NOT NULL,
    expires_at TEXT,
    hashes BLOB,
    embedding BLOB,
    embedding_model TEXT
)
"""
_ITEM_COLUMNS = "id, reference, label, source, added_at, expires_at, hashes, embedding, embedding_model"
# An item's PDQ hashes, the photo's own first (rowid order): an item added from a photo has its crops' too.
_PDQ_HASHES = """
CREATE TABLE pdq_hashes (
    item INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    pdq BLOB NOT NULL,
    quality INTEGER
)
"""
_PDQ_HASHES_BY_ITEM = "CREATE INDEX pdq_hashes_by_item ON pdq_hashes (item)"
_SETTINGS = "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_READ_CHUNK = 65_536  # rows read at a time: a million imported items are never a million Python tuples at once
_BUSY_TIMEOUT_S = 30.0  # another process adding items holds the write lock this long at most before we give up
_log = logging.getLogger("wildvision.known_items")


class IndexFormatError(WildvisionError, ValueError):
    """The file is not a known-item index (or of a format this wildvision does not know)."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def embedding_model_of(identity: ModelIdentity) -> str:
    """How an item records the model that made its embedding: its name and version (an int8 twin's embeddings are
    close enough to its float model's to match, so precision and digest do not count)."""
    return f"{identity.name}@{identity.version}"


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode: every transaction is opened explicitly (`BEGIN IMMEDIATE`) by `transaction`,
    so that schema changes take part in it too (sqlite3's implicit transactions leave DDL out). Foreign keys are
    enforced, so removing an item removes its PDQ hashes (SQLite leaves them off unless each connection asks)."""
    connection = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


class transaction:
    """`with transaction(connection):` one transaction, committed at the end or rolled back on an error. A writing one
    takes the write lock at once (a concurrent upgrade or import waits for ours rather than failing half-way); a
    reading one sees one snapshot of the file (WAL) and blocks no writer."""

    def __init__(self, connection: sqlite3.Connection, *, write: bool = True) -> None:
        self.connection, self.begin = connection, "BEGIN IMMEDIATE" if write else "BEGIN"

    def __enter__(self) -> sqlite3.Connection:
        self.connection.execute(self.begin)
        return self.connection

    def __exit__(self, kind: type | None, *_: object) -> None:
        self.connection.execute("COMMIT" if kind is None else "ROLLBACK")


def open_or_create(path: Path, identity: ModelIdentity, *, create: bool) -> dict[str, str]:
    """Check the file at `path` is an index (creating it with `create`, upgrading a format-1 or 2 file in place) and
    return its settings."""
    try:
        with closing(connect(path)) as connection:
            # Rechecked under the write lock: another process may have done it meanwhile.
            if _version(connection) < FORMAT_VERSION:
                with transaction(connection):
                    version = _version(connection)
                    if create and version == 0 and not connection.execute("SELECT name FROM sqlite_master").fetchall():
                        _create(connection, identity)
                    elif version in (1, 2):
                        _upgrade(connection, path, version)
            with transaction(connection, write=False):
                settings = dict(connection.execute("SELECT key, value FROM settings"))
                version = _version(connection)
            # Write-ahead logging: a scan or service reading the index is never blocked by `index add` or `remove`
            # writing it, nor they by it (the mode is kept in the file; it cannot change inside a transaction).
            connection.execute("PRAGMA journal_mode = WAL")
    except sqlite3.DatabaseError as error:
        raise IndexFormatError(f"{path}: not a wildvision known-item index ({error})") from None
    if settings.get("format") != FORMAT_NAME or version != FORMAT_VERSION:
        raise IndexFormatError(f"{path}: not a wildvision known-item index of format {FORMAT_VERSION}")
    return settings


def _version(connection: sqlite3.Connection) -> int:
    return connection.execute("PRAGMA user_version").fetchone()[0]


def _create(connection: sqlite3.Connection, identity: ModelIdentity) -> None:
    connection.execute(_SETTINGS)
    _create_item_tables(connection)
    connection.executemany("INSERT INTO settings VALUES (?, ?)", {"format": FORMAT_NAME, **identity.to_fields()}.items())
    connection.execute(f"PRAGMA user_version = {FORMAT_VERSION}")


def _create_item_tables(connection: sqlite3.Connection) -> None:
    connection.execute(_ITEMS)
    connection.execute(_PDQ_HASHES)
    connection.execute(_PDQ_HASHES_BY_ITEM)


def _upgrade(connection: sqlite3.Connection, path: Path, version: int) -> None:
    """Format 1 or 2 to 3 inside the caller's transaction, keeping every item. From 1: its embedding marked as the
    building model's, no PDQ yet (`reembed` computes it from the photos); SQLite cannot drop format 1's NOT NULL on
    `hashes` and `embedding` (imported items have neither) in place. From 2: its one PDQ hash (of the whole photo)
    moves to `pdq_hashes`; its crops have none until `reembed`. Either way a new items table, the old one copied."""
    settings = dict(connection.execute("SELECT key, value FROM settings"))
    if settings.get("format") != FORMAT_NAME:
        return  # not ours: refused by the caller
    connection.execute("ALTER TABLE items RENAME TO items_before")
    _create_item_tables(connection)  # after the rename, so that pdq_hashes refers to the new table
    if version == 1:
        built_by = embedding_model_of(ModelIdentity.of_fields(settings))
        connection.execute("INSERT INTO items (id, reference, added_at, hashes, embedding, embedding_model) "
                           "SELECT id, reference, added_at, hashes, embedding, ? FROM items_before", (built_by,))
        kept = "they have no PDQ hash"
    else:
        connection.execute(f"INSERT INTO items ({_ITEM_COLUMNS}) SELECT {_ITEM_COLUMNS} FROM items_before")
        connection.execute("INSERT INTO pdq_hashes (item, pdq, quality) SELECT id, pdq, pdq_quality FROM items_before "
                           "WHERE pdq IS NOT NULL ORDER BY id")
        kept = "their photos' PDQ hashes are kept, their crops have none"
    connection.execute("DROP TABLE items_before")
    connection.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    count = connection.execute("SELECT count(*) FROM items").fetchone()[0]
    _log.warning("%s: upgraded from format %d to %d, keeping its %d items; %s until `wildvision index reembed` "
                 "recomputes them from their photos", path, version, FORMAT_VERSION, count, kept)


def replace_pdq(connection: sqlite3.Connection, item: int, hashes: Sequence[tuple[bytes, int | None]]) -> None:
    """Make `hashes` (PDQ bytes and quality, the photo's own first) the item's PDQ hashes, in the caller's
    transaction."""
    connection.execute("DELETE FROM pdq_hashes WHERE item = ?", (item,))
    connection.executemany("INSERT INTO pdq_hashes (item, pdq, quality) VALUES (?, ?, ?)",
                           [(item, pdq, quality) for pdq, quality in hashes])


def _epoch(timestamp: str | None) -> float:
    """Seconds since 1970 of an ISO 8601 time; infinity for none (never expires)."""
    return math.inf if timestamp is None else datetime.fromisoformat(timestamp).timestamp()


@dataclass(frozen=True)
class Snapshot:
    """Every item's features as arrays, as of one read (matching never sees a half-applied `add`). No per-item Python
    object: a million stored PDQ hashes take their item ids, the hashes and expiry only, about 48 bytes each.
    References are read from the file for the items that match.

    Rows of the PDQ arrays are stored hashes, several per item added from a photo (its crops'), sorted by item;
    rows of the photo arrays are items (their `photo_ids`), those added from photos only.
    """

    pdq_ids: np.ndarray  # K int64, sorted: the item of each PDQ hash of quality >= PDQ_MIN_QUALITY
    pdq: np.ndarray  # K x 32 uint8
    pdq_expires: np.ndarray  # K float64, seconds since 1970 (inf: never)
    photo_ids: np.ndarray  # P int64: items with difference hashes
    photo_hashes: np.ndarray  # (P x VARIANTS) x 32 uint8, each item's variants consecutive
    photo_expires: np.ndarray  # P float64
    embeddings: np.ndarray  # P x D float32, zero rows where the item has no embedding by `model`
    embedded: np.ndarray  # P bool: the item's embedding is `model`'s
    pdq_only: int  # items matched by PDQ alone (no difference hashes)
    other_model: int  # photo items whose embedding is another model's (or absent)

    @classmethod
    def read(cls, connection: sqlite3.Connection, model: str) -> Snapshot:
        with transaction(connection, write=False):  # one snapshot of both reads, whatever commits meanwhile
            pdq = _pdq_rows(connection)
            photos = _photo_rows(connection, model)
            pdq_only = connection.execute("SELECT count(*) FROM items WHERE hashes IS NULL").fetchone()[0]
        ids, hashes, expires, embeddings, embedded = photos
        return cls(*pdq, ids, hashes, expires, embeddings, embedded, pdq_only, int(len(ids) - embedded.sum()))


def _chunks(cursor: sqlite3.Cursor) -> Iterator[list[tuple]]:
    while rows := cursor.fetchmany(_READ_CHUNK):
        yield rows


def _pdq_rows(connection: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, hashes, expires = [np.zeros(0, np.int64)], [np.zeros((0, HASH_BYTES), np.uint8)], [np.zeros(0)]
    cursor = connection.execute("SELECT item, pdq, expires_at FROM pdq_hashes JOIN items ON items.id = item WHERE "
                                "quality IS NULL OR quality >= ? ORDER BY item, pdq_hashes.rowid", (PDQ_MIN_QUALITY,))
    for rows in _chunks(cursor):
        ids.append(np.fromiter((row[0] for row in rows), np.int64, len(rows)))
        hashes.append(np.frombuffer(b"".join(row[1] for row in rows), np.uint8).reshape(-1, HASH_BYTES))
        expires.append(np.fromiter((_epoch(row[2]) for row in rows), np.float64, len(rows)))
    return np.concatenate(ids), np.concatenate(hashes), np.concatenate(expires)


def _photo_rows(connection: sqlite3.Connection, model: str) -> tuple[np.ndarray, ...]:
    rows = connection.execute("SELECT id, hashes, expires_at, embedding, embedding_model = ? FROM items "
                              "WHERE hashes IS NOT NULL ORDER BY id", (model,)).fetchall()
    if not rows:
        return (np.zeros(0, np.int64), np.zeros((0, HASH_BYTES), np.uint8), np.zeros(0), np.zeros((0, 0), np.float32),
                np.zeros(0, bool))
    ids, hashes, expires, embeddings, embedded = zip(*rows)
    mine = [vector for vector, ours in zip(embeddings, embedded) if ours]
    size = len(mine[0]) // 4 if mine else 0  # float32 values
    matrix = np.zeros((len(rows), size), np.float32)
    if mine:
        matrix[np.flatnonzero(embedded)] = np.frombuffer(b"".join(mine), "<f4").reshape(len(mine), size)
    return (np.array(ids, np.int64), np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, HASH_BYTES),
            np.array([_epoch(value) for value in expires]), matrix, np.array(embedded, bool))
