"""The decision policy: from scores and evidence to `allow`, `review` or `block`, for a photo and for a listing.

Every reader of the rule takes it from here: the classifier (one photo, a listing), listing records from a scan, the
service, and training, which fits thresholds with the vectorised form (`flags`) of the same rule.

- A photo: `block` if any prohibited label reaches its block threshold, else `review` if any reaches review (`decide`);
  words on the photo that name a product send it at least to review, and to block where the image agrees
  (`decide_with_text`).
- A listing (`decide_listing`): its photos, the words on them and its own title and description, each evidence a
  `Reason` naming its source. Its fused score per label (`listing_score`) goes to review from the lexicon's fitted
  threshold; `block` needs two independent signals to agree, the image and the seller's words (a title and a caption
  are one seller saying one thing twice). Words never lower what a photo alone decided.
- A known item (`MatchPolicy`, `decide_with_match`): a photo that re-posts an item the platform already confirmed is
  blocked where the match is close (the strict rule), and sent to review where only the index's looser rule holds;
  a match never lowers a decision. In a listing, each match is a `Reason` (signal `known_item`) naming the reference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Literal, Mapping, Protocol, Sequence

import numpy as np

from wildvision.model_info import OperatingPoint
from wildvision.text import ListingWeights, TextEvidence

__all__ = [
    "DECISION_RANK", "Decision", "KnownMatch", "ListingDecision", "MatchPolicy", "Reason", "decide", "decide_listing",
    "decide_with_match", "decide_with_text", "decided_label", "flags", "flagged_labels", "listing_score", "rank_of",
    "stricter", "words_state",
]

Decision = Literal["allow", "review", "block"]
DECISION_RANK: dict[str, int] = {"allow": 0, "review": 1, "block": 2}
Signal = Literal["image", "product", "sale", "reporting", "known_item"]
WordsState = Literal["not_named", "for_sale", "named", "reported", "mixed"]


class KnownMatch(Protocol):
    """What the match policy reads of a known-item match (`wildvision.known_items.Match`)."""

    reference: str
    hash_distance: int | None  # None: a side has no such signal (an imported item has PDQ alone)
    cosine: float | None
    pdq_distance: int | None


@dataclass(frozen=True)
class MatchPolicy:
    """What a known-item match decides. A match the index reports (its `MatchRule`: PDQ within 31 bits, difference
    hash within 24 or cosine at least 0.96) is `strict` when its PDQ hash is within `strict_pdq_distance` bits of 256
    of the item's, its difference hash within `strict_hash_distance` bits of one of the item's hashed variants, or
    its embedding's cosine reaches `strict_cosine`; such a match decides `strict` (default `block`), any other match
    `loose` (default `review`). A platform that only wants matches reviewed sets `strict="review"`; one that trusts
    its index entirely sets `loose="block"`."""

    # Fitted with 1.2.0 by `benchmarks/matching_benchmark.py`: the loosest thresholds at which no unrelated everyday-v1
    # photo and no re-post of another known item comes within twice the distance (the nearest came at 29 bits and
    # cosine 0.966), so a strict match is at most half as far as anything else was seen. On the held-out half, 90 % of
    # re-posts match strictly (block) and the other 8.5 % only by the index's looser rule (review).
    strict_hash_distance: int = 14
    strict_cosine: float = 0.99
    # PDQ bits of 256, by the same rule (to the nearest of an item's PDQ ladder; refitted on the ladder of 12 hashes,
    # whose look-alikes come nearer, from 27 to 23); with it 99.7 % of held-out re-posts block.
    strict_pdq_distance: int = 23
    strict: Decision = "block"
    loose: Decision = "review"

    def __post_init__(self) -> None:
        for name in ("strict", "loose"):
            if getattr(self, name) not in DECISION_RANK:
                raise ValueError(f"MatchPolicy.{name} must be one of {list(DECISION_RANK)}, got {getattr(self, name)!r}")
        for name in ("strict_hash_distance", "strict_pdq_distance"):
            if not 0 <= getattr(self, name) <= 256:
                raise ValueError(f"{name} is bits of 256, got {getattr(self, name)}")

    def is_strict(self, match: KnownMatch) -> bool:
        """Whether `match` is close enough for the strict decision (by any signal it has)."""
        return (_within(match.pdq_distance, self.strict_pdq_distance)
                or _within(match.hash_distance, self.strict_hash_distance)
                or (match.cosine is not None and match.cosine >= self.strict_cosine))

    def describe(self) -> str:
        """The policy in one line, as a scan's run facts state it."""
        return (f"strict={self.strict} (pdq<={self.strict_pdq_distance} hash<={self.strict_hash_distance} "
                f"cosine>={self.strict_cosine}) loose={self.loose}")

    def decision_for(self, match: KnownMatch) -> Decision:
        """What `match` alone decides."""
        return self.strict if self.is_strict(match) else self.loose


def _within(distance: int | None, limit: int) -> bool:
    return distance is not None and distance <= limit


def decide_with_match(decision: Decision, match: KnownMatch | None, policy: MatchPolicy = MatchPolicy()) -> Decision:
    """The decision once a known-item match is weighed: the stricter of `decision` (the classifier's, text included)
    and what the match decides under `policy`; no match leaves `decision` as it is."""
    return decision if match is None else stricter(decision, policy.decision_for(match))


class Scored(Protocol):
    """What the listing rule reads of a photo's result (`wildvision.classifier.Prediction`)."""

    scores: dict[str, float]
    decision: Decision
    text: TextEvidence | None


@dataclass(frozen=True)
class Reason:
    """One piece of evidence a listing was decided on: where it is (`photo 2`, `words on photo 3`, `title`,
    `description`), the label it speaks for (none for a sale cue or a reporting word, which speak for whatever the
    listing names), what kind of signal it is, and the phrase read or the score given."""

    source: str
    label: str | None
    signal: Signal  # image: a photo's score; product: words naming it; sale: a sale cue or price; reporting: news words;
    # known_item: the photo re-posts an item of the known-item index (the phrase is its reference)
    phrase: str | None = None
    score: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ListingDecision:
    """A listing's decision, the prohibited labels it is flagged for, each label's fused score, the evidence, and the
    photo a reviewer should see first (its position; None for a listing without photos)."""

    decision: Decision
    labels: tuple[str, ...]
    scores: dict[str, float]
    reasons: tuple[Reason, ...]
    deciding_photo: int | None


def stricter(*decisions: Decision) -> Decision:
    """The strictest of `decisions`."""
    return max(decisions, key=DECISION_RANK.__getitem__)


def decide(scores: Mapping[str, float], operating_points: Mapping[str, OperatingPoint]) -> Decision:
    """`block` if any prohibited label reaches its block threshold, else `review` if any reaches review, else `allow`."""
    if any(scores[label] >= point.block for label, point in operating_points.items()):
        return "block"
    if any(scores[label] >= point.review for label, point in operating_points.items()):
        return "review"
    return "allow"


def flags(
    probabilities: np.ndarray, labels: Sequence[str], operating_points: Mapping[str, OperatingPoint]
) -> tuple[np.ndarray, np.ndarray]:
    """`decide` for rows of probabilities (N, labels) at once: per photo, flagged (review or block for any prohibited
    label) and blocked. Training fits and measures thresholds with it."""
    columns = [labels.index(label) for label in operating_points]
    scores = probabilities[:, columns]
    reviews = np.array([point.review for point in operating_points.values()])
    blocks = np.array([point.block for point in operating_points.values()])
    return (scores >= reviews).any(axis=1), (scores >= blocks).any(axis=1)


def decide_with_text(
    scores: Mapping[str, float], image_decision: Decision, evidence: TextEvidence,
    operating_points: Mapping[str, OperatingPoint],
) -> Decision:
    """The decision once the words on the photo are weighed: a prohibited product named on the photo sends it at
    least to `review`, and to `block` where the image model agrees (its score for that label reaches `review`). A label
    the image model does not know (rhino horn today) is reviewed on the text alone; text never lowers a decision."""
    return stricter(image_decision, *("block" if _image_agrees(scores, label, operating_points) else "review"
                                      for label in evidence.labels))


def rank_of(prediction: Scored, prohibited: Iterable[str]) -> tuple[int, int, float]:
    """How prohibited a photo's result is, for choosing the one a reviewer must see first: by decision, then by
    whether its text names a product, then by its highest prohibited score."""
    named = prediction.text is not None and bool(prediction.text.matches)
    top = max((prediction.scores.get(label, 0.0) for label in prohibited), default=0.0)
    return DECISION_RANK[prediction.decision], int(named), top


def flagged_labels(
    scores: Mapping[str, float], text_labels: Iterable[str], operating_points: Mapping[str, OperatingPoint]
) -> tuple[str, ...]:
    """The prohibited labels a photo is flagged for: named by its text, or scored at least at `review`."""
    by_image = (label for label, point in operating_points.items() if scores.get(label, 0.0) >= point.review)
    return tuple(dict.fromkeys([*text_labels, *by_image]))


def decided_label(
    scores: Mapping[str, float], decision: Decision, text_labels: Iterable[str],
    operating_points: Mapping[str, OperatingPoint],
) -> str | None:
    """The prohibited label a decision is about (`Prediction.label`): None for `allow`; else, of the labels the photo
    is flagged for (`flagged_labels`), the one its image score takes furthest (block, then review), then one its text
    names, then the highest score: a label that alone reaches the decision."""
    if decision == "allow":
        return None
    named = set(text_labels)

    def strength(label: str) -> tuple[int, int, float]:
        point, score = operating_points.get(label), scores.get(label, 0.0)
        by_image = decide({label: score}, {label: point}) if point is not None else "allow"
        return DECISION_RANK[by_image], int(label in named), score

    return max(flagged_labels(scores, named, operating_points), key=strength, default=None)


def listing_score(
    label: str, reasons: Sequence[Reason], photos: Sequence[Scored], operating_points: Mapping[str, OperatingPoint],
    weights: ListingWeights,
) -> float:
    """The probability that a listing offers `label`: a logistic model of the seller's words (`ListingWeights`, fitted
    on listing words alone), plus, where a photo's score for the label passes its review threshold, the log-odds by
    which it passes (a photo below its threshold adds nothing: on real sale posts the image model misses more than it
    finds, so a harmless-looking photo is no evidence against the words)."""
    log_odds = weights.intercept + _words_weight(label, reasons, weights)
    point = operating_points.get(label)
    if point is not None and photos:
        best = max(photo.scores.get(label, 0.0) for photo in photos)
        log_odds += max(0.0, _logit(best) - _logit(point.review))
    return 1.0 / (1.0 + math.exp(-log_odds))


def decide_listing(
    photos: Sequence[Scored], operating_points: Mapping[str, OperatingPoint], *, words: Sequence[Reason] = (),
    weights: ListingWeights | None = None, matches: Sequence[KnownMatch | None] = (),
    match_policy: MatchPolicy = MatchPolicy(),
) -> ListingDecision:
    """A listing decided by its photos and its seller's words (`words`: the title's and description's products, and
    the sale cues and reporting words of every text, from `wildvision.words.listing_words`).

    The decision is the strictest of: every photo's own (image, and words on it); `review` for a label whose fused
    score (`listing_score`) reaches the lexicon's review threshold; `block` where, in addition, a photo's score for
    that label reaches its review threshold (two signals: the words and the image). With no words given, a listing is
    decided by its most prohibited photo, as before listings had words.

    `matches` (one per photo, None where a photo re-posts no known item) adds each match as a `known_item` reason
    naming the item's reference, and the listing is at least what each match decides (`decide_with_match`)."""
    if matches and len(matches) != len(photos):
        raise ValueError(f"{len(photos)} photos but {len(matches)} matches")
    reasons = (*_photo_reasons(photos, operating_points, matches), *words)
    named = tuple(dict.fromkeys(r.label for r in reasons if r.signal == "product" and r.label is not None))
    flagged = [label for photo in photos
               for label in flagged_labels(photo.scores, photo.text.labels if photo.text else (), operating_points)]
    decision: Decision = stricter("allow", *(photo.decision for photo in photos))
    for match in matches:
        decision = decide_with_match(decision, match, match_policy)
    scores = {}
    if weights is not None:
        for label in dict.fromkeys([*operating_points, *named]):
            scores[label] = round(listing_score(label, reasons, photos, operating_points, weights), 4)
            if label in named and scores[label] >= weights.review:
                agrees = any(_image_agrees(photo.scores, label, operating_points) for photo in photos)
                decision = stricter(decision, "block" if agrees else "review")
                flagged.append(label)
    deciding = (max(range(len(photos)), key=lambda i: rank_of(photos[i], operating_points)) if photos else None)
    return ListingDecision(decision, tuple(dict.fromkeys(flagged)), scores, reasons, deciding)


def words_state(label: str, reasons: Sequence[Reason]) -> WordsState:
    """What the seller's words say of `label`: not named; named with a sale cue (`for_sale`), with reporting words
    (`reported`: news, law, advocacy), with both (`mixed`), or with neither (`named`)."""
    if not any(r.signal == "product" and r.label == label for r in reasons):
        return "not_named"
    sale, reporting = (any(r.signal == signal for r in reasons) for signal in ("sale", "reporting"))
    return ("mixed" if reporting else "for_sale") if sale else ("reported" if reporting else "named")


def _words_weight(label: str, reasons: Sequence[Reason], weights: ListingWeights) -> float:
    state = words_state(label, reasons)
    return 0.0 if state == "not_named" else getattr(weights, state)


def _photo_reasons(
    photos: Sequence[Scored], operating_points: Mapping[str, OperatingPoint], matches: Sequence[KnownMatch | None] = ()
) -> list[Reason]:
    """Every photo's evidence: its score for each label at or above review, the known item it re-posts (the reference
    as phrase, the cosine as score), and the products the words on it name."""
    reasons = []
    for position, photo in enumerate(photos):
        match = matches[position] if matches else None
        reasons += [Reason(f"photo {position}", label, "image", score=round(photo.scores[label], 4))
                    for label in operating_points if _image_agrees(photo.scores, label, operating_points)]
        if match is not None:
            cosine = None if match.cosine is None else round(match.cosine, 4)  # an imported item has no embedding
            reasons.append(Reason(f"photo {position}", None, "known_item", match.reference, cosine))
        read = photo.text.matches if photo.text is not None else ()
        reasons += [Reason(f"words on photo {position}", m.label, "product", m.phrase) for m in read]
    return reasons


def _image_agrees(scores: Mapping[str, float], label: str, operating_points: Mapping[str, OperatingPoint]) -> bool:
    point = operating_points.get(label)
    return point is not None and scores.get(label, 0.0) >= point.review


def _logit(probability: float) -> float:
    clipped = min(max(probability, 1e-6), 1 - 1e-6)
    return math.log(clipped / (1 - clipped))
