"""Calibration and operating points, fitted on held-out photos that neither training nor reporting uses.

Temperature scaling keeps the ranking (and so accuracy) and makes scores mean what they say. Operating points turn
calibrated scores into decisions: `review` catches a target share of prohibited items or keeps false alarms under a
target rate (open world), `block` keeps false alarms on harmless photos under a target rate. `calibrate` is the one
place both are fitted, for `training.train` and `training.adapt` alike, by a `ThresholdRule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

import numpy as np

from training.errors import ConfigError, DataError
from wildvision.classifier import softmax  # the library's own: training calibrates as inference scores
from wildvision.decision import flags  # the decision rule itself, vectorised: thresholds are measured as it decides
from wildvision.model_info import OperatingPoint

__all__ = ["BaseScores", "ThresholdRule", "calibrate", "choose_operating_point", "expected_calibration_error",
           "fit_temperature", "flag_rates", "softmax"]


@dataclass(frozen=True)
class ThresholdRule:
    """How each prohibited label's `review` and `block` are set on held-out scores (values checked, named by option).

    review: the highest threshold that flags `review_recall` of the label's photos; or the lowest that flags at most
    `review_fpr` of each bounding group's harmless photos; or, with neither, *matched to the base*: the lowest that
    flags no more of each bounding group's harmless photos than the base model flags at its own `review`. block: by
    `block_fpr` the same way, or matched to the base's `block` where it is None. A label the base lacks is matched to
    none of its harmless photos flagged.
    """

    review_recall: float | None = None
    review_fpr: float | None = None
    block_fpr: float | None = None
    review_groups: frozenset[str] | None = None  # groups whose harmless photos bound review; None: every group
    block_groups: frozenset[str] | None = None  # groups whose harmless photos bound block; None: every group

    def __post_init__(self) -> None:
        if self.review_recall is not None and self.review_fpr is not None:
            raise ConfigError("--review-recall and --review-fpr both set review: give one")
        # A recall of 1 is a choice (review under the weakest positive). A share of 0 harmless photos is refused, not
        # silently read: 0 used to be taken for "not given" by adapt. A tiny share (0.0005, as ivory.toml's block) asks
        # for "none in a group of hundreds" explicitly; leaving the option out matches the base.
        shares = (("--review-recall", self.review_recall, 1.0), ("--review-fpr", self.review_fpr, None),
                  ("--block-fpr", self.block_fpr, None))
        for option, value, top in shares:
            if value is not None and not (0.0 < value < 1.0 or value == top):
                allowed = "0 < value <= 1" if top else "0 < value < 1"
                raise ConfigError(f"{option} must be a share with {allowed}, got {value:g}")

    @property
    def review_by(self) -> str:
        return "recall" if self.review_recall is not None else "fpr" if self.review_fpr is not None else "base"


@dataclass(frozen=True)
class BaseScores:
    """The base model's calibrated scores of the same held-out photos and its thresholds: what `matched to the base`
    compares with. Columns follow the calibrated labels; a label the base lacks has no column used."""

    probabilities: np.ndarray  # (photos, labels)
    operating_points: Mapping[str, OperatingPoint]


def calibrate(
    logits: np.ndarray, targets: np.ndarray, groups: Sequence[str], labels: Sequence[str], prohibited: Sequence[str],
    rule: ThresholdRule, *, base: BaseScores | None = None,
) -> tuple[float, dict[str, OperatingPoint]]:
    """Temperature, then each prohibited label's operating point, on held-out logits; `groups` names each photo's
    group (its source) for the rule's bounds."""
    missing = [label for label in prohibited if not (targets == labels.index(label)).any()]
    if missing:
        raise DataError(f"no photos of the prohibited label(s) {missing} among the held-out photos to fit "
                        "thresholds on: label some")
    temperature = fit_temperature(logits, targets)
    probabilities = softmax(logits, temperature)
    groups = np.asarray(groups)
    points = {label: _operating_point(probabilities[:, labels.index(label)], targets == labels.index(label), groups,
                                      rule, _base_flags(base, labels.index(label), label))
              for label in prohibited}
    return temperature, points


def _base_flags(base: BaseScores | None, column: int, label: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Which photos the base flags (review) and blocks for `label`; None where matching has no base to follow."""
    if base is None or label not in base.operating_points:
        return None
    scores, point = base.probabilities[:, column], base.operating_points[label]
    return scores >= point.review, scores >= point.block


def _operating_point(
    scores: np.ndarray, is_positive: np.ndarray, groups: np.ndarray, rule: ThresholdRule,
    base_flags: tuple[np.ndarray, np.ndarray] | None,
) -> OperatingPoint:
    if len(scores[is_positive]) == 0 or is_positive.all():
        raise DataError("choosing thresholds needs held-out photos of both the label and others")
    review_flags, block_flags = base_flags or (np.zeros(len(scores), bool), np.zeros(len(scores), bool))
    block = _bounded(scores, is_positive, groups, rule.block_groups, rule.block_fpr, block_flags)
    if rule.review_recall is not None:
        # The k-th smallest positive score: thresholds at or below it keep the rest.
        positives = np.sort(scores[is_positive])
        review = float(positives[int(np.floor((1 - rule.review_recall) * len(positives)))])
    else:
        review = _bounded(scores, is_positive, groups, rule.review_groups, rule.review_fpr, review_flags)
    return OperatingPoint(review=min(review, block), block=block)


def _bounded(
    scores: np.ndarray, is_positive: np.ndarray, groups: np.ndarray, bounding: Collection[str] | None,
    rate: float | None, base_flagged: np.ndarray,
) -> float:
    """The lowest threshold that flags, in every bounding group, at most `rate` of its harmless photos, or (rate None)
    no more of them than the base flagged."""
    names = [group for group in sorted(set(groups[~is_positive])) if bounding is None or group in bounding]
    if not names:
        raise DataError(f"no harmless photos in the groups that bound the thresholds: {sorted(bounding or ())}")
    members = [~is_positive & (groups == name) for name in names]
    negatives = [np.sort(scores[member]) for member in members]
    allowed = [int(np.floor(rate * member.sum())) if rate is not None else int(base_flagged[member].sum())
               for member in members]
    return _threshold_allowing(negatives, allowed)


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
    """Thresholds on one label's calibrated score, by `ThresholdRule`'s definitions (one of the two review targets).

    With `groups` (one name per photo, e.g. its source), each false-positive rate must hold in every group of
    negatives, not just on their pool: a platform's photo mix differs from the calib mix, so no single kind of harmless
    photo may be flooded. `review_groups` limits the groups that bound the review rate (block is always bounded by
    all): a reviewer's queue is where hard look-alikes belong, while an automatic block must stay above every kind of
    harmless photo.
    """
    if (review_recall is None) == (review_false_positive_rate is None):
        raise ValueError("set review by exactly one of review_recall and review_false_positive_rate")
    rule = ThresholdRule(review_recall=review_recall, review_fpr=review_false_positive_rate,
                         block_fpr=block_false_positive_rate,
                         review_groups=frozenset(review_groups) if review_groups is not None else None)
    names = np.asarray(groups if groups is not None else [""] * len(scores))
    return _operating_point(np.asarray(scores), np.asarray(is_positive, bool), names, rule, None)


def _threshold_allowing(negatives_per_group: Sequence[np.ndarray], allowed: Sequence[int]) -> float:
    """The lowest threshold at which at most `allowed[i]` of group i's (sorted) negatives score at or above it."""
    thresholds = [float(np.nextafter(negatives[len(negatives) - 1 - count], 1.0)) if count < len(negatives) else 0.0
                  for negatives, count in zip(negatives_per_group, allowed)]
    return min(max(thresholds), 1.0)


def flag_rates(
    probabilities: np.ndarray, labels: Sequence[str], operating_points: Mapping[str, OperatingPoint]
) -> tuple[float, float]:
    """Shares of photos flagged (review or block for any prohibited label) and blocked, as `decide` decides."""
    if not len(probabilities):
        return 0.0, 0.0
    flagged, blocked = flags(probabilities, labels, operating_points)
    return float(flagged.mean()), float(blocked.mean())
