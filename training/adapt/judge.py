"""The one judge of forgetting: whether an adapted model decides the base's own photos as well as the base does.

A candidate (head, temperature, thresholds) is judged on base vectors no head was fitted on, at its own decisions: a
photo is decided right where being flagged matches being prohibited. Per photo the candidate and the base are paired,
so what counts is the photos it newly gets wrong (`lost`) against those it newly gets right (`gained`). The change in
accuracy is `(gained - lost) / photos`; the judge refuses a candidate only where even the upper end of its one-sided
95 % confidence bound (McNemar's paired standard error) loses more than the tolerance, overall or in any source with
enough photos. So a handful of photos cannot veto a model (on the 202 Met val vectors of release 1.2.0 one photo is
0.5 %, and a 0.035 drop there is 7 photos net), and a model that loses many photos is refused however large its gain.

The pull search asks this judge of every candidate on the reference's calib vectors and the command's refusal reads
the verdict of the candidate it chose, so the two cannot disagree. The val vectors, which no choice ever sees, are
judged the same way and reported: the honest figure, not a second gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from training.adapt.inputs import BaseCalibration, BaseVectors
from training.adapt_config import DEFAULT_MAX_FORGETTING
from training.calibration import softmax
from training.head import Head
from wildvision.decision import flags  # the decision rule itself, vectorised
from wildvision.model_info import OperatingPoint

__all__ = ["CONFIDENCE_Z", "DEFAULT_MAX_FORGETTING", "MIN_SOURCE_PHOTOS", "Change", "Judge", "Verdict"]

CONFIDENCE_Z = 1.645  # one-sided 95 %: refused only where the data show, at this confidence, a loss past the tolerance
# A source needs this many photos to be judged on its own: below, one photo is more than 1 % and the bound is mostly
# noise (in the design set-up single photos of 60-photo sources made the pull search jump between pulls 1000 apart).
MIN_SOURCE_PHOTOS = 100


@dataclass(frozen=True)
class Change:
    """One group's paired change at the decisions: photos newly wrong and newly right against the base."""

    group: str  # "all" or a source
    photos: int
    base_correct: int
    lost: int  # right by the base, wrong by the candidate
    gained: int  # wrong by the base, right by the candidate

    @property
    def change(self) -> float:
        return (self.gained - self.lost) / self.photos

    @property
    def upper(self) -> float:
        """The highest change the photos allow at CONFIDENCE_Z: the candidate loses more than `-upper` only by
        chance's 5 %."""
        spread = self.gained + self.lost - (self.gained - self.lost) ** 2 / self.photos
        return self.change + CONFIDENCE_Z * math.sqrt(max(spread, 0.0)) / self.photos

    def to_json(self) -> dict[str, object]:
        base = self.base_correct / self.photos
        return {"photos": self.photos, "base_decision_accuracy": round(base, 4),
                "decision_accuracy": round(base + self.change, 4), "decision_change": round(self.change, 4),
                "lost": self.lost, "gained": self.gained, "change_bound": round(self.upper, 4)}


@dataclass(frozen=True)
class Verdict:
    """The judge's findings on one set of vectors (`part`): the candidate is accepted where no group's bound loses
    more than `tolerance`."""

    part: str  # which vectors: "calib" (the judge's), "val" (held out, reported), "base photos"
    tolerance: float
    changes: tuple[Change, ...]  # "all" first, then each source of MIN_SOURCE_PHOTOS or more

    @property
    def worst(self) -> Change:
        return min(self.changes, key=lambda change: change.upper)

    @property
    def needed(self) -> float:
        """The smallest tolerance that would accept the candidate (0 where it loses nothing that counts)."""
        return max(0.0, -self.worst.upper)

    @property
    def accepted(self) -> bool:
        return self.worst.upper >= -self.tolerance

    def describe(self) -> str:
        worst = self.worst
        base = worst.base_correct / worst.photos
        return (f"{-worst.change:.4f} accuracy at its decisions on the base's {self.part} vectors ({worst.group}, "
                f"{worst.photos} photos: {base:.4f} -> {base + worst.change:.4f}, {worst.lost} newly wrong, "
                f"{worst.gained} newly right; at least {max(0.0, -worst.upper):.4f} at 95 % confidence)")

    def to_json(self) -> dict[str, object]:
        every = {change.group: change.to_json() for change in self.changes}
        return {**every["all"], "part": self.part, "tolerance": self.tolerance, "accepted": self.accepted,
                "by_source": {group: row for group, row in every.items() if group != "all"}}


@dataclass(frozen=True)
class Judge:
    """Base vectors with the base's own decisions on them, ready to judge any candidate of the same label set."""

    part: str
    vectors: BaseVectors
    labels: tuple[str, ...]
    prohibited: np.ndarray  # per photo: its label is one the adapted model flags
    base_right: np.ndarray  # per photo: the base's decision is right
    tolerance: float = DEFAULT_MAX_FORGETTING

    @classmethod
    def of(cls, part: str, vectors: BaseVectors, labels: Sequence[str], prohibited: Sequence[str], start: Head,
           base: BaseCalibration, tolerance: float = DEFAULT_MAX_FORGETTING) -> Judge:
        is_prohibited = np.isin(vectors.labels, list(prohibited))
        base_flagged = flags(base.probabilities(start, vectors.embeddings), list(labels), base.operating_points)[0]
        return cls(part, vectors, tuple(labels), is_prohibited, base_flagged == is_prohibited, tolerance)

    def verdict(self, head: Head, temperature: float, points: Mapping[str, OperatingPoint]) -> Verdict:
        probabilities = softmax(head.logits(self.vectors.embeddings), temperature)
        right = flags(probabilities, list(self.labels), points)[0] == self.prohibited
        changes = [self._change("all", np.ones(len(right), bool), right)]
        for source in np.unique(self.vectors.sources):
            member = self.vectors.sources == source
            if member.sum() >= MIN_SOURCE_PHOTOS:
                changes.append(self._change(str(source), member, right))
        return Verdict(self.part, self.tolerance, tuple(changes))

    def _change(self, group: str, member: np.ndarray, right: np.ndarray) -> Change:
        base, now = self.base_right[member], right[member]
        return Change(group, int(member.sum()), int(base.sum()), int((base & ~now).sum()), int((~base & now).sum()))
