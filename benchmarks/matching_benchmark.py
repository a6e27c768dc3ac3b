"""How well the known-item index recognises re-posted photos, and how often it matches photos it should not.

    python benchmarks/matching_benchmark.py [--model M.onnx] [--known 300] [--unrelated 1000]

Adds `--known` photos of ../shared/data (else generated photos) to a fresh index, then queries it with each photo
transformed as a re-poster would (resized, re-compressed, cropped centred or at one corner, mirrored, all at once) and
with `--unrelated` other photos. Prints, per transformation, the recall of the hash alone, the embedding alone and the
default rule (hash OR embedding), the unrelated photos' false-match rate, and both for other thresholds, so the rule's
trade-off is visible. Every figure comes from one run.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "wildlife-products-v1" / "images"
sys.path.insert(0, str(REPO))

from wildvision import Classifier, load_image  # noqa: E402
from wildvision.hashing import difference_hash  # noqa: E402
from wildvision.known_items import KnownItemIndex, MatchRule  # noqa: E402


def jpeg(photo: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def crop(photo: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = photo.size
    return photo.crop((round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom))))


TRANSFORMS = {
    "resized to 50%": lambda p: p.resize((p.width // 2, p.height // 2), Image.Resampling.BILINEAR),
    "JPEG quality 50": lambda p: jpeg(p, 50),
    "centre crop 3%": lambda p: crop(p, .03, .03, .03, .03),
    "centre crop 6%": lambda p: crop(p, .06, .06, .06, .06),
    "corner crop 5%": lambda p: crop(p, .05, .05, 0, 0),
    "mirrored": ImageOps.mirror,
    "all at once": lambda p: jpeg(ImageOps.mirror(crop(p, .03, .02, .04, .03)).resize((p.width * 2 // 3, p.height * 2 // 3)), 60),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="default: the shipped model")
    parser.add_argument("--known", type=int, default=300)
    parser.add_argument("--unrelated", type=int, default=1000)
    args = parser.parse_args(argv)
    classifier = Classifier(args.model)
    known, unrelated = photo_sets(args.known, args.unrelated, classifier.info.preprocessing.input_size)
    rule = MatchRule()
    hash_only, embedding_only = MatchRule(rule.max_hash_distance, 2.0), MatchRule(-1, rule.min_cosine)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "known.sqlite"
        KnownItemIndex(path, classifier, create=True).add(known, [str(number) for number in range(len(known))])
        print(f"{len(known)} known photos, {len(unrelated)} unrelated; rule: hash distance <= {rule.max_hash_distance} "
              f"of 256 OR cosine >= {rule.min_cosine}  ({'shared data' if SHARED.is_dir() else 'generated photos'})")
        print(f"{'re-post':16s} {'hash':>6s} {'embed':>6s} {'rule':>6s}   (recall: the right item matched)")
        for name, transform in TRANSFORMS.items():
            features = _features(classifier, [transform(photo) for photo in known])
            recalls = [_matched(KnownItemIndex(path, classifier, rule=r), features, right=True)
                       for r in (hash_only, embedding_only, rule)]
            print(f"{name:16s} " + " ".join(f"{recall:6.1%}" for recall in recalls))
        features = _features(classifier, unrelated)
        false = {r: _matched(KnownItemIndex(path, classifier, rule=r), features, right=False)
                 for r in (rule, hash_only, embedding_only)}
        print(f"unrelated photos matching a known item: {false[rule]:.2%} under the rule "
              f"(hash alone {false[hash_only]:.2%}, embedding alone {false[embedding_only]:.2%})")
        sweep = [(f"hash <= {t}", MatchRule(t, 2.0)) for t in (8, 12, 16, 20, 24)]
        sweep += [(f"cosine >= {c}", MatchRule(-1, c)) for c in (0.95, 0.97, 0.98)]
        print("false matches at other thresholds: " + ", ".join(
            f"{name}: {_matched(KnownItemIndex(path, classifier, rule=r), features, right=False):.2%}" for name, r in sweep))
    return 0


def _features(classifier: Classifier, photos: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([difference_hash(photo) for photo in photos]), classifier.embed(photos)


def _matched(index: KnownItemIndex, features: tuple[np.ndarray, np.ndarray], *, right: bool) -> float:
    """With `right`, the fraction of photos matched to their own item (photo n re-posts item n); else the fraction
    matched to any item."""
    matches = index.match_features(*features)
    if right:
        return float(np.mean([m is not None and m.reference == str(n) for n, m in enumerate(matches)]))
    return float(np.mean([m is not None for m in matches]))


def photo_sets(known: int, unrelated: int, side: int) -> tuple[list[Image.Image], list[Image.Image]]:
    if SHARED.is_dir():
        files = sorted(SHARED.rglob("*.jpg"))
        random.Random(0).shuffle(files)
        photos = [load_image(path, min_side=side) for path in files[: known + unrelated]]
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import make_photo

        photos = [make_photo(("ivory", "horn", "not_ivory")[n % 3], n, size=(480, 384)) for n in range(known + unrelated)]
    return photos[:known], photos[known:]


if __name__ == "__main__":
    sys.exit(main())
