"""The one assembly of the set a head is fitted on: the platform's labelled rows, then the replayed base rows.

`assemble` is pure (embeddings in, a `FitSet` out), so `training.adapt`'s command and
`benchmarks/adapt_simulation.py` build the fitting set with the same function and the benchmark measures what ships.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from training.adapt.inputs import BaseVectors
from training.data import Sample

__all__ = ["PLATFORM", "FitSet", "assemble"]

PLATFORM = "platform"  # the group name of the labelled photos when thresholds are bounded by them


@dataclass(frozen=True)
class FitSet:
    """The photos a head is fitted on: the platform's labelled ones (the first `platform` rows), then replayed base
    photos."""

    embeddings: np.ndarray
    targets: np.ndarray
    weights: np.ndarray  # per photo; the labelled and the replayed photos weigh the same in total
    groups: list[str]  # cross-validation folds never split a group
    bounds: list[str]  # the group whose harmless photos a row counts in where thresholds are bounded by these rows
    platform: int  # how many of the first rows are the platform's labelled photos
    labelled_samples: list[Sample] = field(default_factory=list)  # those photos, where a run read them

    @property
    def labelled(self) -> int:
        return self.platform

    @classmethod
    def of(cls, embeddings: np.ndarray, targets: np.ndarray, weights: np.ndarray, groups: Sequence[str],
           bounds: Sequence[str] | None = None) -> FitSet:
        """Rows that are not photos of this run (a test's), all the platform's; every row bounds as one group by
        default."""
        return cls(embeddings, np.asarray(targets), np.asarray(weights, float), list(groups),
                   list(bounds) if bounds is not None else [PLATFORM] * len(targets), len(targets))


def assemble(
    embeddings: np.ndarray, targets: np.ndarray, groups: Sequence[str], replay: BaseVectors | None,
    labels: Sequence[str], *, weights: np.ndarray | None = None, samples: Sequence[Sample] = (),
) -> FitSet:
    """The platform's rows (`weights`, equal by default, scaled to total 1) and the replayed base rows (1 in total,
    equally): the two halves weigh the same, so a few hundred labels move the head as much as the base's 1,000
    replayed photos hold it, whatever the counts."""
    embeddings = np.asarray(embeddings, np.float32).reshape(len(targets), -1)
    own = np.full(len(targets), 1.0) if weights is None else np.asarray(weights, float)
    own = own / own.sum() if len(own) else own
    rows, bounds = list(groups), [PLATFORM] * len(targets)
    all_targets, all_weights = np.asarray(targets, np.int64), own
    if replay is not None and len(replay):
        embeddings = np.concatenate([embeddings, replay.embeddings.astype(np.float32)])
        all_targets = np.concatenate([all_targets, replay.targets(list(labels))])
        rows += [f"base:{group}" for group in replay.groups]
        bounds += [f"base:{source}" for source in replay.sources]
        all_weights = np.concatenate([all_weights, np.full(len(replay), 1.0 / len(replay))])
    return FitSet(embeddings, all_targets, all_weights, rows, bounds, len(targets), list(samples))
