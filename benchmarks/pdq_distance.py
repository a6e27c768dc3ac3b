"""How far PDQ (Meta's perceptual hash) carries re-posts of known photos, before the known-item index adopts it.

    pip install pdqhash   # the `pdq` extra
    python benchmarks/pdq_distance.py [--known 200]

Hashes `--known` shared photos with their eight dihedral variants (PDQ's own mirrors and rotations), re-posts each as
the issue asks (halved, mirrored, or centre-cropped 0-8 % a side; every one re-saved at JPEG quality 50-90) and
hashes every everyday-v1 val photo as the unrelated set. Prints, for PDQ distances from its recommended 31 upward,
the re-posts matched to their own photo and the unrelated photos matching any, and the re-posts' distance spread.
Needs ../shared/data.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def jpeg(photo: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def crop(photo: Image.Image, fraction: float) -> Image.Image:
    dx, dy = round(photo.width * fraction), round(photo.height * fraction)
    return photo.crop((dx, dy, photo.width - dx, photo.height - dy))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--known", type=int, default=200)
    args = parser.parse_args(argv)
    try:
        import pdqhash
    except ImportError:
        print('pdq_distance needs pdqhash: pip install "wildvision[pdq]"', file=sys.stderr)
        return 2
    if not SHARED.is_dir():
        print(f"pdq_distance needs the shared data at {SHARED}", file=sys.stderr)
        return 2
    root = SHARED / "wildlife-products-v1"
    rows = list(csv.DictReader((root / "manifest.csv").open(encoding="utf-8")))
    random.Random(2).shuffle(rows)
    known = [Image.open(root / row["path"]).convert("RGB") for row in rows[: args.known]]
    variants = np.stack([np.stack(pdqhash.compute_dihedral(np.asarray(photo))[0]) for photo in known]).astype(bool)
    rng = random.Random(3)
    distances = []
    for number, photo in enumerate(known):
        fraction, quality = rng.uniform(0, 0.08), rng.randint(50, 90)
        changed = (photo.resize((photo.width // 2, photo.height // 2)), ImageOps.mirror(photo),
                   crop(photo, fraction))[number % 3]
        repost = pdqhash.compute(np.asarray(jpeg(changed, quality)))[0].astype(bool)
        distances.append(int((variants[number] != repost).sum(axis=1).min()))
    reposts = np.array(distances)
    everyday = SHARED / "everyday-v1"
    val = [row for row in csv.DictReader((everyday / "manifest.csv").open(encoding="utf-8")) if row["split"] == "val"]
    unrelated = np.stack([pdqhash.compute(np.asarray(Image.open(everyday / row["path"]).convert("RGB")))[0]
                          for row in val]).astype(bool)
    nearest = (unrelated[:, None, None, :] != variants[None]).sum(axis=3).min(axis=(1, 2))
    for threshold in (31, 50, 63, 70, 80, 90):
        print(f"PDQ distance <= {threshold}: re-posts matched {(reposts <= threshold).mean():.1%}; "
              f"unrelated everyday-v1 val photos ({len(val)}) matching a known one {(nearest <= threshold).mean():.2%}")
    print("re-posts' distance, percentiles 50/90/99/max:", np.percentile(reposts, [50, 90, 99, 100]).round(1).tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
