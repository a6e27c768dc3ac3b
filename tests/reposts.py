"""Re-posts of known photos as issue 34's done-means defines them, and the shared photos they are made from: the
shipped-matching test (`tests/test_shipped_matching.py`) and `benchmarks/matching_benchmark.py` make them this way,
so the test asserts what the benchmark measured.

A re-post is a known photo halved, mirrored, centre-cropped by a uniform 0-8 % of each side, or all three at once,
then re-saved as JPEG at a uniform quality of 50-90; every draw comes from one seeded `random.Random`.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Callable, NamedTuple

from PIL import Image, ImageOps

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
KNOWN_DATA = SHARED / "wildlife-products-v1"
UNRELATED_DATA = SHARED / "everyday-v1"  # its `val` photos are the unrelated ones
MAX_CROP = 0.08  # of each side
JPEG_QUALITY = (50, 90)  # inclusive


def halved(photo: Image.Image, rng: random.Random) -> Image.Image:
    return photo.resize((max(1, photo.width // 2), max(1, photo.height // 2)))


def mirrored(photo: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.mirror(photo)


def cropped(photo: Image.Image, rng: random.Random) -> Image.Image:
    fraction = rng.uniform(0, MAX_CROP)
    dx, dy = round(photo.width * fraction), round(photo.height * fraction)
    return photo.crop((dx, dy, photo.width - dx, photo.height - dy))


def combined(photo: Image.Image, rng: random.Random) -> Image.Image:
    return halved(mirrored(cropped(photo, rng), rng), rng)


TRANSFORMS: dict[str, Callable[[Image.Image, random.Random], Image.Image]] = {
    "halved": halved, "mirrored": mirrored, "cropped 0-8%": cropped, "combined": combined,
}


def repost(photo: Image.Image, transform: str, rng: random.Random) -> bytes:
    """`photo` changed by `TRANSFORMS[transform]`, as the JPEG file a re-poster would upload."""
    changed = TRANSFORMS[transform](photo, rng)
    buffer = io.BytesIO()
    changed.save(buffer, "JPEG", quality=rng.randint(*JPEG_QUALITY))
    return buffer.getvalue()


class KnownPhoto(NamedTuple):
    path: Path
    source: str  # the manifest's: met, towneley, clothing


def known_photos(count: int, seed: int = 0) -> list[KnownPhoto]:
    """A fixed random sample of `count` wildlife-products-v1 photos, every source and split alike, at most one per
    object (`source_id`), so a re-post has one right item."""
    rows = _manifest(KNOWN_DATA)
    random.Random(seed).shuffle(rows)
    objects = {(row["source"], row["source_id"]): row for row in reversed(rows)}  # the first row of each object
    sample = [row for row in rows if objects[row["source"], row["source_id"]] is row][:count]
    if len(sample) < count:
        raise ValueError(f"{KNOWN_DATA} has {len(sample)} objects, fewer than the {count} asked for")
    return [KnownPhoto(KNOWN_DATA / row["path"], row["source"]) for row in sample]


def unrelated_photos() -> list[Path]:
    """Every everyday-v1 `val` photo: harmless things no known item shows."""
    return [UNRELATED_DATA / row["path"] for row in _manifest(UNRELATED_DATA) if row["split"] == "val"]


def _manifest(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))
