"""Fitting the adapted head: every candidate (a pull towards the base head, a share of the base head mixed back in)
fitted, cross-validated, given thresholds and judged; the one that gains most on the platform's own photos among
those the judge accepts is kept.

The head is fitted on the embeddings the base model's own graph computes, starting from and pulled towards the base
head (`training.head`), so that what the new photos do not speak to is decided as before. Mixing the fitted head
with the base head at a share `mix` is the ensemble of the two (logits are linear in the weights), written as one
head: at no inference cost it keeps more of the base's decisions than any pull alone, which the judge may need.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from training.adapt.assembly import FitSet
from training.adapt.inputs import BaseCalibration, OpenWorld
from training.adapt.judge import Judge, Verdict
from training.calibration import BaseScores, ThresholdRule, calibrate, softmax
from training.head import DEFAULT_STAY_CLOSE, Head, cross_fit, fit_head
from training.metrics import auc
from wildvision.model_info import OperatingPoint

__all__ = ["MIXES", "PULLS", "Adapted", "Candidate", "Search", "Thresholding", "blend", "fit_adapted",
           "fit_thresholds", "start_head"]

# Pulls towards the base head's weights (per unit of mean loss) tried. Embeddings are pooled activations in [0, 6]
# over 1280 or 2560 features: small weight changes on many features add up to large logit changes, so the pull that
# holds the head spans five decades.
PULLS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0)
# Shares of the fitted head in the written one (the rest is the base head). The weakest pulls gain most on the
# platform's photos and forget most; a mix keeps part of the base's decisions without pulling the fit itself back.
MIXES = (1.0, 0.75, 0.5, 0.25)


@dataclass(frozen=True)
class Thresholding:
    """How the adapted model's thresholds are fitted: the `rule`, the reference's calib vectors that bound them
    (`open_world`, where the base ships reference data), and the base's own calibration that thresholds matched to
    the base follow (`base`)."""

    rule: ThresholdRule
    open_world: OpenWorld | None = None
    base: BaseCalibration | None = None


@dataclass(frozen=True)
class Search:
    """The candidates tried (every pull with every mix) and the `judge` that accepts or refuses each; without a judge
    there is nothing to choose by and only the first pull and mix are fitted. With `allow_forgetting`, the candidate
    that gains most is taken whatever the judge says (its verdict is still reported)."""

    pulls: Sequence[float]
    mixes: Sequence[float] = MIXES
    judge: Judge | None = None
    allow_forgetting: bool = False


@dataclass(frozen=True)
class Candidate:
    """One pull and mix, fitted, cross-validated, thresholded and judged."""

    pull: float
    mix: float
    head: Head
    temperature: float
    operating_points: dict[str, OperatingPoint]
    held_out_logits: np.ndarray  # every fitting photo scored by a head fitted without its fold
    gain: float  # cross-validated figure on the platform's photos (prohibited AUC, else minus log-loss)
    verdict: Verdict | None  # None: no judge

    def to_json(self) -> dict[str, object]:
        judged = {} if self.verdict is None else {"accepted": self.verdict.accepted,
                                                   "forgetting_needed": round(self.verdict.needed, 4)}
        return {"pull": self.pull, "mix": self.mix, "gain": round(self.gain, 4), **judged}


@dataclass(frozen=True)
class Adapted:
    """The chosen candidate, with every candidate's figures; `verdict.accepted` is False only where no candidate was
    accepted (the closest is chosen, for the refusal to describe) or forgetting was allowed."""

    chosen: Candidate
    candidates: tuple[Candidate, ...]
    base_gain: float  # the same figure for the base head on the same photos (no head of it saw them)

    @property
    def head(self) -> Head:
        return self.chosen.head

    @property
    def temperature(self) -> float:
        return self.chosen.temperature

    @property
    def operating_points(self) -> dict[str, OperatingPoint]:
        return self.chosen.operating_points

    @property
    def held_out_logits(self) -> np.ndarray:
        return self.chosen.held_out_logits

    @property
    def pull(self) -> float:
        return self.chosen.pull

    @property
    def mix(self) -> float:
        return self.chosen.mix

    @property
    def verdict(self) -> Verdict | None:
        return self.chosen.verdict

    def best_accepted(self) -> Candidate | None:
        accepted = [c for c in self.candidates if c.verdict is None or c.verdict.accepted]
        return max(accepted, key=_rank) if accepted else None


def fit_adapted(
    fit: FitSet, start: Head, labels: Sequence[str], prohibited: Sequence[str], *, search: Search,
    thresholding: Thresholding, new_labels: int = 0,
) -> Adapted:
    """Every candidate of the `search`, and the one that gains most on the platform's photos among those its judge
    accepts (the closest to acceptance where none is; the most gaining of all with `allow_forgetting`).

    The pull holds the base labels' rows; the last `new_labels` rows have nothing to forget and are only kept small
    (`DEFAULT_STAY_CLOSE`), so that a firm pull cannot stop a new label being learnt.
    """
    pulls, mixes = (sorted(search.pulls), list(search.mixes)) if search.judge else ([search.pulls[0]], [1.0])
    base_logits = start.logits(fit.embeddings)
    candidates = []
    for pull in pulls:
        per_row = np.array([pull] * (len(labels) - new_labels) + [DEFAULT_STAY_CLOSE] * new_labels)
        fitted = fit_head(fit.embeddings, fit.targets, fit.weights, start, stay_close=per_row)
        held_out = cross_fit(fit.embeddings, fit.targets, fit.weights, fit.groups, start, stay_close=per_row)
        for mix in mixes:
            head = blend(start, fitted, mix)
            logits = mix * held_out + (1 - mix) * base_logits
            temperature, points = fit_thresholds(fit, logits, head, start, labels, prohibited, thresholding)
            verdict = search.judge.verdict(head, temperature, points) if search.judge else None
            candidates.append(Candidate(pull, mix, head, temperature, points, logits,
                                        _gain(fit, logits, temperature, labels, prohibited), verdict))
    base_temperature = thresholding.base.temperature if thresholding.base is not None else 1.0
    adapted = Adapted(candidates[0], tuple(candidates), _gain(fit, base_logits, base_temperature, labels, prohibited))
    if search.allow_forgetting or search.judge is None:
        return replace(adapted, chosen=max(candidates, key=_rank))
    best = adapted.best_accepted()
    if best is None:  # none accepted: the closest, so that the refusal can say what it would cost
        best = min(candidates, key=lambda c: (c.verdict.needed, -c.gain))
    return replace(adapted, chosen=best)


def _rank(candidate: Candidate) -> tuple[float, float, float]:
    """Most gain first; at equal gain (to 4 decimals), the one closer to the base: stronger pull, then smaller mix."""
    return round(candidate.gain, 4), candidate.pull, -candidate.mix


def _gain(fit: FitSet, logits: np.ndarray, temperature: float, labels: Sequence[str], prohibited: Sequence[str]
          ) -> float:
    """How well cross-validated scores separate the platform's photos: the mean AUC of each prohibited label against
    the rest, over the labels its photos have both of; minus the mean log-loss where none has."""
    own = slice(0, fit.platform)
    probabilities, targets = softmax(logits[own], temperature), fit.targets[own]
    aucs = []
    for label in prohibited:
        column = list(labels).index(label)
        value = auc(probabilities[:, column], targets == column)
        if value is not None:
            aucs.append(value)
    if aucs:
        return float(np.mean(aucs))
    return float(np.mean(np.log(probabilities[np.arange(len(targets)), targets] + 1e-12)))


def blend(start: Head, fitted: Head, mix: float) -> Head:
    """One head whose logits are `mix` times the fitted head's plus the rest times the base head's."""
    if mix == 1.0:
        return fitted
    return Head((mix * fitted.weight + (1 - mix) * start.weight).astype(np.float32),
                (mix * fitted.bias + (1 - mix) * start.bias).astype(np.float32))


def fit_thresholds(
    fit: FitSet, held_out: np.ndarray, head: Head, start: Head, labels: Sequence[str], prohibited: Sequence[str],
    thresholding: Thresholding,
) -> tuple[float, dict[str, OperatingPoint]]:
    """Temperature and thresholds on every held-out score: the fitting photos cross-validated and, where the reference
    gives them, its calib vectors scored by the final head (no head saw them). With the reference, its everyday sources
    bound review and all its sources bound block; without it, the fitting photos' own harmless ones do."""
    rule, open_world, base_calibration = thresholding.rule, thresholding.open_world, thresholding.base
    logits, targets, bounds, embeddings = [held_out], [fit.targets], list(fit.bounds), [fit.embeddings]
    if open_world is not None:
        vectors = open_world.vectors
        logits.append(head.logits(vectors.embeddings))
        targets.append(vectors.targets(labels))
        bounds += [f"reference:{source}" for source in vectors.sources]
        embeddings.append(vectors.embeddings)
        rule = replace(rule, review_groups=frozenset(f"reference:{s}" for s in open_world.review_sources),
                       block_groups=frozenset(f"reference:{s}" for s in vectors.sources))
    base = None
    if base_calibration is not None:
        base = BaseScores(base_calibration.probabilities(start, np.concatenate(embeddings)),
                          base_calibration.operating_points)
    return calibrate(np.concatenate(logits), np.concatenate(targets), bounds, labels, prohibited, rule, base=base)


def start_head(base_head: Head, base_labels: Sequence[str], labels: Sequence[str]) -> Head:
    """The base head's rows for its labels; a new label's row starts at zero (no evidence either way)."""
    weight = np.zeros((len(labels), base_head.weight.shape[1]), np.float32)
    bias = np.zeros(len(labels), np.float32)
    for index, label in enumerate(base_labels):
        weight[labels.index(label)], bias[labels.index(label)] = base_head.weight[index], base_head.bias[index]
    return Head(weight, bias)
