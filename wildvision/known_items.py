"""Recognise re-posted photos of items a platform already confirmed as illegal, even where the classifier is unsure.

A `KnownItemIndex` is one SQLite file (stdlib `sqlite3`, format below). For every known photo it keeps the model's
unit-length embedding and eighteen 256-bit difference hashes: of the photo, of eight centre crops, and of the mirror
image of each. A difference hash survives resizing and re-compression but not mirroring (every bit flips) nor
cropping (content shifts under the 17x16 thumbnail), so those variants are hashed once when an item is added rather
than per query. A photo matches a known item when either signal says so (`MatchRule`); the embedding also catches
crops the ladder misses, at a cosine high enough that different objects stay apart.

File format (`PRAGMA user_version` = 1)::

    settings(key TEXT PRIMARY KEY, value TEXT)  -- format ('wildvision-known-items'), model_name, model_version,
                                                -- model_precision, model_digest (of the file that built it)
    items(
        id INTEGER PRIMARY KEY,        -- reported in matches; stable for the life of the item
        reference TEXT UNIQUE,         -- the platform's reference (listing id, photo path); adding it again replaces it
        hashes BLOB,                   -- 18 x 32 bytes: difference hashes (`wildvision.hashing`) of the photo and of
                                       -- centre crops removing 1.5, 3, ... 12% of each side, each then its mirror
        embedding BLOB,                -- float32 values, little-endian, unit length (the model's embedding size)
        added_at TEXT                  -- UTC, ISO 8601
    )

The file is kept in write-ahead-log mode (`PRAGMA journal_mode = WAL`), so readers and a writer do not block each
other. `items`, `remove` and `stats` manage it (`wildvision index list`, `remove`, `stats`).

Embeddings belong to one model: opened with another model (name or version), an index matches by its difference
hashes alone, says so once (a warning on the `wildvision.known_items` logger) and refuses new photos, which would mix
two models' embeddings. `settings` also records the precision and digest of the file that built it
(`KnownItemIndex.built_with`).
Matching is exact and in memory (every item compared): about 5.7 KB per item with the shipped model's 1,280-value
embedding, so 100,000 known photos take about 570 MB.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import weakref
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from wildvision.classifier import Classifier, ModelIdentity, PreparedPhoto
from wildvision.errors import WildvisionError
from wildvision.hashing import HASH_BYTES, difference_hash, hamming_distances
from wildvision.images import ImageSource, load_image

__all__ = [
    "FORMAT_VERSION", "IndexFormatError", "IndexStats", "KnownItem", "KnownItemIndex", "Match", "MatchRule",
    "variant_hashes",
]

FORMAT_VERSION = 1
_FORMAT_NAME = "wildvision-known-items"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    reference TEXT NOT NULL UNIQUE,
    hashes BLOB NOT NULL,
    embedding BLOB NOT NULL,
    added_at TEXT NOT NULL
);
"""
# Fraction cut from each side: 0, 1.5%, ... 12%. A crop 0.75% off a hashed one still lands within ~18 bits; 1% off,
# half of them do not (measured on the shared data), hence steps of 1.5%.
_CROPS = tuple(step * 0.015 for step in range(9))
_log = logging.getLogger("wildvision.known_items")
_BUSY_TIMEOUT_S = 30.0  # another process adding items holds the write lock this long at most before we give up


class IndexFormatError(WildvisionError, ValueError):
    """The file is not a known-item index, or one built by another model."""


@dataclass(frozen=True)
class MatchRule:
    """A photo matches a known item when its hash is within `max_hash_distance` bits (of 256) of any of the item's
    hashed variants, OR its embedding's cosine similarity to the item's reaches `min_cosine`.

    Fitted with model 1.2.0 by `benchmarks/matching_benchmark.py` (re-run it for every model release): on the half of
    re-posts held out from the fit (600 re-posts of 150 known shared photos: halved, mirrored, cropped 0-8 % a side,
    all three; JPEG quality 50-90), it matches 98.8 % to their own item, and none of 419 unrelated everyday-v1 photos
    nor any re-post to another known item. False matches grow with the index, so a large index wants stricter values.
    """

    # The strictest distance at which hash OR cosine recalls 99 % of the fit half's re-posts (crop, mirror and halve
    # at once is the hardest: 96.7 % by hash alone), kept 4 bits short of the nearest unrelated photo (29 bits; a
    # product shot on white came within 26 of another sample's known photos).
    max_hash_distance: int = 24
    # The loosest cosine at which at most 0.1 % of unrelated photos and look-alikes (re-posts against the other known
    # items) match; a pair of identical Towneley chairs reaches 0.966. 1.2.0's embedding moves further than 1.1.0's:
    # mirrored re-posts reach it 84 % of the time, halved 36 %.
    min_cosine: float = 0.96


@dataclass(frozen=True)
class Match:
    id: int
    reference: str
    hash_distance: int  # bits of 256, to the nearest of the item's hashed variants
    cosine: float  # embedding similarity, -1..1

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class KnownItem:
    """One item as `KnownItemIndex.items` lists it (its features stay in the file)."""

    id: int
    reference: str
    added_at: str  # UTC, ISO 8601

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class IndexStats:
    """What `wildvision index stats` reports: how many items, the oldest and newest added (None when empty), the
    file's size on disk and the model that built it."""

    items: int
    oldest: str | None
    newest: str | None
    file_bytes: int
    built_with: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class KnownItemIndex:
    """Known items in an SQLite file, held in memory for matching; safe to share across threads.

    Examples:
        >>> index = KnownItemIndex("known.sqlite", classifier, create=True)   # doctest: +SKIP
        >>> index.add(["seized/tusk1.jpg"], ["case-2291/tusk1"])              # doctest: +SKIP
        >>> index.match("listing.jpg")                                        # doctest: +SKIP
        Match(id=1, reference='case-2291/tusk1', hash_distance=3, cosine=0.97)
    """

    def __init__(
        self, path: str | Path, classifier: Classifier, *, rule: MatchRule = MatchRule(), create: bool = False
    ) -> None:
        """Open the index at `path` (with `create`, make it if absent) for `classifier`'s model."""
        self.path = Path(path)
        self.classifier = classifier
        self.rule = rule
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"known-item index not found: {self.path}")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"cannot create the known-item index {self.path}: no folder {self.path.parent}")
        self._lock = threading.Lock()
        self._items: _Items | None = None  # loaded on first match, re-read once anyone has changed the file
        with closing(self._connect()) as connection, connection:
            self._check_or_initialise(connection, create)
        with closing(self._connect()) as connection:
            # Write-ahead logging: a scan or service reading the index is never blocked by `index add` or `remove`
            # writing it, nor they by it (the mode is kept in the file; it cannot change inside a transaction).
            connection.execute("PRAGMA journal_mode = WAL")
        # `PRAGMA data_version` changes when another connection (this object's `add`, another process) commits, but
        # only as seen from one connection that stays open: this one, asked under the lock before every match.
        self._watcher = sqlite3.connect(self.path, check_same_thread=False)
        self._items_version = -1  # PRAGMA data_version is positive: the first match reads the items
        weakref.finalize(self, self._watcher.close)

    def __len__(self) -> int:
        with closing(self._connect()) as connection:
            return connection.execute("SELECT count(*) FROM items").fetchone()[0]

    def items(self) -> list[KnownItem]:
        """Every item, oldest id first."""
        with closing(self._connect()) as connection:
            return [KnownItem(*row) for row in connection.execute("SELECT id, reference, added_at FROM items ORDER BY id")]

    def remove(self, references: Sequence[str]) -> list[str]:
        """Remove the items of `references` in one transaction; the references that named no item (nothing else
        changes for them). A scan or service matching meanwhile sees the index before or after, never between."""
        with closing(self._connect()) as connection, connection:
            absent = [reference for reference in references
                      if connection.execute("DELETE FROM items WHERE reference = ?", (reference,)).rowcount == 0]
        return absent

    def stats(self) -> IndexStats:
        """The number of items, the oldest and newest, the file's size and the model that built it."""
        with closing(self._connect()) as connection:
            count, oldest, newest = connection.execute("SELECT count(*), min(added_at), max(added_at) FROM items").fetchone()
        size = sum(path.stat().st_size for path in (self.path, self.path.with_name(self.path.name + "-wal"))
                   if path.is_file())
        return IndexStats(count, oldest, newest, size, str(self.built_with))

    def add(self, images: Sequence[ImageSource], references: Sequence[str]) -> None:
        """Add photos under the platform's references; a reference already present is replaced (re-adding is safe)."""
        if len(images) != len(references):
            raise ValueError(f"{len(images)} photos but {len(references)} references")
        if not self.embeddings_match:
            built_by, identity = self.built_with, self.classifier.identity
            raise IndexFormatError(
                f"{self.path}: built with model {built_by.name} {built_by.version}; adding photos with "
                f"{identity.name} {identity.version} would mix two models' embeddings: add them to a new index")
        photos = [load_image(image, min_side=self.classifier.info.preprocessing.input_size) for image in images]
        embeddings = self.classifier.embed(photos).astype("<f4")
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows = [(reference, variant_hashes(photo).tobytes(), embedding.tobytes(), now)
                for reference, photo, embedding in zip(references, photos, embeddings)]
        with closing(self._connect()) as connection, connection:  # one transaction: all of them or none
            connection.executemany(
                "INSERT INTO items (reference, hashes, embedding, added_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (reference) DO UPDATE SET hashes = excluded.hashes, embedding = excluded.embedding, "
                "added_at = excluded.added_at",
                rows,
            )

    def match(self, image: ImageSource) -> Match | None:
        """The known item `image` re-posts, or None. To score and match in one forward pass, with the match deciding,
        use `wildvision.scorer.Scorer`."""
        photo = self.classifier.prepare(image, with_hashes=True)
        return self.match_photos([photo], self.classifier.score_and_embed([photo])[1])[0]

    def match_photos(self, photos: Sequence[PreparedPhoto], embeddings: Sequence[np.ndarray]) -> list[Match | None]:
        """For photos prepared `with_hashes` and their embeddings (`Classifier.score_and_embed`), the known item each
        re-posts: an animated photo matches when any of its frames does (the closest such frame's match)."""
        if not photos:
            return []
        matches = iter(self.match_features(np.concatenate([photo.hashes for photo in photos]), np.concatenate(embeddings)))
        per_photo = [[next(matches) for _ in photo.tensors] for photo in photos]
        return [min((m for m in frames if m), key=lambda m: (m.hash_distance, -m.cosine), default=None)
                for frames in per_photo]

    def match_features(self, hashes: np.ndarray, embeddings: np.ndarray) -> list[Match | None]:
        """For each photo's hash (row of M x 32) and unit embedding (row of M x D), its best known item under the rule.

        Every item is compared (exact, no approximate search): per photo that is N x 32 bytes of hash and N x D
        multiply-adds, a few milliseconds for 100,000 items. Among the items that match, the most similar embedding wins.
        An index built by another model (`embeddings_match` false) matches by hash alone, and reports cosine -1.
        """
        items = self._loaded()
        if not len(items.ids):
            return [None] * len(hashes)
        matches: list[Match | None] = []
        for photo_hash, embedding in zip(hashes, embeddings):
            distances = hamming_distances(photo_hash[np.newaxis], items.hashes)[0].reshape(len(items.ids), -1).min(axis=1)
            if self.embeddings_match:
                cosines = items.embeddings @ embedding.astype(np.float32)
                closeness = cosines
            else:  # another model's embeddings: no signal (cosine -1); the nearest hash wins
                cosines = np.full(len(items.ids), -1.0, np.float32)
                closeness = -distances.astype(np.float32)
            candidates = (distances <= self.rule.max_hash_distance) | (cosines >= self.rule.min_cosine)
            if not candidates.any():
                matches.append(None)
                continue
            best = int(np.flatnonzero(candidates)[np.argmax(closeness[candidates])])
            matches.append(Match(int(items.ids[best]), items.references[best], int(distances[best]),
                                 round(float(cosines[best]), 6)))
        return matches

    def _connect(self) -> sqlite3.Connection:
        # A connection per operation: sqlite3 connections must not be shared across threads, this object may be.
        return sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S)

    def _check_or_initialise(self, connection: sqlite3.Connection, create: bool) -> None:
        identity = self.classifier.identity
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if create and version == 0 and not connection.execute("SELECT name FROM sqlite_master").fetchall():
                connection.executescript(_SCHEMA)
                connection.executemany("INSERT INTO settings VALUES (?, ?)",
                                       {"format": _FORMAT_NAME, **identity.to_fields()}.items())
                connection.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
                self.built_with, self.embeddings_match = identity, True
                return
            settings = dict(connection.execute("SELECT key, value FROM settings"))
        except sqlite3.DatabaseError as error:
            raise IndexFormatError(f"{self.path}: not a wildvision known-item index ({error})") from None
        self.built_with = ModelIdentity.of_fields(settings)  # indexes from before the digest was recorded: "unknown"
        if settings.get("format") != _FORMAT_NAME or version != FORMAT_VERSION:
            raise IndexFormatError(f"{self.path}: not a wildvision known-item index of format {FORMAT_VERSION}")
        # Embeddings belong to a model, not to one of its files: an int8 twin's are close enough to its float
        # model's to match, so precision and digest only say which file built the index, for people.
        built_by = self.built_with
        self.embeddings_match = (built_by.name, built_by.version) == (identity.name, identity.version)
        if not self.embeddings_match:
            # The difference hashes belong to no model: an upgrade keeps the index matching by them (said once, here).
            _log.warning("%s: built with model %s %s, whose embeddings mean nothing to %s %s: matching by the photos' "
                         "difference hashes only (crops between the hashed ones may be missed)", self.path,
                         built_by.name, built_by.version, identity.name, identity.version)

    def _loaded(self) -> _Items:
        """The items as of the latest commit, by this process or another (e.g. `wildvision index add` while a service
        runs): re-read only when the file has changed since the last read."""
        with self._lock:
            version = self._watcher.execute("PRAGMA data_version").fetchone()[0]
            if version != self._items_version:
                with closing(self._connect()) as connection:
                    self._items = _Items.read(connection)
                self._items_version = version
            return self._items


def variant_hashes(photo: Image.Image) -> np.ndarray:
    """The 18 x 32-byte hashes stored per item: the photo and its centre crops (`_CROPS`), each then its mirror."""
    hashes = []
    for fraction in _CROPS:
        dx, dy = round(photo.width * fraction), round(photo.height * fraction)
        cropped = photo.crop((dx, dy, photo.width - dx, photo.height - dy))
        hashes += [difference_hash(cropped), difference_hash(ImageOps.mirror(cropped))]
    return np.stack(hashes)


@dataclass(frozen=True)
class _Items:
    """Every item's features as arrays, in one snapshot (matching never sees a half-applied `add`)."""

    ids: np.ndarray
    references: list[str]
    hashes: np.ndarray  # (N x 18) x 32 uint8: each item's variants, consecutive
    embeddings: np.ndarray  # N x D float32

    @classmethod
    def read(cls, connection: sqlite3.Connection) -> _Items:
        rows = connection.execute("SELECT id, reference, hashes, embedding FROM items ORDER BY id").fetchall()
        if not rows:
            return cls(np.zeros(0, np.int64), [], np.zeros((0, HASH_BYTES), np.uint8), np.zeros((0, 0), np.float32))
        ids, references, hashes, embeddings = zip(*rows)
        return cls(
            np.array(ids, np.int64), list(references),
            np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, HASH_BYTES),
            np.frombuffer(b"".join(embeddings), "<f4").reshape(len(rows), -1).astype(np.float32),
        )
