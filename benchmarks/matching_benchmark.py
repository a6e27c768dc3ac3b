"""How well known-item matching recognises re-posts of known photos and how rarely it matches other photos, per
signal and for the rules: the figures that set `MatchRule` (`wildvision/known_items/index.py`) and `MatchPolicy`'s
strict thresholds (`wildvision/decision.py`). Run it for every model release (docs/retraining.md).

    pip install ".[pdq]"
    python benchmarks/matching_benchmark.py [--model NEW.onnx] [--known 300] [--seed 0]

Known photos: a fixed random sample of ../shared/data's wildlife-products-v1, every source, one photo per object. Each
is re-posted four ways, as issue 34's done-means says (`tests/reposts.py`: halved, mirrored, centre-cropped 0-8 % a
side, all three; every one re-saved at JPEG quality 50-90). Unrelated photos: every everyday-v1 val photo.
Look-alikes: each re-post against every known photo but its own (other museum objects on the same backdrops, and the
odd object photographed twice). Every query is compared with every known photo by each signal:

- difference hash: bits to the nearest of the item's 18 hashed variants (the index's ladder, `variant_hashes`);
- embedding cosine, the model's;
- PDQ: bits from the nearest of the query's 16 variants (dihedral, of it and of its mirror) to the item's own PDQ
  hash, all that a hash list from tools that hash each photo once holds;
- PDQ ladder: the same to the nearest of the item's stored PDQ hashes (the photo and its centre crops, at full and half
  scale: `pdq_ladder`), what the index matches by and what its exported list holds. PDQ alone is what an imported list
  matches by.

A rule (its signals OR-ed) matches a query to the candidate the index picks (the nearest by hash, then the highest
cosine; by a signal alone, the nearest by it), and a re-post counts as recalled only when that is its own photo. The known photos are split in two
halves, and so are the unrelated photos; thresholds are fitted on the first halves (every known photo stays in the
index) and every figure printed is on the second (`fit_rule`, `fit_strict`):
- the rule (`MatchRule`): the loosest cosine at which at most `FIT_FALSE_MATCHES` of the unrelated photos and
  look-alikes match, then the strictest hash distance at which hash OR cosine recalls `FIT_RECALL` of the re-posts,
  but at least `HASH_MARGIN` bits short of the nearest of them; PDQ at Meta's 31, the distance lists are exchanged
  at (the grid shows what another would do), and, for comparison, the strictest PDQ-ladder distance at which an
  imported list alone would recall `FIT_RECALL`, `HASH_MARGIN` short of the nearest negative;
- the strict thresholds (`MatchPolicy`: block): per signal, the loosest at which no unrelated photo or look-alike
  comes within twice the distance (for the cosine, twice 1 - cosine).
The shipped defaults are then measured the same way and through `KnownItemIndex` itself, which must agree, and through
an index that imported the first one's exported hash list (PDQ ladders, no photos). About three minutes on two
cores.

How fast matching is at 10,000, 100,000 and 1,000,000 stored hashes, and at what memory (p50, p99, peak RSS), is
`benchmarks/matching_scale.py`: it needs no model or photos, and runs each size in a fresh process.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from reposts import KNOWN_DATA, TRANSFORMS, KnownPhoto, known_photos, repost, unrelated_photos  # noqa: E402
from wildvision import Classifier, load_image  # noqa: E402
from wildvision.decision import MatchPolicy  # noqa: E402
from wildvision.hashing import HASH_BYTES, PDQ_MATCH_DISTANCE, hamming_distances, pdq_hashes  # noqa: E402
from wildvision.images import ImageSource  # noqa: E402
from wildvision.known_items import (  # noqa: E402
    KnownItemIndex, Match, MatchRule, export_hash_list, import_hash_list, pdq_ladder, variant_hashes,
)

FIT_RECALL = 0.99  # of the fit half's re-posts: the done-means' 98 % with room for the held-out half to differ
# Bits kept between the hash rule and the fit half's nearest negative: 419 unrelated photos sample the tail thinly
# (another 150 known photos brought a grocery product shot on white to 26 bits, where this sample's nearest was 29).
HASH_MARGIN = 4
FIT_FALSE_MATCHES = 0.001  # of the fit half's negatives, for the cosine: half the done-means' 0.2 %, as signals add up
_BATCH = 16  # photos per forward pass
_QUERY_ROWS = 128  # queries compared at a time: bounds hamming_distances' rows x (N x 18) x 32-byte temporary
# MatchRule's and MatchPolicy's fields, by the signal each thresholds (the PDQ fields only once the index has PDQ).
# The index matches PDQ by its ladder, so its PDQ fields threshold the ladder.
_RULE_FIELDS = {"max_hash_distance": "hash", "min_cosine": "cosine", "max_pdq_distance": "pdq_ladder"}
_STRICT_FIELDS = {"strict_hash_distance": "hash", "strict_cosine": "cosine", "strict_pdq_distance": "pdq_ladder"}


@dataclass(frozen=True)
class Signal:
    """One way of comparing photos, with the thresholds tried (strictest first)."""

    field: str  # its `Distances` attribute
    title: str
    grid: tuple[float, ...]
    higher_is_closer: bool = False  # the cosine; hashes are distances

    def within(self, values: np.ndarray, threshold: float) -> np.ndarray:
        return values >= threshold if self.higher_is_closer else values <= threshold

    def closeness(self, values: np.ndarray) -> np.ndarray:
        return values if self.higher_is_closer else -values.astype(np.float64)

    def closest(self, values: np.ndarray) -> float:
        return float(values.max() if self.higher_is_closer else values.min())

    def farthest(self, values: np.ndarray) -> float:
        return float(values.min() if self.higher_is_closer else values.max())

    def doubled(self, threshold: float) -> float:
        """The threshold twice as far from the item: the strict thresholds' margin."""
        return 1 - 2 * (1 - threshold) if self.higher_is_closer else 2 * threshold


SIGNALS = {
    "hash": Signal("hash", "difference hash, bits <=", tuple(range(8, 33, 2))),
    "cosine": Signal("cosine", "embedding cosine >=", tuple(round(0.99 - step / 100, 2) for step in range(20)), True),
    "pdq": Signal("pdq", "PDQ of the photo, bits <=", tuple(sorted({*range(15, 72, 4), PDQ_MATCH_DISTANCE}))),
    "pdq_ladder": Signal("pdq_ladder", "PDQ ladder, bits <=", tuple(sorted({*range(15, 72, 4), PDQ_MATCH_DISTANCE}))),
}
Rule = Mapping[str, float]  # signal field -> threshold; a query matches where any signal does


@dataclass(frozen=True)
class Features:
    """Photos as the index and an exchanged list see them."""

    hashes: np.ndarray  # Q x V x 32: difference hashes (a query's own; a known photo's ladder of variants)
    embeddings: np.ndarray  # Q x D unit rows
    pdq: np.ndarray  # Q x P x 32: PDQ hashes (a query's dihedral variants; a known photo's own)
    pdq_ladder: np.ndarray  # Q x L x 32: a known photo's stored PDQ hashes (a query's: its dihedral variants again)


@dataclass(frozen=True)
class Distances:
    """Every query against every known photo (Q x N each), one attribute per `SIGNALS` field."""

    hash: np.ndarray
    cosine: np.ndarray
    pdq: np.ndarray
    pdq_ladder: np.ndarray

    @classmethod
    def between(cls, queries: Features, known: Features) -> Distances:
        return cls(_nearest_bits(queries.hashes, known.hashes), queries.embeddings @ known.embeddings.T,
                   _nearest_bits(queries.pdq, known.pdq), _nearest_bits(queries.pdq_ladder, known.pdq_ladder))

    def rows(self, keep: np.ndarray) -> Distances:
        return Distances(**{field: getattr(self, field)[keep] for field in SIGNALS})

    def without(self, own: np.ndarray) -> Distances:
        """Each query's own known photo (`own[q]`) made unmatchable: the look-alikes."""
        rows, far = np.arange(len(own)), {True: -2.0, False: 10**6}  # beyond any threshold, by closeness
        copies = {field: getattr(self, field).copy() for field in SIGNALS}
        for field, values in copies.items():
            values[rows, own] = far[SIGNALS[field].higher_is_closer]
        return Distances(**copies)


@dataclass(frozen=True)
class Measured:
    """One run's photos, their distances to every known photo, and what `KnownItemIndex` itself matched."""

    model: str
    photos: list[KnownPhoto]
    own: np.ndarray  # per re-post, the number of the known photo it re-posts
    kinds: np.ndarray  # per re-post, its transformation
    reposts: Distances
    unrelated: Distances
    repost_matches: list[Match | None]
    unrelated_matches: list[Match | None]
    repost_list_matches: list[Match | None]  # by an index that imported the first one's hash list
    unrelated_list_matches: list[Match | None]
    pdq_quality: np.ndarray  # per known photo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="default: the shipped model")
    parser.add_argument("--known", type=int, default=300, help="known photos (default 300), split in two halves")
    parser.add_argument("--seed", type=int, default=0, help="of the sample, the halves and the re-posts")
    args = parser.parse_args(argv)
    if not KNOWN_DATA.is_dir():
        print(f"matching_benchmark needs the shared photos at {KNOWN_DATA.parent}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    report(measure(Classifier(args.model), known_photos(args.known, args.seed), rng), rng)
    return 0


def measure(classifier: Classifier, photos: list[KnownPhoto], rng: random.Random) -> Measured:
    reposts = [(number, transform) for number in range(len(photos)) for transform in TRANSFORMS]
    with tempfile.TemporaryDirectory() as scratch:
        index = KnownItemIndex(Path(scratch) / "known.sqlite", classifier, create=True)
        index.add([photo.path for photo in photos], [str(number) for number in range(len(photos))])
        export_hash_list(index, Path(scratch) / "list.csv", source="benchmark")
        imported = KnownItemIndex(Path(scratch) / "imported.sqlite", classifier, create=True)
        import_hash_list(imported, Path(scratch) / "list.csv")
        known, pdq_quality = known_features(classifier, [photo.path for photo in photos])
        sources = [repost(load_image(photos[number].path), transform, rng) for number, transform in reposts]
        repost_features, (repost_matches, repost_list) = query_features(classifier, sources, (index, imported))
        unrelated_features, (unrelated_matches, unrelated_list) = query_features(
            classifier, unrelated_photos(), (index, imported))
    return Measured(str(classifier.identity), photos, np.array([number for number, _ in reposts]),
                    np.array([transform for _, transform in reposts]), Distances.between(repost_features, known),
                    Distances.between(unrelated_features, known), repost_matches, unrelated_matches, repost_list,
                    unrelated_list, pdq_quality)


def report(measured: Measured, rng: random.Random) -> None:
    """Fit on the first halves (drawn by `rng`), print the second's figures."""
    photos, own = measured.photos, measured.own
    fit_known = np.zeros(len(photos), bool)
    fit_known[rng.sample(range(len(photos)), len(photos) // 2)] = True
    fit_unrelated = np.zeros(len(measured.unrelated.hash), bool)
    fit_unrelated[rng.sample(range(len(fit_unrelated)), len(fit_unrelated) // 2)] = True
    fit, held = fit_known[own], ~fit_known[own]
    look_alikes = measured.reposts.without(own)
    fit_negatives = [measured.unrelated.rows(fit_unrelated), look_alikes.rows(fit)]
    fitted = fit_rule(measured.reposts.rows(fit), own[fit], fit_negatives)
    rule = {field: fitted[field] for field in ("hash", "cosine", "pdq_ladder")}  # the index's signals
    strict = {field: fit_strict(signal, fit_negatives) for field, signal in SIGNALS.items()}
    held_out = Evaluation(measured.reposts.rows(held), own[held], measured.kinds[held],
                          measured.unrelated.rows(~fit_unrelated), look_alikes.rows(held))

    sources = [photo.source for photo in photos]
    sample = ", ".join(f"{sources.count(source)} {source}" for source in dict.fromkeys(sources))
    print(f"model {measured.model}; {len(photos)} known photos ({sample}), each re-posted {len(TRANSFORMS)} ways; "
          f"{len(fit_unrelated)} unrelated everyday-v1 val photos; known photos with PDQ quality below 50 (Meta's "
          f"floor): {int((measured.pdq_quality < 50).sum())}")
    print(f"every figure: the held-out half ({held.sum()} re-posts of {(~fit_known).sum()} known photos, "
          f"{(~fit_unrelated).sum()} unrelated photos, the same re-posts as look-alikes against other known photos)")
    for field, signal in SIGNALS.items():
        print_grid(held_out, signal, fitted[field], strict[field])
    print_chosen(held_out, fitted, strict)
    print_by_source(held_out, rule, [photos[number] for number in own[held]])
    print_shipped(held_out, held, ~fit_unrelated, measured)


def known_features(classifier: Classifier, paths: Sequence[Path]) -> tuple[Features, np.ndarray]:
    """Known photos as `KnownItemIndex.add` reads them (their ladders of difference hashes and PDQ hashes,
    embeddings), their own PDQ, hashed from the full photo as a platform that exchanges one hash a photo would, and
    its quality score."""
    side = classifier.info.preprocessing.input_size
    decoded = [load_image(path, min_side=side) for path in paths]
    ladders = np.stack([variant_hashes(photo) for photo in decoded])
    pdq_ladders = np.stack([[np.frombuffer(pdq, np.uint8) for pdq, _ in pdq_ladder(photo)] for photo in decoded])
    pdq = [pdq_hashes(load_image(path)) for path in paths]
    own = np.stack([hashes.own for hashes in pdq])[:, np.newaxis]
    return (Features(ladders, classifier.embed(paths, batch_size=_BATCH), own, pdq_ladders),
            np.array([h.quality for h in pdq]))


def query_features(
    classifier: Classifier, sources: Sequence[ImageSource], indexes: Sequence[KnownItemIndex]
) -> tuple[Features, list[list[Match | None]]]:
    """Photos as a scan prepares them (one forward pass for scores and embeddings, PDQ with its dihedral variants),
    and what each of `indexes` itself matches them to."""
    hashes, embeddings, pdq, matches = [], [], [], [[] for _ in indexes]
    for start in range(0, len(sources), _BATCH):
        photos = [classifier.prepare(source, with_hashes=True) for source in sources[start : start + _BATCH]]
        batch = classifier.score_and_embed(photos)[1]
        for index, found in zip(indexes, matches):
            found += index.match_photos(photos, batch)
        embeddings += batch
        hashes += [photo.hashes for photo in photos]
        pdq += [photo.pdq for photo in photos]
    variants = np.concatenate(pdq)  # the frames' PDQ, as the index matches them
    return Features(np.stack(hashes), np.concatenate(embeddings), variants, variants), matches


def _nearest_bits(queries: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Q x N: bits between the nearest of a query's hashes (Q x A x 32) and of a known photo's (N x B x 32)."""
    (count, a, _), (n, b, _) = queries.shape, known.shape
    flat = known.reshape(-1, HASH_BYTES)
    return np.concatenate([
        hamming_distances(queries[start : start + _QUERY_ROWS].reshape(-1, HASH_BYTES), flat)
        .reshape(-1, a, n, b).min(axis=(1, 3))
        for start in range(0, count, _QUERY_ROWS)])


def matched(distances: Distances, rule: Rule) -> tuple[np.ndarray, np.ndarray]:
    """Per query, whether any known photo matches under `rule`, and the one the index picks among those that do."""
    candidates = np.logical_or.reduce([SIGNALS[f].within(getattr(distances, f), t) for f, t in rule.items()])
    closeness = np.where(candidates, _closeness(distances, rule), -np.inf)
    return candidates.any(axis=1), closeness.argmax(axis=1)


def _closeness(distances: Distances, rule: Rule) -> np.ndarray:
    """Higher for the item the index prefers: for one signal, the nearest by it; for a rule, as `KnownItemIndex` picks
    since it has PDQ: the nearer of the rule's hash distances, then the higher cosine (bits step by 1, so 4 x bits
    outweighs any cosine difference)."""
    if len(rule) == 1:
        field = next(iter(rule))
        return SIGNALS[field].closeness(getattr(distances, field))
    hashes = [getattr(distances, field) for field in ("hash", "pdq", "pdq_ladder") if field in rule]
    bits = np.minimum.reduce(hashes) if hashes else 0
    return -4.0 * bits + distances.cosine


def picked_within(distances: Distances, picked: np.ndarray, rule: Rule) -> np.ndarray:
    """Whether the picked known photo of each query is within `rule` (MatchPolicy.is_strict, vectorised)."""
    rows = np.arange(len(picked))
    return np.logical_or.reduce([SIGNALS[f].within(getattr(distances, f)[rows, picked], t) for f, t in rule.items()])


def false_matches(negatives: Sequence[Distances], rule: Rule) -> float:
    """The share of all `negatives`' queries that match some known photo under `rule`."""
    found = np.concatenate([matched(distances, rule)[0] for distances in negatives])
    return float(found.mean())


def fit_rule(fit_reposts: Distances, own: np.ndarray, negatives: Sequence[Distances]) -> dict[str, float]:
    """Per signal, the index's rule: the cosine at the loosest threshold at which at most FIT_FALSE_MATCHES of the
    negatives match; then the strictest difference-hash distance at which hash OR cosine recalls FIT_RECALL of the
    re-posts (the index without PDQ), kept HASH_MARGIN bits short of the nearest negative; PDQ at Meta's distance,
    the one lists are exchanged at. And, to compare, `pdq_list`: the PDQ-ladder distance an imported list would
    need, found as the hash distance is."""
    cosines = [t for t in SIGNALS["cosine"].grid if false_matches(negatives, {"cosine": t}) <= FIT_FALSE_MATCHES]
    cosine = cosines[-1] if cosines else SIGNALS["cosine"].grid[0]
    return {"hash": _strictest_recalling(fit_reposts, own, negatives, "hash", {"cosine": cosine}), "cosine": cosine,
            "pdq": PDQ_MATCH_DISTANCE, "pdq_ladder": PDQ_MATCH_DISTANCE,
            "pdq_list": _strictest_recalling(fit_reposts, own, negatives, "pdq_ladder", {})}


def _strictest_recalling(
    fit_reposts: Distances, own: np.ndarray, negatives: Sequence[Distances], field: str, others: Rule
) -> float:
    """The strictest distance of hash signal `field` at which it OR `others` recalls FIT_RECALL of the re-posts,
    kept HASH_MARGIN bits short of the nearest negative (else the loosest so kept)."""
    nearest = min(getattr(distances, field).min() for distances in negatives)
    allowed = [t for t in SIGNALS[field].grid if t <= nearest - HASH_MARGIN]
    for distance in allowed:
        found, picked = matched(fit_reposts, {field: distance, **others})
        if (found & (picked == own)).mean() >= FIT_RECALL:
            break
    return distance


def fit_strict(signal: Signal, negatives: Sequence[Distances]) -> float:
    """The loosest threshold of `signal` at which no negative comes within twice its distance."""
    allowed = [t for t in signal.grid if false_matches(negatives, {signal.field: signal.doubled(t)}) == 0]
    return allowed[-1] if allowed else signal.grid[0]


@dataclass(frozen=True)
class Evaluation:
    """The held-out half: re-posts against the known photos, unrelated photos, and the look-alikes."""

    reposts: Distances
    own: np.ndarray
    kinds: np.ndarray
    unrelated: Distances
    look_alikes: Distances

    def recalled(self, rule: Rule) -> np.ndarray:
        found, picked = matched(self.reposts, rule)
        return found & (picked == self.own)

    def row(self, rule: Rule, strict: Rule | None = None) -> str:
        """Recall per transformation and overall, then the unrelated photos' and look-alikes' false-match rates; with
        `strict`, counting only what the strict rule blocks."""
        recalled, unrelated, look_alikes = self.recalled(rule), *(self._false(d, rule, strict) for d in
                                                                  (self.unrelated, self.look_alikes))
        if strict is not None:
            recalled &= picked_within(self.reposts, matched(self.reposts, rule)[1], strict)
        cells = [f"{recalled[self.kinds == kind].mean():7.1%}" for kind in TRANSFORMS]
        return " ".join(cells) + f" {recalled.mean():7.2%} | {unrelated:8.2%} {look_alikes:8.2%}"

    @staticmethod
    def _false(distances: Distances, rule: Rule, strict: Rule | None) -> float:
        found, picked = matched(distances, rule)
        if strict is not None:
            found &= picked_within(distances, picked, strict)
        return float(found.mean())


def _header(title: str) -> str:
    names = " ".join(f"{name[:7]:>7s}" for name in TRANSFORMS)
    return f"{title:34s} {names} {'all':>7s} | {'unrelat.':>8s} {'lookalik':>8s}"


def print_grid(held_out: Evaluation, signal: Signal, rule: float, strict: float) -> None:
    print()
    print(_header(signal.title + " (alone)"))
    for threshold in signal.grid:
        mark = " <- fitted rule" if threshold == rule else ""
        mark += " <- fitted strict" if threshold == strict else ""
        print(f"{threshold:<34} {held_out.row({signal.field: threshold})}{mark}")
    own = getattr(held_out.reposts, signal.field)[np.arange(len(held_out.own)), held_out.own]
    unrelated, look_alikes = (getattr(d, signal.field) for d in (held_out.unrelated, held_out.look_alikes))
    print(f"  the farthest re-post from its own photo: {signal.farthest(own):.4g}; the closest unrelated photo: "
          f"{signal.closest(unrelated):.4g}; look-alike: {signal.closest(look_alikes):.4g}")


def print_chosen(held_out: Evaluation, fitted: Rule, strict: Rule) -> None:
    hash_, cosine = (f"{SIGNALS[f].title} {fitted[f]}" for f in ("hash", "cosine"))
    rule = {field: fitted[field] for field in ("hash", "cosine", "pdq_ladder")}
    print()
    print(f"fitted on the first halves: MatchRule(max_hash_distance={rule['hash']}, min_cosine={rule['cosine']}, "
          f"max_pdq_distance={rule['pdq_ladder']}), MatchPolicy(strict_hash_distance={strict['hash']}, "
          f"strict_cosine={strict['cosine']}, strict_pdq_distance={strict['pdq_ladder']}); an imported list alone "
          f"would recall {FIT_RECALL:.0%} of the fit half at PDQ {fitted['pdq_list']}; held-out figures:")
    print(_header("recall (right item) / false matches"))
    no_pdq = {"hash": rule["hash"], "cosine": rule["cosine"]}
    rows = {hash_: {"hash": rule["hash"]}, cosine: {"cosine": rule["cosine"]},
            f"PDQ of the photo <= {fitted['pdq']} (1 a photo)": {"pdq": fitted["pdq"]},
            f"PDQ ladder <= {rule['pdq_ladder']} (our list)": {"pdq_ladder": rule["pdq_ladder"]},
            f"PDQ ladder <= {fitted['pdq_list']} (fitted for lists)": {"pdq_ladder": fitted["pdq_list"]},
            "hash OR cosine (no PDQ)": no_pdq, "hash OR cosine OR PDQ ladder": rule}
    for title, row_rule in rows.items():
        print(f"{title:34s} {held_out.row(row_rule)}")
    print(f"{'  of which strict: blocked':34s} {held_out.row(rule, strict)}")
    print(f"{'  strict, no PDQ':34s} {held_out.row(no_pdq, {'hash': strict['hash'], 'cosine': strict['cosine']})}")


def print_by_source(held_out: Evaluation, rule: Rule, photos: Sequence[KnownPhoto]) -> None:
    recalled = held_out.recalled(rule)
    sources = np.array([photo.source for photo in photos])
    print("recall at the fitted rule by source: " + ", ".join(
        f"{source} {recalled[sources == source].mean():.2%} of {(sources == source).sum()}"
        for source in dict.fromkeys(sources)))


def print_shipped(held_out: Evaluation, held: np.ndarray, held_unrelated: np.ndarray, measured: Measured) -> None:
    """The shipped defaults, replicated here and through `KnownItemIndex` itself (which must agree)."""
    shipped = {_RULE_FIELDS[k]: v for k, v in asdict(MatchRule()).items() if k in _RULE_FIELDS}
    policy = MatchPolicy()
    strict = {_STRICT_FIELDS[k]: v for k, v in asdict(policy).items() if k in _STRICT_FIELDS}
    held_matches = [match for match, keep in zip(measured.repost_matches, held) if keep]
    right = np.array([m is not None and m.reference == str(n) for m, n in zip(held_matches, measured.own[held])])
    blocked = np.array([r and policy.is_strict(m) for r, m in zip(right, held_matches)])
    false = np.array([m is not None for m, keep in zip(measured.unrelated_matches, held_unrelated) if keep])
    print()
    print(f"shipped: {MatchRule()}, {policy}")
    print(_header("  this script's replica"))
    print(f"{'  matched':34s} {held_out.row(shipped)}")
    print(f"{'  blocked':34s} {held_out.row(shipped, strict)}")
    print(f"  KnownItemIndex itself: recall {np.mean(right):.2%}, blocked {np.mean(blocked):.2%}; "
          f"unrelated matched {np.mean(false):.2%}")
    list_matches = [match for match, keep in zip(measured.repost_list_matches, held) if keep]
    recalled = [m is not None and m.reference == str(n) for m, n in zip(list_matches, measured.own[held])]
    kinds = measured.kinds[held]
    per_kind = ", ".join(f"{kind} {np.mean([r for r, k in zip(recalled, kinds) if k == kind]):.1%}"
                         for kind in TRANSFORMS)
    false = [m is not None for m, keep in zip(measured.unrelated_list_matches, held_unrelated) if keep]
    print(f"  an index that imported its exported list (PDQ ladders alone): recall {np.mean(recalled):.2%} "
          f"({per_kind}); unrelated matched {np.mean(false):.2%}")


if __name__ == "__main__":
    sys.exit(main())
