"""Listings: a marketplace listing has several photos, and the one that names the product is often not the first.

`scan` scores photos one by one; given which listing each photo belongs to (a CSV of path → listing, or one folder
per listing), a listing record per listing is written next to the photo records. It is decided as
`Classifier.predict_listing` decides (`wildvision.classifier.decide_listing`): by its most prohibited photo, by image
or by the words on it. Listing records are derived from the finished photo records, so a resumed scan gives the same
listings as one that was never interrupted.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Mapping

from wildvision.classifier import Decision, Prediction, decide_listing
from wildvision.errors import WildvisionError
from wildvision.model_info import OperatingPoint
from wildvision.text import TextEvidence

__all__ = ["ListingError", "ListingRecord", "listing_per_folder", "listings_from_csv", "listings_path",
           "summarise_listings", "write_listings"]

ListingOf = Callable[[str], "str | None"]  # a photo record's path -> its listing (None: in no listing)


class ListingError(WildvisionError, ValueError):
    """A listings file that cannot be used: unreadable, without `path` and `listing` columns, or contradictory."""


@dataclass(frozen=True)
class ListingRecord:
    """One listing's outcome: the decision of its most prohibited photo and which photo that is (`deciding_path`),
    every prohibited label any photo was flagged for (by image or text), and how many photos it has and how many
    could not be scored. `decision` is null when none of its photos could be scored."""

    listing: str
    decision: Decision | None
    deciding_path: str | None
    labels: list[str]
    photos: int
    failed: int
    model_name: str
    model_version: str


def listings_from_csv(path: Path) -> ListingOf:
    """Listing membership from a CSV with `path` and `listing` columns (paths as the scan's records name them)."""
    try:
        with path.open(encoding="utf-8", newline="") as source:
            rows = csv.DictReader(source)
            if not {"path", "listing"} <= set(rows.fieldnames or []):
                raise ListingError(f"{path}: a listings CSV needs 'path' and 'listing' columns, it has "
                                   f"{', '.join(rows.fieldnames or []) or 'none'}")
            membership: dict[str, str] = {}
            for line, row in enumerate(rows, 2):
                earlier = membership.setdefault(row["path"], row["listing"])
                if earlier != row["listing"]:
                    raise ListingError(f"{path}, line {line}: {row['path']} is in listings {earlier!r} and "
                                       f"{row['listing']!r}; a photo belongs to one listing")
    except (UnicodeDecodeError, csv.Error) as error:
        raise ListingError(f"{path}: not a readable CSV ({error})") from None
    return membership.get


def listing_per_folder(name: str) -> str | None:
    """One folder per listing: a record's listing is the first folder of its path (`L123/front.jpg` -> `L123`);
    photos directly in the scanned folder are in no listing."""
    folder, _, rest = name.partition("/")
    return folder if rest else None


def summarise_listings(
    records: Iterable[Mapping], listing_of: ListingOf, operating_points: Mapping[str, OperatingPoint],
) -> list[ListingRecord]:
    """One record per listing, in order of first appearance, from finished photo records (`RecordLayout.to_dict`)."""
    members: dict[str, list[Mapping]] = defaultdict(list)
    for record in records:
        listing = listing_of(record["path"])
        if listing is not None:
            members[listing].append(record)
    return [_listing(listing, photos, operating_points) for listing, photos in members.items()]


def listings_path(output: Path) -> Path:
    """Where the listing records of a scan into `output` go: `results.jsonl` -> `results.listings.jsonl`."""
    return output.with_name(f"{output.name.removesuffix(output.suffix)}.listings.jsonl")


def write_listings(listings: Iterable[ListingRecord], path: Path) -> None:
    """Listing records as JSON Lines, replacing `path` atomically."""
    partial = path.with_name(path.name + ".tmp")
    with partial.open("w", encoding="utf-8") as sink:
        sink.writelines(json.dumps(asdict(listing), ensure_ascii=False) + "\n" for listing in listings)
    os.replace(partial, path)


def _listing(listing: str, records: list[Mapping], operating_points: Mapping[str, OperatingPoint]) -> ListingRecord:
    scored = [record for record in records if record["error"] is None]
    model = records[0]
    if not scored:
        return ListingRecord(listing, None, None, [], len(records), len(records), model["model_name"],
                             model["model_version"])
    decided = decide_listing([_prediction(record) for record in scored], operating_points)
    return ListingRecord(listing, decided.decision, scored[decided.deciding_photo]["path"], list(decided.labels),
                         len(records), len(records) - len(scored), model["model_name"], model["model_version"])


def _prediction(record: Mapping) -> Prediction:
    """A scored photo record as the `Prediction` it was made from."""
    text = TextEvidence.from_dict(record["text"]) if record.get("text") else None
    return Prediction(**{field.name: record[field.name] for field in fields(Prediction) if field.name != "text"},
                      text=text)
