"""Score photos, then, with a known-item index, match them and let the match decide: the one path from prepared photos
to decided predictions that `predict`, `scan`, Spark, the service and listings all take.

A `Scorer` holds a classifier and, optionally, a `KnownItemIndex` and the `MatchPolicy` (`wildvision.decision`) that
turns a match into a decision. Without an index it scores exactly as the classifier does; with one, every photo's
embedding comes out of the same forward pass as its scores, the index names the known item it re-posts, and the
prediction's decision is the stricter of the classifier's and the match's.

Examples:
    >>> scorer = Scorer(Classifier(), index=KnownItemIndex("known.sqlite", classifier))  # doctest: +SKIP
    >>> prediction, match = scorer.predict("listing.jpg")                                  # doctest: +SKIP
    >>> prediction.decision, match.reference                                               # doctest: +SKIP
    ('block', 'case-2291/tusk1')
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping, Sequence

from wildvision.classifier import Classifier, ListingPrediction, Prediction, PreparedPhoto
from wildvision.decision import MatchPolicy, decide_with_match
from wildvision.images import ImageSource
from wildvision.known_items import KnownItemIndex, Match
from wildvision.model_info import OperatingPoint

__all__ = ["Scorer", "decided_by_match"]

Points = Mapping[str, OperatingPoint] | None  # a call's own thresholds, as `Classifier.predict` takes them


def decided_by_match(prediction: Prediction, match: Match | None, policy: MatchPolicy) -> Prediction:
    """`prediction` with its decision made at least what `match` decides under `policy`."""
    decision = decide_with_match(prediction.decision, match, policy)
    return prediction if decision == prediction.decision else replace(prediction, decision=decision)


class Scorer:
    """A classifier and an optional known-item index, scoring together; safe to share across threads (both are)."""

    def __init__(
        self, classifier: Classifier, *, index: KnownItemIndex | None = None, policy: MatchPolicy = MatchPolicy()
    ) -> None:
        if index is not None and index.classifier is not classifier:
            raise ValueError("the known-item index must be opened with the scorer's own classifier")
        self.classifier, self.index, self.policy = classifier, index, policy

    @property
    def matching(self) -> bool:
        """Whether predictions carry a known-item match (the scorer has an index)."""
        return self.index is not None

    def prepare(self, image: ImageSource) -> PreparedPhoto:
        """Decode `image` for `score`, with the hashes matching needs when there is an index; raises `ImageLoadError`."""
        return self.classifier.prepare(image, with_hashes=self.matching)

    def score(
        self, photos: Sequence[PreparedPhoto], *, operating_points: Points = None
    ) -> list[tuple[Prediction, Match | None]]:
        """Each prepared photo's prediction (with a call's own thresholds, as `Classifier.score`), decided with its
        known-item match (None without an index or a match), from one forward pass over all of them."""
        if not photos:
            return []
        if self.index is None:
            return [(prediction, None) for prediction in self.classifier.score(photos, operating_points=operating_points)]
        predictions, embeddings = self.classifier.score_and_embed(photos, operating_points=operating_points)
        matches = self.index.match_photos(photos, embeddings)
        return [(decided_by_match(prediction, match, self.policy), match)
                for prediction, match in zip(predictions, matches)]

    def predict(self, image: ImageSource, *, operating_points: Points = None) -> tuple[Prediction, Match | None]:
        """One photo's decided prediction and the known item it re-posts (or None)."""
        if self.index is None:
            return self.classifier.predict(image, operating_points=operating_points), None
        return self.score([self.prepare(image)], operating_points=operating_points)[0]

    def predict_listing(
        self, images: Iterable[ImageSource] = (), *, title: str | None = None, description: str | None = None,
        batch_size: int = 16, operating_points: Points = None,
    ) -> tuple[ListingPrediction, list[Match | None]]:
        """A listing decided as `Classifier.predict_listing` decides it, each photo's known-item match among its
        reasons (`known_item`, naming the reference), and the matches, one per photo. An unreadable photo raises
        `ImageLoadError` naming its position."""
        prepared = [self.classifier.prepare_numbered(image, position, with_hashes=self.matching)
                    for position, image in enumerate(images)]
        scored: list[tuple[Prediction, Match | None]] = []
        for start in range(0, len(prepared), batch_size):
            scored += self.score(prepared[start : start + batch_size], operating_points=operating_points)
        if not scored and not (title or description):
            raise ValueError("a listing needs at least one photo, or a title or description")
        listing = self.decide_listing(scored, title=title, description=description, operating_points=operating_points)
        return listing, [match for _, match in scored]

    def decide_listing(
        self, scored: Sequence[tuple[Prediction, Match | None]], *, title: str | None = None,
        description: str | None = None, operating_points: Points = None,
    ) -> ListingPrediction:
        """A listing from its photos already scored by `score` (in order, with the same `operating_points`) and its
        seller's words."""
        return self.classifier.decide_listing(
            [prediction for prediction, _ in scored], title=title, description=description,
            operating_points=operating_points, matches=[match for _, match in scored] if self.matching else (),
            match_policy=self.policy)
