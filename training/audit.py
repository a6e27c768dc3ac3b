"""Label-noise audit: the photos whose given label a model most doubts, ranked for a person to check.

Two ways to use it, both through `python -m training.evaluate ... --audit doubts.csv`:
- `--split all` on newly labelled photos with the current model, before training on them: the model has never seen
  them, so its doubts are honest evidence of a wrong label (or of a photo it gets wrong).
- `--split train` on a model's own training photos: the model has partly learnt these labels, so only the strongest
  doubts surface; those are still the first labels worth a second look.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from training.data import Sample
from training.evaluation import Evaluation

__all__ = ["Doubt", "rank_doubts", "write_doubts_csv"]

CSV_COLUMNS = ("rank", "path", "label", "label_score", "top_label", "top_score", "split", "kind", "source",
               "description")


@dataclass(frozen=True)
class Doubt:
    sample: Sample
    label_score: float  # calibrated probability the model gives the photo's own label
    top_label: str
    top_score: float


def rank_doubts(evaluation: Evaluation, labels: Sequence[str]) -> list[Doubt]:
    """Every scored photo, the one whose given label the model believes least first."""
    probabilities = evaluation.probabilities
    given = np.array([labels.index(s.label) for s in evaluation.samples])
    label_scores = probabilities[np.arange(len(given)), given]
    top = probabilities.argmax(axis=1)
    order = np.argsort(label_scores, kind="stable")
    return [
        Doubt(evaluation.samples[i], float(label_scores[i]), labels[int(top[i])], float(probabilities[i, top[i]]))
        for i in order
    ]


def write_doubts_csv(doubts: Sequence[Doubt], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for rank, doubt in enumerate(doubts, start=1):
            s = doubt.sample
            writer.writerow((rank, s.path.as_posix(), s.label, f"{doubt.label_score:.4f}", doubt.top_label,
                             f"{doubt.top_score:.4f}", s.split, s.kind, s.source, s.description))
