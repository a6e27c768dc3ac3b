"""What a listing's words cost: `predict_listing` with and without a title and description, and `scan --listings`
with and without its title and description columns.

    python benchmarks/listing_speed.py [--listings 10000] [--photos 300]

Measured in one run, so the figures are ratios on the same machine:
  predict_listing  the median time of one listing of three photos, with its words and without (alternating turns)
  listing step     deciding 10,000 listings from their photo records, with the development set's words and without
                   (the part of `scan --listings` that reads the words; it runs once the photos are scored)
  scan             `wildvision scan --listings` over generated photos, three to a listing, with the words columns
                   and without: the whole command, so the share the words add to a scan
The words come from `benchmarks/listing_words.csv`, the photos are generated (tests/conftest.py), the model is the
shipped one.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import make_photo  # noqa: E402

from wildvision import Classifier  # noqa: E402
from wildvision.cli import main as wildvision  # noqa: E402
from wildvision.listings import Listings, summarise_listings  # noqa: E402
from wildvision.records import read_records  # noqa: E402

PHOTOS_PER_LISTING = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listings", type=int, default=10_000, help="listings for the listing step")
    parser.add_argument("--photos", type=int, default=300, help="photos for the scan")
    parser.add_argument("--turns", type=int, default=30, help="predict_listing calls of each kind")
    args = parser.parse_args(argv)
    words = development_words()
    classifier = Classifier(threads=1)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        photos = [make_photo("not_ivory" if n % 4 else "ivory", n, size=(640, 480)) for n in range(args.photos)]
        for number, photo in enumerate(photos):
            photo.save(root / f"{number:05}.jpg", quality=90)
        predict_listing(classifier, photos, words, args.turns)
        listing_step(classifier, root, words, args.photos, args.listings)
    return 0


def development_words() -> list[tuple[str, str]]:
    with (REPO / "benchmarks" / "listing_words.csv").open(encoding="utf-8", newline="") as source:
        return [(row["title"], row["description"]) for row in csv.DictReader(source)]


def predict_listing(classifier: Classifier, photos, words, turns: int) -> None:
    listing = photos[:PHOTOS_PER_LISTING]
    timings: dict[bool, list[float]] = {False: [], True: []}
    for turn, (title, description) in enumerate(islice(cycle(words), 2 * turns)):
        worded = bool(turn % 2)
        started = time.perf_counter()
        if worded:
            classifier.predict_listing(listing, title=title, description=description)
        else:
            classifier.predict_listing(listing)
        timings[worded].append(time.perf_counter() - started)
    plain, worded = (statistics.median(timings[kind]) * 1e3 for kind in (False, True))
    print(f"predict_listing, {PHOTOS_PER_LISTING} photos: {plain:.1f} ms without words, {worded:.1f} ms with "
          f"({worded / plain - 1:+.1%})")


def listing_step(classifier: Classifier, root: Path, words, photos: int, listings: int) -> None:
    plain_csv, worded_csv = root / "plain.csv", root / "worded.csv"
    names = [f"{number:05}.jpg" for number in range(photos)]
    rows = [(name, f"L{number // PHOTOS_PER_LISTING}") for number, name in enumerate(names)]
    texts = dict(zip(dict.fromkeys(listing for _, listing in rows), cycle(words)))
    write_table(plain_csv, rows, None)
    write_table(worded_csv, rows, texts)
    seconds = {}
    for table in (plain_csv, worded_csv, plain_csv, worded_csv):  # two turns each, alternating: the best of each
        output = root / f"records-{table.stem}-{time.perf_counter_ns()}.jsonl"
        started = time.perf_counter()
        assert wildvision(["scan", str(root), "-o", str(output), "--listings", str(table)]) == 0
        seconds[table] = min(seconds.get(table, float("inf")), time.perf_counter() - started)
    plain, worded = seconds[plain_csv], seconds[worded_csv]
    print(f"scan --listings, {photos} photos in {len(texts)} listings: {plain:.2f} s without words, {worded:.2f} s "
          f"with ({worded / plain - 1:+.1%})")

    # The listing step alone at scale: the records of the scan, repeated to `listings` listings.
    records = list(read_records(output))
    many = [{**record, "path": f"{n}/{record['path']}"} for n in range(listings // len(texts) + 1) for record in records]
    membership = {record["path"]: f"{record['path'].split('/')[0]}-{rows[index % len(rows)][1]}"
                  for index, record in enumerate(many)}
    chosen = dict(islice(dict.fromkeys(membership.values()).items(), listings))
    members = {path: listing for path, listing in membership.items() if listing in chosen}
    worded_words = {listing: {"title": t, "description": d} for listing, (t, d) in zip(chosen, cycle(words))}
    timings = {}
    for name, table in (("without", Listings(members)), ("with", Listings(members, worded_words))):
        started = time.perf_counter()
        decided = summarise_listings(many, table, classifier.info.operating_points, classifier.lexicon)
        timings[name] = time.perf_counter() - started
    per_photo = plain / photos
    print(f"listing step, {len(decided)} listings: {timings['without']:.2f} s without words, {timings['with']:.2f} s "
          f"with; the words add {(timings['with'] - timings['without']) / len(decided) * 1e6:.0f} µs a listing, "
          f"{(timings['with'] - timings['without']) / (len(decided) * PHOTOS_PER_LISTING * per_photo):.2%} of "
          f"scanning its {PHOTOS_PER_LISTING} photos")


def write_table(path: Path, rows, texts) -> None:
    with path.open("w", encoding="utf-8", newline="") as sink:
        table = csv.writer(sink)
        table.writerow(["path", "listing", "title", "description"] if texts else ["path", "listing"])
        seen = set()
        for name, listing in rows:
            words = list(texts[listing]) if texts and listing not in seen else ["", ""]
            seen.add(listing)
            table.writerow([name, listing, *words] if texts else [name, listing])


if __name__ == "__main__":
    sys.exit(main())
