"""The known-item match policy (`wildvision.decision.MatchPolicy`): a close match blocks, a looser one sends to review,
no match changes nothing, a match never lowers a decision, and a listing names the known item among its reasons."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from wildvision.decision import MatchPolicy, Reason, decide_listing, decide_with_match
from wildvision.model_info import OperatingPoint

POINTS = {"ivory": OperatingPoint(review=0.5, block=0.9)}


@dataclass(frozen=True)
class Found:
    """A match as the index reports one (`wildvision.known_items.Match` has these fields and more)."""

    reference: str
    hash_distance: int | None
    cosine: float | None
    pdq_distance: int | None = None


@dataclass(frozen=True)
class Photo:
    scores: dict[str, float]
    decision: str
    text: None = None


EXACT_REPOST = Found("case-2291/tusk1", hash_distance=0, cosine=1.0)
LOOSE = Found("case-2291/tusk2", hash_distance=18, cosine=0.97)  # within the index's rule, outside the strict one


def test_an_exact_repost_of_a_known_item_blocks_a_photo_the_classifier_allows():
    assert decide_with_match("allow", EXACT_REPOST) == "block"


def test_a_match_only_the_looser_rule_accepts_sends_to_review():
    assert decide_with_match("allow", LOOSE) == "review"
    assert decide_with_match("allow", Found("x", hash_distance=40, cosine=0.996)) == "block"  # strict by embedding


def test_no_match_leaves_the_decision_and_a_match_never_lowers_one():
    assert decide_with_match("allow", None) == "allow"
    assert decide_with_match("block", LOOSE) == "block"


def test_the_policy_is_configurable_and_checked():
    review_only = MatchPolicy(strict="review")
    assert decide_with_match("allow", EXACT_REPOST, review_only) == "review"
    assert decide_with_match("allow", LOOSE, MatchPolicy(loose="block")) == "block"
    assert decide_with_match("allow", LOOSE, MatchPolicy(strict_hash_distance=20)) == "block"
    with pytest.raises(ValueError, match="must be one of"):
        MatchPolicy(strict="remove")  # type: ignore[arg-type]


def test_a_listing_with_a_known_photo_is_decided_by_the_match_and_names_its_reference():
    photos = [Photo({"ivory": 0.1}, "allow"), Photo({"ivory": 0.2}, "allow")]
    decided = decide_listing(photos, POINTS, matches=[None, EXACT_REPOST])
    assert decided.decision == "block"
    assert Reason("photo 1", None, "known_item", "case-2291/tusk1", 1.0) in decided.reasons
    assert decide_listing(photos, POINTS, matches=[None, LOOSE]).decision == "review"
    assert decide_listing(photos, POINTS).decision == "allow"  # the same listing, no index


def test_matches_come_one_per_photo():
    with pytest.raises(ValueError, match="2 photos but 1 matches"):
        decide_listing([Photo({"ivory": 0.1}, "allow")] * 2, POINTS, matches=[None])
