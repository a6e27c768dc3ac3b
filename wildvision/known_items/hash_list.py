"""Hash lists: a known-item index's PDQ hashes as a photo-free CSV file that other platforms and Meta's ThreatExchange
tooling read and write.

The columns are those `threatexchange dataset --print-signals --csv` (python-threatexchange 1.2) writes, in its
order, then wildvision's own; a reader of ThreatExchange's CSV ignores the extra columns, and an import of
ThreatExchange's file reads it as it is. Each row is one PDQ hash: an item added from a photo is written as several
rows with its reference (the photo's own hash first, then its centre crops', so a list catches cropped re-posts
too), and import groups the rows of one reference into one item with those hashes. Tools that index hashes see
several hashes per item; a list from tools that write one hash per photo imports as one item per row.

| column | holds |
|---|---|
| `signal_type` | `pdq` (rows of other signal types are skipped on import, and counted) |
| `signal_str` | the PDQ hash: 64 lower-case hex digits, as ThreatExchange's `pdq` signal type writes it |
| `collab` | the source platform (ThreatExchange's collaboration) that confirmed the item |
| `category` | `POSITIVE_CLASS` (confirmed); import also takes `INVESTIGATION_SEED` or empty, skips `NEGATIVE_CLASS` and `DISPUTED` |
| `tags` | the item's label (e.g. `ivory`); empty: none |
| `reference` | the item's reference in the index, on every row of its hashes; empty on import: `pdq:<hash>` |
| `added_at` | when the item was confirmed, UTC ISO 8601; empty on import: now (kept on re-import) |
| `expires_at` | when it stops matching, UTC ISO 8601; empty: never |
| `pdq_quality` | PDQ's quality score, 0-100; empty: unknown (matched; an item below 50 is not) |
"""

from __future__ import annotations

import csv
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from wildvision.errors import WildvisionError
from wildvision.hashing import pdq_from_hex, pdq_hex
from wildvision.known_items.index import KnownItemIndex, utc_time
from wildvision.known_items.store import connect, transaction, utc_now

__all__ = ["COLUMNS", "Exported", "HashListError", "Imported", "export_hash_list", "import_hash_list"]

_THREATEXCHANGE_COLUMNS = ("signal_type", "signal_str", "collab", "category", "tags")
COLUMNS = (*_THREATEXCHANGE_COLUMNS, "reference", "added_at", "expires_at", "pdq_quality")
_IMPORTED_CATEGORIES = {"", "POSITIVE_CLASS", "INVESTIGATION_SEED"}
_SKIPPED_CATEGORIES = {"NEGATIVE_CLASS", "DISPUTED"}  # another platform's "not a match" opinions
_LISTED = ("reference", "label", "source", "added_at", "dated", "expires_at", "pdq", "pdq_quality")  # `_item`'s keys


class HashListError(WildvisionError, ValueError):
    """A hash list that cannot be imported: its file, line and what is wrong."""


@dataclass(frozen=True)
class Exported:
    rows: int  # PDQ hashes written, one a row
    items: int
    without_pdq: int  # items with no PDQ hash (added without pdqhash, or from a format-1 index): not in the list


@dataclass(frozen=True)
class Imported:
    rows: int  # items written, new or updated
    new: int
    hashes: int  # PDQ hashes they hold, duplicates of one item's dropped
    skipped: dict[str, int] = field(default_factory=dict)  # rows not imported, by why: "signal_type md5", ...


def export_hash_list(index: KnownItemIndex, path: Path, *, source: str | None = None) -> Exported:
    """Write every PDQ hash of every item to `path`, one a row, an item's rows together (its photo's own hash
    first); this index's own items are named as coming from `source` (default: the index's `source` setting, else
    empty)."""
    own_source = source or index.source or ""
    with closing(connect(index.path)) as connection, transaction(connection, write=False):
        items, without = connection.execute(
            "SELECT count(EXISTS (SELECT 1 FROM pdq_hashes WHERE item = id) OR NULL), "
            "count(NOT EXISTS (SELECT 1 FROM pdq_hashes WHERE item = id) OR NULL) FROM items").fetchone()
        rows = connection.execute("SELECT pdq, source, label, reference, added_at, expires_at, quality FROM pdq_hashes "
                                  "JOIN items ON items.id = item ORDER BY item, pdq_hashes.rowid")
        written = _write(path, rows, own_source)
    return Exported(written, items, without)


def _write(path: Path, rows: sqlite3.Cursor, own_source: str) -> int:
    temporary = path.with_name(path.name + ".partial")
    count = 0
    with temporary.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for pdq, source, label, reference, added_at, expires_at, quality in rows:
            writer.writerow(("pdq", pdq_hex(np.frombuffer(pdq, np.uint8)), source or own_source, "POSITIVE_CLASS", label or "", reference,
                             added_at, expires_at or "", "" if quality is None else quality))
            count += 1
    temporary.replace(path)  # a reader never sees half a list
    return count


def import_hash_list(
    index: KnownItemIndex, path: Path, *, source: str | None = None, expires_at: str | None = None
) -> Imported:
    """Import the PDQ hashes of `path` as items matched by PDQ alone, in one transaction: a bad row raises
    `HashListError` naming the file, line and problem, and nothing is imported. The rows of one reference become one
    item holding their hashes (its first row's label, source and dates); rows naming no source platform get `source`,
    rows naming no expiry `expires_at`. An item already present takes the list's hashes in place of its own.
    Re-importing the same list changes nothing."""
    before = len(index)
    skipped: dict[str, int] = {}
    with path.open(encoding="utf-8-sig", newline="") as file, closing(connect(index.path)) as connection:
        reader = csv.DictReader(file)
        missing = {"signal_type", "signal_str"} - set(reader.fieldnames or ())
        if missing:
            raise HashListError(f"{path}:1: a hash list needs the columns signal_type and signal_str "
                                f"(ThreatExchange's CSV); it has {', '.join(reader.fieldnames or []) or 'none'}")
        with transaction(connection):
            # The rows go to a temporary table first, so that a list of millions is grouped by SQLite, not in memory.
            connection.execute(f"CREATE TEMP TABLE listed ({', '.join(_LISTED)})")
            connection.executemany(f"INSERT INTO listed VALUES ({', '.join(':' + name for name in _LISTED)})",
                                   _items(reader, path, source, expires_at, skipped))
            written = connection.executemany(
                "INSERT INTO items (reference, label, source, added_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5) "
                "ON CONFLICT (reference) DO UPDATE SET label = excluded.label, source = excluded.source, "
                "expires_at = excluded.expires_at, added_at = CASE WHEN ?6 THEN excluded.added_at ELSE items.added_at "
                "END", connection.execute("SELECT reference, label, source, added_at, expires_at, dated FROM listed "
                                          "WHERE rowid IN (SELECT min(rowid) FROM listed GROUP BY reference)")).rowcount
            connection.execute("DELETE FROM pdq_hashes WHERE item IN "
                               "(SELECT id FROM items JOIN listed USING (reference))")
            hashes = connection.execute(
                "INSERT INTO pdq_hashes (item, pdq, quality) SELECT items.id, listed.pdq, listed.pdq_quality FROM "
                "listed JOIN items USING (reference) WHERE listed.rowid IN (SELECT min(rowid) FROM listed "
                "GROUP BY reference, pdq) ORDER BY listed.rowid").rowcount
            connection.execute("DROP TABLE listed")
    return Imported(written, len(index) - before, hashes, skipped)


def _items(
    reader: csv.DictReader, path: Path, source: str | None, expires_at: str | None, skipped: dict[str, int]
) -> Iterator[dict[str, object]]:
    """The rows to import, checked; raises `HashListError` at the first bad one (the transaction then imports none)."""
    now = utc_now()
    for row in reader:
        try:
            reason = _skip_reason(row)
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            yield _item(row, source, expires_at, now)
        except ValueError as error:
            raise HashListError(f"{path}:{reader.line_num}: {error}") from None


def _skip_reason(row: Mapping[str, str | None]) -> str | None:
    if (row["signal_type"] or "").strip() != "pdq":
        return f"signal_type {(row['signal_type'] or '').strip() or '(empty)'}"
    category = (row.get("category") or "").strip()
    if category in _SKIPPED_CATEGORIES:
        return f"category {category}"
    if category not in _IMPORTED_CATEGORIES:
        raise ValueError(f"unknown category {category!r} (ThreatExchange's: POSITIVE_CLASS, INVESTIGATION_SEED, "
                         "NEGATIVE_CLASS, DISPUTED)")
    return None


def _item(row: Mapping[str, str | None], source: str | None, expires_at: str | None, now: str) -> dict[str, object]:
    def text(name: str) -> str:
        return (row.get(name) or "").strip()

    pdq = pdq_from_hex(text("signal_str"))
    platform = text("collab") or source
    if not platform:
        raise ValueError("no source platform (the collab column is empty): give --source NAME")
    quality = int(text("pdq_quality")) if text("pdq_quality") else None
    if quality is not None and not 0 <= quality <= 100:
        raise ValueError(f"pdq_quality is 0-100, got {quality}")
    return {"reference": text("reference") or f"pdq:{pdq_hex(pdq)}", "label": text("tags") or None,
            "source": platform, "added_at": utc_time(text("added_at")) if text("added_at") else now,
            "dated": bool(text("added_at")), "expires_at": utc_time(text("expires_at")) if text("expires_at")
            else expires_at, "pdq": pdq.tobytes(), "pdq_quality": quality}
