"""`KnownItemIndex`: add, re-embed, list, expire and remove known items, and match photos against them."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from wildvision.classifier import Classifier, ModelIdentity, PreparedPhoto
from wildvision.hash_search import HashSearch
from wildvision.hashing import (
    HASH_BYTES, PDQ_MATCH_DISTANCE, difference_hash, hamming_distances, pdq_available, pdq_hashes,
)
from wildvision.images import ImageSource, load_image
from wildvision.known_items.store import (
    PDQ_MIN_QUALITY, VARIANTS, Snapshot, connect, embedding_model_of, open_or_create, replace_pdq, transaction,
    utc_now,
)

__all__ = ["IndexStats", "KnownItem", "KnownItemIndex", "Match", "MatchRule", "Reembedded", "pdq_ladder", "utc_time",
           "variant_hashes"]

# Fraction cut from each side: 0, 1.5%, ... 12%. A crop 0.75% off a hashed one still lands within ~18 bits; 1% off,
# half of them do not (measured on the shared data), hence steps of 1.5%.
_CROPS = tuple(step * 0.015 for step in range(VARIANTS // 2))
# PDQ hashes stored per photo item: the photo and its centre crops 1.5 ... 7.5 % a side (6 hashes). Measured on 300
# re-posts of 300 shared photos cropped 0-8 % a side, at PDQ's 31 bits: the photo's one hash catches 22 %, this ladder
# 99 %; steps of 1 % (9 hashes) 99.7 %, of 2 % 95 %, of 3 % 82 %; crops past 7.5 % add nothing. No unrelated
# everyday-v1 photo came within 66 bits of any ladder hash (the photo's own alone: 78).
_PDQ_CROPS = _CROPS[:6]
# ... each at full and half scale (12 hashes). PDQ blurs by a window that grows with the photo, so halving a small photo
# moves its hash: on 300 shared photos (most 360 px), halved re-posts were recalled at 31 bits 97 % of the time by the
# full-scale ladder, 100 % with the half-scale rungs, and the re-posts halved, mirrored and cropped at once 95 % and
# 99 %. The nearest unrelated everyday-v1 photo came to 64 bits of the 12 (68 of the 6).
_PDQ_SCALES = (1.0, 0.5)
_log = logging.getLogger("wildvision.known_items")


@dataclass(frozen=True)
class MatchRule:
    """A photo matches a known item when its PDQ hash (any of its 16 variants: the dihedral ones of it and of its
    mirror) is within `max_pdq_distance` bits of 256 of any of the item's PDQ hashes, OR its difference hash is within
    `max_hash_distance` bits of any of the item's hashed variants, OR its embedding's cosine similarity to the item's
    reaches `min_cosine`. Each signal counts only where both sides have it (an imported item has PDQ alone; an item
    embedded by another model has no embedding).

    Fitted with model 1.2.0 by `benchmarks/matching_benchmark.py` (re-run it for every model release): on the half of
    re-posts held out from the fit (600 re-posts of 150 known shared photos: halved, mirrored, cropped 0-8 % a side,
    all three; JPEG quality 50-90), it matches 100 % to their own item (98.8 % without PDQ; our exported list alone,
    imported elsewhere, 99.5 %), and none of 419 unrelated everyday-v1 photos nor any re-post to another known item.
    False matches grow with the index, so a large index wants stricter values.
    """

    # The strictest distance at which hash OR cosine recalls 99 % of the fit half's re-posts (crop, mirror and halve
    # at once is the hardest: 96.7 % by hash alone), kept 4 bits short of the nearest unrelated photo (29 bits; a
    # product shot on white came within 26 of another sample's known photos).
    max_hash_distance: int = 24
    # The loosest cosine at which at most 0.1 % of unrelated photos and look-alikes (re-posts against the other known
    # items) match; a pair of identical Towneley chairs reaches 0.966. 1.2.0's embedding moves further than 1.1.0's:
    # mirrored re-posts reach it 84 % of the time, halved 36 %.
    min_cosine: float = 0.96
    max_pdq_distance: int = PDQ_MATCH_DISTANCE  # Meta's recommended threshold, as ThreatExchange and HMA match


@dataclass(frozen=True)
class Match:
    """The known item a photo re-posts, and how close each signal found it (None: a side lacks that signal)."""

    id: int
    reference: str
    hash_distance: int | None  # bits of 256, to the nearest of the item's difference-hashed variants
    cosine: float | None  # embedding similarity, -1..1 (None: the item has no embedding by this model)
    pdq_distance: int | None = None  # bits of 256, nearest dihedral variant of the photo's PDQ to the nearest of
    # the item's PDQ hashes (its photo's and, added from a photo or exported by wildvision, its crops')

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class KnownItem:
    """One item as `KnownItemIndex.items` lists it (its features stay in the file)."""

    id: int
    reference: str
    added_at: str  # UTC, ISO 8601
    label: str | None  # what it is (e.g. ivory), as the platform or the imported list says
    source: str | None  # the platform that confirmed it; None: this index's own (its `source` setting)
    expires_at: str | None  # UTC, ISO 8601; None: never
    signals: str  # what it matches by: "pdq", "hashes", "embedding", +-joined

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class IndexStats:
    """What `wildvision index stats` reports: how many items (of which expired, with a PDQ hash, PDQ only, embedded
    by this model), the oldest and newest added (None when empty), the file's size on disk and the model that
    created it."""

    items: int
    expired: int
    with_pdq: int
    pdq_only: int
    pdq_hashes: int  # stored, over all items: a photo item has its crops' (what matching holds in memory)
    embedded: int
    oldest: str | None
    newest: str | None
    file_bytes: int
    built_with: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Reembedded:
    """What `KnownItemIndex.reembed` did: items re-embedded under the current model, the photos' references that name
    no item, and how many photo items still carry another model's embedding (or none)."""

    reembedded: int
    absent: tuple[str, ...]
    other_model: int


class KnownItemIndex:
    """Known items in an SQLite file, held in memory for matching; safe to share across threads.

    Examples:
        >>> index = KnownItemIndex("known.sqlite", classifier, create=True)   # doctest: +SKIP
        >>> index.add(["seized/tusk1.jpg"], ["case-2291/tusk1"])              # doctest: +SKIP
        >>> index.match("listing.jpg")                                        # doctest: +SKIP
        Match(id=1, reference='case-2291/tusk1', hash_distance=3, cosine=0.97, pdq_distance=8)
    """

    def __init__(
        self, path: str | Path, classifier: Classifier, *, rule: MatchRule = MatchRule(), create: bool = False
    ) -> None:
        """Open the index at `path` (with `create`, make it if absent; a format-1 file is upgraded in place) for
        `classifier`'s model."""
        self.path = Path(path)
        self.classifier = classifier
        self.rule = rule
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"known-item index not found: {self.path}")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"cannot create the known-item index {self.path}: no folder {self.path.parent}")
        settings = open_or_create(self.path, classifier.identity, create=create)
        self.built_with = ModelIdentity.of_fields(settings)  # indexes from before the digest was recorded: "unknown"
        self.model = embedding_model_of(classifier.identity)
        self._lock = threading.Lock()
        self._loaded_state: tuple[Snapshot, HashSearch] | None = None  # read on first match, again after any change
        # `PRAGMA data_version` changes when another connection (this object's `add`, another process) commits, but
        # only as seen from one connection that stays open: this one, asked under the lock before every match.
        self._watcher = sqlite3.connect(self.path, check_same_thread=False)
        self._items_version = -1  # PRAGMA data_version is positive: the first match reads the items
        weakref.finalize(self, self._watcher.close)
        self._say_if_other_models()

    @property
    def source(self) -> str | None:
        """The platform this index's own items come from, as exported hash lists name it (None: not set)."""
        with closing(connect(self.path)) as connection:
            row = connection.execute("SELECT value FROM settings WHERE key = 'source'").fetchone()
        return row[0] if row else None

    def set_source(self, name: str) -> None:
        with closing(connect(self.path)) as connection, transaction(connection):
            connection.execute("INSERT OR REPLACE INTO settings VALUES ('source', ?)", (name,))

    def __len__(self) -> int:
        with closing(connect(self.path)) as connection:
            return connection.execute("SELECT count(*) FROM items").fetchone()[0]

    def items(self) -> list[KnownItem]:
        """Every item, oldest id first."""
        with closing(connect(self.path)) as connection:
            rows = connection.execute(
                "SELECT id, reference, added_at, label, source, expires_at, "
                "EXISTS (SELECT 1 FROM pdq_hashes WHERE item = id), hashes IS NOT NULL, embedding_model = ? "
                "FROM items ORDER BY id", (self.model,))
            return [KnownItem(*row[:6], _signals(*row[6:])) for row in rows]

    def remove(self, references: Sequence[str]) -> list[str]:
        """Remove the items of `references` in one transaction; the references that named no item (nothing else
        changes for them). A scan or service matching meanwhile sees the index before or after, never between."""
        with closing(connect(self.path)) as connection, transaction(connection):
            return [reference for reference in references
                    if connection.execute("DELETE FROM items WHERE reference = ?", (reference,)).rowcount == 0]

    def remove_expired(self) -> int:
        """Delete the items whose expiry has passed (they already match nothing); how many went."""
        with closing(connect(self.path)) as connection, transaction(connection):
            return connection.execute("DELETE FROM items WHERE expires_at <= ?", (utc_now(),)).rowcount

    def stats(self) -> IndexStats:
        """The number of items, how many expired, which signals they carry, the oldest and newest, the file's size and
        the model that created the index."""
        with closing(connect(self.path)) as connection:
            counts = connection.execute(
                "SELECT count(*), count(expires_at <= ? OR NULL), count(pdq OR NULL), count(pdq AND hashes IS NULL "
                "OR NULL), (SELECT count(*) FROM pdq_hashes), count(embedding_model = ? OR NULL), min(added_at), "
                "max(added_at) FROM (SELECT *, EXISTS (SELECT 1 FROM pdq_hashes WHERE item = id) AS pdq FROM items)",
                (utc_now(), self.model)).fetchone()
        size = sum(path.stat().st_size for path in (self.path, self.path.with_name(self.path.name + "-wal"))
                   if path.is_file())
        return IndexStats(*counts, size, str(self.built_with))

    def add(
        self, images: Sequence[ImageSource], references: Sequence[str], *, label: str | None = None,
        expires_at: str | None = None,
    ) -> None:
        """Add photos under the platform's references, optionally saying what they show (`label`) and when they stop
        matching (`expires_at`, see `utc_time`); a reference already present is replaced (re-adding is safe).

        Embeddings are recorded per item with the model that made them, so an index built by an earlier model takes
        new photos too: they match by every signal, the older items by their hashes until `reembed`.
        """
        if len(images) != len(references):
            raise ValueError(f"{len(images)} photos but {len(references)} references")
        features = self._features(images)
        with closing(connect(self.path)) as connection, transaction(connection):  # all of them or none
            for reference, (pdq, *columns) in zip(references, features):
                connection.execute(
                    "INSERT INTO items (reference, label, added_at, expires_at, hashes, embedding, embedding_model) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (reference) DO UPDATE SET label = excluded.label, "
                    "added_at = excluded.added_at, expires_at = excluded.expires_at, hashes = excluded.hashes, "
                    "embedding = excluded.embedding, embedding_model = excluded.embedding_model, source = NULL",
                    (reference, label, utc_now(), expires_at, *columns))
                replace_pdq(connection, _item_id(connection, reference), pdq)

    def reembed(self, images: Sequence[ImageSource], references: Sequence[str]) -> Reembedded:
        """Recompute the embedding, difference hashes and PDQ of the items `references` name, from their photos, under
        this index's model (after an upgrade; label, source, dates stay). References naming no item are returned."""
        if len(images) != len(references):
            raise ValueError(f"{len(images)} photos but {len(references)} references")
        with closing(connect(self.path)) as connection:
            known = {reference for reference in references if connection.execute(
                "SELECT 1 FROM items WHERE reference = ?", (reference,)).fetchone()}
        present = [(image, reference) for image, reference in zip(images, references) if reference in known]
        features = self._features([image for image, _ in present])
        with closing(connect(self.path)) as connection, transaction(connection):
            for (pdq, *columns), (_, reference) in zip(features, present):
                connection.execute("UPDATE items SET hashes = ?, embedding = ?, embedding_model = ? "
                                   "WHERE reference = ?", (*columns, reference))
                replace_pdq(connection, _item_id(connection, reference), pdq)
            updated = len(present)
            other = connection.execute("SELECT count(*) FROM items WHERE hashes IS NOT NULL AND "
                                       "embedding_model IS NOT ?", (self.model,)).fetchone()[0]
        return Reembedded(updated, tuple(reference for reference in references if reference not in known), other)

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
        with_pdq = all(photo.pdq is not None for photo in photos)
        matches = iter(self.match_features(
            np.concatenate([photo.hashes for photo in photos]), np.concatenate(embeddings),
            np.concatenate([photo.pdq for photo in photos]) if with_pdq else None,
            np.concatenate([photo.pdq_quality for photo in photos]) if with_pdq else None))
        per_photo = [[next(matches) for _ in photo.tensors] for photo in photos]
        return [min((m for m in frames if m), key=_closeness, default=None) for frames in per_photo]

    def match_features(
        self, hashes: np.ndarray, embeddings: np.ndarray, pdq: np.ndarray | None = None,
        pdq_quality: np.ndarray | None = None,
    ) -> list[Match | None]:
        """For each photo's difference hash (row of M x 32), unit embedding (row of M x D) and, optionally, PDQ
        hashes (M x 8 x 32, its dihedral variants) with their quality (M), its closest known item under the rule.

        PDQ is searched with `HashSearch`; difference hashes and embeddings of photo items are compared exactly, N x 32
        bytes and N x D multiply-adds per photo. Among the items that match, the nearest by hash wins, then the most
        similar embedding (`_closeness`). Expired items match nothing.
        """
        snapshot, search = self._loaded()
        now = time.time()
        matches = []
        for row in range(len(hashes)):
            trusted = pdq is not None and (pdq_quality is None or pdq_quality[row] >= PDQ_MIN_QUALITY)
            variants = pdq[row] if trusted else None
            candidates = _photo_candidates(snapshot, hashes[row], embeddings[row], self.rule, now)
            if variants is not None and len(search):
                found = search.within(variants, self.rule.max_pdq_distance)
                rows = np.concatenate([rows for rows, _ in found])
                live = snapshot.pdq_expires[rows] > now
                candidates = np.union1d(candidates, snapshot.pdq_ids[rows[live]])
            found_matches = [_measured(snapshot, int(item), hashes[row], embeddings[row], variants)
                             for item in candidates]
            matches.append(self._named(min(found_matches, key=_closeness, default=None)))
        return matches

    def _named(self, match: Match | None) -> Match | None:
        """`match` with its item's reference, read from the file (None if the item went since the snapshot)."""
        if match is None:
            return None
        with closing(connect(self.path)) as connection:
            row = connection.execute("SELECT reference FROM items WHERE id = ?", (match.id,)).fetchone()
        return Match(match.id, row[0], match.hash_distance, match.cosine, match.pdq_distance) if row else None

    def _features(self, images: Sequence[ImageSource]) -> list[tuple[object, ...]]:
        """Per photo: its PDQ ladder (`pdq_ladder`; none without pdqhash), the difference-hash ladder, the embedding
        and the model that made it, as the tables store them."""
        photos = [load_image(image, min_side=self.classifier.info.preprocessing.input_size) for image in images]
        if not photos:
            return []
        embeddings = self.classifier.embed(photos).astype("<f4")
        with_pdq = pdq_available()
        return [(pdq_ladder(photo) if with_pdq else [], variant_hashes(photo).tobytes(), embedding.tobytes(),
                 self.model) for photo, embedding in zip(photos, embeddings)]

    def _say_if_other_models(self) -> None:
        """Warn once, on opening, where items' embeddings were made by another model: those match by hashes only."""
        with closing(connect(self.path)) as connection:
            others = connection.execute(
                "SELECT coalesce(embedding_model, 'none'), count(*) FROM items WHERE hashes IS NOT NULL AND "
                "embedding_model IS NOT ? GROUP BY embedding_model", (self.model,)).fetchall()
        if others:
            models = ", ".join(f"{count} by {model}" for model, count in others)
            # The hashes belong to no model: an upgrade keeps the index matching by them (said once, here).
            _log.warning("%s: %d items' embeddings were made by another model (%s), and mean nothing to %s: they match "
                         "by their PDQ and difference hashes only (crops between the hashed ones may be missed) until "
                         "`wildvision index reembed` recomputes them from their photos", self.path,
                         sum(count for _, count in others), models, self.model)

    def _loaded(self) -> tuple[Snapshot, HashSearch]:
        """The items as of the latest commit, by this process or another (e.g. `wildvision index add` while a service
        runs): re-read only when the file has changed since the last read."""
        with self._lock:
            version = self._watcher.execute("PRAGMA data_version").fetchone()[0]
            if version != self._items_version:
                with closing(connect(self.path)) as connection:
                    snapshot = Snapshot.read(connection, self.model)
                if snapshot.pdq_only and not pdq_available():
                    raise ImportError(f"{self.path} holds {snapshot.pdq_only} items known by their PDQ hash alone "
                                      "(an imported hash list): matching them needs pdqhash: pip install "
                                      "'wildvision[pdq]' (it builds with a C++ compiler)")
                self._loaded_state = snapshot, HashSearch(snapshot.pdq)
                self._items_version = version
            assert self._loaded_state is not None
            return self._loaded_state


def variant_hashes(photo: Image.Image) -> np.ndarray:
    """The 18 x 32-byte hashes stored per item: the photo and its centre crops (`_CROPS`), each then its mirror."""
    hashes = []
    for fraction in _CROPS:
        cropped = _centre_crop(photo, fraction)
        hashes += [difference_hash(cropped), difference_hash(ImageOps.mirror(cropped))]
    return np.stack(hashes)


def pdq_ladder(photo: Image.Image) -> list[tuple[bytes, int]]:
    """The PDQ hashes stored per photo item, with their quality: the photo's own first (the one other tools would
    exchange), then its centre crops (`_PDQ_CROPS`), then the same at half scale (`_PDQ_SCALES`). Mirrors are not
    stored: a query is hashed with its mirror and their dihedral variants."""
    rungs = [_scaled(_centre_crop(photo, fraction), scale) for scale in _PDQ_SCALES for fraction in _PDQ_CROPS]
    return [(found.own.tobytes(), found.quality) for found in map(pdq_hashes, rungs)]


def _scaled(photo: Image.Image, scale: float) -> Image.Image:
    if scale == 1:
        return photo
    return photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                        Image.Resampling.BILINEAR)


def _item_id(connection: sqlite3.Connection, reference: str) -> int:
    """The id of the item `reference` names (SQLite before 3.35, still shipped by some systems' Pythons, has no
    RETURNING)."""
    return connection.execute("SELECT id FROM items WHERE reference = ?", (reference,)).fetchone()[0]


def _centre_crop(photo: Image.Image, fraction: float) -> Image.Image:
    """`photo` with `fraction` of its width cut from the left and right, and of its height from top and bottom."""
    dx, dy = round(photo.width * fraction), round(photo.height * fraction)
    return photo.crop((dx, dy, photo.width - dx, photo.height - dy))


def utc_time(text: str) -> str:
    """A date (`2027-06-30`, midnight UTC) or time (`2027-06-30T12:00:00+02:00`; no offset: UTC) as the index stores
    times: UTC, ISO 8601, to the second. Raises ValueError naming the text otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a date or time (ISO 8601, e.g. 2027-06-30): {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def _signals(pdq: bool, hashes: bool, embedded: bool) -> str:
    return "+".join(name for name, present in (("pdq", pdq), ("hashes", hashes), ("embedding", embedded)) if present)


def _closeness(match: Match) -> tuple[int, float]:
    """Sort key, closest first: the nearer of the two hash distances (both bits of 256), then the higher cosine."""
    bits = min((d for d in (match.pdq_distance, match.hash_distance) if d is not None), default=HASH_BYTES * 8)
    return bits, -(match.cosine if match.cosine is not None else -1.0)


def _photo_candidates(
    snapshot: Snapshot, photo_hash: np.ndarray, embedding: np.ndarray, rule: MatchRule, now: float
) -> np.ndarray:
    """Ids of the photo items whose difference hashes or embedding match under `rule`."""
    if not len(snapshot.photo_ids):
        return np.zeros(0, np.int64)
    distances = _ladder_distances(snapshot.photo_hashes, photo_hash)
    close = distances <= rule.max_hash_distance
    if snapshot.embedded.any():
        close |= snapshot.embedded & (snapshot.embeddings @ embedding.astype(np.float32) >= rule.min_cosine)
    return snapshot.photo_ids[close & (snapshot.photo_expires > now)]


def _ladder_distances(ladder: np.ndarray, photo_hash: np.ndarray) -> np.ndarray:
    """Per item, bits from `photo_hash` to the nearest of its hashed variants."""
    return hamming_distances(photo_hash[np.newaxis], ladder)[0].reshape(-1, VARIANTS).min(axis=1)


def _measured(
    snapshot: Snapshot, item: int, photo_hash: np.ndarray, embedding: np.ndarray, variants: np.ndarray | None
) -> Match:
    """Item `item` as a match (reference still unread), with every signal both sides have."""
    hash_distance = cosine = pdq_distance = None
    row = _row_of(snapshot.photo_ids, item)
    if row is not None:
        hash_distance = int(_ladder_distances(snapshot.photo_hashes[row * VARIANTS : (row + 1) * VARIANTS], photo_hash)[0])
        if snapshot.embedded[row]:
            cosine = round(float(snapshot.embeddings[row] @ embedding.astype(np.float32)), 6)
    first, end = np.searchsorted(snapshot.pdq_ids, [item, item + 1])  # the item's PDQ hashes: its photo's, its crops'
    if end > first and variants is not None:
        pdq_distance = int(hamming_distances(variants, snapshot.pdq[first:end]).min())
    return Match(item, "", hash_distance, cosine, pdq_distance)


def _row_of(ids: np.ndarray, item: int) -> int | None:
    """The row of `item` in sorted `ids`, or None."""
    row = int(np.searchsorted(ids, item))
    return row if row < len(ids) and ids[row] == item else None
