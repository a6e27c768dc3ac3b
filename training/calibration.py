"""Calibration and operating points, fitted on held-out photos that neither training nor reporting uses.

Temperature scaling keeps the ranking (and so accuracy) and makes scores mean what they say. Operating points turn
calibrated scores into decisions: `review` catches a target share of prohibited items or keeps false alarms under a
target rate (open world), `block` keeps false alarms on harmless photos under a target rate.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np

from training.errors import DataError
from wildvision.model_info import OperatingPoint

__all__ = ["expected_calibration_error", "fit_temperature", "choose_operating_point", "softmax"]


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature minimising negative log-likelihood, by golden-section search on log T in [1/20, 20]."""

    def nll(log_t: float) -> float:
        probabilities = softmax(logits, float(np.exp(log_t)))
        return float(-np.log(probabilities[np.arange(len(targets)), targets] + 1e-12).mean())

    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):  # the bracket shrinks by 0.618 a step: 60 steps leave ~1e-12
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2))


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """Mean gap between confidence and accuracy of the top label, weighted over equal-width confidence bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == targets
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(error)


def choose_operating_point(
    scores: np.ndarray,
    is_positive: np.ndarray,
    *,
    block_false_positive_rate: float,
    review_recall: float | None = None,
    review_false_positive_rate: float | None = None,
    groups: Sequence[str] | None = None,
    review_groups: Collection[str] | None = None,
) -> OperatingPoint:
    """Thresholds on one label's calibrated score.

    block: the lowest threshold at which at most `block_false_positive_rate` of the negatives are flagged.
    review: either the highest threshold that still flags `review_recall` of the positives, or (open world) the lowest
    at which at most `review_false_positive_rate` of the negatives are flagged. With `groups` (one name per photo, e.g.
    its source), each false-positive rate must hold in every group of negatives, not just on their pool: a platform's
    photo mix differs from the calib mix, so no single kind of harmless photo may be flooded. `review_groups` limits
    the groups that bound the review rate (block is always bounded by all): a reviewer's queue is where hard
    look-alikes belong, while an automatic block must stay above every kind of harmless photo.
    """
    if (review_recall is None) == (review_false_positive_rate is None):
        raise ValueError("set review by exactly one of review_recall and review_false_positive_rate")
    positives = np.sort(scores[is_positive])
    groups = np.asarray(groups if groups is not None else [""] * len(scores))
    negatives = {group: np.sort(scores[~is_positive & (groups == group)]) for group in sorted(set(groups[~is_positive]))}
    if len(positives) == 0 or not negatives:
        raise DataError("choosing thresholds needs held-out photos of both the label and others")
    block = _false_positive_threshold(list(negatives.values()), block_false_positive_rate)
    if review_recall is not None:
        # The k-th smallest positive score: thresholds at or below it keep the rest.
        review = float(positives[int(np.floor((1 - review_recall) * len(positives)))])
    else:
        bounding = [values for group, values in negatives.items() if review_groups is None or group in review_groups]
        if not bounding:
            raise DataError(f"no harmless photos in the groups that bound review: {sorted(review_groups or ())}")
        review = _false_positive_threshold(bounding, review_false_positive_rate)
    return OperatingPoint(review=min(review, block), block=block)


def _false_positive_threshold(negatives_per_group: Sequence[np.ndarray], rate: float) -> float:
    """The lowest threshold at which at most `rate` of every group's (sorted) negatives score at or above it."""
    thresholds = []
    for negatives in negatives_per_group:
        allowed = int(np.floor(rate * len(negatives)))  # a group too small to allow one false alarm allows none
        thresholds.append(float(np.nextafter(negatives[len(negatives) - 1 - allowed], 1.0)))
    return min(max(thresholds), 1.0)
