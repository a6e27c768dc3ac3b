"""Listings: a marketplace listing has several photos and its seller's words, and the evidence that names the product
is often not in the first photo.

`scan` scores photos one by one; given which listing each photo belongs to (a CSV of path → listing, with the
listing's `title` and `description` where the platform has them, or one folder per listing), a listing record per
listing is written next to the photo records. It is decided as `Classifier.predict_listing` decides
(`wildvision.decision.decide_listing`): by its photos, the words on them and its own words. Listing records are
derived from the finished photo records, so a resumed scan gives the same listings as one that was never interrupted.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from wildvision.classifier import Prediction
from wildvision.decision import Decision, MatchPolicy, decide_listing
from wildvision.errors import WildvisionError
from wildvision.known_items import Match
from wildvision.model_info import OperatingPoint
from wildvision.text import Lexicon, TextEvidence
from wildvision.words import WORD_SOURCES, listing_words

__all__ = ["ListingError", "ListingRecord", "Listings", "listing_per_folder", "listing_record", "listings_from_csv",
           "listings_path", "summarise_listings", "write_listings"]


class ListingError(WildvisionError, ValueError):
    """A listings file that cannot be used: unreadable, without `path` and `listing` columns, contradictory, or naming
    no photo that was scanned."""


@dataclass(frozen=True)
class Listings:
    """Which listing each photo is in, and each listing's own words (`title`, `description`). A listing with words
    and no photo is decided on its words."""

    membership: Mapping[str, str] | None = None  # a photo record's path -> its listing; None: one folder per listing
    words: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # listing -> {"title": ..., "description": ...}

    def listing_of(self, path: str) -> str | None:
        """The listing a photo record's path is in (None: in no listing)."""
        return self.membership.get(path) if self.membership is not None else listing_per_folder(path)


@dataclass(frozen=True)
class ListingRecord:
    """One listing's outcome, decided as `Classifier.predict_listing` decides: its decision, the prohibited labels it
    is flagged for, each label's fused score, the evidence (`reasons`, each naming its source: `photo 2` is the
    listing's third photo in `paths`, `words on photo 2` the words read on it, `title`, `description`), the photo to
    see first (`deciding_path`), and how many photos it has and how many could not be scored. `decision` is null when
    none of its photos could be scored and it has no words."""

    listing: str
    decision: Decision | None
    deciding_path: str | None
    labels: list[str]
    scores: dict[str, float]
    reasons: list[dict]
    paths: list[str]  # the photos that were scored, in the order `reasons` number them
    photos: int
    failed: int
    model_name: str
    model_version: str


def listings_from_csv(path: Path) -> Listings:
    """Listings from a CSV with `path` and `listing` columns (paths as the scan's records name them: relative to the
    scanned folder, or as listed) and optional `title` and `description` columns. A row with an empty path gives a
    listing's words without a photo; a listing's words may stand on any one of its rows, or repeat on each."""
    try:
        with path.open(encoding="utf-8", newline="") as source:
            rows = csv.DictReader(source)
            columns = set(rows.fieldnames or [])
            if not {"path", "listing"} <= columns:
                raise ListingError(f"{path}: a listings CSV needs 'path' and 'listing' columns, it has "
                                   f"{', '.join(rows.fieldnames or []) or 'none'}")
            membership: dict[str, str] = {}
            words: dict[str, dict[str, str]] = defaultdict(dict)
            for line, row in enumerate(rows, 2):
                if not row["listing"]:
                    raise ListingError(f"{path}, line {line}: the listing column is empty")
                if row["path"]:
                    _add_member(membership, row["path"], row["listing"], f"{path}, line {line}")
                for source in (source for source in WORD_SOURCES if source in columns):
                    _add_words(words[row["listing"]], source, row[source] or "", f"{path}, line {line}")
    except (UnicodeDecodeError, csv.Error) as error:
        raise ListingError(f"{path}: not a readable CSV ({error})") from None
    return Listings(membership, dict(words))


def listing_per_folder(name: str) -> str | None:
    """One folder per listing: a record's listing is the first folder of its path (`L123/front.jpg` -> `L123`);
    photos directly in the scanned folder are in no listing."""
    folder, _, rest = name.partition("/")
    return folder if rest else None


def summarise_listings(
    records: Iterable[Mapping], listings: Listings, operating_points: Mapping[str, OperatingPoint], lexicon: Lexicon,
    match_policy: MatchPolicy = MatchPolicy(),
) -> list[ListingRecord]:
    """One record per listing, in order of first appearance (then the listings with words and no photo), from
    finished photo records (`RecordLayout.to_dict`). Raises `ListingError` when a listings CSV names photos and none
    of them is among the records: its paths are not the scan's (relative to the scanned folder, or as listed)."""
    members: dict[str, list[Mapping]] = defaultdict(list)
    for record in records:
        listing = listings.listing_of(record["path"])
        if listing is not None:
            members[listing].append(record)
    if listings.membership and not members:
        example = next(iter(listings.membership))
        raise ListingError(f"no path of the listings CSV is among the scanned photos (it names {example!r}); paths "
                           "are relative to the scanned folder, or as listed in --files-from")
    for listing in listings.words:
        members.setdefault(listing, [])
    return [listing_record(listing, photos, listings.words.get(listing, {}), operating_points, lexicon, match_policy)
            for listing, photos in members.items()]


def listings_path(output: Path) -> Path:
    """Where the listing records of a scan into `output` go: `results.jsonl` -> `results.listings.jsonl`."""
    return output.with_name(f"{output.name.removesuffix(output.suffix)}.listings.jsonl")


def write_listings(listings: Iterable[ListingRecord], path: Path) -> None:
    """Listing records as JSON Lines, replacing `path` atomically."""
    partial = path.with_name(path.name + ".tmp")
    with partial.open("w", encoding="utf-8") as sink:
        sink.writelines(json.dumps(asdict(listing), ensure_ascii=False) + "\n" for listing in listings)
    os.replace(partial, path)


def listing_record(
    listing: str, records: Sequence[Mapping], words: Mapping[str, str | None],
    operating_points: Mapping[str, OperatingPoint], lexicon: Lexicon, match_policy: MatchPolicy = MatchPolicy(),
) -> ListingRecord:
    """One listing's record from its photos' finished records (`RecordLayout.to_dict`) and its words (`title`,
    `description`): what `scan --listings` and `wildvision spark --listings` write. `match_policy` is the one the
    scan decided its matches by: each photo's match is a `known_item` reason."""
    scored = [record for record in records if record["error"] is None]
    model = records[0] if records else {"model_name": None, "model_version": None}  # a listing of words alone
    photos = [_prediction(record) for record in scored]
    found = listing_words(lexicon, title=words.get("title"), description=words.get("description"),
                          photo_texts=[photo.text for photo in photos])
    if not photos and not found and not any(words.values()):
        return ListingRecord(listing, None, None, [], {}, [], [], len(records), len(records), model["model_name"],
                             model["model_version"])
    matches = [Match(**record["match"]) if record.get("match") else None for record in scored]
    decided = decide_listing(photos, operating_points, words=found, weights=lexicon.weights,
                             matches=matches if any(matches) else (), match_policy=match_policy)
    deciding = scored[decided.deciding_photo]["path"] if decided.deciding_photo is not None else None
    return ListingRecord(listing, decided.decision, deciding, list(decided.labels), decided.scores,
                         [reason.to_dict() for reason in decided.reasons], [record["path"] for record in scored],
                         len(records), len(records) - len(scored), model["model_name"], model["model_version"])


def _prediction(record: Mapping) -> Prediction:
    """A scored photo record as the `Prediction` it was made from."""
    text = TextEvidence.from_dict(record["text"]) if record.get("text") else None
    return Prediction(**{field.name: record[field.name] for field in fields(Prediction) if field.name != "text"},
                      text=text)


def _add_member(membership: dict[str, str], photo: str, listing: str, where: str) -> None:
    earlier = membership.setdefault(photo, listing)
    if earlier != listing:
        raise ListingError(f"{where}: {photo} is in listings {earlier!r} and {listing!r}; a photo belongs to one listing")


def _add_words(words: dict[str, str], source: str, text: str, where: str) -> None:
    earlier = words.setdefault(source, text) if text else None
    if earlier is not None and earlier != text:
        raise ListingError(f"{where}: the listing's {source} differs from the one on an earlier row; give it once, or "
                           "the same on every row")
