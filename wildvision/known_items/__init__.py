"""Recognise re-posted photos of items a platform (or the coalition it shares hash lists with) already confirmed as
illegal, even where the classifier is unsure.

A `KnownItemIndex` is one SQLite file (stdlib `sqlite3`, format below). An item added from a photo keeps three signals:
twelve PDQ hashes (Meta's 256-bit perceptual hash, the one the trust & safety industry exchanges; needs `pdqhash`, the
`pdq` extra) of the photo and of five centre crops, each at full and half scale (`pdq_ladder`: PDQ survives
re-compression, but a crop of a few percent moves it past its match distance, and so does halving a small photo),
eighteen 256-bit difference hashes (the photo, eight centre crops, and the mirror image of each: a difference hash
survives neither mirroring nor cropping, so those variants are hashed once per item rather than per query) and the
model's unit-length embedding, which also catches crops the ladders miss. A query's PDQ is computed with its 8 dihedral
variants and those of its mirror (16), so a mirrored or rotated re-post meets the item's stored hashes. An item imported
from a hash list (`import_hash_list`) has PDQ alone: the hashes the list gives it (one or several). A photo matches an
item when any signal both sides have says so (`MatchRule`), a PDQ distance being to the nearest of the item's hashes;
PDQ hashes of quality below 50 are not trusted (Meta's advice).

File format (`PRAGMA user_version` = 3)::

    settings(key TEXT PRIMARY KEY, value TEXT)  -- format ('wildvision-known-items'); model_name, model_version,
                                                -- model_precision, model_digest: the model file that created it;
                                                -- source: the platform its own items come from (hash lists)
    items(
        id INTEGER PRIMARY KEY,   -- reported in matches; stable for the life of the item
        reference TEXT UNIQUE,    -- the platform's reference (listing id, photo path); adding it again replaces it
        label TEXT,               -- what the item is (e.g. ivory), or NULL
        source TEXT,              -- the platform that confirmed it; NULL: this index's own (settings' source)
        added_at TEXT,            -- UTC, ISO 8601
        expires_at TEXT,          -- UTC, ISO 8601; past it the item matches nothing; NULL: never
        hashes BLOB,              -- 18 x 32 bytes: difference hashes (`wildvision.hashing`) of the photo and of
                                  -- centre crops removing 1.5, 3, ... 12% of each side, each then its mirror;
                                  -- NULL for imported items
        embedding BLOB,           -- float32 values, little-endian, unit length; NULL for imported items
        embedding_model TEXT      -- 'name@version' of the model that made the embedding
    )
    pdq_hashes(                   -- an item's PDQ hashes, in rowid order: its photo's own first, then its crops'
        item INTEGER REFERENCES items(id) ON DELETE CASCADE,  -- none: no pdqhash when added, or format 1
        pdq BLOB,                 -- 32 bytes, bits in ThreatExchange's hex order
        quality INTEGER           -- PDQ's quality score 0-100; NULL: unknown (an imported list without it)
    )

The file is kept in write-ahead-log mode (`PRAGMA journal_mode = WAL`), so readers and a writer do not block each
other: `add`, `reembed`, `remove`, `remove_expired` and imports are each one transaction, and a scan or service
matching meanwhile sees the index before or after it.

Upgrades. Opening a format-1 or format-2 file upgrades it in place, in one transaction, keeping every item and
saying so once on the `wildvision.known_items` logger: a format-1 item has no PDQ until `reembed`, a format-2 item
keeps its photo's one PDQ hash (its crops get theirs from `reembed`). Embeddings are per item: an item's embedding
counts only under the model (name and version) that made it, so an index used by the next release keeps matching by
its model-free hashes (PDQ, difference hashes), says so once when opened, and `reembed` restores the embeddings from
the photos where they still exist. New photos can be added under any model (each item records its own).

Memory: matching holds an item id, the hash and an expiry per stored PDQ hash in numpy (about 48 bytes a hash, twelve
an item added from a photo, so a million hashes take about 50 MB, beside `HashSearch`'s 72 MB) and, for items added
from photos, their difference hashes and embedding (about 10 KB an item with a 2,560-value embedding); references
are read from the file for the items that match.
"""

from wildvision.known_items.hash_list import COLUMNS, Exported, HashListError, Imported, export_hash_list, import_hash_list
from wildvision.known_items.index import (
    IndexStats, KnownItem, KnownItemIndex, Match, MatchRule, Reembedded, pdq_ladder, utc_time, variant_hashes,
)
from wildvision.known_items.store import FORMAT_VERSION, IndexFormatError

__all__ = [
    "COLUMNS", "FORMAT_VERSION", "Exported", "HashListError", "Imported", "IndexFormatError", "IndexStats", "KnownItem",
    "KnownItemIndex", "Match", "MatchRule", "Reembedded", "export_hash_list", "import_hash_list", "pdq_ladder",
    "utc_time", "variant_hashes",
]
